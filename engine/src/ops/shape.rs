//! Concatenation and its inverse for gradients. (Views — reshape, transpose, narrow, split,
//! broadcast — live on `Tensor` in tensor.rs: they copy nothing.)

use crate::autograd::Op;
use crate::backend::Backend;
use crate::storage::{Lift, on_backend_all};
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
