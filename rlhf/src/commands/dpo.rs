//! `palm dpo`: Direct Preference Optimisation of a policy checkpoint on preference pairs or
//! rankings, against a frozen reference that is the same checkpoint.

use crate::dpo::{self, DpoRun, TrainSettings};
use crate::{Error, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct DpoArgs {
    /// The policy to train, usually an SFT checkpoint; it is also the frozen reference. Actor
    /// adapters it holds (a LoRA run of `palm dpo`) are merged in first.
    #[arg(long, required_unless_present = "resume")]
    pub policy: Option<PathBuf>,
    /// JSONL of pairs {"prompt","chosen","rejected"} and/or rankings {"prompt","responses":[best
    /// … worst]} (a ranking of K gives its K(K−1)/2 pairs; a pair's "margin" is not used by DPO);
    /// .gz is decompressed.
    #[arg(long, required_unless_present = "resume")]
    pub data: Option<PathBuf>,
    #[command(flatten)]
    pub tokenizer: crate::flags::TokenizerArg,
    /// Run folder: model.safetensors (loadable by `palm sample`), dpo_state.safetensors and
    /// metrics.jsonl.
    #[arg(long, default_value = "runs/dpo")]
    pub out: PathBuf,
    #[command(flatten)]
    pub folder: super::RunFolder,
    /// Continue the run in this folder (its saved settings apply) bit-exactly.
    /// Flags the run fixed (all but --device and --stop-at) are refused.
    #[arg(long, conflicts_with_all = ["policy", "data", "tokenizer", "out", "overwrite", "beta", "lora", "epochs", "batch", "seq_len", "val_frac", "val_every", "log_every", "seed"])]
    pub resume: Option<PathBuf>,
    /// Train LoRA adapters of this rank (scope `actor`, alpha = rank) in front of the frozen
    /// weights instead of all weights; sample the result with `palm sample --lora actor`.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub lora: Option<u64>,
    #[command(flatten)]
    pub train: TrainSettings,
    /// Longest sequence (prompt + response) in tokens: responses keep at most N − 1 (cut at the
    /// end), and the prompt loses its front until the longest response of its record fits.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(2..))]
    pub seq_len: u64,
    /// Fraction of the records held out (chosen with --seed) for validation; the pairs of one
    /// ranking stay on one side.
    #[arg(long, default_value_t = 0.1)]
    pub val_frac: f64,
    /// Seeds the held-out split, the adapters' initialisation and the pair order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub device: super::DeviceArg,
}

impl DpoArgs {
    /// The settings of a fresh run.
    fn settings(&self) -> Result<DpoRun> {
        let (Some(policy), Some(data)) = (&self.policy, &self.data) else {
            return Err(Error::Invalid(
                "--policy and --data are required (or --resume DIR)".into(),
            ));
        };
        Ok(DpoRun {
            policy: policy.clone(),
            data: data.clone(),
            lora: self.lora,
            seq_len: self.seq_len,
            val_frac: self.val_frac,
            seed: self.seed,
            tokenizer: self.tokenizer.clone(),
            train: self.train.clone(),
        })
    }
}

pub fn run(args: DpoArgs) -> Result<()> {
    let device = args.device.resolve()?;
    let begin = args
        .folder
        .begin(args.resume.as_deref(), &args.out, || args.settings())?;
    dpo::run(begin, device, args.folder.stop_at)
}
