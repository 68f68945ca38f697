//! Concatenation and its inverse for gradients. (Views — reshape, transpose, narrow, split,
//! broadcast — live on `Tensor` in tensor.rs: they copy nothing.)

use crate::autograd::Op;
use crate::cpu::{data, owned};
use crate::storage::{CpuElement, CpuStorage, Storage};
use crate::{DType, Error, Result, Tensor};

impl Tensor {
    /// Concatenate along `dim`; all other dims must agree.
    pub fn cat(ts: &[&Tensor], dim: usize) -> Result<Tensor> {
        let first = ts
            .first()
            .ok_or_else(|| Error::shape("cat", "no tensors"))?;
        let device = crate::ops::same_device("cat", ts)?;
        let rank = first.rank();
        if dim >= rank {
            return Err(Error::shape(
                "cat",
                format!("dim {dim} out of range for {:?}", first.dims()),
            ));
        }
        let mut dims = first.dims().to_vec();
        dims[dim] = 0;
        for t in ts {
            let ok = t.rank() == rank
                && t.dtype() == first.dtype()
                && (0..rank).all(|d| d == dim || t.dims()[d] == first.dims()[d]);
            if !ok {
                return Err(Error::shape(
                    "cat",
                    format!(
                        "cannot concatenate {:?} with {:?} on dim {dim}",
                        first.dims(),
                        t.dims()
                    ),
                ));
            }
            dims[dim] += t.dims()[dim];
        }
        let list: Vec<Tensor> = ts.iter().map(|t| (*t).clone()).collect();
        if device != crate::Device::Cpu {
            let out = crate::cuda::ops::elementwise::cat(ts, dim, &dims)?;
            return Ok(out.record(ts, || Op::Cat(list, dim)));
        }
        let s = match first.dtype() {
            DType::F32 => cat_f32(ts, dim)?,
            DType::BF16 => cat_cpu::<half::bf16>(ts, dim)?,
            DType::U32 => cat_cpu::<u32>(ts, dim)?,
            DType::I64 => cat_cpu::<i64>(ts, dim)?,
            DType::U8 => cat_cpu::<u8>(ts, dim)?,
        };
        Ok(Tensor::from_op(Storage::Cpu(s), &dims, ts, || {
            Op::Cat(list, dim)
        }))
    }
}

fn cat_cpu<T: CpuElement>(ts: &[&Tensor], dim: usize) -> Result<CpuStorage> {
    let outer: usize = ts[0].dims()[..dim].iter().product();
    let blocks: Vec<(std::borrow::Cow<[T]>, usize)> = ts
        .iter()
        .map(|t| {
            let inner: usize = t.dims()[dim..].iter().product();
            Ok((data::<T>(t, "cat")?, inner))
        })
        .collect::<Result<_>>()?;
    let total: usize = blocks.iter().map(|(d, _)| d.len()).sum();
    let mut out = Vec::with_capacity(total);
    for o in 0..outer {
        for (d, inner) in &blocks {
            out.extend_from_slice(&d[o * inner..(o + 1) * inner]);
        }
    }
    Ok(owned(out))
}

/// `cat_cpu` for f32, into a recycled buffer (concatenated gradients are large).
fn cat_f32(ts: &[&Tensor], dim: usize) -> Result<CpuStorage> {
    let outer: usize = ts[0].dims()[..dim].iter().product();
    let blocks: Vec<(std::borrow::Cow<[f32]>, usize)> = ts
        .iter()
        .map(|t| {
            Ok((
                crate::cpu::f32s(t, "cat")?,
                t.dims()[dim..].iter().product(),
            ))
        })
        .collect::<Result<_>>()?;
    let total: usize = blocks.iter().map(|(d, _)| d.len()).sum();
    let mut out = crate::cpu::buffers::take(total);
    let mut at = 0;
    for o in 0..outer {
        for (d, inner) in &blocks {
            out[at..at + inner].copy_from_slice(&d[o * inner..(o + 1) * inner]);
            at += inner;
        }
    }
    Ok(owned(out))
}

/// Place `g` at `start` along `dim` inside zeros of `dims` (the gradient of a narrow).
pub(crate) fn pad_narrow(g: &Tensor, dims: &[usize], dim: usize, start: usize) -> Result<Tensor> {
    let mut parts = Vec::new();
    let mut before = dims.to_vec();
    before[dim] = start;
    let mut after = dims.to_vec();
    after[dim] = dims[dim] - start - g.dims()[dim];
    if start > 0 {
        parts.push(Tensor::zeros(&before, g.dtype(), g.device())?);
    }
    parts.push(g.clone());
    if after[dim] > 0 {
        parts.push(Tensor::zeros(&after, g.dtype(), g.device())?);
    }
    let refs: Vec<&Tensor> = parts.iter().collect();
    Tensor::cat(&refs, dim)
}
