//! The CUDA backend. Its groundwork is here — GPU discovery ([`probe`]), the device with its
//! context, stream, lazily loaded kernel modules and launch helper ([`CudaDevice`]), and the
//! caching memory pool ([`pool`]) — but it is not wired into the tensor ops yet: every tensor op
//! on CUDA still returns a clear error, so the device-agnostic API already has its CUDA arm and
//! model code will not change when it lands.

mod device;
pub mod launch;
pub mod pool;
mod probe;

pub use device::{
    CudaAllocator, CudaBuffer, CudaDevice, GpuTimer, Kernel, gpu_or_skip, gpu_or_skip_with,
    gpu_required,
};
pub use launch::{KArg, LaunchCfg, Param};
pub use pool::{DeviceAllocator, MemoryPool, PoolBlock, PoolStats};
pub use probe::{DeviceInfo, MIN_DRIVER_VERSION, REQUIRED_CAPABILITY, probe};

use crate::{Error, Result};

/// Device memory of one tensor. Uninhabited until the CUDA backend is wired into the tensor ops
/// (device memory itself is [`CudaBuffer`]).
#[derive(Debug)]
pub enum CudaStorage {}

pub fn not_yet(op: &str) -> Error {
    Error::NoCuda(format!(
        "{op} is not implemented on CUDA yet (the CUDA backend is issue 3)"
    ))
}

/// Whether tensors can live on CUDA. Always an error for now — even with a usable GPU, because the
/// CUDA backend is not wired into the tensor ops yet — whose message says what was found, so
/// `--device auto` explains its fallback to the CPU.
pub fn check_available() -> Result<()> {
    const NOT_WIRED: &str = "the CUDA backend is not wired into the tensor ops yet (issue 3)";
    match probe() {
        Ok(devices) => {
            let found = devices
                .iter()
                .find(|d| d.check_supported().is_ok())
                .map(|d| d.to_string())
                .unwrap_or_default();
            Err(Error::NoCuda(format!("found {found}, but {NOT_WIRED}")))
        }
        Err(Error::NoCuda(why)) => Err(Error::NoCuda(format!("{why} (and {NOT_WIRED})"))),
        Err(e) => Err(Error::NoCuda(format!("{e} (and {NOT_WIRED})"))),
    }
}
