//! `palm train`: pretraining on a text corpus (the shipped State of the Union addresses by
//! default), on bytes or a BPE tokenizer's ids, with validation bits per byte, samples and
//! checkpoints.

use crate::corpus::Corpus;
use crate::flags::Cosine;
use crate::pretrain::{Pretrain, RunSettings, TrainDefaults};
use crate::trainer::{OptimSettings, Trainer};
use crate::{Error, Result};
use clap::Args;
use palm_model::{PRESETS, PalmConfig, Tokenizer};
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// Model size: tiny (0.5M parameters: dim 128, depth 2, 4 heads of 32), enwik8 (30M: 512,
    /// 8, 8 of 64), small (139M: 768, 12, 12 of 64, a 50,304-token vocabulary) or 1b (1.05B:
    /// 2048, 16, 16 of 128, 50,304 tokens); the flags below override single sizes.
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Model width (the residual stream).
    #[arg(long)]
    pub dim: Option<usize>,
    /// Number of layers.
    #[arg(long)]
    pub depth: Option<usize>,
    /// Query heads per layer (keys and values have one head: multi-query attention).
    #[arg(long)]
    pub heads: Option<usize>,
    /// Width of each head (even: rotary embeddings rotate pairs).
    #[arg(long)]
    pub dim_head: Option<usize>,
    /// Feed-forward width as a multiple of --dim.
    #[arg(long)]
    pub ff_mult: Option<usize>,
    /// With --tokenizer, the model's vocabulary is exactly the tokenizer's ids.
    #[command(flatten)]
    pub tokenizer: crate::flags::TokenizerArg,
    #[command(flatten)]
    pub device: super::DeviceArg,
    /// Optimisation steps [default: 2000; on --resume: the run's own total unless given].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub steps: Option<u64>,
    #[command(flatten)]
    pub run: RunSettings,
    #[command(flatten)]
    pub optim: Cosine<TrainDefaults>,
    /// Seeds the initialisation, the batches and the samples.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Run folder: model.safetensors, train_state.safetensors, metrics.jsonl.
    #[arg(long, default_value = "runs/train")]
    pub out: PathBuf,
    /// Continue the run in this folder (its saved settings apply; --steps may extend it).
    /// Flags the run fixed (all but --device, --steps and --stop-at) are refused.
    #[arg(long, conflicts_with_all = ["preset", "dim", "depth", "heads", "dim_head", "ff_mult", "tokenizer", "seed", "out", "overwrite"])]
    pub resume: Option<PathBuf>,
    #[command(flatten)]
    pub folder: super::RunFolder,
}

const DEFAULT_STEPS: u64 = 2000;

/// The model's config: the preset, single sizes overridden, and a vocabulary of exactly the
/// tokenizer's ids when it is not bytes.
fn model_config(a: &TrainArgs, tokenizer: &Tokenizer) -> Result<PalmConfig> {
    let mut c = PalmConfig::preset(&a.preset).ok_or_else(|| {
        Error::Invalid(format!(
            "unknown preset '{}' (expected one of {})",
            a.preset,
            PRESETS.join(", ")
        ))
    })?;
    c.dim = a.dim.unwrap_or(c.dim);
    c.depth = a.depth.unwrap_or(c.depth);
    c.heads = a.heads.unwrap_or(c.heads);
    c.dim_head = a.dim_head.unwrap_or(c.dim_head);
    c.ff_mult = a.ff_mult.unwrap_or(c.ff_mult);
    if !tokenizer.is_bytes() {
        c.num_tokens = tokenizer.ids();
    }
    c.validate().map_err(Error::Invalid)?;
    Ok(c)
}

pub fn run(args: TrainArgs) -> Result<()> {
    let device = args.device.resolve()?;
    // A fresh run checks its data before creating anything on disk.
    let (mut trainer, corpus) = match &args.resume {
        Some(dir) => {
            let t = Trainer::<TrainDefaults>::resume(dir, args.steps)?;
            crate::output::say(format!("resuming {} at step {}", dir.display(), t.step));
            let run: RunSettings = t.run_settings()?;
            let corpus = Corpus::load(
                run.data.as_deref(),
                0.05,
                run.seq_len as usize,
                &t.params.tokenizer,
            )?;
            (t, corpus)
        }
        None => {
            args.optim.check()?;
            let tokenizer = args.tokenizer.for_new_model()?;
            let config = model_config(&args, &tokenizer)?;
            let run = &args.run;
            let corpus = Corpus::load(run.data.as_deref(), 0.05, run.seq_len as usize, &tokenizer)?;
            let settings = OptimSettings {
                steps: args.steps.unwrap_or(DEFAULT_STEPS),
                optim: args.optim,
                seed: args.seed,
            };
            let extra = serde_json::to_value(run).map_err(|e| Error::Invalid(e.to_string()))?;
            run.check_memory(&config, device)?;
            (
                Trainer::new(
                    &config,
                    tokenizer,
                    settings,
                    extra,
                    &args.out,
                    args.folder.replace.overwrite,
                )?,
                corpus,
            )
        }
    };
    let run: RunSettings = trainer.run_settings()?;
    run.check_memory(&trainer.params.config, device)?;
    trainer.to_device(device)?;
    let c = trainer.params.config.clone();
    crate::output::say(format!(
        "training {:.2}M parameters (dim {} depth {} heads {} dim_head {}) on {} ({} train / {} val tokens; {}), {} steps of {}×{} tokens, on {}",
        c.num_params() as f64 / 1e6,
        c.dim,
        c.depth,
        c.heads,
        c.dim_head,
        corpus.name,
        corpus.train.len(),
        corpus.val.len(),
        trainer.params.tokenizer.describe(),
        trainer.settings.steps,
        run.batch,
        run.seq_len,
        describe(device)
    ));
    let task = Pretrain::new(&corpus, &run, trainer.settings.seed);
    trainer.run(&task, &run.schedule(args.folder.stop_at))
}

/// "the CPU" or the GPU's name, for the start line.
pub fn describe(device: palm_engine::Device) -> String {
    match device {
        palm_engine::Device::Cpu => "the CPU".into(),
        palm_engine::Device::Cuda(i) => palm_engine::cuda::CudaDevice::get(i)
            .map(|d| {
                format!(
                    "{} (mixed precision: bf16 compute, f32 master weights)",
                    d.info()
                )
            })
            .unwrap_or_else(|_| format!("cuda:{i}")),
    }
}
