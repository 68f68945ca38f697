//! `palm rlhf-demo`: the whole RLHF pipeline in one command (see `crate::demo`), from a preset
//! with optional overrides.

use crate::demo::{self, DemoSettings, PRESETS};
use crate::labelers::Labeler;
use crate::sampling::{Stop, parse_stop};
use crate::{Error, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Sizes: quick (seconds; the test's), reduced (a few minutes on two CPU cores) or full (a
    /// bigger model, more prompts and updates). The flags below override single settings.
    #[arg(long, default_value = "reduced")]
    pub preset: String,
    /// Start from this checkpoint (e.g. from `palm train`) instead of pretraining one.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Output folder: pretrain/, reward/, prompts and rankings, the PPO run (model.safetensors,
    /// rl_state.safetensors, metrics.jsonl), curves.svg and summary.json.
    #[arg(long, default_value = "runs/rlhf-demo")]
    pub out: PathBuf,
    #[command(flatten)]
    pub replace: super::Overwrite,
    /// Seeds pretraining, the prompt split, sampling, the reward model and PPO.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The scripted human: afinn (sentiment), length:N or count:CHAR (see `palm label`).
    #[arg(long, default_value = "afinn", value_parser = parse_labeler)]
    pub labeler: Labeler,
    /// Pretraining steps (without --policy) [preset].
    #[arg(long)]
    pub pretrain_steps: Option<u64>,
    /// Training prompts (labelled, then used by PPO) [preset].
    #[arg(long)]
    pub prompts: Option<usize>,
    /// Held-out prompts of the before/after comparison [preset].
    #[arg(long)]
    pub held_out: Option<usize>,
    /// Responses sampled and ranked per training prompt (≥ 2) [preset].
    #[arg(long)]
    pub samples: Option<usize>,
    /// Longest response in bytes [preset].
    #[arg(long)]
    pub max_new: Option<usize>,
    /// A response ends at this byte: newline, none, or one ASCII character [preset: none; quick: .].
    #[arg(long, value_parser = parse_stop)]
    pub eos: Option<Stop>,
    /// Reward-model epochs [preset].
    #[arg(long)]
    pub rm_epochs: Option<u64>,
    /// PPO updates [preset].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub updates: Option<u64>,
    /// Episodes per PPO update [preset].
    #[arg(long)]
    pub batch: Option<usize>,
    /// PPO passes over each rollout batch [preset].
    #[arg(long)]
    pub ppo_epochs: Option<u64>,
    /// PPO learning rate of the LoRA actor and the critic [preset].
    #[arg(long)]
    pub lr: Option<f32>,
    /// KL coefficient β [preset].
    #[arg(long)]
    pub beta: Option<f32>,
    /// Samples per held-out prompt in the comparison [preset].
    #[arg(long)]
    pub eval_samples: Option<usize>,
    #[command(flatten)]
    pub device: super::DeviceArg,
}

fn parse_labeler(s: &str) -> std::result::Result<Labeler, String> {
    s.parse()
}

/// The preset with the given flags applied.
pub fn settings_of(a: &DemoArgs) -> Result<DemoSettings> {
    let mut s = DemoSettings::preset(&a.preset, a.out.clone()).ok_or_else(|| {
        Error::Invalid(format!(
            "unknown preset '{}' (expected one of {})",
            a.preset,
            PRESETS.join(", ")
        ))
    })?;
    s.policy = a.policy.clone();
    s.seed = a.seed;
    s.overwrite = a.replace.overwrite;
    s.labeler = a.labeler.clone();
    s.eos = a.eos.map_or(s.eos, |e| e.0);
    s.pretrain_steps = a.pretrain_steps.unwrap_or(s.pretrain_steps);
    s.train_prompts = a.prompts.unwrap_or(s.train_prompts);
    s.held_out_prompts = a.held_out.unwrap_or(s.held_out_prompts);
    s.samples = a.samples.unwrap_or(s.samples);
    s.max_new = a.max_new.unwrap_or(s.max_new);
    s.rm_epochs = a.rm_epochs.unwrap_or(s.rm_epochs);
    s.updates = a.updates.unwrap_or(s.updates);
    s.batch = a.batch.unwrap_or(s.batch);
    s.ppo_epochs = a.ppo_epochs.unwrap_or(s.ppo_epochs);
    s.lr = a.lr.unwrap_or(s.lr);
    s.beta = a.beta.unwrap_or(s.beta);
    s.eval_samples = a.eval_samples.unwrap_or(s.eval_samples);
    Ok(s)
}

pub fn run(args: DemoArgs) -> Result<()> {
    let device = args.device.resolve()?;
    let mut settings = settings_of(&args)?;
    settings.device = device;
    let summary = demo::run(&settings)?;
    for line in demo::report(&summary) {
        super::emit(line);
    }
    super::emit(format!(
        "curves: {}; summary: {}",
        settings.out.join(demo::CURVES_FILE).display(),
        settings.out.join(demo::SUMMARY_FILE).display()
    ));
    Ok(())
}
