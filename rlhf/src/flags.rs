//! Flag groups several commands share, whose types are the library's settings: each derives
//! clap's `Args` (a command flattens it into its arguments) and serde (a run flattens it into
//! the settings its state saves, so the saved JSON stays one flat object). A command parses them
//! and hands them on; nothing copies them field by field.
//!
//! A run fixes these settings and a resumed run keeps its own, so each group conflicts with the
//! `--resume` of the command that flattens it (every such command has one): the groups refuse
//! it themselves, and a command's `--resume` names only its loose flags.

use crate::sampling::{Stop, parse_stop};
use crate::{Error, Result};
use clap::builder::RangedU64ValueParser;
use palm_engine::AdamWConfig;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A count flag of at least `min` (a `usize`, as the library uses it; the range is clap's
/// usual one, so the messages are those of a `u64` flag).
pub fn at_least(min: u64) -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::new().range(min..)
}

/// Where an RL run (`palm ppo`, `palm grpo`) gets its policy, its reward and its prompts.
///
/// `--policy` and `--prompts` are required unless `--resume` is given (the run has them): a
/// command flattens this group as an `Option`, `None` on a resume.
#[derive(clap::Args, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[group(id = "sources", conflicts_with = "resume")]
pub struct Sources {
    /// The policy to train, usually an SFT checkpoint; it is also the frozen reference (its
    /// `actor` adapters, if any, are merged in first).
    #[arg(long, required = false, required_unless_present = "resume")]
    pub policy: PathBuf,
    /// A reward model from `palm reward train`.
    #[arg(long, conflicts_with = "rule")]
    pub reward: Option<PathBuf>,
    /// A scripted reward instead of a model: afinn, length:N or count:CHAR (see `palm label`).
    #[arg(long)]
    pub rule: Option<String>,
    /// JSONL of {"prompt"} (.gz is decompressed), taken in order, cyclically.
    #[arg(long, required = false, required_unless_present = "resume")]
    pub prompts: PathBuf,
}

/// The trained policy of an RL run: the rank of its adapters and how it samples responses.
#[derive(clap::Args, Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[group(id = "actor", conflicts_with = "resume")]
pub struct Actor {
    /// Rank of the LoRA adapters (the actor's, and PPO's critic's; alpha = rank).
    #[arg(long, default_value_t = 8, value_parser = at_least(1))]
    pub lora_rank: usize,
    /// Longest response in tokens (bytes).
    #[arg(long, default_value_t = 64, value_parser = at_least(1))]
    pub max_new: usize,
    /// Keep the last N tokens of longer prompts.
    #[arg(long, default_value_t = 256, value_parser = at_least(1))]
    pub max_prompt: usize,
    /// A response ends at this byte (trained on, not shown to the reward): newline, none, or one
    /// ASCII character.
    #[arg(long, default_value = "newline", value_parser = parse_stop)]
    pub eos: Stop,
    /// Sampling temperature (log-probs are taken at the same temperature).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
}

impl Actor {
    pub fn check(&self) -> Result<()> {
        positive("--temperature", self.temperature)
    }

    pub fn sampling(&self) -> crate::rollout::Sampling {
        crate::rollout::Sampling {
            temperature: self.temperature,
            max_new: self.max_new,
            eos: self.eos.0,
        }
    }
}

/// AdamW at a constant learning rate: the optimiser of `palm ppo` and `palm grpo`.
#[derive(clap::Args, Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[group(id = "optim", conflicts_with = "resume")]
pub struct Optim {
    /// Learning rate (constant).
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f32,
    /// AdamW weight decay (matrices only).
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    /// Clip the global gradient norm to this.
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f32,
}

impl Optim {
    pub fn check(&self) -> Result<()> {
        positive("--lr", self.lr)?;
        positive("--grad-clip", self.grad_clip)?;
        non_negative("--weight-decay", self.weight_decay)
    }

    pub fn adam(&self) -> AdamWConfig {
        AdamWConfig::new(self.lr, self.weight_decay)
    }
}

/// When an RL run prints samples and checkpoints, and its seed.
#[derive(clap::Args, Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[group(id = "schedule", conflicts_with = "resume")]
pub struct RlSchedule {
    /// Print sampled completions every N updates (and at the end); 0 = only at the end.
    #[arg(long, default_value_t = 10)]
    pub sample_every: u64,
    /// Checkpoint every N updates (and at the end); 0 = only at the end.
    #[arg(long, default_value_t = 10)]
    pub ckpt_every: u64,
    /// Seeds the adapters (and PPO's value head), sampling and the minibatch order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// A flag that must be a positive finite number.
pub fn positive(name: &str, x: f32) -> Result<()> {
    if x > 0.0 && x.is_finite() {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{name} must be a positive number, got {x}"
        )))
    }
}

/// A flag that must be a finite number ≥ 0.
pub fn non_negative(name: &str, x: f32) -> Result<()> {
    if x >= 0.0 && x.is_finite() {
        Ok(())
    } else {
        Err(Error::Invalid(format!("{name} must be ≥ 0, got {x}")))
    }
}

/// A flag group with every flag at its default: what a command gets when none is given (the
/// demo runs PPO with `palm ppo`'s defaults for what it does not choose).
pub fn defaults<T: clap::Args>() -> Result<T> {
    // With the --resume the groups refuse (see the module's comment).
    let resume = clap::Arg::new("resume").long("resume");
    let cmd = T::augment_args(clap::Command::new("defaults").arg(resume));
    cmd.try_get_matches_from(["defaults"])
        .and_then(|mut m| T::from_arg_matches_mut(&mut m))
        .map_err(|e| Error::Invalid(format!("no defaults for a flag group: {e}")))
}
