//! GPU discovery that never panics: no driver, no device, an old driver or a device the PTX
//! cannot run on each give one clear [`Error::NoCuda`].

use crate::{Error, Result};
use cudarc::driver::{result as cu, sys};

/// The compute capability the committed PTX is built for (`.target sm_90a`). Architecture-specific
/// (`a`) PTX is not forward compatible: the driver JIT-compiles it for compute capability 9.0 only.
pub const REQUIRED_CAPABILITY: (i32, i32) = (9, 0);
/// The oldest driver that can JIT the PTX (`.version 9.0`, from CUDA 13.0's nvcc): CUDA 13.0.
pub const MIN_DRIVER_VERSION: i32 = 13000;

/// One CUDA device as the driver describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    /// (major, minor), e.g. (9, 0) for H100/H200.
    pub compute_capability: (i32, i32),
    /// Bytes of device memory.
    pub total_memory: usize,
}

impl DeviceInfo {
    /// `Ok` when the engine's kernels can run on this device, else an error naming the device,
    /// its capability and the PTX target.
    pub fn check_supported(&self) -> Result<()> {
        let (major, minor) = self.compute_capability;
        if self.compute_capability == REQUIRED_CAPABILITY {
            return Ok(());
        }
        let why = if self.compute_capability < REQUIRED_CAPABILITY {
            "older than what the kernels need"
        } else {
            "newer than Hopper, and sm_90a PTX is arch-specific (not forward compatible)"
        };
        Err(Error::NoCuda(format!(
            "cuda:{} ({}) has compute capability {major}.{minor}, {why}: the engine's PTX targets \
             sm_90a (compute capability 9.0: H100/H200)",
            self.ordinal, self.name
        )))
    }
}

impl std::fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (major, minor) = self.compute_capability;
        write!(
            f,
            "cuda:{} {} (sm_{major}{minor}, {:.1} GiB)",
            self.ordinal,
            self.name,
            self.total_memory as f64 / (1u64 << 30) as f64
        )
    }
}

/// Every CUDA device, or an error when none can run the engine's kernels (no driver, a driver
/// older than CUDA 13.0, no device, or only devices of another compute capability than 9.0).
/// Devices listed may include unsupported ones beside a supported one: check
/// [`DeviceInfo::check_supported`] before using one. Never panics.
pub fn probe() -> Result<Vec<DeviceInfo>> {
    let devices = catch_driver_panic("device discovery", discover)?;
    if devices.iter().any(|d| d.check_supported().is_ok()) {
        return Ok(devices);
    }
    let reasons: Vec<String> = devices
        .iter()
        .filter_map(|d| d.check_supported().err())
        .map(|e| match e {
            Error::NoCuda(m) => m,
            other => other.to_string(),
        })
        .collect();
    Err(Error::NoCuda(format!(
        "no usable GPU: {}",
        reasons.join("; ")
    )))
}

/// All devices the driver reports, without the capability check.
fn discover() -> Result<Vec<DeviceInfo>> {
    // SAFETY: `is_culib_present` only tries `dlopen` on the driver's library names and closes
    // what it opened; it runs no driver code. It must come first: every other call would panic
    // inside cudarc when libcuda is missing.
    if !unsafe { sys::is_culib_present() } {
        return Err(Error::NoCuda("no CUDA driver (libcuda.so) found".into()));
    }
    let mut version: std::ffi::c_int = 0;
    // SAFETY: the library is present; `cuDriverGetVersion` writes one int to a valid pointer
    // and may be called before `cuInit`.
    unsafe { sys::cuDriverGetVersion(&mut version) }
        .result()
        .map_err(|e| Error::NoCuda(format!("cuDriverGetVersion failed: {e}")))?;
    if version < MIN_DRIVER_VERSION {
        return Err(Error::NoCuda(format!(
            "the CUDA driver supports CUDA {}.{}, the engine's PTX needs 13.0 or newer",
            version / 1000,
            (version % 1000) / 10
        )));
    }
    match cu::init() {
        Ok(()) => {}
        Err(cu::DriverError(sys::CUresult::CUDA_ERROR_NO_DEVICE)) => {
            return Err(Error::NoCuda(
                "the CUDA driver is installed but reports no GPU".into(),
            ));
        }
        Err(e) => return Err(Error::NoCuda(format!("cuInit failed: {e}"))),
    }
    let count = cu::device::get_count()
        .map_err(|e| Error::NoCuda(format!("cuDeviceGetCount failed: {e}")))?;
    if count <= 0 {
        return Err(Error::NoCuda(
            "the CUDA driver is installed but reports no GPU".into(),
        ));
    }
    (0..count).map(device_info).collect()
}

fn device_info(ordinal: std::ffi::c_int) -> Result<DeviceInfo> {
    let fail = |what: &str, e: cu::DriverError| {
        Error::NoCuda(format!("cuda:{ordinal}: {what} failed: {e}"))
    };
    let dev = cu::device::get(ordinal).map_err(|e| fail("cuDeviceGet", e))?;
    let name = cu::device::get_name(dev).map_err(|e| fail("cuDeviceGetName", e))?;
    let attr = |a: sys::CUdevice_attribute| {
        // SAFETY: `dev` was returned by `cuDeviceGet` above.
        unsafe { cu::device::get_attribute(dev, a) }.map_err(|e| fail("cuDeviceGetAttribute", e))
    };
    let major = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
    let minor = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
    // SAFETY: `dev` was returned by `cuDeviceGet` above.
    let total_memory =
        unsafe { cu::device::total_mem(dev) }.map_err(|e| fail("cuDeviceTotalMem", e))?;
    Ok(DeviceInfo {
        ordinal: ordinal as usize,
        name,
        compute_capability: (major, minor),
        total_memory,
    })
}

/// Run driver code, turning a panic inside cudarc (a missing driver symbol, say) into an error.
pub(crate) fn catch_driver_panic<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            Err(Error::NoCuda(format!(
                "the CUDA driver bindings panicked during {what}: {msg}"
            )))
        }
    }
}
