//! What `palm ppo` and `palm grpo` share: their arguments (the library's flag groups, each
//! flattened, and the algorithm's own) and starting or resuming the run.

use super::{DeviceArg, RunFolder};
use crate::flags::{Actor, Optim, RlSchedule, Sources};
use crate::rl_run::{Algorithm, RlRun, RlSettings};
use crate::{Error, Result};
use clap::Args;
use palm_engine::Device;
use std::path::PathBuf;

/// The updates of a fresh run without --updates.
const DEFAULT_UPDATES: u64 = 100;

/// What a command adds to its algorithm: the run folder's default and the line it starts with.
pub trait RlCommand: Algorithm {
    /// The default --out.
    const OUT: &'static str;
    /// What the run is, printed when it starts.
    fn describe(run: &RlRun<Self>) -> String;
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
    #[arg(long, conflicts_with_all = ["out", "overwrite"])]
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
    eprintln!("{}", A::describe(&run));
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
