//! `palm sft`: supervised fine-tuning on prompt/completion pairs, the loss on completion tokens
//! only. Uses the shared training loop (progress, validation, checkpoints, resume).

use crate::data::{SftRecord, read_jsonl};
use crate::flags::{Cosine, CosineDefaults};
use crate::trainer::{OptimSettings, Schedule, Task, Trainer, Validation};
use crate::{Error, Result};
use clap::Args;
use palm_engine::{Rng, Tensor, no_grad};
use palm_model::checkpoint::load_language_model;
use palm_model::{Forward, PalmConfig, PalmParams, SampleSettings, generate, tokenizer};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct SftArgs {
    /// The pretrained model to fine-tune.
    #[arg(long, required_unless_present = "resume")]
    pub checkpoint: Option<PathBuf>,
    /// JSONL of {"prompt", "completion"} (.gz is decompressed); the last 5% (at least one) is held out.
    #[arg(long, required_unless_present = "resume")]
    pub data: Option<PathBuf>,
    #[command(flatten)]
    pub device: super::DeviceArg,
    /// Optimisation steps [default: 300; on --resume: the run's own total unless given].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub steps: Option<u64>,
    /// Examples per step.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: u64,
    /// Longest example in tokens (prompt + completion); longer ones are cut at the end.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(2..))]
    pub seq_len: u64,
    #[command(flatten)]
    pub optim: Cosine<SftDefaults>,
    /// Validate on the held-out examples every N steps (and at the end); 0 = only at the end.
    #[arg(long, default_value_t = 50)]
    pub val_every: u64,
    /// Print a sample every N steps (and at the end); 0 = only at the end.
    #[arg(long, default_value_t = 100)]
    pub sample_every: u64,
    /// Checkpoint every N steps (and at the end); 0 = only at the end.
    #[arg(long, default_value_t = 100)]
    pub ckpt_every: u64,
    /// Seeds the batches and the samples.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Run folder.
    #[arg(long, default_value = "runs/sft")]
    pub out: PathBuf,
    /// Continue the run in this folder.
    /// Flags the run fixed (all but --device, --steps and --stop-at) are refused.
    #[arg(long, conflicts_with_all = ["checkpoint", "data", "batch", "seq_len", "val_every", "sample_every", "ckpt_every", "seed", "out", "overwrite"])]
    pub resume: Option<PathBuf>,
    #[command(flatten)]
    pub folder: super::RunFolder,
}

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

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunSettings {
    data: PathBuf,
    batch: u64,
    seq_len: u64,
    val_every: u64,
    sample_every: u64,
    ckpt_every: u64,
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
    pub fn new(r: &SftRecord, max_len: usize) -> Option<Self> {
        let prompt = tokenizer::encode(&r.prompt);
        let mut tokens = prompt.clone();
        tokens.extend(tokenizer::encode(&r.completion));
        tokens.truncate(max_len.saturating_add(1));
        let n = tokens.len().checked_sub(1)?;
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
        targets
            .iter()
            .any(|&t| t != 0)
            .then_some(Example { inputs, targets })
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

struct Sft {
    train: Vec<Example>,
    val: Vec<Example>,
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
        let prompt = tokenizer::encode(&self.val_prompt);
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
            tokenizer::decode(&out[0])
        )))
    }
}

/// Refuse a `--batch`/`--seq-len` that would not fit, before anything is allocated.
/// Refuse a `--batch` that would not fit, before anything is allocated. Examples are as long
/// as the data's longest (in bytes), up to --seq-len.
fn check_memory(
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

pub fn run(args: SftArgs) -> Result<()> {
    let device = args.device.resolve()?;
    let mut trainer = match &args.resume {
        Some(dir) => Trainer::<SftDefaults>::resume(dir, args.steps)?,
        None => {
            let (Some(ckpt), Some(data)) = (&args.checkpoint, &args.data) else {
                return Err(Error::Invalid(
                    "--checkpoint and --data are required (or --resume DIR)".into(),
                ));
            };
            // Read the data before creating anything on disk.
            let records = read_jsonl::<SftRecord>(data)?;
            let (params, _) = load_language_model(ckpt)?;
            let settings = OptimSettings {
                steps: args.steps.unwrap_or(300),
                optim: args.optim,
                seed: args.seed,
            };
            let run = RunSettings {
                data: data.clone(),
                batch: args.batch,
                seq_len: args.seq_len,
                val_every: args.val_every,
                sample_every: args.sample_every,
                ckpt_every: args.ckpt_every,
            };
            let extra = serde_json::to_value(&run).map_err(|e| Error::Invalid(e.to_string()))?;
            check_memory(&run, &records, &params.config, device)?;
            Trainer::from_params(
                params,
                settings,
                extra,
                &args.out,
                args.folder.replace.overwrite,
                Rng::new(args.seed),
            )?
        }
    };
    let run: RunSettings = trainer.run_settings()?;
    let records = read_jsonl::<SftRecord>(&run.data)?;
    check_memory(&run, &records, &trainer.params.config, device)?;
    trainer.to_device(device)?;

    if records.len() < 2 {
        return Err(Error::data(
            &run.data,
            None,
            "need at least 2 records (one is held out for validation)",
        ));
    }
    let held = (records.len() / 20).max(1);
    let (train_r, val_r) = records.split_at(records.len() - held);
    let make = |rs: &[SftRecord]| {
        rs.iter()
            .filter_map(|r| Example::new(r, run.seq_len as usize))
            .collect::<Vec<_>>()
    };
    let (train, val) = (make(train_r), make(val_r));
    let skipped = records.len() - train.len() - val.len();
    if skipped > 0 {
        eprintln!(
            "note: {skipped} example(s) skipped: the prompt fills --seq-len, no completion token left"
        );
    }
    if train.is_empty() || val.is_empty() {
        return Err(Error::data(
            &run.data,
            None,
            "no usable examples in the training or the validation part",
        ));
    }
    eprintln!(
        "fine-tuning {:.2}M parameters on {} examples ({} held out) from {}, {} steps of {} examples",
        trainer.params.config.num_params() as f64 / 1e6,
        train.len(),
        val.len(),
        run.data.display(),
        trainer.settings.steps,
        run.batch
    );
    let tokens_per_step =
        run.batch * train.iter().map(|e| e.inputs.len() as u64).sum::<u64>() / train.len() as u64;
    let task = Sft {
        train,
        val,
        val_prompt: val_r[0].prompt.clone(),
        batch: run.batch as usize,
        seed: trainer.settings.seed,
    };
    let schedule = Schedule {
        tokens_per_step,
        val_every: run.val_every,
        sample_every: run.sample_every,
        ckpt_every: run.ckpt_every,
        stop_at: args.folder.stop_at,
    };
    trainer.run(&task, &schedule)
}
