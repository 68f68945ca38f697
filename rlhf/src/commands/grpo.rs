//! `palm grpo`: Group Relative Policy Optimisation of a policy checkpoint (LoRA `actor` over the
//! frozen policy, which is also the reference) against a reward model or a scripted rule.

use super::rl::{self, RlArgs, RlCommand, Words};
use crate::Result;
use crate::grpo::{Grpo, GrpoSettings};

/// `palm grpo`'s arguments.
pub type GrpoArgs = RlArgs<Grpo>;

impl RlCommand for Grpo {
    const OUT: &'static str = "runs/grpo";

    fn words(s: &GrpoSettings) -> Words {
        let g = &s.algo;
        Words {
            name: "GRPO",
            beside: "",
            note: format!(", β {}", g.beta),
            update: format!(
                "{} prompts × {} responses × {} epochs × {} minibatches",
                g.batch, g.group, g.epochs, g.minibatches
            ),
        }
    }
}

pub fn run(args: GrpoArgs) -> Result<()> {
    rl::run(args)
}
