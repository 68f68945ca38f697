//! What `palm ppo` and `palm grpo` share: their arguments (the library's flag groups, each
//! flattened, and the algorithm's own) and starting or resuming the run.

use super::{DeviceArg, RunFolder};
use crate::flags::{Actor, Optim, RlSchedule, Sources};
use crate::rl_run::{ACTOR, Algorithm, RlRun, RlSettings};
use crate::{Error, Result};
use clap::Args;
use palm_engine::Device;
use std::path::PathBuf;

/// The updates of a fresh run without --updates.
const DEFAULT_UPDATES: u64 = 100;

/// What a command adds to its algorithm: the run folder's default and its words in the line the
/// run starts with.
pub trait RlCommand: Algorithm {
    /// The default --out.
    const OUT: &'static str;
    fn words(s: &RlSettings<Self::Flags>) -> Words;
}

/// An algorithm's words in its run's start line: "PPO of <policy> (LoRA rank 8 'actor' + critic,
/// 0.50M frozen parameters) against <reward>; 3 prompts from <file>; updates 1..100 of 16
/// episodes × 4 epochs × 1 minibatches".
pub struct Words {
    pub name: &'static str,
    /// After the actor's adapters: what trains besides them.
    pub beside: &'static str,
    /// After the frozen parameters.
    pub note: String,
    /// One update's size.
    pub update: String,
}

/// The line a run starts with.
fn start_line<A: RlCommand>(run: &RlRun<A>) -> String {
    let (s, c) = (&run.settings, &run.core);
    let w = A::words(s);
    format!(
        "{} of {} (LoRA rank {} '{ACTOR}'{}, {:.2}M frozen parameters{}) against {}; {} prompts from {}; updates {}..{} of {}",
        w.name,
        s.sources.policy.display(),
        s.actor.lora_rank,
        w.beside,
        c.base.config.num_params() as f64 / 1e6,
        w.note,
        c.reward.describe(),
        c.prompts.len(),
        s.sources.prompts.display(),
        c.progress.update + 1,
        s.updates,
        w.update
    )
}

/// The arguments of `palm ppo` and `palm grpo`: the flag groups every RL run has, the
/// algorithm's own (`A::Flags`), and the run folder's.
#[derive(Args)]
pub struct RlArgs<A: RlCommand> {
    #[command(flatten)]
    pub sources: Option<Sources>,
    /// Run folder: model.safetensors (`palm sample --lora actor`), rl_state.safetensors, metrics.jsonl.
    #[arg(long, default_value = A::OUT)]
    pub out: PathBuf,
    /// Continue the run in this folder (its settings are reused; --updates may change).
    /// Flags the run fixed (all but --device, --updates and --stop-at) are refused.
    #[arg(long, conflicts_with_all = ["out", "overwrite", "tokenizer"])]
    pub resume: Option<PathBuf>,
    #[command(flatten)]
    pub folder: RunFolder,
    /// Updates (rollout and training passes) in all [default: 100; on --resume: the run's own].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub updates: Option<u64>,
    #[command(flatten)]
    pub actor: Actor,
    #[command(flatten)]
    pub algo: A::Flags,
    #[command(flatten)]
    pub optim: Optim,
    #[command(flatten)]
    pub schedule: RlSchedule,
    #[command(flatten)]
    pub device: DeviceArg,
}

pub fn run<A: RlCommand>(args: RlArgs<A>) -> Result<()> {
    let device = args.device.resolve()?;
    let mut run = start(&args, device)?;
    crate::output::say(start_line(&run));
    run.drive(args.folder.stop_at)
}

/// A new run (or the one to resume) with everything on `device`, ready for `RlRun::update`.
pub fn start<A: RlCommand>(args: &RlArgs<A>, device: Device) -> Result<RlRun<A>> {
    let mut run = match (&args.resume, &args.sources) {
        (Some(dir), _) => RlRun::resume(dir, args.updates, device)?,
        (None, Some(sources)) => {
            let settings = RlSettings {
                sources: sources.clone(),
                updates: args.updates.unwrap_or(DEFAULT_UPDATES),
                actor: args.actor,
                algo: args.algo.clone(),
                optim: args.optim,
                schedule: args.schedule,
            };
            RlRun::start(settings, &args.out, args.folder.replace.overwrite, device)?
        }
        (None, None) => {
            return Err(Error::Invalid(
                "--policy and --prompts are required (or --resume DIR)".into(),
            ));
        }
    };
    run.move_to(device)?;
    Ok(run)
}
