//! `palm sft`: supervised fine-tuning on prompt/completion pairs (`crate::sft`) in the shared
//! training loop (progress, validation, checkpoints, resume).

use crate::data::{SftRecord, read_jsonl};
use crate::flags::Cosine;
use crate::sft::{RunSettings, SftDefaults, check_memory, task};
use crate::trainer::{OptimSettings, Schedule, Trainer};
use crate::{Error, Result};
use clap::Args;
use palm_engine::Rng;
use palm_model::checkpoint::load_language_model;
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
    pub tokenizer: crate::flags::TokenizerArg,
    #[command(flatten)]
    pub device: super::DeviceArg,
    /// Optimisation steps [default: 300; on --resume: the run's own total unless given].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub steps: Option<u64>,
    #[command(flatten)]
    pub run: RunSettings,
    #[command(flatten)]
    pub optim: Cosine<SftDefaults>,
    /// Seeds the batches and the samples.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Run folder.
    #[arg(long, default_value = "runs/sft")]
    pub out: PathBuf,
    /// Continue the run in this folder.
    /// Flags the run fixed (all but --device, --steps and --stop-at) are refused.
    #[arg(long, conflicts_with_all = ["checkpoint", "data", "tokenizer", "seed", "out", "overwrite"])]
    pub resume: Option<PathBuf>,
    #[command(flatten)]
    pub folder: super::RunFolder,
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
            let params = args.tokenizer.apply(params, ckpt)?;
            let settings = OptimSettings {
                steps: args.steps.unwrap_or(300),
                optim: args.optim,
                seed: args.seed,
            };
            let run = RunSettings {
                data: data.clone(),
                ..args.run.clone()
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
    let (task, tokens_per_step) = task(
        &run,
        &records,
        &trainer.params.tokenizer,
        trainer.settings.seed,
    )?;
    crate::output::say(format!(
        "fine-tuning {:.2}M parameters on {} examples ({} held out) from {}, {} steps of {} examples",
        trainer.params.config.num_params() as f64 / 1e6,
        task.train.len(),
        task.val.len(),
        run.data.display(),
        trainer.settings.steps,
        run.batch
    ));
    let schedule = Schedule {
        tokens_per_step,
        val_every: run.val_every,
        sample_every: run.sample_every,
        ckpt_every: run.ckpt_every,
        stop_at: args.folder.stop_at,
    };
    trainer.run(&task, &schedule)
}
