//! palm-rlhf: training loops (pretraining, SFT, reward model, DPO, PPO, GRPO), labelers and the
//! `palm rank` interaction, data formats and the `palm` command-line interface.

pub mod chat;
pub mod commands;
pub mod corpus;
pub mod critic;
pub mod data;
pub mod demo;
pub mod dpo;
pub mod epochs;
pub mod error;
pub mod flags;
pub mod grpo;
pub mod labelers;
pub mod output;
pub mod plot;
pub mod ppo;
pub mod pretrain;
pub mod rank;
pub mod reward;
pub mod reward_train;
pub mod rl_math;
pub mod rl_run;
pub mod rollout;
pub mod run_dir;
pub mod sampling;
pub mod sft;
pub mod trainer;

pub use error::{Error, Result};
