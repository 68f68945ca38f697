//! One module per CLI command: its clap arguments and what it does.

pub mod demo;
pub mod dpo;
pub mod eval;
pub mod grpo;
pub mod info;
pub mod label;
pub mod ppo;
pub mod rank;
pub mod reward;
pub mod sample;
pub mod sft;
pub mod train;

use crate::Result;
use palm_engine::{Device, DeviceRequest};

/// `--overwrite`, shared by the commands that write a run folder.
#[derive(clap::Args, Debug, Clone, Copy, Default)]
pub struct Overwrite {
    /// Replace the run already in --out (its model, training state and metrics) instead of
    /// refusing to start.
    #[arg(long)]
    pub overwrite: bool,
}

/// Resolve `--device`, printing the one-line notice when `auto` falls back to the CPU.
pub fn resolve_device(s: &str) -> Result<Device> {
    let req: DeviceRequest = s.parse()?;
    let (device, notice) = req.resolve()?;
    if let Some(n) = notice {
        eprintln!("note: {n}");
    }
    Ok(device)
}

/// Print one line to stdout. A closed pipe (`palm info … | head`) ends the program quietly, as
/// command-line tools do, instead of panicking.
pub fn emit(line: impl std::fmt::Display) {
    use std::io::Write;
    if let Err(e) = writeln!(std::io::stdout().lock(), "{line}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}
