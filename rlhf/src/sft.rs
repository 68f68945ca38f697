//! Supervised fine-tuning on prompt/completion pairs, the loss on completion tokens only: the
//! run's settings (a flag group of `palm sft`), the examples and the task the shared `Trainer`
//! runs.

use crate::data::SftRecord;
use crate::flags::CosineDefaults;
use crate::trainer::{Task, Validation};
use crate::{Error, Result};
use palm_engine::{Rng, Tensor, no_grad};
use palm_model::{Forward, PalmConfig, PalmParams, SampleSettings, Tokenizer, generate};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `palm sft`'s optimiser defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SftDefaults;

impl CosineDefaults for SftDefaults {
    const LR: &'static str = "0.0003";
    const MIN_LR: &'static str = "0.00003";
    const WARMUP: &'static str = "20";
    const WEIGHT_DECAY: &'static str = "0";
    const GRAD_CLIP: &'static str = "0.5";
}

/// What a resume needs besides the optimiser settings: `palm sft`'s flags of them, and the data
/// file (set by the command from --data).
#[derive(clap::Args, Debug, Clone, Serialize, Deserialize)]
#[group(id = "sft", conflicts_with = "resume")]
pub struct RunSettings {
    #[arg(skip)]
    pub data: PathBuf,
    /// Examples per step.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: u64,
    /// Longest example in tokens (prompt + completion); longer ones are cut at the end.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(2..))]
    pub seq_len: u64,
    /// Validate on the held-out examples every N steps (and at the end); 0 = only at the end.
    #[arg(long, default_value_t = 50)]
    pub val_every: u64,
    /// Print a sample every N steps (and at the end); 0 = only at the end.
    #[arg(long, default_value_t = 100)]
    pub sample_every: u64,
    /// Checkpoint every N steps (and at the end); 0 = only at the end.
    #[arg(long, default_value_t = 100)]
    pub ckpt_every: u64,
}

/// One example as model inputs and targets: targets are the next tokens, with 0 (not trained
/// on) wherever the next token is still part of the prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
}

impl Example {
    /// `None` when the cut leaves no completion token to learn.
    pub fn new(r: &SftRecord, max_len: usize, tokenizer: &Tokenizer) -> Result<Option<Self>> {
        let prompt = tokenizer.encode(&r.prompt)?;
        let mut tokens = prompt.clone();
        tokens.extend(tokenizer.encode(&r.completion)?);
        tokens.truncate(max_len.saturating_add(1));
        let Some(n) = tokens.len().checked_sub(1) else {
            return Ok(None);
        };
        let inputs = tokens[..n].to_vec();
        let targets: Vec<u32> = (0..n)
            .map(|t| {
                if t + 1 >= prompt.len() {
                    tokens[t + 1]
                } else {
                    0
                }
            })
            .collect();
        Ok(targets
            .iter()
            .any(|&t| t != 0)
            .then_some(Example { inputs, targets }))
    }
}

/// Examples padded with 0 to the longest, as (inputs, targets) tensors (b, n).
pub fn batch_tensors(examples: &[&Example]) -> Result<(Tensor, Tensor)> {
    let n = examples.iter().map(|e| e.inputs.len()).max().unwrap_or(0);
    let (mut inputs, mut targets) = (Vec::new(), Vec::new());
    for e in examples {
        inputs.extend(e.inputs.iter().copied().chain(std::iter::repeat(0)).take(n));
        targets.extend(
            e.targets
                .iter()
                .copied()
                .chain(std::iter::repeat(0))
                .take(n),
        );
    }
    let b = examples.len();
    Ok((
        Tensor::from_vec(inputs, &[b, n])?,
        Tensor::from_vec(targets, &[b, n])?,
    ))
}

/// The SFT task: random batches of training examples, validation over the held-out ones, a
/// sample from the first held-out prompt.
pub struct Sft {
    pub train: Vec<Example>,
    pub val: Vec<Example>,
    val_prompt: String,
    batch: usize,
    seed: u64,
}

impl Task for Sft {
    fn loss(&self, params: &PalmParams, rng: &mut Rng) -> Result<Tensor> {
        let picked: Vec<&Example> = (0..self.batch)
            .map(|_| &self.train[rng.below(self.train.len())])
            .collect();
        let (inputs, targets) = batch_tensors(&picked)?;
        Ok(params
            .loss_on(&inputs, &targets, &mut Forward::default())?
            .0)
    }

