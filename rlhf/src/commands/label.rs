//! `palm label`: sample K responses per prompt from a policy and let a scripted labeler rank
//! them, writing a rankings JSONL for `palm reward train`.

use crate::data::{PromptRecord, RankingRecord, read_jsonl, write_jsonl};
use crate::labelers::Labeler;
use crate::{Error, Result};
use clap::Args;
use indicatif::ProgressBar;
use palm_engine::Rng;
use palm_model::checkpoint::load_model;
use palm_model::{SampleSettings, generate, tokenizer};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct LabelArgs {
    /// Policy checkpoint to sample responses from.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// JSONL of {"prompt"} (.gz is decompressed).
    #[arg(long)]
    pub prompts: PathBuf,
    /// Who ranks: afinn (sum of AFINN-96 word valences, higher is better), length:N (closer to
    /// N bytes is better) or count:CHAR (more of CHAR is better). Ties keep their sampling order.
    #[arg(long, value_parser = parse_labeler)]
    pub by: Labeler,
    /// Responses sampled per prompt; duplicates are dropped, and a prompt with fewer than two
    /// distinct responses is skipped.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(2..))]
    pub samples: u64,
    /// Where to write the rankings JSONL ({"prompt","responses":[best … worst]}); .gz compresses.
    #[arg(long)]
    pub out: PathBuf,
    /// Longest response in tokens (bytes).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_tokens: u64,
    /// End a response at this byte (not included): `newline`, `none`, or one ASCII character.
    #[arg(long, default_value = "newline", value_parser = parse_stop)]
    pub stop: Stop,
    /// Softmax temperature (must be > 0 for distinct samples).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Keep the k most likely tokens.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Keep the most likely tokens up to this probability mass.
    #[arg(long)]
    pub top_p: Option<f32>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// cpu, cuda or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// The byte that ends a response, if any.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stop(pub Option<u32>);

fn parse_labeler(s: &str) -> std::result::Result<Labeler, String> {
    s.parse()
}

pub fn parse_stop(s: &str) -> std::result::Result<Stop, String> {
    match s {
        "newline" => Ok(Stop(Some(u32::from(b'\n')))),
        "none" => Ok(Stop(None)),
        _ => match s.as_bytes() {
            [b] if b.is_ascii() && *b != 0 => Ok(Stop(Some(u32::from(*b)))),
            _ => Err(format!(
                "expected newline, none or one ASCII character, got '{s}'"
            )),
        },
    }
}

/// Distinct responses in first-seen order.
fn distinct(responses: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(responses.len());
    for r in responses {
        if !out.contains(&r) {
            out.push(r);
        }
    }
    out
}

/// The distinct `responses` ranked best to worst by `by`, with their scores; `None` when fewer
/// than two are distinct (nothing to compare).
pub fn rank_distinct(by: &Labeler, responses: Vec<String>) -> Option<(Vec<String>, Vec<i64>)> {
    let responses = distinct(responses);
    if responses.len() < 2 {
        return None;
    }
    let ranked = by.rank(responses);
    let scores = ranked.iter().map(|r| by.score(r)).collect();
    Some((ranked, scores))
}

pub fn run(args: LabelArgs) -> Result<()> {
    let device = super::resolve_device(&args.device)?;
    let prompts = read_jsonl::<PromptRecord>(&args.prompts)?;
    let (params, _) = load_model(&args.checkpoint)?;
    let params = params.to_device(device)?;
    let settings = SampleSettings {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        max_tokens: args.max_tokens as usize,
        eos: args.stop.0,
    };
    settings.validate()?;
    let mut rng = Rng::new(args.seed);
    let k = args.samples as usize;
    let (mut records, mut skipped, mut tied) = (Vec::new(), 0, 0);
    let (mut best, mut worst) = (0i64, 0i64);
    let pb = ProgressBar::new(prompts.len() as u64);
    for (i, p) in prompts.iter().enumerate() {
        let ids = tokenizer::encode(&p.prompt);
        let out = generate(&params, &vec![ids; k], &settings, None, &mut rng)?;
        let responses = out.iter().map(|t| tokenizer::decode(t)).collect();
        pb.inc(1);
        if pb.is_hidden() && (i + 1) % 10 == 0 {
            eprintln!("labelled {} of {} prompts", i + 1, prompts.len());
        }
        let Some((ranked, scores)) = rank_distinct(&args.by, responses) else {
            skipped += 1;
            continue;
        };
        tied += usize::from(scores.windows(2).any(|w| w[0] == w[1]));
        best += scores[0];
        worst += scores[scores.len() - 1];
        records.push(RankingRecord {
            prompt: p.prompt.clone(),
            responses: ranked,
        });
    }
    pb.finish_and_clear();
    if records.is_empty() {
        return Err(Error::Invalid(format!(
            "no prompt of {} gave two distinct responses (is --temperature 0?); nothing written",
            args.prompts.display()
        )));
    }
    write_jsonl(&args.out, &records)?;
    let n = records.len() as f64;
    eprintln!(
        "wrote {} rankings by {} to {}; mean score of the best {:.2}, of the worst {:.2}; {} with ties (kept in sampling order); {} prompt(s) skipped (fewer than 2 distinct responses)",
        records.len(),
        args.by,
        args.out.display(),
        best as f64 / n,
        worst as f64 / n,
        tied,
        skipped
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_bytes() {
        assert_eq!(parse_stop("newline"), Ok(Stop(Some(10))));
        assert_eq!(parse_stop("none"), Ok(Stop(None)));
        assert_eq!(parse_stop("."), Ok(Stop(Some(46))));
        for bad in ["", "é", "ab"] {
            assert!(parse_stop(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn duplicates_are_dropped_in_order() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(distinct(v(&["b", "a", "b", "c", "a"])), v(&["b", "a", "c"]));
    }
}
