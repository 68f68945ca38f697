//! `palm grpo`: Group Relative Policy Optimisation of a policy checkpoint (LoRA `actor` over the
//! frozen policy, which is also the reference) against a reward model or a scripted rule.

use super::rl::{self, RlArgs, RlCommand};
use crate::Result;
use crate::grpo::{Grpo, GrpoRun};
use crate::rl_run::ACTOR;

/// `palm grpo`'s arguments.
pub type GrpoArgs = RlArgs<Grpo>;

impl RlCommand for Grpo {
    const OUT: &'static str = "runs/grpo";

    fn describe(run: &GrpoRun) -> String {
        let (s, c) = (&run.settings, &run.core);
        format!(
            "GRPO of {} (LoRA rank {} '{ACTOR}', {:.2}M frozen parameters, β {}) against {}; {} prompts from {}; updates {}..{} of {} prompts × {} responses × {} epochs × {} minibatches",
            s.sources.policy.display(),
            s.actor.lora_rank,
            c.base.config.num_params() as f64 / 1e6,
            s.algo.beta,
            c.reward.describe(),
            c.prompts.len(),
            s.sources.prompts.display(),
            c.progress.update + 1,
            s.updates,
            s.algo.batch,
            s.algo.group,
            s.algo.epochs,
            s.algo.minibatches
        )
    }
}

pub fn run(args: GrpoArgs) -> Result<()> {
    rl::run(args)
}
