//! Tensor data: one enum arm per device (backend), one arm per dtype on the CPU; and `on_backend!`,
//! the one place an op's operands meet their backend.

use crate::cuda::CudaStorage;
use crate::{DType, Device, Element};
use half::bf16;
use std::sync::Arc;

/// Bytes a tensor can borrow: a memory-mapped file, or bytes embedded in the binary.
pub type Backing = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// CPU memory: owned, or borrowed from a memory-mapped file without copying.
pub enum Buf<T> {
    Owned(Vec<T>),
    Mapped {
        map: Backing,
        start: usize,
        len: usize,
    },
}

impl<T: Element> Buf<T> {
    pub fn as_slice(&self) -> &[T] {
        match self {
            Buf::Owned(v) => v,
            // Alignment was checked when the mapping was wrapped (see `Buf::mapped`).
            Buf::Mapped { map, start, len } => bytemuck::cast_slice(
                &(**map).as_ref()[*start..*start + len * std::mem::size_of::<T>()],
            ),
        }
    }
    /// Wrap a byte range of a mapping; `None` when it is misaligned for `T` (the caller copies).
    pub fn mapped(map: Backing, start: usize, len: usize) -> Option<Self> {
        let bytes = (*map)
            .as_ref()
            .get(start..start + len * std::mem::size_of::<T>())?;
        bytemuck::try_cast_slice::<u8, T>(bytes).ok()?;
        Some(Buf::Mapped { map, start, len })
    }
    pub fn is_mapped(&self) -> bool {
        matches!(self, Buf::Mapped { .. })
    }
}

pub enum CpuStorage {
    F32(Buf<f32>),
    BF16(Buf<bf16>),
    U32(Buf<u32>),
    I64(Buf<i64>),
    U8(Buf<u8>),
}

impl Drop for CpuStorage {
    fn drop(&mut self) {
        if let CpuStorage::F32(Buf::Owned(v)) = self {
            crate::cpu::buffers::give(std::mem::take(v));
        }
    }
}

impl CpuStorage {
    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::U32(_) => DType::U32,
            CpuStorage::I64(_) => DType::I64,
            CpuStorage::U8(_) => DType::U8,
        }
    }
    pub fn is_mapped(&self) -> bool {
        match self {
            CpuStorage::F32(b) => b.is_mapped(),
            CpuStorage::BF16(b) => b.is_mapped(),
            CpuStorage::U32(b) => b.is_mapped(),
            CpuStorage::I64(b) => b.is_mapped(),
            CpuStorage::U8(b) => b.is_mapped(),
        }
    }
}

/// Element types that a `CpuStorage` can be built from and viewed as.
pub trait CpuElement: Element {
    fn wrap(buf: Buf<Self>) -> CpuStorage;
    fn view(s: &CpuStorage) -> Option<&[Self]>;
}

macro_rules! cpu_element {
    ($t:ty, $arm:ident) => {
        impl CpuElement for $t {
            fn wrap(buf: Buf<Self>) -> CpuStorage {
                CpuStorage::$arm(buf)
            }
            fn view(s: &CpuStorage) -> Option<&[Self]> {
                match s {
                    CpuStorage::$arm(b) => Some(b.as_slice()),
                    _ => None,
                }
            }
        }
    };
}
cpu_element!(f32, F32);
cpu_element!(bf16, BF16);
cpu_element!(u32, U32);
cpu_element!(i64, I64);
cpu_element!(u8, U8);

pub enum Storage {
    Cpu(CpuStorage),
    Cuda(CudaStorage),
}

impl Storage {
    /// Whether this backend's fused attention covers head dim `d`.
    pub(crate) fn fuses_attention(&self, d: usize) -> bool {
        use crate::backend::Backend;
        match self {
            Storage::Cpu(_) => CpuStorage::fuses_attention(d),
            Storage::Cuda(_) => CudaStorage::fuses_attention(d),
        }
    }
    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Cuda(s) => Device::Cuda(s.device().ordinal()),
        }
    }
    pub fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(s) => s.dtype(),
            Storage::Cuda(s) => s.dtype(),
        }
    }
}

