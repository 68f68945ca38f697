//! The CUDA side of every op, one module per kernel family (the names of `kernels/cuda/*.cu`).
//!
//! Each module has two layers: `plan_*` functions, pure, that turn device addresses and sizes into
//! a [`Launch`] (kernel name, grid/block/shared memory, arguments) — the CPU tests check every plan
//! against the PTX signatures and CUDA's limits without a GPU — and storage-level functions that
//! take (storage, layout) operands, allocate outputs, make inputs contiguous (or cast them) where
//! a kernel needs it, and run the plans: the CUDA side of the backend boundary
//! (`crate::backend::Backend`, implemented in `cuda/backend.rs`). They never build tensors; the
//! optimizer's multi-tensor step, the gradient-norm sum and sampling (`adamw.rs`, `sumsq_into`,
//! `sampling.rs`) are device routines of their callers rather than ops, and take tensors.

// The plans take what the kernels take: as many pointers and sizes as their signatures.
#![allow(clippy::too_many_arguments)]

pub mod adamw;
pub mod attention;
pub mod cross_entropy;
pub mod elementwise;
pub mod embedding;
pub mod layernorm;
pub mod logprob;
pub mod matmul;
pub mod reduce;
pub mod rope;
pub mod sampling;
pub mod swiglu;

use super::launch::{KArg, LaunchCfg};
use super::{CudaDevice, CudaStorage};
use crate::backend::Arg;
use crate::layout::Layout;
use crate::storage::Storage;
use crate::{DType, Error, Result, Tensor};
use std::sync::Arc;

/// A CUDA operand: device storage and the layout to read it through.
pub(crate) type Cu<'a> = Arg<'a, CudaStorage>;

/// Threads per block of the grid-stride kernels.
pub const BLOCK: u32 = 256;

/// One kernel launch, fully described: what `CudaDevice::run` executes.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    pub kernel: String,
    pub cfg: LaunchCfg,
    pub args: Vec<KArg>,
}

impl Launch {
    pub fn new(kernel: impl Into<String>, cfg: LaunchCfg, args: Vec<KArg>) -> Self {
        Launch {
            kernel: kernel.into(),
            cfg,
            args,
        }
    }
}

/// The kernel-name suffix of a float dtype (`f32` / `bf16`).
pub fn suffix(dtype: DType, op: &'static str) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::BF16 => Ok("bf16"),
        other => Err(Error::DType {
            op,
            got: other,
            want: "f32 or bf16 (on CUDA)",
        }),
    }
}

/// Threads per block for a row kernel over `cols` columns (a multiple of 32, ≤ 1024).
pub fn row_block(cols: usize) -> u32 {
    match cols {
        0..=256 => 32,
        257..=4096 => 256,
        _ => 1024,
    }
}

/// A size as a kernel's `int` argument, or an error naming the op.
pub fn int(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v)
        .map_err(|_| Error::Invalid(format!("{what} = {v} exceeds a kernel's int range")))
}

/// The device storage of a CUDA tensor.
pub(crate) fn storage(t: &Tensor) -> Result<&CudaStorage> {
    match t.storage() {
        Storage::Cuda(s) => Ok(s),
        Storage::Cpu(_) => Err(Error::DeviceMismatch {
            op: "cuda",
            lhs: t.device(),
            rhs: crate::Device::Cuda(0),
        }),
    }
}

pub(crate) fn device_of(t: &Tensor) -> Result<Arc<CudaDevice>> {
    Ok(storage(t)?.device().clone())
}

/// Address of the tensor's first element (storage start + layout offset); the layout's strides
/// are the caller's business.
pub(crate) fn base_ptr(t: &Tensor) -> Result<u64> {
    let s = storage(t)?;
    Ok(s.buffer().ptr() + (t.layout().offset() * s.dtype().size_in_bytes()) as u64)
}

/// Address of a contiguous tensor's first element; an error for strided views (an engine bug:
/// callers make inputs contiguous first).
pub(crate) fn ptr(t: &Tensor) -> Result<u64> {
    if !t.layout().is_contiguous() {
        return Err(Error::Invalid(format!(
            "internal: CUDA kernel input of shape {:?} is not contiguous",
            t.dims()
        )));
    }
    base_ptr(t)
}

