//! palm-rlhf: training loops (pretraining now; SFT, reward model, PPO, DPO, GRPO next), data
//! formats and the `palm` command-line interface.

pub mod commands;
pub mod corpus;
pub mod data;
pub mod error;
pub mod reward;
pub mod trainer;

pub use error::{Error, Result};
