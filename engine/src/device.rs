//! Where a tensor lives.

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    /// A CUDA device by ordinal.
    Cuda(usize),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// What a user asked for on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRequest {
    Cpu,
    Cuda,
    /// CUDA when usable, else the CPU with a one-line notice.
    Auto,
}

impl std::str::FromStr for DeviceRequest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(DeviceRequest::Cpu),
            "cuda" | "gpu" => Ok(DeviceRequest::Cuda),
            "auto" => Ok(DeviceRequest::Auto),
            other => Err(Error::Invalid(format!(
                "unknown device '{other}' (expected cpu, cuda or auto)"
            ))),
        }
    }
}

impl DeviceRequest {
    /// Resolve to a device. `Auto` follows `PALM_DEVICE` (cpu or cuda) when it is set, else
    /// takes the GPU when one is usable and falls back to the CPU with the reason as a notice.
    pub fn resolve(self) -> Result<(Device, Option<String>)> {
        if self == DeviceRequest::Auto
            && let Ok(v) = std::env::var("PALM_DEVICE")
        {
            return match v.trim().parse::<DeviceRequest>() {
                Ok(DeviceRequest::Auto) | Err(_) => Err(Error::Invalid(format!(
                    "PALM_DEVICE='{v}': expected cpu or cuda"
                ))),
                Ok(req) => req.resolve(),
            };
        }
        match self {
            DeviceRequest::Cpu => Ok((Device::Cpu, None)),
            DeviceRequest::Cuda => crate::cuda::check_available().map(|()| (Device::Cuda(0), None)),
            DeviceRequest::Auto => match crate::cuda::check_available() {
                Ok(()) => Ok((Device::Cuda(0), None)),
                Err(e) => Ok((Device::Cpu, Some(format!("{e}; using the CPU")))),
            },
        }
    }
}

impl Device {
    /// Bytes of memory a job on this device may use, if known: on the CPU the kernel's
    /// `MemAvailable` (free memory plus what it can reclaim), on a GPU what the driver reports
    /// free plus what our pool caches unused (another process's allocations count against it).
    pub fn memory_available(self) -> Option<u64> {
        match self {
            Device::Cpu => {
                let text = std::fs::read_to_string("/proc/meminfo").ok()?;
                let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
                let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
                let free = kib.checked_mul(1024)?;
                // Under an address-space limit (`ulimit -v`), what is left of it is the bound:
                // past it every allocation fails, however much memory the machine has free.
                Some(match address_space_left() {
                    Some(left) => free.min(left),
                    None => free,
                })
            }
            Device::Cuda(i) => crate::cuda::CudaDevice::get(i)
                .ok()
                .map(|d| d.memory_available() as u64),
        }
    }
}

/// Bytes this process may still map under its address-space limit (`ulimit -v`), if it has one:
/// the limit less what is mapped now.
fn address_space_left() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max address space"))?;
    // "Max address space   <soft>   <hard>   bytes"
    let soft: u64 = line
        .trim_start_matches("Max address space")
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let size = status.lines().find(|l| l.starts_with("VmSize:"))?;
    let kib: u64 = size.split_whitespace().nth(1)?.parse().ok()?;
    Some(soft.saturating_sub(kib.saturating_mul(1024)))
}
