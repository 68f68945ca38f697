//! `palm reward train` and `palm reward score`: fit a reward model to rankings (or pairs) from a
//! policy checkpoint, and score responses with one.

use crate::reward::{Pooling, RewardModel};
use crate::reward_train::{self, MODEL_FILE, RewardRun, TrainSettings};
use crate::{Error, Result};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct RewardArgs {
    #[command(subcommand)]
    pub command: RewardCommand,
}

#[derive(Subcommand, Debug)]
pub enum RewardCommand {
    /// Train a reward model on rankings or pairs, starting from a policy checkpoint.
    Train(TrainArgs),
    /// Score responses to a prompt with a trained reward model.
    Score(ScoreArgs),
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Policy checkpoint whose trunk the reward model starts from (copied; the file is not changed).
    #[arg(long, required_unless_present = "resume")]
    pub checkpoint: Option<PathBuf>,
    /// JSONL of rankings {"prompt","responses":[best … worst]} and/or pairs
    /// {"prompt","chosen","rejected"[,"margin"]} (.gz is decompressed).
    #[arg(long, required_unless_present = "resume")]
    pub data: Option<PathBuf>,
    #[command(flatten)]
    pub tokenizer: crate::flags::TokenizerArg,
    /// Run folder: reward.safetensors and reward_state.safetensors (saved after every epoch)
    /// and metrics.jsonl.
    #[arg(long, default_value = "runs/reward")]
    pub out: PathBuf,
    #[command(flatten)]
    pub folder: super::RunFolder,
    /// Continue the run in this folder (its saved settings apply) bit-exactly.
    /// Flags the run fixed (all but --device and --stop-at) are refused.
    #[arg(long, conflicts_with_all = ["checkpoint", "data", "tokenizer", "out", "overwrite", "pooling", "lora", "lora_rank", "epochs", "batch", "seq_len", "val_frac", "seed"])]
    pub resume: Option<PathBuf>,
    /// Pool the final-LayerNorm output by its mean over the sequence (the seed) or take the
    /// last token (TRL).
    #[arg(long, value_enum, default_value_t = Pooling::Mean)]
    pub pooling: Pooling,
    /// Freeze the trunk and train LoRA adapters (scope `reward`) with the segment embeddings and
    /// the head.
    #[arg(long)]
    pub lora: bool,
    /// Rank of the LoRA adapters (with --lora).
    #[arg(long, default_value_t = 8, requires = "lora", value_parser = clap::value_parser!(u64).range(1..))]
    pub lora_rank: u64,
    #[command(flatten)]
    pub train: TrainSettings,
    /// Longest sequence (prompt + response) in tokens: responses keep at most N − 1 (cut at
    /// the end), and the prompt loses its front until the longest response fits.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(2..))]
    pub seq_len: u64,
    /// Fraction of the rankings held out (chosen with --seed) for the loss and pairwise accuracy
    /// reported after every epoch.
    #[arg(long, default_value_t = 0.1)]
    pub val_frac: f64,
    /// Seeds the held-out split, the head (and adapter) initialisation and the batch order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub device: super::DeviceArg,
}

#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// A reward model: reward.safetensors, or the run folder holding it.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The prompt the responses answer.
    #[arg(long)]
    pub prompt: String,
    /// A response to score; repeat for several. Prints one line per response, in order.
    #[arg(long, required = true)]
    pub response: Vec<String>,
    /// One JSON line per response: score, response.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub tokenizer: crate::flags::TokenizerArg,
    #[command(flatten)]
    pub device: super::DeviceArg,
}

pub fn run(args: RewardArgs) -> Result<()> {
    match args.command {
        RewardCommand::Train(a) => train(a),
        RewardCommand::Score(a) => score(a),
    }
}

impl TrainArgs {
    /// The settings of a fresh run.
    fn settings(&self) -> Result<RewardRun> {
        let (Some(checkpoint), Some(data)) = (&self.checkpoint, &self.data) else {
            return Err(Error::Invalid(
                "--checkpoint and --data are required (or --resume DIR)".into(),
            ));
        };
        Ok(RewardRun {
            checkpoint: checkpoint.clone(),
            data: data.clone(),
            pooling: self.pooling,
            lora: self.lora.then_some(self.lora_rank),
            seq_len: self.seq_len,
            val_frac: self.val_frac,
            seed: self.seed,
            tokenizer: self.tokenizer.clone(),
            train: self.train.clone(),
        })
    }
}

fn train(args: TrainArgs) -> Result<()> {
    let device = args.device.resolve()?;
    let begin = args
        .folder
        .begin(args.resume.as_deref(), &args.out, || args.settings())?;
    reward_train::run(begin, device, args.folder.stop_at)
}

/// A reward-model file, or the run folder that holds one.
fn model_path(p: &Path) -> PathBuf {
    if p.is_dir() {
        p.join(MODEL_FILE)
    } else {
        p.to_path_buf()
    }
}

fn score(args: ScoreArgs) -> Result<()> {
    let device = args.device.resolve()?;
    if args.prompt.is_empty() {
        return Err(Error::Invalid("--prompt must not be empty".into()));
    }
    let path = model_path(&args.checkpoint);
    let mut rm = RewardModel::load(&path)?;
    rm.trunk = args.tokenizer.apply(rm.trunk, &path)?;
    rm.move_to(device)?;
    let responses: Vec<&str> = args.response.iter().map(String::as_str).collect();
    let scores = rm.score_texts(&args.prompt, &responses)?;
    for (r, s) in responses.iter().zip(scores) {
        if args.json {
            super::emit(serde_json::json!({"score": s, "response": r}));
        } else {
            super::emit(format!("{s:>10.4}  {r:?}"));
        }
    }
    Ok(())
}
