//! Sampling K candidate responses per prompt from a policy checkpoint, shared by the commands
//! that collect rankings (`palm label` ranks them by rule, `palm rank` by a person).

use crate::Result;
use clap::Args;
use palm_engine::{Device, Rng};
use palm_model::checkpoint::load_language_model;
use palm_model::{PalmParams, SampleSettings, Tokenizer, generate};
use std::path::Path;

/// How responses are sampled (flattened into the commands' own arguments).
#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Longest response in tokens.
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
    /// Seed of the random choices: the same seed, checkpoint and prompts give the same
    /// responses (and `palm rank` the same shown order of --responses).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub tokenizer: crate::flags::TokenizerArg,
}

/// The byte that ends a response, if any (saved as the byte's number, or null).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Stop(pub Option<u32>);

impl Stop {
    /// The id that ends a response under `tokenizer`: the byte itself, or the BPE's token for
    /// that one character (a byte-level BPE has one for every byte; a model ends a line there
    /// only when it draws the character as a token of its own).
    pub fn id(self, tokenizer: &Tokenizer) -> Result<Option<u32>> {
        let Some(b) = self.0 else {
            return Ok(None);
        };
        if tokenizer.is_bytes() {
            return Ok(Some(b));
        }
        let text = char::from_u32(b).map(String::from).unwrap_or_default();
        match tokenizer.encode(&text)?.as_slice() {
            [id] => Ok(Some(*id)),
            ids => Err(crate::Error::Invalid(format!(
                "the stop character {text:?} is {} tokens of the {}, not one",
                ids.len(),
                tokenizer.describe()
            ))),
        }
    }
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
pub fn distinct(responses: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(responses.len());
    for r in responses {
        if !out.contains(&r) {
            out.push(r);
        }
    }
    out
}

/// A policy and the settings to sample from it, with one RNG for the whole run, so a run is
/// reproducible from its seed.
pub struct Sampler {
    params: PalmParams,
    settings: SampleSettings,
    rng: Rng,
}

impl Sampler {
    /// The policy in `checkpoint`, on `device`, with the sampling settings of `args`.
    pub fn load(checkpoint: &Path, args: &SamplingArgs, device: Device) -> Result<Sampler> {
        let (params, _) = load_language_model(checkpoint)?;
        let params = args
            .tokenizer
            .apply(params, checkpoint)?
            .to_device(device)?;
        let settings = SampleSettings {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            max_tokens: args.max_tokens as usize,
            eos: args.stop.id(&params.tokenizer)?,
        };
        settings.validate()?;
        Ok(Sampler {
            params,
            settings,
            rng: Rng::new(args.seed),
        })
    }

    /// Refuse `k` samples of prompts up to `prompt_bytes` long that would not fit in memory.
    pub fn check_memory(&self, k: usize, prompt_bytes: usize) -> Result<()> {
        let (c, n) = (&self.params.config, self.settings.max_tokens);
        palm_model::budget::check(
            &format!("{k} samples of up to {prompt_bytes} + {n} tokens"),
            palm_model::budget::decoding(c, k, prompt_bytes, n),
            self.params.device(),
        )?;
        Ok(())
    }

    /// Sample `k` responses to `prompt` in one batch and keep the distinct ones, in sampling
    /// order (duplicates would be ties no ranking can order).
    pub fn distinct_responses(&mut self, prompt: &str, k: usize) -> Result<Vec<String>> {
        let ids = self.params.tokenizer.encode(prompt)?;
        self.check_memory(k, ids.len())?;
        let out = generate(
            &self.params,
            &vec![ids; k],
            &self.settings,
            None,
            &mut self.rng,
        )?;
        let tokenizer = &self.params.tokenizer;
        Ok(distinct(out.iter().map(|t| tokenizer.decode(t)).collect()))
    }
}

/// A language model to sample from, on `device`, with the adapters of LoRA scope `lora` from
/// the same file when asked (`palm sample --lora actor`, `palm chat --lora actor`).
pub fn model_with_adapters(
    checkpoint: &Path,
    lora: Option<&str>,
    tokenizer: &crate::flags::TokenizerArg,
    device: Device,
) -> Result<(palm_model::PalmParams, Option<palm_model::LoraScope>)> {
    let (params, file) = load_language_model(checkpoint)?;
    let params = tokenizer.apply(params, checkpoint)?.to_device(device)?;
    let adapters = match lora {
        Some(name) => {
            let mut scope = palm_model::checkpoint::load_lora(&file, &params.config, name)?
                .ok_or_else(|| {
                    crate::Error::Invalid(format!(
                        "{} has no LoRA scope '{name}'",
                        checkpoint.display()
                    ))
                })?;
            scope.move_to(device)?;
            Some(scope)
        }
        None => None,
    };
    Ok((params, adapters))
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
