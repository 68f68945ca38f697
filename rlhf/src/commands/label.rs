//! `palm label`: sample K responses per prompt from a policy and let a scripted labeler rank
//! them, writing a rankings JSONL for `palm reward train`.

use crate::data::{PromptRecord, RankingRecord, read_jsonl, write_jsonl};
use crate::labelers::{Labeler, rank_distinct};
use crate::sampling::{Sampler, SamplingArgs};
use crate::{Error, Result};
use clap::Args;
use indicatif::ProgressBar;
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
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub device: super::DeviceArg,
}

fn parse_labeler(s: &str) -> std::result::Result<Labeler, String> {
    s.parse()
}

pub fn run(args: LabelArgs) -> Result<()> {
    // Writing the rankings over an input would lose it: compare the files, not the spellings.
    let same = |a: &std::path::Path, b: &std::path::Path| match (a.canonicalize(), b.canonicalize())
    {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    };
    for (flag, input) in [
        ("--prompts", &args.prompts),
        ("--checkpoint", &args.checkpoint),
    ] {
        if same(&args.out, input) {
            return Err(crate::Error::Invalid(format!(
                "--out {} is the {flag} file: it would be overwritten; write the rankings elsewhere",
                args.out.display()
            )));
        }
    }
    let device = args.device.resolve()?;
    let prompts = read_jsonl::<PromptRecord>(&args.prompts)?;
    let mut sampler = Sampler::load(&args.checkpoint, &args.sampling, device)?;
    let k = usize::try_from(args.samples).unwrap_or(usize::MAX);
    // Every prompt's size, before the first is labelled.
    let longest = prompts.iter().map(|p| p.prompt.len()).max().unwrap_or(0);
    sampler.check_memory(k, longest)?;
    let (mut records, mut skipped, mut tied) = (Vec::new(), 0, 0);
    let (mut best, mut worst) = (0i64, 0i64);
    let pb = ProgressBar::new(prompts.len() as u64);
    for (i, p) in prompts.iter().enumerate() {
        let responses = sampler.distinct_responses(&p.prompt, k)?;
        pb.inc(1);
        if pb.is_hidden() && (i + 1) % 10 == 0 {
            crate::output::say(format!("labelled {} of {} prompts", i + 1, prompts.len()));
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
    crate::output::say(format!(
        "wrote {} rankings by {} to {}; mean score of the best {:.2}, of the worst {:.2}; {} with ties (kept in sampling order); {} prompt(s) skipped (fewer than 2 distinct responses)",
        records.len(),
        args.by,
        args.out.display(),
        best as f64 / n,
        worst as f64 / n,
        tied,
        skipped
    ));
    Ok(())
}
