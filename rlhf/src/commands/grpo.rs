//! `palm grpo`: Group Relative Policy Optimisation of a policy checkpoint (LoRA `actor` over the
//! frozen policy, which is also the reference) against a reward model or a scripted rule.

use crate::grpo::{Grpo, GrpoRun, GrpoSettings, STATE_FORMAT};
use crate::rl_run::{self, ACTOR, Core, RlRun};
use crate::rollout::RewardSource;
use crate::run_dir::RunDir;
use crate::sampling::{Stop, parse_stop};
use crate::trainer::positive;
use crate::{Error, Result};
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct GrpoArgs {
    /// The policy to train, usually an SFT checkpoint; it is also the frozen reference (its
    /// `actor` adapters, if any, are merged in first).
    #[arg(long, required_unless_present = "resume")]
    pub policy: Option<PathBuf>,
    /// A reward model from `palm reward train`.
    #[arg(long, conflicts_with = "rule")]
    pub reward: Option<PathBuf>,
    /// A scripted reward instead of a model: afinn, length:N or count:CHAR (see `palm label`).
    #[arg(long)]
    pub rule: Option<String>,
    /// JSONL of {"prompt"} (.gz is decompressed), taken in order, cyclically.
    #[arg(long, required_unless_present = "resume")]
    pub prompts: Option<PathBuf>,
    /// Run folder: model.safetensors (`palm sample --lora actor`), rl_state.safetensors, metrics.jsonl.
    #[arg(long, default_value = "runs/grpo")]
    pub out: PathBuf,
    /// Continue the run in this folder (its settings are reused; --updates may change).
    /// Flags the run fixed (all but --device, --updates and --stop-at) are refused.
    #[arg(long, conflicts_with_all = ["policy", "reward", "rule", "prompts", "out", "lora_rank", "batch", "group", "max_new", "max_prompt", "eos", "temperature", "beta", "clip", "epochs", "minibatches", "lr", "weight_decay", "grad_clip", "sample_every", "ckpt_every", "seed", "overwrite"])]
    pub resume: Option<PathBuf>,
    #[command(flatten)]
    pub replace: super::Overwrite,
    /// Stop after this update as if interrupted (checkpointing first).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub stop_at: Option<u64>,
    /// Updates in all [default: 100; on --resume: the run's own].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub updates: Option<u64>,
    /// Rank of the actor's LoRA adapters (alpha = rank).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    pub lora_rank: u64,
    /// Prompts per update.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: u64,
    /// Responses sampled per prompt, G.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(2..))]
    pub group: u64,
    /// Longest response in tokens (bytes).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_new: u64,
    /// Keep the last N tokens of longer prompts.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_prompt: u64,
    /// A response ends at this byte (trained on, not shown to the reward): newline, none, or one
    /// ASCII character.
    #[arg(long, default_value = "newline", value_parser = parse_stop)]
    pub eos: Stop,
    /// Sampling temperature (log-probs are taken at the same temperature).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Weight of the k3 KL to the reference in the loss; 0 = none (the KL is still logged).
    #[arg(long, default_value_t = 0.04)]
    pub beta: f32,
    /// Ratio clip range ε.
    #[arg(long, default_value_t = 0.2)]
    pub clip: f32,
    /// Passes over each update's episodes (at most 100).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub epochs: u64,
    /// Minibatches (AdamW steps) per pass.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub minibatches: u64,
    /// Learning rate (constant).
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f32,
    /// AdamW weight decay (matrices only).
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    /// Clip the global gradient norm to this.
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f32,
    /// Print sampled completions every N updates (and at the end); 0 = only at the end.
    #[arg(long, default_value_t = 10)]
    pub sample_every: u64,
    /// Checkpoint every N updates (and at the end); 0 = only at the end.
    #[arg(long, default_value_t = 10)]
    pub ckpt_every: u64,
    /// Seeds the adapters, sampling and the minibatch order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub device: super::DeviceArg,
}

fn check(s: &GrpoSettings) -> Result<()> {
    positive("--temperature", s.temperature)?;
    positive("--lr", s.lr)?;
    positive("--grad-clip", s.grad_clip)?;
    positive("--clip", s.clip)?;
    for (name, x) in [("--beta", s.beta), ("--weight-decay", s.weight_decay)] {
        if !(x >= 0.0 && x.is_finite()) {
            return Err(Error::Invalid(format!("{name} must be ≥ 0, got {x}")));
        }
    }
    if s.minibatches > s.batch.saturating_mul(s.group) {
        return Err(Error::Invalid(format!(
            "--minibatches {} is more than the {} episodes of an update",
            s.minibatches,
            s.batch.saturating_mul(s.group)
        )));
    }
    Ok(())
}

