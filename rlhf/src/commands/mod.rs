//! One module per CLI command: its clap arguments and what it does.

pub mod eval;
pub mod info;
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
