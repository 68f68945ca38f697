//! The CPU backend: the exact f32 reference every other backend is tested against.
//! Functions here take contiguous slices (or a layout to gather through) and return new buffers.

pub mod adamw;
pub mod attention;
pub(crate) mod backend;
pub mod buffers;
pub mod cross_entropy;
pub mod elementwise;
pub mod embedding;
pub mod exp;
pub mod layernorm;
pub mod logprob;
pub mod matmul;
pub mod reduce;
pub mod rope;
pub mod simd;
pub mod swiglu;

use crate::layout::Layout;
use crate::storage::{Buf, CpuElement, CpuStorage};
use crate::{Result, Tensor};

/// Run `f` on a worker of the thread pool. Call the hot loop (a training step) through this: ops
/// then start their parallel loops from inside the pool, so small ones run inline on the
/// current worker instead of waking threads and blocking the caller (a measurable share of a
/// small model's step on 2 cores).
pub fn on_workers<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// Below this many elements a loop runs on one thread (rayon's overhead would dominate).
pub(crate) const PAR_MIN: usize = 1 << 15;

/// Rows per parallel task for rows of `cols` elements: at least `PAR_MIN` elements a task, so a
/// small op stays one task (run inline by the calling worker, see `on_workers`).
pub(crate) fn min_rows(cols: usize) -> usize {
    (PAR_MIN / cols.max(1)).max(1)
}

/// An f32 operand as `count` rows of `len` contiguous elements, row i at `offset + i · stride`
/// of `data`: read in place from a view whose rows are evenly spaced (a narrowed last dim, such
/// as each half of SwiGLU's slice of the fused projection), gathered otherwise.
pub struct Rows<'a> {
    data: buffers::F32s<'a>,
    offset: usize,
    stride: usize,
    pub len: usize,
    pub count: usize,
}

impl<'a> Rows<'a> {
    pub(crate) fn strided(
        data: buffers::F32s<'a>,
        offset: usize,
        stride: usize,
        len: usize,
        count: usize,
    ) -> Self {
        Rows {
            data,
            offset,
            stride,
            len,
            count,
        }
    }

    pub fn row(&self, i: usize) -> &[f32] {
        let at = self.offset + i * self.stride;
        &self.data[at..at + self.len]
    }
}

pub(crate) fn owned<T: CpuElement>(v: Vec<T>) -> CpuStorage {
    T::wrap(Buf::Owned(v))
}

/// `n` elements of `dtype`, all `value` (converted as `as` does).
pub(crate) fn filled(value: f32, n: usize, dtype: crate::DType) -> CpuStorage {
    use crate::DType;
    match dtype {
        DType::F32 => owned(vec![value; n]),
        DType::BF16 => owned(vec![half::bf16::from_f32(value); n]),
        DType::U32 => owned(vec![value as u32; n]),
        DType::I64 => owned(vec![value as i64; n]),
        DType::U8 => owned(vec![value as u8; n]),
    }
}

/// The elements of a strided view, copied into row-major order.
pub(crate) fn gather<T: CpuElement>(data: &[T], layout: &Layout) -> Vec<T> {
    let mut out = Vec::with_capacity(layout.elem_count());
    layout.for_each_run(|start, len| out.extend_from_slice(&data[start..start + len]));
    out
}

/// `gather` for f32 into a recycled buffer.
pub(crate) fn gather_f32(data: &[f32], layout: &Layout) -> Vec<f32> {
    let mut out = buffers::take(layout.elem_count());
    if !out.is_empty() && layout.strides().iter().all(|&s| s == 0) {
        // One value broadcast everywhere (a scalar's gradient): runs of one element each.
        out.fill(data[layout.offset()]);
        return out;
    }
    let mut at = 0;
    layout.for_each_run(|start, len| {
        out[at..at + len].copy_from_slice(&data[start..start + len]);
        at += len;
    });
    out
}

/// A contiguous copy of a strided view, any dtype.
pub(crate) fn copy_strided(s: &CpuStorage, layout: &Layout) -> CpuStorage {
    match s {
        CpuStorage::F32(b) => owned(gather_f32(b.as_slice(), layout)),
        CpuStorage::BF16(b) => owned(gather(b.as_slice(), layout)),
        CpuStorage::U32(b) => owned(gather(b.as_slice(), layout)),
        CpuStorage::I64(b) => owned(gather(b.as_slice(), layout)),
        CpuStorage::U8(b) => owned(gather(b.as_slice(), layout)),
    }
}

/// f32 elements, borrowed when contiguous: the CPU backend computes in f32 only.
pub(crate) fn f32s<'a>(t: &'a Tensor, op: &'static str) -> Result<buffers::F32s<'a>> {
    backend::f32s((t.cpu()?, t.layout()), op)
}
