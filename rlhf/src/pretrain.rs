//! Pretraining on a text corpus: the run's settings, the task the shared `Trainer` drives
//! (next-token prediction on random windows, validation in bits per byte, samples), and the
//! window scoring `palm eval` shares.

use crate::corpus::{Corpus, Ids, random_windows, spaced_windows};
use crate::flags::CosineDefaults;
use crate::trainer::{Schedule, Task, Validation};
use crate::{Error, Result};
use palm_engine::{Rng, Tensor, no_grad};
use palm_model::{Forward, PalmConfig, PalmParams, SampleSettings, generate};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `palm train`'s optimiser defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainDefaults;

impl CosineDefaults for TrainDefaults {
    const LR: &'static str = "0.002";
    const MIN_LR: &'static str = "0.0002";
    const WARMUP: &'static str = "100";
    const WEIGHT_DECAY: &'static str = "0.1";
    const GRAD_CLIP: &'static str = "0.5";
}

/// What a resume needs besides the optimiser settings (`palm train`'s flags of them).
#[derive(clap::Args, Debug, Clone, Serialize, Deserialize)]
#[group(id = "pretrain", conflicts_with = "resume")]
pub struct RunSettings {
    /// Training text (.gz is decompressed); the last 5% is held out. Default: the shipped corpus.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Sequences per step.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: u64,
    /// Tokens per sequence (bytes, unless --tokenizer).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(2..))]
    pub seq_len: u64,
    /// Validate every N steps (and at the end).
    #[arg(long, default_value_t = 250)]
    pub val_every: u64,
    /// Validation windows (evenly spaced over the held-out part).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub val_windows: u64,
    /// Print a sample every N steps (and at the end); 0 = only at the end.
    #[arg(long, default_value_t = 500)]
    pub sample_every: u64,
    /// Tokens per sample.
    #[arg(long, default_value_t = 200)]
    pub sample_tokens: usize,
    /// Checkpoint every N steps (and at the end); 0 = only at the end.
    #[arg(long, default_value_t = 500)]
    pub ckpt_every: u64,
}

impl RunSettings {
    /// Refuse sizes that would not fit before anything is allocated: a training step of `batch`
    /// windows (validation scores the same windows without gradients) and the samples.
    pub fn check_memory(&self, config: &PalmConfig, device: palm_engine::Device) -> Result<()> {
        use palm_model::budget;
        let (batch, len) = (
            self.batch as usize,
            (self.seq_len as usize).saturating_add(1),
        );
        budget::check(
            &format!(
                "training with --batch {} --seq-len {}",
                self.batch, self.seq_len
            ),
            budget::training(config, batch, len),
            device,
        )?;
        budget::check(
            &format!("--sample-tokens {}", self.sample_tokens),
            budget::decoding(config, 1, 4, self.sample_tokens),
            device,
        )?;
        Ok(())
    }

    /// The loop's schedule for these settings.
    pub fn schedule(&self, stop_at: Option<u64>) -> Schedule {
        Schedule {
            tokens_per_step: self.batch * self.seq_len,
            val_every: self.val_every,
            sample_every: self.sample_every,
            ckpt_every: self.ckpt_every,
            stop_at,
        }
    }
}

/// Next-token prediction on random windows of the corpus; validation in bits per byte.
pub struct Pretrain<'a> {
    train: &'a Ids,
    val: Vec<Vec<u32>>,
    /// Validation tokens per byte of text (1 for bytes).
    tokens_per_byte: f64,
    batch: usize,
    len: usize,
    sample_tokens: usize,
    seed: u64,
}

impl<'a> Pretrain<'a> {
    /// The task for `corpus` (its training part; validation windows evenly spaced over its
    /// held-out part); `seed` seeds the progress samples.
    pub fn new(corpus: &'a Corpus, run: &RunSettings, seed: u64) -> Self {
        Pretrain {
            train: &corpus.train,
            tokens_per_byte: corpus.val_tokens_per_byte(),
            val: spaced_windows(
                &corpus.val,
                run.val_windows as usize,
                run.seq_len as usize + 1,
            ),
            batch: run.batch as usize,
            len: run.seq_len as usize + 1,
            sample_tokens: run.sample_tokens,
            seed,
        }
    }
}

impl Task for Pretrain<'_> {
    fn loss(&self, params: &PalmParams, rng: &mut Rng) -> Result<Tensor> {
        let (b, len) = (self.batch, self.len);
        let tokens = Tensor::from_vec(random_windows(self.train, b, len, rng), &[b, len])?;
        Ok(params.loss(&tokens, &mut Forward::default())?.0)
    }

    fn validate(&self, params: &PalmParams) -> Result<Validation> {
        let (total, count) = score_windows(params, &self.val, self.batch)?;
        let loss = total / count.max(1) as f64;
        let bpb = loss * self.tokens_per_byte / std::f64::consts::LN_2;
        Ok(Validation {
            metrics: serde_json::json!({"val_loss": loss, "val_bpb": bpb}),
            line: format!("validation loss {loss:.4}, {bpb:.4} bits/byte"),
            summary: format!("validation {bpb:.4} bits/byte"),
        })
    }

    /// A sample from the current model with its own RNG (so sampling never shifts the training
    /// stream and a resumed run stays bit-exact).
    fn sample(&self, params: &PalmParams, step: u64) -> Result<Option<String>> {
        let prompt = params.tokenizer.encode("The ")?;
        let settings = SampleSettings {
            temperature: 0.8,
            max_tokens: self.sample_tokens,
            ..Default::default()
        };
        let mut rng = Rng::new(self.seed ^ step.wrapping_mul(0x9E37_79B9));
        let out = generate(params, &[prompt], &settings, None, &mut rng)?;
        Ok(Some(
            format!("The {}", params.tokenizer.decode(&out[0])).replace('\n', " ⏎ "),
        ))
    }
}

/// Summed loss (nats) and counted targets over windows of n + 1 tokens, `batch` at a time.
pub fn score_windows(
    params: &PalmParams,
    windows: &[Vec<u32>],
    batch: usize,
) -> Result<(f64, usize)> {
    palm_engine::cpu::on_workers(|| score(params, windows, batch))
}

fn score(params: &PalmParams, windows: &[Vec<u32>], batch: usize) -> Result<(f64, usize)> {
    let _g = no_grad();
    let mut total = 0f64;
    let mut count = 0usize;
    let batch = batch.max(1);
    let (rows, len) = (
        batch.min(windows.len()),
        windows.first().map_or(0, Vec::len),
    );
    palm_model::budget::check(
        &format!("scoring {rows} window(s) of {len} tokens at once"),
        palm_model::budget::decoding(&params.config, rows, len, 0),
        params.device(),
    )?;
    for (c, chunk) in windows.chunks(batch).enumerate() {
        let len = chunk[0].len();
        let tokens = Tensor::from_vec(chunk.concat(), &[chunk.len(), len])?;
        let (loss, n) = params.loss(&tokens, &mut Forward::default())?;
        let value = loss.to_scalar()?;
        if n > 0 && !value.is_finite() {
            return Err(Error::Invalid(format!(
                "the loss is {value} on windows {}..{}: the model's weights overflow",
                c * batch,
                c * batch + chunk.len()
            )));
        }
        total += value as f64 * n as f64;
        count += n;
    }
    Ok((total, count))
}
