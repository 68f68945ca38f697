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
use palm_engine::{AdamWConfig, lr_at};
use serde::{Deserialize, Serialize};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

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
    /// A tokenizer.json for a policy checkpoint that carries none (see `palm sample --help`);
    /// a policy made with one carries it. (Not the shared `TokenizerArg` group: a group inside
    /// this optional one hides whether --policy was given.)
    #[arg(long, value_name = "FILE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<PathBuf>,
}

/// The trained policy of an RL run: the rank of its adapters and how it samples responses.
#[derive(clap::Args, Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[group(id = "actor", conflicts_with = "resume")]
pub struct Actor {
    /// Rank of the LoRA adapters (the actor's, and PPO's critic's; alpha = rank).
    #[arg(long, default_value_t = 8, value_parser = at_least(1))]
    pub lora_rank: usize,
    /// Longest response in tokens.
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

    /// How a policy reading text through `tokenizer` samples its responses.
    pub fn sampling(&self, tokenizer: &palm_model::Tokenizer) -> Result<crate::rollout::Sampling> {
        Ok(crate::rollout::Sampling {
            temperature: self.temperature,
            max_new: self.max_new,
            eos: self.eos.id(tokenizer)?,
        })
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

/// The defaults of a command's [`Cosine`] flags, written as the flags would be (clap parses them
/// as it parses a given value, and shows them in --help), on a marker type (the traits it needs
/// are those the settings that hold it derive).
///
/// Text rather than typed constants with clap's `default_value_t`: that caches the default's
/// text in one static for every instantiation, so every command would get the first one's.
pub trait CosineDefaults: Clone + Copy + std::fmt::Debug + PartialEq + Send + Sync {
    const LR: &'static str;
    const MIN_LR: &'static str;
    const WARMUP: &'static str;
    const WEIGHT_DECAY: &'static str;
    const GRAD_CLIP: &'static str;
}

/// AdamW with linear warmup and cosine decay: the optimiser of `palm train`, `sft`, `reward
/// train` and `dpo`.
///
/// The flags, their help and their checks are the same in the four commands but their defaults
/// are not (pretraining starts at --lr 2e-3, DPO at 1e-4), so the defaults are a type parameter:
/// `D`, a marker type of each command, gives them to clap (see [`CosineDefaults`]). That keeps
/// the flags in one place and each command's defaults in one place, typed into the command's
/// settings, rather than one copy of the flags per command or defaults patched onto the
/// arguments by name at run time. `D` is zero-sized and serde skips it, so the saved settings are
/// the same JSON whatever the marker; the settings that hold a `Cosine` name their command's
/// marker (`reward_train::TrainSettings` holds a `Cosine<RewardDefaults>`).
#[derive(clap::Args, Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(bound = "")]
#[group(id = "optim", conflicts_with = "resume")]
pub struct Cosine<D: CosineDefaults> {
    /// Peak learning rate.
    #[arg(long, default_value = D::LR)]
    pub lr: f32,
    /// Final learning rate of the cosine schedule.
    #[arg(long, default_value = D::MIN_LR)]
    pub min_lr: f32,
    /// Linear warmup steps.
    #[arg(long, default_value = D::WARMUP)]
    pub warmup: u64,
    /// AdamW weight decay (matrices only).
    #[arg(long, default_value = D::WEIGHT_DECAY)]
    pub weight_decay: f32,
    /// Clip the global gradient norm to this.
    #[arg(long, default_value = D::GRAD_CLIP)]
    pub grad_clip: f32,
    #[arg(skip)]
    #[serde(skip)]
    defaults: PhantomData<D>,
}

impl<D: CosineDefaults> Cosine<D> {
    pub fn new(lr: f32, min_lr: f32, warmup: u64, weight_decay: f32, grad_clip: f32) -> Self {
        Cosine {
            lr,
            min_lr,
            warmup,
            weight_decay,
            grad_clip,
            defaults: PhantomData,
        }
    }

    /// A positive finite `--lr`, `--min-lr` in [0, lr], a positive `--grad-clip` and a
    /// `--weight-decay` ≥ 0; also applied to settings read back from a state (a hand-edited
    /// negative learning rate is refused there too).
    pub fn check(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Invalid(m.to_string()));
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("--lr must be a positive number");
        }
        if !(self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return bad("--min-lr must be between 0 and --lr");
        }
        if !(self.grad_clip.is_finite() && self.grad_clip > 0.0) {
            return bad("--grad-clip must be positive");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("--weight-decay must be ≥ 0");
        }
        Ok(())
    }

    pub fn adam(&self) -> AdamWConfig {
        AdamWConfig::new(self.lr, self.weight_decay)
    }

    /// The learning rate of step `step` (from 0) of `total`.
    pub fn lr_at(&self, step: u64, total: u64) -> f32 {
        lr_at(step, self.warmup, total, self.lr, self.min_lr)
    }
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

/// `--tokenizer`, shared by every command that reads or writes text (and saved with the runs
/// that can resume, absent when not given).
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenizerArg {
    /// A tokenizer.json (byte-level BPE, from `palm tokenizer train` or GPT-2-style). A model
    /// trained with one carries it in its checkpoint, so this is only needed to train a new
    /// model with it, or to give one to a checkpoint that has none (the seed's); one that
    /// differs from the checkpoint's is refused. Default: bytes.
    #[arg(long, value_name = "FILE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<PathBuf>,
}

impl TokenizerArg {
    /// The tokenizer for a new model: the file's, else bytes.
    pub fn for_new_model(&self) -> Result<palm_model::Tokenizer> {
        Ok(match &self.tokenizer {
            Some(p) => palm_model::Tokenizer::load(p)?,
            None => palm_model::Tokenizer::bytes(),
        })
    }

    /// `params` (loaded from `checkpoint`) with the tokenizer this flag asks for, see
    /// [`with_tokenizer`].
    pub fn apply(
        &self,
        params: palm_model::PalmParams,
        checkpoint: &Path,
    ) -> Result<palm_model::PalmParams> {
        with_tokenizer(self.tokenizer.as_deref(), params, checkpoint)
    }
}

/// `params` (loaded from `checkpoint`) reading text through `tokenizer` when one is given: the
/// checkpoint's own tokenizer when it is absent; the file's when the checkpoint has none (and
/// every id fits its vocabulary); an error when both are given and differ.
pub fn with_tokenizer(
    tokenizer: Option<&Path>,
    params: palm_model::PalmParams,
    checkpoint: &Path,
) -> Result<palm_model::PalmParams> {
    let Some(path) = tokenizer else {
        return Ok(params);
    };
    let given = palm_model::Tokenizer::load(path)?;
    if params.tokenizer.is_bytes() {
        let model = format!("{}'s model", checkpoint.display());
        given.check_fits(params.config.num_tokens, &model)?;
        return Ok(params.with_tokenizer(given)?);
    }
    if given != params.tokenizer {
        return Err(Error::Invalid(format!(
            "--tokenizer {}: {} was trained with a different tokenizer ({}), which it carries; \
             leave out --tokenizer",
            path.display(),
            checkpoint.display(),
            params.tokenizer.describe()
        )));
    }
    Ok(params)
}
