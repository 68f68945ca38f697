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

/// Resolve `--device`, printing the one-line notice when `auto` falls back to the CPU.
pub fn resolve_device(s: &str) -> Result<Device> {
    let req: DeviceRequest = s.parse()?;
    let (device, notice) = req.resolve()?;
    if let Some(n) = notice {
        eprintln!("note: {n}");
    }
    Ok(device)
}

/// The optimiser flags every training command shares: a positive finite `--lr`, `--min-lr` in
/// [0, lr], a positive `--grad-clip`, a non-negative `--weight-decay`.
pub fn check_optim_flags(lr: f32, min_lr: f32, grad_clip: f32, weight_decay: f32) -> Result<()> {
    let bad = |m: &str| Err(crate::Error::Invalid(m.to_string()));
    if !(lr > 0.0 && lr.is_finite()) {
        return bad("--lr must be a positive number");
    }
    if !(min_lr >= 0.0 && min_lr <= lr) {
        return bad("--min-lr must be between 0 and --lr");
    }
    if !(grad_clip.is_finite() && grad_clip > 0.0) {
        return bad("--grad-clip must be positive");
    }
    if !(weight_decay.is_finite() && weight_decay >= 0.0) {
        return bad("--weight-decay must be ≥ 0");
    }
    Ok(())
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
