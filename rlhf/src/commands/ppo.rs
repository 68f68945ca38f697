//! `palm ppo`: PPO of a policy checkpoint (LoRA `actor` over the frozen policy, which is also the
//! reference) against a reward model or a scripted rule, with a LoRA `critic` and value head.

use crate::critic::Critic;
use crate::ppo::{KlEstimator, Ppo, PpoRun, PpoSettings, STATE_FORMAT};
use crate::rl_run::{self, ACTOR, Core, RlRun};
use crate::rollout::RewardSource;
use crate::run_dir::RunDir;
use crate::sampling::{Stop, parse_stop};
use crate::{Error, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct PpoArgs {
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
    #[arg(long, default_value = "runs/ppo")]
    pub out: PathBuf,
    /// Continue the run in this folder (its settings are reused; --updates may change).
    /// Flags the run fixed (all but --device, --updates and --stop-at) are refused.
    #[arg(long, conflicts_with_all = ["policy", "reward", "rule", "prompts", "out", "lora_rank", "batch", "max_new", "max_prompt", "eos", "temperature", "kl", "beta", "target_kl", "kl_horizon", "score_clip", "missing_eos_penalty", "gamma", "lam", "clip", "value_clip", "vf_coef", "ent_coef", "ppo_epochs", "minibatches", "lr", "weight_decay", "grad_clip", "sample_every", "ckpt_every", "seed", "overwrite"])]
    pub resume: Option<PathBuf>,
    #[command(flatten)]
    pub replace: super::Overwrite,
    /// Stop after this update as if interrupted (checkpointing first).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub stop_at: Option<u64>,
    /// Updates (rollout + PPO epochs) in all [default: 100; on --resume: the run's own].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub updates: Option<u64>,
    /// Rank of the actor's and the critic's LoRA adapters (alpha = rank).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    pub lora_rank: u64,
    /// Episodes (prompts) per update.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(2..))]
    pub batch: u64,
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
    /// Per-token KL estimator of the penalty.
    #[arg(long, value_enum, default_value_t = KlEstimator::K1)]
    pub kl: KlEstimator,
    /// KL coefficient β (the initial one with --target-kl).
    #[arg(long, default_value_t = 0.05)]
    pub beta: f32,
    /// Adapt β toward this KL per sequence (Ziegler et al.); fixed β without it.
    #[arg(long)]
    pub target_kl: Option<f32>,
    /// Horizon (episodes) of the adaptive β controller.
    #[arg(long, default_value_t = 10000.0)]
    pub kl_horizon: f32,
    /// Clip scores to ±this.
    #[arg(long)]
    pub score_clip: Option<f32>,
    /// Subtract this from the score of a response that hit --max-new without EOS.
    #[arg(long)]
    pub missing_eos_penalty: Option<f32>,
    /// Discount γ of the per-token rewards (GAE).
    #[arg(long, default_value_t = 1.0)]
    pub gamma: f32,
    /// GAE's λ: 1 is the Monte-Carlo return, 0 the one-step TD error.
    #[arg(long, default_value_t = 0.95)]
    pub lam: f32,
    /// Policy clip range ε.
    #[arg(long, default_value_t = 0.2)]
    pub clip: f32,
    /// Value clip range.
    #[arg(long, default_value_t = 0.2)]
    pub value_clip: f32,
    /// Weight of the value loss in the total loss.
    #[arg(long, default_value_t = 0.1)]
    pub vf_coef: f32,
    /// Weight of the entropy bonus.
    #[arg(long, default_value_t = 0.01)]
    pub ent_coef: f32,
    /// Passes over each rollout batch (at most 100: past a few, the clipped ratio stops learning).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub ppo_epochs: u64,
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
    /// Seeds the adapters, the value head, sampling and the minibatch order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub device: super::DeviceArg,
}

fn settings_of(a: &PpoArgs, policy: PathBuf, prompts: PathBuf) -> PpoSettings {
    PpoSettings {
        policy,
        reward: a.reward.clone(),
        rule: a.rule.clone(),
        prompts,
        max_prompt: a.max_prompt as usize,
        lora_rank: a.lora_rank as usize,
        updates: a.updates.unwrap_or(100),
        batch: a.batch as usize,
        max_new: a.max_new as usize,
        eos: a.eos.0,
        temperature: a.temperature,
        kl: a.kl,
        beta: a.beta,
        target_kl: a.target_kl,
        kl_horizon: a.kl_horizon,
        score_clip: a.score_clip,
        missing_eos_penalty: a.missing_eos_penalty,
        gamma: a.gamma,
        lam: a.lam,
        clip: a.clip,
        value_clip: a.value_clip,
        vf_coef: a.vf_coef,
        ent_coef: a.ent_coef,
        ppo_epochs: a.ppo_epochs,
        minibatches: a.minibatches as usize,
        lr: a.lr,
        weight_decay: a.weight_decay,
        grad_clip: a.grad_clip,
        sample_every: a.sample_every,
        ckpt_every: a.ckpt_every,
        seed: a.seed,
    }
}

fn parse_settings(v: &serde_json::Value) -> Result<PpoSettings> {
    serde_json::from_value(v.clone())
        .map_err(|e| Error::Invalid(format!("bad PPO settings in the run state: {e}")))
}

pub fn run(args: PpoArgs) -> Result<()> {
    let device = args.device.resolve()?;
    let mut run = start(&args, device)?;
    let (s, c) = (&run.algo.settings, &run.core);
    eprintln!(
        "PPO of {} (LoRA rank {} '{ACTOR}' + critic, {:.2}M frozen parameters) against {}; {} prompts from {}; updates {}..{} of {} episodes × {} epochs × {} minibatches",
        s.policy.display(),
        s.lora_rank,
        c.base.config.num_params() as f64 / 1e6,
        c.reward.describe(),
        c.prompts.len(),
        s.prompts.display(),
        c.progress.update + 1,
        s.updates,
        s.batch,
        s.ppo_epochs,
        s.minibatches
    );
    run.drive(args.stop_at)
}

/// A new run (or the one to resume) with everything on `device`, ready for
/// `RlRun::update` (the benchmark drives it update by update).
pub fn start(args: &PpoArgs, device: palm_engine::Device) -> Result<PpoRun> {
    let mut run = match &args.resume {
        Some(dir) => resume(dir, args, device)?,
        None => fresh(args, device)?,
    };
    run.move_to(device)?;
    Ok(run)
}

/// A new run: everything is read and checked before the run folder is created.
fn fresh(args: &PpoArgs, device: palm_engine::Device) -> Result<PpoRun> {
    let (Some(policy), Some(prompts_path)) = (&args.policy, &args.prompts) else {
        return Err(Error::Invalid(
            "--policy and --prompts are required (or --resume DIR)".into(),
        ));
    };
    let s = settings_of(args, policy.clone(), prompts_path.clone());
    s.check()?;
    let reward = RewardSource::load(s.reward.as_deref(), s.rule.as_deref())?;
    let prompts = rl_run::read_prompts(&s.prompts, s.max_prompt)?;
    let base = rl_run::load_policy(&s.policy)?;
    rl_run::check_memory(&base.config, &s.update_shape(), device)?;
    let run = RunDir::create(&args.out, &rl_run::RUN_FILES, args.replace.overwrite)?;
    PpoRun::new(s, base, reward, prompts, run)
}

/// Continue the run saved in `dir` with its own settings (`--updates` may change).
fn resume(dir: &std::path::Path, args: &PpoArgs, device: palm_engine::Device) -> Result<PpoRun> {
    let (run, ck) = rl_run::resume_checkpoint(
        dir,
        STATE_FORMAT,
        |v| parse_settings(v).map(|s| (s.lr, s.weight_decay)),
        |file, base| Critic::load(file, &base.config).map(Some),
    )?;
    let mut s = parse_settings(&ck.settings)?;
    if let Some(u) = args.updates {
        s.updates = u;
    }
    // A state edited by hand gets the checks the flags get.
    s.check()?;
    rl_run::check_memory(&ck.base.config, &s.update_shape(), device)?;
    let reward = RewardSource::load(s.reward.as_deref(), s.rule.as_deref())?;
    let prompts = rl_run::read_prompts(&s.prompts, s.max_prompt)?;
    let algo = Ppo {
        kl_ctl: s.kl_controller(ck.progress.beta)?,
        settings: s,
        gold: None,
    };
    Ok(RlRun {
        core: Core::resumed(ck, prompts, reward, run),
        algo,
    })
}
