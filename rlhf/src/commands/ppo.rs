//! `palm ppo`: PPO of a policy checkpoint (LoRA `actor` over the frozen policy, which is also the
//! reference) against a reward model or a scripted rule, with a LoRA `critic` and value head.

use super::rl::{self, RlArgs, RlCommand};
use crate::Result;
use crate::ppo::{Ppo, PpoRun};
use crate::rl_run::ACTOR;

/// `palm ppo`'s arguments.
pub type PpoArgs = RlArgs<Ppo>;

impl RlCommand for Ppo {
    const OUT: &'static str = "runs/ppo";

    fn describe(run: &PpoRun) -> String {
        let (s, c) = (&run.settings, &run.core);
        format!(
            "PPO of {} (LoRA rank {} '{ACTOR}' + critic, {:.2}M frozen parameters) against {}; {} prompts from {}; updates {}..{} of {} episodes × {} epochs × {} minibatches",
            s.sources.policy.display(),
            s.actor.lora_rank,
            c.base.config.num_params() as f64 / 1e6,
            c.reward.describe(),
            c.prompts.len(),
            s.sources.prompts.display(),
            c.progress.update + 1,
            s.updates,
            s.algo.batch,
            s.algo.ppo_epochs,
            s.algo.minibatches
        )
    }
}

pub fn run(args: PpoArgs) -> Result<()> {
    rl::run(args)
}

/// A new run (or the one to resume) with everything on `device`, ready for
/// `RlRun::update` (the benchmark drives it update by update).
pub fn start(args: &PpoArgs, device: palm_engine::Device) -> Result<PpoRun> {
    rl::start(args, device)
}