/// `n` uninitialised elements on `dev`.
pub(crate) fn alloc(dev: &Arc<CudaDevice>, dtype: DType, n: usize) -> Result<CudaStorage> {
    let bytes = n
        .checked_mul(dtype.size_in_bytes())
        .ok_or_else(|| Error::Invalid(format!("{n} elements of {dtype:?} overflow")))?;
    Ok(CudaStorage::new(dev.alloc(bytes)?, dtype))
}

/// Address of an operand's first element (storage start + layout offset); its strides are the
/// caller's business.
pub(crate) fn addr((s, l): Cu) -> u64 {
    s.buffer().ptr() + (l.offset() * s.dtype().size_in_bytes()) as u64
}

/// A kernel input: contiguous memory at `ptr`, the operand itself or a copy held here until the
/// launch that reads it is queued.
pub(crate) struct Input {
    pub ptr: u64,
    _copy: Option<CudaStorage>,
}

impl Input {
    fn copied(c: CudaStorage) -> Self {
        Input {
            ptr: out_ptr(&c),
            _copy: Some(c),
        }
    }
}

/// The operand as contiguous memory (copied when it is a strided view).
pub(crate) fn input(x: Cu) -> Result<Input> {
    if x.1.is_contiguous() {
        return Ok(Input {
            ptr: addr(x),
            _copy: None,
        });
    }
    Ok(Input::copied(elementwise::copy(x)?))
}

/// The operand as contiguous memory of `dtype` (converted when it has another).
pub(crate) fn input_as(x: Cu, dtype: DType) -> Result<Input> {
    if x.0.dtype() == dtype {
        return input(x);
    }
    Ok(Input::copied(elementwise::cast(x, dtype)?))
}

/// The layout of a new contiguous result.
pub(crate) fn dense(dims: &[usize]) -> Layout {
    Layout::contiguous(dims)
}

/// An untracked tensor over new device storage.
pub(crate) fn tensor(s: CudaStorage, dims: &[usize]) -> Tensor {
    Tensor::from_storage(Storage::Cuda(s), dims)
}

/// Address of a new storage's first element.
pub(crate) fn out_ptr(s: &CudaStorage) -> u64 {
    s.buffer().ptr()
}

/// Merge dimensions that are contiguous with their outer neighbour in every layout at once, drop
/// size-1 dims, and pad to rank 4 on the left: the form the strided-copy kernels take.
pub fn collapse<const K: usize>(
    dims: &[usize],
    strides: [&[usize]; K],
) -> Result<([usize; 4], [[i64; 4]; K])> {
    let mut out: Vec<(usize, [i64; K])> = Vec::new();
    for (i, &d) in dims.iter().enumerate() {
        if d == 1 {
            continue;
        }
        let s: [i64; K] = std::array::from_fn(|k| strides[k][i] as i64);
        if let Some(last) = out.last_mut()
            && (0..K).all(|k| last.1[k] == s[k] * d as i64)
        {
            last.0 *= d;
            last.1 = s;
            continue;
        }
        out.push((d, s));
    }
    if out.len() > 4 {
        return Err(Error::Invalid(format!(
            "a strided copy on CUDA handles views of up to 4 non-mergeable dims, got {dims:?}"
        )));
    }
    let pad = 4 - out.len();
    let mut d4 = [1usize; 4];
    let mut s4 = [[0i64; 4]; K];
    for (j, (d, s)) in out.into_iter().enumerate() {
        d4[pad + j] = d;
        for k in 0..K {
            s4[k][pad + j] = s[k];
        }
    }
    Ok((d4, s4))
}

/// Run `f` with gradients off: the optimizer step and sampling (tensor-level device routines,
/// not ops) build intermediate tensors that must not join the graph.
pub(crate) fn untracked<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    let _g = crate::no_grad();
    f()
}

#[cfg(test)]
mod tests;
