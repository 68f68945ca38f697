//! One GPU: its context and stream, the kernel modules (loaded lazily), the memory pool, and the
//! one launch helper every kernel launch goes through. Behind it is the driver, or the PTX VM
//! (`vm.rs`) when `PALM_CUDA_EMULATE=1` asks for it or a test finds no GPU ([`gpu_or_skip`]).

use super::launch;
use super::launch::{DEFAULT_DYNAMIC_SMEM, KArg, LaunchCfg, Param};
use super::pool::{DeviceAllocator, MemoryPool, PoolStats};
use super::probe::{DeviceInfo, catch_driver_panic, probe};
use super::vm::{KernelStats, Vm};
use crate::{Error, Result};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaModule, CudaStream, LaunchConfig, PushKernelArg,
    result as cu, sys,
};
use cudarc::nvrtc::Ptx;
use palm_kernels::Family;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// Lock a mutex, ignoring poisoning (every critical section leaves its data consistent).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn driver(what: impl std::fmt::Display, e: cu::DriverError) -> Error {
    Error::Driver(format!("{what}: {e}"))
}

/// The device allocator under the pool: `cuMemAlloc` / `cuMemFree`.
///
/// Not `cuMemAllocAsync`: that allocates from the driver's own caching pool, which would hide the
/// effect of ours under `PALM_POOL=off` and keep freed memory out of `cuMemGetInfo` until the
/// driver trims it. Plain allocation is what the pool exists to avoid, so `PALM_POOL=off`
/// measures exactly that. A free waits for the stream first, so no queued kernel still uses the
/// memory (the pool frees segments rarely: on `empty_cache`, out of memory, or with the pool off).
pub struct CudaAllocator {
    backend: Backend,
    /// The first error a `free` met (free cannot return one); reported by `synchronize`.
    deferred: Option<String>,
}

/// A real GPU: its context and the one stream every op is queued on.
#[derive(Clone)]
struct Hw {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
}

/// What stands behind a [`CudaDevice`]: the driver, or the PTX virtual machine
/// (`PALM_CUDA_EMULATE=1`, or the CUDA tests without a GPU).
#[derive(Clone)]
enum Backend {
    Hw(Hw),
    Vm(Arc<Vm>),
}

impl DeviceAllocator for CudaAllocator {
    fn alloc(&mut self, bytes: usize) -> Result<u64> {
        let hw = match &self.backend {
            Backend::Hw(hw) => hw.clone(),
            Backend::Vm(vm) => return Ok(vm.mem.alloc_segment(bytes)),
        };
        hw.ctx
            .bind_to_thread()
            .map_err(|e| driver("binding the CUDA context", e))?;
        // SAFETY: the context is current on this thread; the memory is uninitialised, which the
        // pool's callers know (they write before they read, or zero it).
        match unsafe { cu::malloc_sync(bytes) } {
            Ok(p) => Ok(p),
            Err(cu::DriverError(sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY)) => {
                Err(Error::OutOfMemory {
                    requested: bytes,
                    free: self.free_memory(),
                })
            }
            Err(e) => Err(driver(format!("cuMemAlloc({bytes})"), e)),
        }
    }

    fn free(&mut self, ptr: u64) {
        let hw = match &self.backend {
            Backend::Hw(hw) => hw.clone(),
            Backend::Vm(vm) => return vm.mem.free_segment(ptr),
        };
        let r = hw.ctx.bind_to_thread().and_then(|()| {
            hw.stream.synchronize()?;
            // SAFETY: `ptr` came from `cuMemAlloc` in this context (the pool frees each segment
            // exactly once) and the stream that used it has finished.
            unsafe { cu::free_sync(ptr) }
        });
        if let Err(e) = r
            && self.deferred.is_none()
        {
            self.deferred = Some(format!("cuMemFree({ptr:#x}): {e}"));
        }
    }

    fn free_memory(&self) -> usize {
        match &self.backend {
            Backend::Hw(hw) => hw.ctx.mem_get_info().map(|(free, _)| free).unwrap_or(0),
            Backend::Vm(vm) => EMULATED_MEMORY.saturating_sub(vm.mem.used()),
        }
    }
}

