//! palm-rlhf: training loops (pretraining, SFT, reward model; PPO, DPO, GRPO next), labelers,
//! data formats and the `palm` command-line interface.

pub mod commands;
pub mod corpus;
pub mod data;
pub mod error;
pub mod labelers;
pub mod reward;
pub mod reward_train;
pub mod trainer;

pub use error::{Error, Result};