/// A backend's results, lifted into `Storage` (the same shape of result from either arm).
pub(crate) trait Lift {
    type Out;
    fn lift(self) -> Self::Out;
}

/// A backend's own storage, picked out of a `Storage` (for ops with any number of operands).
pub(crate) trait Unlift: Sized {
    fn unlift(s: &Storage) -> Option<&Self>;
}

impl Lift for CpuStorage {
    type Out = Storage;
    fn lift(self) -> Storage {
        Storage::Cpu(self)
    }
}

impl Unlift for CpuStorage {
    fn unlift(s: &Storage) -> Option<&Self> {
        match s {
            Storage::Cpu(s) => Some(s),
            Storage::Cuda(_) => None,
        }
    }
}

impl Lift for CudaStorage {
    type Out = Storage;
    fn lift(self) -> Storage {
        Storage::Cuda(self)
    }
}

impl Unlift for CudaStorage {
    fn unlift(s: &Storage) -> Option<&Self> {
        match s {
            Storage::Cuda(s) => Some(s),
            Storage::Cpu(_) => None,
        }
    }
}

/// The operands of an n-ary op, all on `S`'s backend, or an error naming the op.
pub(crate) fn operands<'a, S: Unlift>(
    op: &'static str,
    ts: &[&'a crate::Tensor],
) -> crate::Result<Vec<crate::backend::Arg<'a, S>>> {
    ts.iter()
        .map(|t| {
            S::unlift(t.storage())
                .map(|s| (s, t.layout()))
                .ok_or_else(|| {
                    let devices: Vec<Device> = ts.iter().map(|t| t.device()).collect();
                    crate::ops::device_mismatch(op, &devices)
                })
        })
        .collect()
}

impl<S: Lift> Lift for (S, S) {
    type Out = (S::Out, S::Out);
    fn lift(self) -> Self::Out {
        (self.0.lift(), self.1.lift())
    }
}

impl<S: Lift> Lift for (S, S, S) {
    type Out = (S::Out, S::Out, S::Out);
    fn lift(self) -> Self::Out {
        (self.0.lift(), self.1.lift(), self.2.lift())
    }
}

impl<S: Lift<Out = Storage>> Lift for crate::backend::Two<S> {
    type Out = crate::backend::Two<Storage>;
    fn lift(self) -> Self::Out {
        use crate::backend::Two;
        match self {
            Two::Separate(a, b) => Two::Separate(a.lift(), b.lift()),
            Two::Shared(s, a, b) => Two::Shared(s.lift(), a, b),
        }
    }
}

/// Evaluate `$body` with each listed tensor's storage bound (as `$s`) to its backend's storage
/// type, and lift the result back into `Storage`: the body is written once, against the
/// `Backend` trait, and compiled for each backend. Operands on different devices are an error
/// naming the op.
macro_rules! on_backend {
    ($op:expr, [$($t:expr => $s:ident),+ $(,)?], $body:expr) => {{
        #[allow(unreachable_patterns)]
        match ($($t.storage(),)+) {
            ($($crate::storage::Storage::Cpu($s),)+) => $body.map($crate::storage::Lift::lift),
            ($($crate::storage::Storage::Cuda($s),)+) => $body.map($crate::storage::Lift::lift),
            _ => Err($crate::ops::device_mismatch($op, &[$($t.device()),+])),
        }
    }};
}
pub(crate) use on_backend;

/// `on_backend!` for ops over a list of tensors (`cat`, the gradient norm): `$parts` is bound to
/// their operands on the first one's backend; `$body` lifts its own result.
macro_rules! on_backend_all {
    ($op:expr, $ts:expr => $parts:ident, $body:expr) => {{
        let ts: &[&$crate::Tensor] = $ts;
        match ts.first().map(|t| t.storage()) {
            Some($crate::storage::Storage::Cuda(_)) => {
                let $parts = $crate::storage::operands::<$crate::cuda::CudaStorage>($op, ts)?;
                $body
            }
            _ => {
                let $parts = $crate::storage::operands::<$crate::storage::CpuStorage>($op, ts)?;
                $body
            }
        }
    }};
}
pub(crate) use on_backend_all;