/// A loaded kernel: its function handle, PTX signature and shared-memory limits.
pub struct Kernel {
    pub family: &'static str,
    pub name: &'static str,
    params: Vec<Param>,
    func: CudaFunction,
    /// Dynamic shared memory the function is currently allowed (opt-in raises it).
    smem_allowed: AtomicU32,
    /// The device's opt-in maximum minus the kernel's static shared memory.
    smem_max: u32,
}

impl Kernel {
    pub fn params(&self) -> &[Param] {
        &self.params
    }
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Kernel({}/{}, {} params)",
            self.family,
            self.name,
            self.params.len()
        )
    }
}

thread_local! {
    /// Device-to-host copies made by this thread (see `CudaDevice::d2h_copies_on_this_thread`).
    static D2H_ON_THIS_THREAD: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Device memory from the pool, returned to it on drop. Holds its device alive.
pub struct CudaBuffer {
    ptr: u64,
    len: usize,
    device: Arc<CudaDevice>,
}

impl CudaBuffer {
    /// The device address (512-byte aligned within its segment).
    pub fn ptr(&self) -> u64 {
        self.ptr
    }
    /// Bytes requested (the block may be larger).
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn device(&self) -> &Arc<CudaDevice> {
        &self.device
    }
    /// This buffer as a kernel argument.
    pub fn arg(&self) -> KArg {
        KArg::Ptr(self.ptr)
    }
}

impl std::fmt::Debug for CudaBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CudaBuffer({:#x}, {} B, cuda:{})",
            self.ptr, self.len, self.device.info.ordinal
        )
    }
}

impl Drop for CudaBuffer {
    fn drop(&mut self) {
        if let Some(vm) = self.device.vm() {
            vm.mem.mark_dead(self.ptr);
        }
        // Stream-ordered: work already queued on the one stream runs before any later reuse.
        // The pool handed this address out, so freeing it cannot fail.
        let _ = lock(&self.device.pool).free(self.ptr);
    }
}

/// Elapsed GPU time between two points on the device's stream (events with timing enabled).
pub struct GpuTimer {
    start: CudaEvent,
}

impl GpuTimer {
    /// Milliseconds from the start until now on the stream; waits for the stream to get there.
    pub fn elapsed_ms(&self, device: &CudaDevice) -> Result<f32> {
        let end = device
            .hw()?
            .stream
            .record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| driver("recording a timing event", e))?;
        self.start
            .elapsed_ms(&end)
            .map_err(|e| device.sync_error("timing events", e))
    }
}

/// One CUDA device, created once per ordinal ([`CudaDevice::get`]) and shared.
pub struct CudaDevice {
    info: DeviceInfo,
    backend: Backend,
    /// Atomic so the PTX VM's count can be changed at run time ([`CudaDevice::set_vm_sms`]).
    num_sms: AtomicU32,
    smem_optin: u32,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    kernels: Mutex<HashMap<&'static str, Arc<Kernel>>>,
    pool: Mutex<MemoryPool<CudaAllocator>>,
    last_kernel: Mutex<&'static str>,
    /// `PALM_CUDA_SYNC=1`: wait after every launch so a fault names its kernel.
    sync_each_launch: bool,
    /// `PALM_CUDA_POISON=1`: fill new allocations with 0xFF bytes (NaN for floats), so a kernel
    /// that leaves part of its output unwritten fails the CPU-vs-CUDA tests.
    poison: std::sync::atomic::AtomicBool,
    /// Device-to-host copies so far (each one waits for the stream: a host round trip).
    d2h_copies: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaDevice({})", self.info)
    }
}

/// Memory the PTX VM device reports (8 GiB).
const EMULATED_MEMORY: usize = 8 << 30;

/// Set once a test found no GPU and chose the VM for cuda:0 ([`gpu_or_skip`]).
static VM_FALLBACK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `PALM_CUDA_EMULATE=1`: CUDA tensors live on the PTX VM instead of a GPU.
pub fn emulation_requested() -> bool {
    std::env::var("PALM_CUDA_EMULATE").is_ok_and(|v| v.trim() == "1")
}

