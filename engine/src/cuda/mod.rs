//! The CUDA backend: GPU discovery ([`probe`]), the device with its context, stream, lazily
//! loaded kernel modules and the one launch helper ([`CudaDevice`]), the caching memory pool
//! ([`pool`]), tensor storage on the device ([`CudaStorage`], which implements the backend boundary) and the CUDA side of every op
//! ([`ops`], one module per kernel family, each a pure launch plan plus the code that runs it).

mod backend;
mod device;
pub mod launch;
pub mod ops;
pub mod pool;
mod probe;
mod vm;

pub use device::{
    CudaAllocator, CudaBuffer, CudaDevice, GpuTimer, Kernel, emulation_requested, gpu_or_skip,
    gpu_or_skip_with, gpu_required,
};
pub use launch::{KArg, LaunchCfg, Param};
pub use palm_ptx_vm::{Counters as VmCounters, Family as VmFamily};
pub use pool::{DeviceAllocator, MemoryPool, PoolBlock, PoolStats};
pub use probe::{DeviceInfo, MIN_DRIVER_VERSION, REQUIRED_CAPABILITY, probe};
pub use vm::{DEFAULT_VM_SMS, KernelStats};

use crate::{DType, Result};
use std::sync::Arc;

/// Device memory of one tensor: a pool buffer and its element type (always contiguous from the
/// buffer's start; views add a layout on top, as on the CPU).
pub struct CudaStorage {
    buf: CudaBuffer,
    dtype: DType,
}

impl CudaStorage {
    pub(crate) fn new(buf: CudaBuffer, dtype: DType) -> Self {
        CudaStorage { buf, dtype }
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn device(&self) -> &Arc<CudaDevice> {
        self.buf.device()
    }
    pub fn buffer(&self) -> &CudaBuffer {
        &self.buf
    }
    /// Elements held.
    pub fn len(&self) -> usize {
        self.buf.len() / self.dtype.size_in_bytes()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Debug for CudaStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaStorage({:?}, {:?})", self.dtype, self.buf)
    }
}

/// Whether tensors can live on CUDA: a device with compute capability 9.0 and a CUDA 13 driver
/// could be opened. The error says what was found, so `--device auto` explains its fallback.
pub fn check_available() -> Result<()> {
    CudaDevice::get(0).map(|_| ())
}