    fn validate(&self, params: &PalmParams) -> Result<Validation> {
        let (total, count) = palm_engine::cpu::on_workers(|| {
            let _g = no_grad();
            let (mut total, mut count) = (0f64, 0usize);
            for chunk in self.val.chunks(self.batch) {
                let refs: Vec<&Example> = chunk.iter().collect();
                let (inputs, targets) = batch_tensors(&refs)?;
                let (loss, n) = params.loss_on(&inputs, &targets, &mut Forward::default())?;
                total += loss.to_scalar()? as f64 * n as f64;
                count += n;
            }
            Ok::<_, Error>((total, count))
        })?;
        let loss = total / count.max(1) as f64;
        Ok(Validation {
            metrics: serde_json::json!({"val_loss": loss, "val_tokens": count}),
            line: format!("validation loss {loss:.4} over {count} completion tokens"),
            summary: format!("validation loss {loss:.4}"),
        })
    }

    fn sample(&self, params: &PalmParams, step: u64) -> Result<Option<String>> {
        let prompt = params.tokenizer.encode(&self.val_prompt)?;
        if prompt.is_empty() {
            return Ok(None);
        }
        let settings = SampleSettings {
            temperature: 0.7,
            max_tokens: 80,
            ..Default::default()
        };
        let mut rng = Rng::new(self.seed ^ step.wrapping_mul(0x9E37_79B9));
        let out = generate(params, &[prompt], &settings, None, &mut rng)?;
        Ok(Some(format!(
            "{:?} → {:?}",
            self.val_prompt,
            params.tokenizer.decode(&out[0])
        )))
    }
}

/// Refuse a `--batch` that would not fit, before anything is allocated. Examples are as long
/// as the data's longest (in bytes), up to --seq-len.
pub fn check_memory(
    run: &RunSettings,
    records: &[SftRecord],
    config: &PalmConfig,
    device: palm_engine::Device,
) -> Result<()> {
    let longest = records
        .iter()
        .map(|r| r.prompt.len().saturating_add(r.completion.len()))
        .max()
        .unwrap_or(0)
        .min(run.seq_len as usize);
    palm_model::budget::check(
        &format!(
            "training with --batch {} --seq-len {}",
            run.batch, run.seq_len
        ),
        palm_model::budget::training(config, run.batch as usize, longest),
        device,
    )?;
    Ok(())
}

/// The task and one step's tokens (on average) for the records of `run.data`: the last 5% (at
/// least one) held out; examples whose prompt fills --seq-len are skipped with a note.
pub fn task(
    run: &RunSettings,
    records: &[SftRecord],
    tokenizer: &Tokenizer,
    seed: u64,
) -> Result<(Sft, u64)> {
    if records.len() < 2 {
        return Err(Error::data(
            &run.data,
            None,
            "need at least 2 records (one is held out for validation)",
        ));
    }
    let held = (records.len() / 20).max(1);
    let (train_r, val_r) = records.split_at(records.len() - held);
    let make = |rs: &[SftRecord]| -> Result<Vec<Example>> {
        let mut out = Vec::new();
        for r in rs {
            out.extend(Example::new(r, run.seq_len as usize, tokenizer)?);
        }
        Ok(out)
    };
    let (train, val) = (make(train_r)?, make(val_r)?);
    let skipped = records.len() - train.len() - val.len();
    if skipped > 0 {
        crate::output::say(format!(
            "note: {skipped} example(s) skipped: the prompt fills --seq-len, no completion token left"
        ));
    }
    if train.is_empty() || val.is_empty() {
        return Err(Error::data(
            &run.data,
            None,
            "no usable examples in the training or the validation part",
        ));
    }
    let tokens_per_step =
        run.batch * train.iter().map(|e| e.inputs.len() as u64).sum::<u64>() / train.len() as u64;
    let task = Sft {
        train,
        val,
        val_prompt: val_r[0].prompt.clone(),
        batch: run.batch as usize,
        seed,
    };
    Ok((task, tokens_per_step))
}