fn settings_of(a: &GrpoArgs, policy: PathBuf, prompts: PathBuf) -> GrpoSettings {
    GrpoSettings {
        policy,
        reward: a.reward.clone(),
        rule: a.rule.clone(),
        prompts,
        max_prompt: a.max_prompt as usize,
        lora_rank: a.lora_rank as usize,
        updates: a.updates.unwrap_or(100),
        batch: a.batch as usize,
        group: a.group as usize,
        max_new: a.max_new as usize,
        eos: a.eos.0,
        temperature: a.temperature,
        beta: a.beta,
        clip: a.clip,
        epochs: a.epochs,
        minibatches: a.minibatches as usize,
        lr: a.lr,
        weight_decay: a.weight_decay,
        grad_clip: a.grad_clip,
        sample_every: a.sample_every,
        ckpt_every: a.ckpt_every,
        seed: a.seed,
    }
}

fn parse_settings(v: &serde_json::Value) -> Result<GrpoSettings> {
    serde_json::from_value(v.clone())
        .map_err(|e| Error::Invalid(format!("bad GRPO settings in the run state: {e}")))
}

pub fn run(args: GrpoArgs) -> Result<()> {
    let device = args.device.resolve()?;
    let mut run = match &args.resume {
        Some(dir) => resume(dir, &args, device)?,
        None => fresh(&args, device)?,
    };
    run.move_to(device)?;
    let (s, c) = (&run.algo.settings, &run.core);
    eprintln!(
        "GRPO of {} (LoRA rank {} '{ACTOR}', {:.2}M frozen parameters, β {}) against {}; {} prompts from {}; updates {}..{} of {} prompts × {} responses × {} epochs × {} minibatches",
        s.policy.display(),
        s.lora_rank,
        c.base.config.num_params() as f64 / 1e6,
        s.beta,
        c.reward.describe(),
        c.prompts.len(),
        s.prompts.display(),
        c.progress.update + 1,
        s.updates,
        s.batch,
        s.group,
        s.epochs,
        s.minibatches
    );
    run.drive(args.stop_at)
}

/// A new run: everything is read and checked before the run folder is created.
fn fresh(args: &GrpoArgs, device: palm_engine::Device) -> Result<GrpoRun> {
    let (Some(policy), Some(prompts_path)) = (&args.policy, &args.prompts) else {
        return Err(Error::Invalid(
            "--policy and --prompts are required (or --resume DIR)".into(),
        ));
    };
    let s = settings_of(args, policy.clone(), prompts_path.clone());
    check(&s)?;
    let reward = RewardSource::load(s.reward.as_deref(), s.rule.as_deref())?;
    let prompts = rl_run::read_prompts(&s.prompts, s.max_prompt)?;
    let base = rl_run::load_policy(&s.policy)?;
    rl_run::check_memory(&base.config, &s.update_shape(), device)?;
    let run = RunDir::create(&args.out, &rl_run::RUN_FILES, args.replace.overwrite)?;
    GrpoRun::new(s, base, reward, prompts, run)
}

/// Continue the run saved in `dir` with its own settings (`--updates` may change).
fn resume(dir: &Path, args: &GrpoArgs, device: palm_engine::Device) -> Result<GrpoRun> {
    let (run, ck) = rl_run::resume_checkpoint(
        dir,
        STATE_FORMAT,
        |v| parse_settings(v).map(|s| (s.lr, s.weight_decay)),
        |_, _| Ok(None),
    )?;
    let mut s = parse_settings(&ck.settings)?;
    if let Some(u) = args.updates {
        s.updates = u;
    }
    // A state edited by hand gets the checks the flags get.
    check(&s)?;
    rl_run::check_memory(&ck.base.config, &s.update_shape(), device)?;
    let reward = RewardSource::load(s.reward.as_deref(), s.rule.as_deref())?;
    let prompts = rl_run::read_prompts(&s.prompts, s.max_prompt)?;
    Ok(RlRun {
        core: Core::resumed(ck, prompts, reward, run),
        algo: Grpo { settings: s },
    })
}
