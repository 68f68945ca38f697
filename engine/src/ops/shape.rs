//! Concatenation and its inverse for gradients. (Views — reshape, transpose, narrow, split,
//! broadcast — live on `Tensor` in tensor.rs: they copy nothing.)

use crate::autograd::Op;
use crate::backend::Backend;
use crate::cuda::CudaStorage;
use crate::storage::{CpuStorage, Lift, Storage, on_backend_all};
use crate::{Error, Result, Tensor};

impl Tensor {
    /// Concatenate along `dim`; all other dims must agree.
    pub fn cat(ts: &[&Tensor], dim: usize) -> Result<Tensor> {
        let first = ts
            .first()
            .ok_or_else(|| Error::shape("cat", "no tensors"))?;
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
        let out = on_backend_all!("cat", ts => parts, {
            Backend::cat(&parts, dim, &dims).map(Lift::lift)
        })?;
        Ok(Tensor::from_op(out, &dims, ts, || Op::Cat(list, dim)))
    }

    /// Write `src` over this tensor's elements `start..start + src.dims()[dim]` along `dim`,
    /// in place: how a KV cache grows without reallocating every token. Only for data outside
    /// any gradient (neither tensor may track one). When another tensor still shares this one's
    /// data (a view that outlived its use), the data is copied first, so no other tensor ever
    /// sees the write.
    pub fn write_slice(&mut self, dim: usize, start: usize, src: &Tensor) -> Result<()> {
        let op = "write_slice";
        let len = src.dims().get(dim).copied().unwrap_or(0);
        let fits = start
            .checked_add(len)
            .is_some_and(|end| dim < self.rank() && end <= self.dims()[dim]);
        let same_rest = src.rank() == self.rank()
            && (0..self.rank()).all(|d| d == dim || src.dims()[d] == self.dims()[d]);
        if !fits || !same_rest {
            return Err(Error::shape(
                op,
                format!(
                    "cannot write {:?} at {start} along dim {dim} of {:?}",
                    src.dims(),
                    self.dims()
                ),
            ));
        }
        if src.dtype() != self.dtype() {
            return Err(Error::DType {
                op,
                got: src.dtype(),
                want: self.dtype().name(),
            });
        }
        if self.tracks() || src.tracks() {
            return Err(Error::Invalid(format!(
                "{op}: writes in place, so neither tensor may take part in a gradient"
            )));
        }
        if src.device() != self.device() {
            return Err(crate::ops::device_mismatch(
                op,
                &[self.device(), src.device()],
            ));
        }
        if self.storage_mut().is_none() {
            let copy = crate::storage::on_backend!(op, [self => s], {
                Backend::copy((s, self.layout()))
            })?;
            *self = Tensor::from_storage(copy, self.dims());
        }
        let slot = self.layout().narrow(dim, start, len)?;
        let dst = self
            .storage_mut()
            .ok_or_else(|| Error::Invalid(format!("{op}: a fresh copy is not its own")))?;
        match (dst, src.storage()) {
            (Storage::Cpu(d), Storage::Cpu(s)) => {
                CpuStorage::write_into(d, &slot, (s, src.layout()))
            }
            (Storage::Cuda(d), Storage::Cuda(s)) => {
                CudaStorage::write_into(d, &slot, (s, src.layout()))
            }
            // Devices were compared above.
            _ => Err(Error::Invalid(format!("{op}: operands on two devices"))),
        }
    }
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