static DEVICES: OnceLock<Mutex<HashMap<usize, Arc<CudaDevice>>>> = OnceLock::new();

impl CudaDevice {
    /// The device with this ordinal, opened on first use (context, stream, pool) and shared after.
    pub fn get(ordinal: usize) -> Result<Arc<CudaDevice>> {
        let mut devices = lock(DEVICES.get_or_init(Default::default));
        if let Some(d) = devices.get(&ordinal) {
            return Ok(d.clone());
        }
        let fallback = ordinal == 0 && VM_FALLBACK.load(Ordering::Relaxed);
        if fallback || emulation_requested() {
            let dev = Arc::new(Self::open_vm(ordinal)?);
            devices.insert(ordinal, dev.clone());
            return Ok(dev);
        }
        let found = probe()?;
        let info = found
            .into_iter()
            .find(|d| d.ordinal == ordinal)
            .ok_or_else(|| Error::NoCuda(format!("no CUDA device with ordinal {ordinal}")))?;
        info.check_supported()?;
        let dev = Arc::new(catch_driver_panic("device creation", || Self::open(info))?);
        devices.insert(ordinal, dev.clone());
        Ok(dev)
    }

    fn open(info: DeviceInfo) -> Result<CudaDevice> {
        let where_ = format!("cuda:{}", info.ordinal);
        let ctx = CudaContext::new(info.ordinal)
            .map_err(|e| driver(format!("creating a context on {where_}"), e))?;
        let stream = ctx
            .new_stream()
            .map_err(|e| driver(format!("creating a stream on {where_}"), e))?;
        let attr = |a| {
            ctx.attribute(a)
                .map_err(|e| driver(format!("reading an attribute of {where_}"), e))
        };
        let num_sms = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
        let smem_optin =
            attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?;
        let backend = Backend::Hw(Hw { ctx, stream });
        let allocator = CudaAllocator {
            backend: backend.clone(),
            deferred: None,
        };
        let flag = |name: &str| std::env::var(name).is_ok_and(|v| v.trim() == "1");
        let (sync_each_launch, poison) = (flag("PALM_CUDA_SYNC"), flag("PALM_CUDA_POISON"));
        Ok(CudaDevice {
            info,
            backend,
            num_sms: AtomicU32::new(num_sms.max(1) as u32),
            smem_optin: smem_optin.max(0) as u32,
            modules: Mutex::new(HashMap::new()),
            kernels: Mutex::new(HashMap::new()),
            pool: Mutex::new(MemoryPool::from_env(allocator)?),
            last_kernel: Mutex::new("(none)"),
            sync_each_launch,
            poison: std::sync::atomic::AtomicBool::new(poison),
            d2h_copies: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The PTX VM as a device: the committed PTX executed on the CPU (H100/H200 limits).
    fn open_vm(ordinal: usize) -> Result<CudaDevice> {
        let vm = Vm::from_env()?;
        let info = DeviceInfo {
            ordinal,
            name: format!(
                "PTX VM sm_90a, {} SMs (PALM_CUDA_EMULATE=1 or no GPU; the committed PTX run on the CPU)",
                vm.sms
            ),
            compute_capability: super::probe::REQUIRED_CAPABILITY,
            total_memory: EMULATED_MEMORY,
        };
        let num_sms = vm.sms;
        let backend = Backend::Vm(Arc::new(vm));
        let allocator = CudaAllocator {
            backend: backend.clone(),
            deferred: None,
        };
        Ok(CudaDevice {
            info,
            backend,
            num_sms: AtomicU32::new(num_sms),
            smem_optin: 232_448,
            modules: Mutex::new(HashMap::new()),
            kernels: Mutex::new(HashMap::new()),
            pool: Mutex::new(MemoryPool::from_env(allocator)?),
            last_kernel: Mutex::new("(none)"),
            sync_each_launch: false,
            poison: std::sync::atomic::AtomicBool::new(false),
            d2h_copies: std::sync::atomic::AtomicU64::new(0),
        })
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }
    pub fn ordinal(&self) -> usize {
        self.info.ordinal
    }
    pub fn num_sms(&self) -> u32 {
        self.num_sms.load(Ordering::Relaxed)
    }

    /// Set the SM count the PTX VM reports (plans size grids and pick tiles by it: a small count
    /// reaches the large-tile paths at small shapes). An error on a GPU.
    pub fn set_vm_sms(&self, sms: u32) -> Result<()> {
        if self.vm().is_none() || !(1..=1024).contains(&sms) {
            return Err(Error::Invalid(format!(
                "set_vm_sms({sms}): only the PTX VM's SM count can be set, to 1..=1024"
            )));
        }
        self.num_sms.store(sms, Ordering::Relaxed);
        Ok(())
    }
    /// Whether this is the PTX VM (`PALM_CUDA_EMULATE=1`, or a test without a GPU), not a GPU.
    pub fn is_emulated(&self) -> bool {
        matches!(self.backend, Backend::Vm(_))
    }

    /// The real GPU's context and stream, or an error on the PTX VM.
    fn hw(&self) -> Result<&Hw> {
        match &self.backend {
            Backend::Hw(hw) => Ok(hw),
            Backend::Vm(_) => Err(Error::NoCuda(
                "the PTX VM has no driver context (kernel modules, events)".into(),
            )),
        }
    }

    /// The PTX VM behind this device, if it is one.
    fn vm(&self) -> Option<&Vm> {
        match &self.backend {
            Backend::Vm(vm) => Some(vm),
            Backend::Hw(_) => None,
        }
    }

    /// Launches and counters per kernel so far on the PTX VM (`None` on a GPU).
    pub fn vm_stats(&self) -> Option<std::collections::BTreeMap<String, KernelStats>> {
        self.vm().map(Vm::stats)
    }

    /// [`vm_stats`](Self::vm_stats), starting the counts afresh.
    pub fn vm_take_stats(&self) -> Option<std::collections::BTreeMap<String, KernelStats>> {
        self.vm().map(Vm::take_stats)
    }

    fn bind(&self) -> Result<()> {
        self.hw()?
            .ctx
            .bind_to_thread()
            .map_err(|e| driver("binding the CUDA context", e))
    }

    /// A driver error met while waiting, naming the last kernel launched (the usual culprit).
    fn sync_error(&self, what: &str, e: cu::DriverError) -> Error {
        let last = *lock(&self.last_kernel);
        Error::Driver(format!(
            "{what} on cuda:{}: {e} (last kernel launched: {last}; rerun with PALM_CUDA_SYNC=1 \
             to stop at the failing launch)",
            self.info.ordinal
        ))
    }

    /// Wait for all queued work; reports a failed kernel or a deferred free error.
    pub fn synchronize(&self) -> Result<()> {
        if self.is_emulated() {
            return Ok(());
        }
        self.bind()?;
        self.hw()?
            .stream
            .synchronize()
            .map_err(|e| self.sync_error("synchronize", e))?;
        match lock(&self.pool).allocator_mut().deferred.take() {
            Some(msg) => Err(Error::Driver(msg)),
            None => Ok(()),
        }
    }

    // ----- memory -----

    /// `bytes` of uninitialised device memory from the pool (0xFF bytes under `PALM_CUDA_POISON=1`).
    pub fn alloc(self: &Arc<Self>, bytes: usize) -> Result<CudaBuffer> {
        let block = lock(&self.pool).alloc(bytes)?;
        let buf = CudaBuffer {
            ptr: block.ptr,
            len: bytes,
            device: self.clone(),
        };
        if let Some(vm) = self.vm() {
            // The buffer's own bounds for memcheck; its bytes count as unwritten (initcheck).
            vm.mem.mark_live(buf.ptr, bytes)?;
            if self.poison.load(Ordering::Relaxed) {
                vm.mem.poison(buf.ptr, 0xFF, bytes)?;
            }
        } else if self.poison.load(Ordering::Relaxed) && bytes > 0 {
            self.bind()?;
            // SAFETY: `buf` is a live block of `bytes` bytes in this context, ordered on the stream.
            unsafe { cu::memset_d8_async(buf.ptr, 0xFF, bytes, self.hw()?.stream.cu_stream()) }
                .map_err(|e| driver("cuMemsetD8Async (poison)", e))?;
        }
        Ok(buf)
    }

    /// A new buffer holding `bytes` bytes copied from `src` at byte offset `at` (queued on the
    /// stream; no host wait).
    pub fn copy_range(
        self: &Arc<Self>,
        src: &CudaBuffer,
        at: usize,
        bytes: usize,
    ) -> Result<CudaBuffer> {
        if at.checked_add(bytes).is_none_or(|end| end > src.len) {
            return Err(Error::Invalid(format!(
                "device copy of {bytes} bytes at {at} from a {}-byte buffer",
                src.len
            )));
        }
        let dst = self.alloc(bytes)?;
        if bytes > 0
            && let Some(vm) = self.vm()
        {
            vm.mem.copy(dst.ptr, src.ptr + at as u64, bytes)?;
        } else if bytes > 0 {
            self.bind()?;
            // SAFETY: both ranges lie inside live blocks of this context (checked above), do not
            // overlap (`dst` is a fresh block), and the copy is ordered on the one stream.
            unsafe {
                cu::memcpy_dtod_async(
                    dst.ptr,
                    src.ptr + at as u64,
                    bytes,
                    self.hw()?.stream.cu_stream(),
                )
            }
            .map_err(|e| driver("cuMemcpyDtoDAsync", e))?;
        }
        Ok(dst)
    }

    /// `bytes` of zeroed device memory (the memset is queued on the stream).
    pub fn alloc_zeroed(self: &Arc<Self>, bytes: usize) -> Result<CudaBuffer> {
        let buf = self.alloc(bytes)?;
        self.zero(&buf)?;
        Ok(buf)
    }

    /// Queue a memset of the whole buffer to 0.
    pub fn zero(&self, buf: &CudaBuffer) -> Result<()> {
        if let Some(vm) = self.vm() {
            return Ok(vm.mem.fill(buf.ptr, 0, buf.len)?);
        }
        self.bind()?;
        // SAFETY: `buf` is a live block of at least `buf.len()` bytes in this context; the memset
        // is ordered on the stream every user of the block uses.
        unsafe { cu::memset_d8_async(buf.ptr, 0, buf.len, self.hw()?.stream.cu_stream()) }
            .map_err(|e| driver("cuMemsetD8Async", e))
    }

    /// Copy host data to a new buffer. Returns once the copy is done (the host slice is free).
    pub fn upload<T: bytemuck::Pod>(self: &Arc<Self>, data: &[T]) -> Result<CudaBuffer> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let buf = self.alloc(bytes.len())?;
        if !bytes.is_empty()
            && let Some(vm) = self.vm()
        {
            vm.mem.write(buf.ptr, bytes)?;
        } else if !bytes.is_empty() {
            self.bind()?;
            let stream = &self.hw()?.stream;
            // SAFETY: `buf` holds at least `bytes.len()` bytes; `bytes` stays borrowed until the
            // stream is synchronised below, so the DMA never reads freed host memory.
            unsafe { cu::memcpy_htod_async(buf.ptr, bytes, stream.cu_stream()) }
                .map_err(|e| driver("cuMemcpyHtoDAsync", e))?;
            stream
                .synchronize()
                .map_err(|e| self.sync_error("upload", e))?;
        }
        Ok(buf)
    }

    /// Copy the start of a buffer into `out` (waits for the stream, so earlier kernels finish).
    pub fn download<T: bytemuck::Pod>(&self, buf: &CudaBuffer, out: &mut [T]) -> Result<()> {
        self.download_at(buf, 0, out)
    }

    /// Copy bytes of a buffer from byte offset `at` into `out` (waits for the stream).
    pub fn download_at<T: bytemuck::Pod>(
        &self,
        buf: &CudaBuffer,
        at: usize,
        out: &mut [T],
    ) -> Result<()> {
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(out);
        if at.checked_add(bytes.len()).is_none_or(|end| end > buf.len) {
            return Err(Error::Invalid(format!(
                "download of {} bytes at {at} from a {}-byte device buffer",
                bytes.len(),
                buf.len
            )));
        }
        if bytes.is_empty() {
            return Ok(());
        }
        self.d2h_copies.fetch_add(1, Ordering::Relaxed);
        D2H_ON_THIS_THREAD.with(|c| c.set(c.get() + 1));
        if let Some(vm) = self.vm() {
            // Reading back bytes no kernel or copy wrote is a bug the VM reports (initcheck).
            return Ok(vm.mem.read(buf.ptr + at as u64, bytes, true)?);
        }
        self.bind()?;
        let stream = &self.hw()?.stream;
        // SAFETY: the source range lies inside the block (checked above); `bytes` stays mutably
        // borrowed until the stream is synchronised below.
        unsafe { cu::memcpy_dtoh_async(bytes, buf.ptr + at as u64, stream.cu_stream()) }
            .map_err(|e| driver("cuMemcpyDtoHAsync", e))?;
        stream
            .synchronize()
            .map_err(|e| self.sync_error("download", e))
    }

    /// The first `len` elements of a buffer as a vector.
    pub fn to_vec<T: bytemuck::Pod>(&self, buf: &CudaBuffer, len: usize) -> Result<Vec<T>> {
        let mut out = vec![T::zeroed(); len];
        self.download(buf, &mut out)?;
        Ok(out)
    }

    /// Device-to-host copies made so far (each a wait for the stream), by every thread.
    pub fn d2h_copies(&self) -> u64 {
        self.d2h_copies.load(Ordering::Relaxed)
    }

    /// Device-to-host copies the calling thread has made (on any device): how a test checks
    /// that a step stays on the device while other tests copy concurrently.
    pub fn d2h_copies_on_this_thread() -> u64 {
        D2H_ON_THIS_THREAD.with(std::cell::Cell::get)
    }

    /// Fill new allocations with 0xFF bytes from now on (tests: an unwritten output is NaN).
    pub fn set_poison(&self, on: bool) {
        self.poison.store(on, Ordering::Relaxed);
    }

    pub fn pool_stats(&self) -> PoolStats {
        lock(&self.pool).stats()
    }
    /// Bytes new allocations can still get: the device's free memory plus the pool's cached,
    /// unused blocks.
    pub fn memory_available(&self) -> usize {
        lock(&self.pool).available()
    }
    pub fn pool_enabled(&self) -> bool {
        lock(&self.pool).is_enabled()
    }
    pub fn reset_peak(&self) {
        lock(&self.pool).reset_peak()
    }
    /// Hand cached free segments back to the driver; returns the bytes released.
    pub fn empty_cache(&self) -> usize {
        lock(&self.pool).empty_cache()
    }

    // ----- kernels -----

    /// Kernel `name` of `family`, loading the family's PTX module on first use. Errors name the
    /// kernel and list the family's kernels when the name is unknown.
    pub fn kernel(&self, family: &'static Family, name: &str) -> Result<Arc<Kernel>> {
        let name = launch::declared_kernel(family, name)?;
        let mut kernels = lock(&self.kernels);
        if let Some(k) = kernels.get(name) {
            return Ok(k.clone());
        }
        self.bind()?;
        let module = self.module(family)?;
        let func = module.load_function(name).map_err(|e| {
            driver(
                format!("loading kernel {name} from module {}", family.name),
                e,
            )
        })?;
        let params = launch::ptx_params(family.ptx, name).ok_or_else(|| {
            Error::Invalid(format!("kernel {name}: no .entry in {}.ptx", family.name))
        })?;
        let static_smem = func
            .get_attribute(sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)
            .map_err(|e| driver(format!("reading attributes of kernel {name}"), e))?;
        let kernel = Arc::new(Kernel {
            family: family.name,
            name,
            params,
            func,
            smem_allowed: AtomicU32::new(DEFAULT_DYNAMIC_SMEM),
            smem_max: self.smem_optin.saturating_sub(static_smem.max(0) as u32),
        });
        if let Some(bytes) = launch::declared_dynamic_smem(name) {
            self.allow_dynamic_smem(&kernel, bytes)?;
        }
        kernels.insert(name, kernel.clone());
        Ok(kernel)
    }

    /// Run a launch plan (the kernel looked up by name).
    pub fn run(&self, plan: &super::ops::Launch) -> Result<()> {
        if let Some(vm) = self.vm() {
            // The same checks a real launch passes, then the kernel on the VM.
            let family = launch::find_family(&plan.kernel).ok_or_else(|| {
                Error::Invalid(format!("no kernel family declares '{}'", plan.kernel))
            })?;
            let params = launch::ptx_params(family.ptx, &plan.kernel).ok_or_else(|| {
                Error::Invalid(format!(
                    "kernel {}: no .entry in {}.ptx",
                    plan.kernel, family.name
                ))
            })?;
            launch::check_launch(
                &plan.kernel,
                &params,
                &plan.args,
                &plan.cfg,
                self.smem_optin,
            )?;
            return vm.launch(family, &plan.kernel, &plan.cfg, &plan.args);
        }
        let k = self.kernel_by_name(&plan.kernel)?;
        self.launch(&k, plan.cfg, &plan.args)
    }

    /// Kernel `name` from whichever family declares it.
    pub fn kernel_by_name(&self, name: &str) -> Result<Arc<Kernel>> {
        let family = launch::find_family(name)
            .ok_or_else(|| Error::Invalid(format!("no kernel family declares '{name}'")))?;
        self.kernel(family, name)
    }

    fn module(&self, family: &'static Family) -> Result<Arc<CudaModule>> {
        let mut modules = lock(&self.modules);
        if let Some(m) = modules.get(family.name) {
            return Ok(m.clone());
        }
        let m = self
            .hw()?
            .ctx
            .load_module(Ptx::from_src(family.ptx))
            .map_err(|e| {
                driver(
                    format!(
                        "loading PTX module {} (sm_90a, PTX ISA 9.0: needs compute capability 9.0 \
                         and a CUDA 13.0+ driver)",
                        family.name
                    ),
                    e,
                )
            })?;
        modules.insert(family.name, m.clone());
        Ok(m)
    }

    /// Raise a kernel's dynamic shared memory limit to `bytes` when it is below (once per size).
    fn allow_dynamic_smem(&self, k: &Kernel, bytes: u32) -> Result<()> {
        if bytes <= k.smem_allowed.load(Ordering::Relaxed) {
            return Ok(());
        }
        if bytes > k.smem_max {
            return Err(Error::Invalid(format!(
                "kernel {} needs {bytes} B of dynamic shared memory; cuda:{} allows {} B",
                k.name, self.info.ordinal, k.smem_max
            )));
        }
        self.bind()?;
        k.func
            .set_attribute(
                sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes as i32,
            )
            .map_err(|e| {
                driver(
                    format!("opting kernel {} into {bytes} B shared memory", k.name),
                    e,
                )
            })?;
        k.smem_allowed.fetch_max(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Launch a kernel on the device's stream. Every launch in the engine goes through here: the
    /// arguments are checked against the PTX signature, the launch shape against CUDA's limits,
    /// dynamic shared memory is opted into when needed, and a failure names the kernel.
    pub fn launch(&self, k: &Kernel, cfg: LaunchCfg, args: &[KArg]) -> Result<()> {
        self.launch_inner(k, cfg, args, false).map(|_| ())
    }

    /// [`launch`](Self::launch), timed with CUDA events around the kernel; waits for it.
    pub fn launch_timed(&self, k: &Kernel, cfg: LaunchCfg, args: &[KArg]) -> Result<f32> {
        let (start, end) = self
            .launch_inner(k, cfg, args, true)?
            .ok_or_else(|| Error::Driver(format!("kernel {}: no timing events", k.name)))?;
        start
            .elapsed_ms(&end)
            .map_err(|e| self.sync_error("timing events", e))
    }

    /// Start a timer at the current point of the stream.
    pub fn timer(&self) -> Result<GpuTimer> {
        let start = self
            .hw()?
            .stream
            .record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| driver("recording a timing event", e))?;
        Ok(GpuTimer { start })
    }

    fn launch_inner(
        &self,
        k: &Kernel,
        cfg: LaunchCfg,
        args: &[KArg],
        timed: bool,
    ) -> Result<Option<(CudaEvent, CudaEvent)>> {
        launch::check_launch(k.name, &k.params, args, &cfg, k.smem_max)?;
        self.allow_dynamic_smem(k, cfg.shared_bytes)?;
        let stream = &self.hw()?.stream;
        let mut b = stream.launch_builder(&k.func);
        for a in args {
            match a {
                KArg::Ptr(v) | KArg::U64(v) => b.arg(v),
                KArg::I64(v) => b.arg(v),
                KArg::I32(v) => b.arg(v),
                KArg::U32(v) => b.arg(v),
                KArg::F32(v) => b.arg(v),
            };
        }
        if timed {
            b.record_kernel_launch(sys::CUevent_flags::CU_EVENT_DEFAULT);
        }
        let config = LaunchConfig {
            grid_dim: cfg.grid,
            block_dim: cfg.block,
            shared_mem_bytes: cfg.shared_bytes,
        };
        // SAFETY: the arguments match the kernel's PTX parameter list in number and size
        // (`check_launch`), each borrowed from `args` for the duration of the call; pointer
        // arguments are pool blocks or 0 for nullable ones, and sizes/bounds are the caller's
        // contract with the kernel (kernels/README.md). The launch shape is within CUDA's limits
        // and dynamic shared memory within what the function was opted into.
        let events = unsafe { b.launch(config) }.map_err(|e| {
            driver(
                format!(
                    "launch of kernel {} (grid {:?}, block {:?}, {} B dynamic smem)",
                    k.name, cfg.grid, cfg.block, cfg.shared_bytes
                ),
                e,
            )
        })?;
        *lock(&self.last_kernel) = k.name;
        if self.sync_each_launch {
            stream
                .synchronize()
                .map_err(|e| self.sync_error(&format!("kernel {}", k.name), e))?;
        }
        Ok(events)
    }
}

/// The device for a GPU test: the GPU when there is one, else the PTX VM (the committed PTX run
/// on the CPU, with a note printed once). With `PALM_REQUIRE_GPU=1` a missing GPU fails the test
/// instead (unless `PALM_CUDA_EMULATE=1` asks for the VM): that is the device machine's mode.
/// Returns `None` only when the VM cannot open either (the reason is printed).
///
/// # Panics
/// When `PALM_REQUIRE_GPU=1` and no usable GPU is found (that is the failure).
pub fn gpu_or_skip(test: &str) -> Option<Arc<CudaDevice>> {
    gpu_or_skip_with(test, gpu_required())
}

/// Whether `PALM_REQUIRE_GPU=1` is set.
pub fn gpu_required() -> bool {
    std::env::var("PALM_REQUIRE_GPU").is_ok_and(|v| v.trim() == "1")
}

/// [`gpu_or_skip`] with the requirement given explicitly.
///
/// # Panics
/// When `require` and no usable GPU is found.
pub fn gpu_or_skip_with(test: &str, require: bool) -> Option<Arc<CudaDevice>> {
    static NOTE: std::sync::Once = std::sync::Once::new();
    match CudaDevice::get(0) {
        // Under PALM_REQUIRE_GPU=1 the VM counts only when asked for by name.
        Ok(d) if require && d.is_emulated() && !emulation_requested() => {
            panic!("{test}: PALM_REQUIRE_GPU=1 but no usable GPU (cuda:0 is the PTX VM)")
        }
        Ok(d) => Some(d),
        Err(e) if require => panic!("{test}: PALM_REQUIRE_GPU=1 but no usable GPU: {e}"),
        Err(e) => {
            NOTE.call_once(|| {
                eprintln!("note: no usable GPU ({e}); the CUDA tests run on the PTX VM");
            });
            VM_FALLBACK.store(true, Ordering::Relaxed);
            match CudaDevice::get(0) {
                Ok(d) => Some(d),
                Err(e) => {
                    eprintln!("skipped: {test}: the PTX VM did not open: {e}");
                    None
                }
            }
        }
    }
}
