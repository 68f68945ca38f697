//! Reductions: sum (keepdim / all / to a shape), mean, max (no gradient), log-softmax.

use crate::autograd::Op;
use crate::backend::Backend;
use crate::storage::on_backend;
use crate::{Error, Result, Tensor};

impl Tensor {
    /// Sum over `dims`, keeping them as size 1.
    pub fn sum_keepdim(&self, dims: &[usize]) -> Result<Tensor> {
        let mut out = self.dims().to_vec();
        for &d in dims {
            *out.get_mut(d).ok_or_else(|| {
                Error::shape("sum", format!("dim {d} out of range for {:?}", self.dims()))
            })? = 1;
        }
        sum_to(self, &out)
    }

    /// Sum of every element, as a scalar (shape []).
    pub fn sum_all(&self) -> Result<Tensor> {
        let all: Vec<usize> = (0..self.rank()).collect();
        self.sum_keepdim(&all)?.reshape(&[])
    }

    pub fn mean_all(&self) -> Result<Tensor> {
        let n = self.elem_count().max(1) as f32;
        self.sum_all()?.scale(1.0 / n)
    }

    /// Mean over `dims`, keeping them as size 1.
    pub fn mean_keepdim(&self, dims: &[usize]) -> Result<Tensor> {
        let n: usize = dims
            .iter()
            .map(|&d| self.dims().get(d).copied().unwrap_or(1))
            .product();
        self.sum_keepdim(dims)?.scale(1.0 / n.max(1) as f32)
    }

    /// Row maximum over the last dim (keepdim). Not differentiable: used for stability shifts.
    pub fn max_last_keepdim(&self) -> Result<Tensor> {
        let mut dims = self.dims().to_vec();
        *dims
            .last_mut()
            .ok_or_else(|| Error::shape("max", "scalar input"))? = 1;
        let out = on_backend!("max", [self => s], Backend::max_last((s, self.layout())))?;
        Ok(Tensor::from_storage(out, &dims))
    }

    /// log-softmax over the last dim.
    pub fn log_softmax(&self) -> Result<Tensor> {
        if self.rank() == 0 {
            return Err(Error::shape("log_softmax", "scalar input"));
        }
        let out = on_backend!("log_softmax", [self => s], {
            Backend::log_softmax((s, self.layout()))
        })?;
        Ok(Tensor::from_op(out, self.dims(), &[self], || {
            Op::LogSoftmax(self.clone())
        }))
    }

    pub fn softmax(&self) -> Result<Tensor> {
        self.log_softmax()?.exp()
    }
}

/// Sum `x` down to `dims` (the inverse of broadcasting): leading dims are dropped, dims of
/// size 1 are summed.
pub fn sum_to(x: &Tensor, dims: &[usize]) -> Result<Tensor> {
    if x.dims() == dims {
        return Ok(x.clone());
    }
    let lead = x
        .rank()
        .checked_sub(dims.len())
        .ok_or_else(|| Error::shape("sum_to", format!("cannot sum {:?} to {dims:?}", x.dims())))?;
    let mut keep = vec![1; lead];
    keep.extend_from_slice(dims);
    for (a, b) in x.dims().iter().zip(&keep) {
        if a != b && *b != 1 {
            return Err(Error::shape(
                "sum_to",
                format!("cannot sum {:?} to {dims:?}", x.dims()),
            ));
        }
    }
    let out = on_backend!("sum", [x => s], Backend::sum_to((s, x.layout()), &keep))?;
    let t = Tensor::from_op(out, &keep, &[x], || Op::Sum(x.clone()));
    if lead == 0 { Ok(t) } else { t.reshape(dims) }
}

pub(crate) fn log_softmax_backward(y: &Tensor, g: &Tensor) -> Result<Tensor> {
    let out = on_backend!("log_softmax", [y => ys, g => gs], {
        Backend::log_softmax_backward((ys, y.layout()), (gs, g.layout()))
    })?;
    Ok(Tensor::from_storage(out, y.dims()))
}
