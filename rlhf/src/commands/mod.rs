//! One module per CLI command: its clap arguments and what it does.

pub mod chat;
pub mod demo;
pub mod dpo;
pub mod eval;
pub mod grpo;
pub mod info;
pub mod label;
pub mod ppo;
pub mod rank;
pub mod reward;
pub mod rl;
pub mod sample;
pub mod sft;
pub mod tokenizer;
pub mod train;

use crate::Result;
use crate::run_dir::Begin;
use palm_engine::{Device, DeviceRequest};
use std::path::Path;

/// `--overwrite`, shared by the commands that write a run folder.
#[derive(clap::Args, Debug, Clone, Copy, Default)]
pub struct Overwrite {
    /// Replace the run already in --out (its model, training state and metrics) instead of
    /// refusing to start.
    #[arg(long)]
    pub overwrite: bool,
}

/// `--overwrite` and `--stop-at`, shared by the commands that checkpoint a run in a folder. (Each
/// keeps its own `--out` and `--resume`: their defaults, and the flags a resume refuses, differ.)
#[derive(clap::Args, Debug, Clone, Copy, Default)]
pub struct RunFolder {
    #[command(flatten)]
    pub replace: Overwrite,
    /// Stop after this step (update, in PPO and GRPO) as if interrupted (checkpointing first);
    /// continue with --resume.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub stop_at: Option<u64>,
}

impl RunFolder {
    /// How the run begins: the one saved in `resume`, or a new one in `out` with the settings
    /// `fresh` makes from the flags.
    pub fn begin<'a, S>(
        &self,
        resume: Option<&'a Path>,
        out: &'a Path,
        fresh: impl FnOnce() -> Result<S>,
    ) -> Result<Begin<'a, S>> {
        Ok(match resume {
            Some(dir) => Begin::Resume(dir),
            None => Begin::Fresh {
                settings: fresh()?,
                out,
                overwrite: self.replace.overwrite,
            },
        })
    }
}

/// How tokens are drawn, shared by `palm sample` and `palm chat`.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct Decoding {
    /// New tokens per sample or reply.
    #[arg(long, default_value_t = 200)]
    pub max_tokens: usize,
    /// Softmax temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Keep the k most likely tokens.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Keep the most likely tokens up to this probability mass.
    #[arg(long)]
    pub top_p: Option<f32>,
}

impl Decoding {
    /// The sampling settings (no end-of-sequence token: the command decides).
    pub fn settings(&self) -> palm_model::SampleSettings {
        palm_model::SampleSettings {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            max_tokens: self.max_tokens,
            eos: None,
        }
    }
}

/// `--device`, shared by every command that computes.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct DeviceArg {
    /// cpu, cuda or auto: the GPU when one is usable, else the CPU with a one-line notice
    /// (PALM_DEVICE=cpu|cuda decides for auto).
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    pub device: DeviceRequest,
}

fn parse_device(s: &str) -> std::result::Result<DeviceRequest, String> {
    s.parse().map_err(|e: palm_engine::Error| e.to_string())
}

impl DeviceArg {
    /// The device. When `auto` falls back to the CPU, the notice saying why is printed once the
    /// command starts its work (`crate::output`), not before its arguments are checked.
    pub fn resolve(&self) -> Result<Device> {
        let (device, notice) = self.device.resolve()?;
        if let Some(n) = notice {
            crate::output::notice(n);
        }
        Ok(device)
    }
}

pub use crate::output::emit;
