//! `palm ppo`: PPO of a policy checkpoint (LoRA `actor` over the frozen policy, which is also the
//! reference) against a reward model or a scripted rule, with a LoRA `critic` and value head.

use super::rl::{self, RlArgs, RlCommand, Words};
use crate::Result;
use crate::ppo::{Ppo, PpoRun, PpoSettings};

/// `palm ppo`'s arguments.
pub type PpoArgs = RlArgs<Ppo>;

impl RlCommand for Ppo {
    const OUT: &'static str = "runs/ppo";

    fn words(s: &PpoSettings) -> Words {
        Words {
            name: "PPO",
            beside: " + critic",
            note: String::new(),
            update: format!(
                "{} episodes × {} epochs × {} minibatches",
                s.algo.batch, s.algo.ppo_epochs, s.algo.minibatches
            ),
        }
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
