//! Reductions: sum (keepdim / all / to a shape), mean, max (no gradient), log-softmax.

use crate::autograd::Op;
use crate::cpu::{self, f32s, owned};
use crate::storage::Storage;
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
        if self.device() != crate::Device::Cpu {
            return crate::cuda::ops::reduce::max_last(self);
        }
        let cols = self.dim(self.rank().saturating_sub(1))?;
        let mut dims = self.dims().to_vec();
        *dims.last_mut().unwrap_or(&mut 0) = 1;
        let out = cpu::reduce::max_last(&f32s(self, "max")?, cols.max(1));
        Tensor::from_vec(out, &dims)
    }

    /// log-softmax over the last dim.
    pub fn log_softmax(&self) -> Result<Tensor> {
        if self.device() != crate::Device::Cpu {
            let out = crate::cuda::ops::reduce::log_softmax(self)?;
            return Ok(out.record(&[self], || Op::LogSoftmax(self.clone())));
        }
        let cols = self.dim(self.rank().saturating_sub(1))?;
        let out = cpu::reduce::log_softmax(&f32s(self, "log_softmax")?, cols.max(1));
        Ok(Tensor::from_op(
            Storage::Cpu(owned(out)),
            self.dims(),
            &[self],
            || Op::LogSoftmax(self.clone()),
        ))
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
    let out = match x.device() {
        crate::Device::Cpu => Tensor::from_cpu(
            owned(cpu::reduce::sum_to(&f32s(x, "sum")?, x.dims(), &keep)),
            &keep,
        ),
        crate::Device::Cuda(_) => crate::cuda::ops::reduce::sum_to(x, &keep)?,
    };
    let t = out.record(&[x], || Op::Sum(x.clone()));
    if lead == 0 { Ok(t) } else { t.reshape(dims) }
}

pub(crate) fn log_softmax_backward(y: &Tensor, g: &Tensor) -> Result<Tensor> {
    if crate::ops::same_device("log_softmax", &[y, g])? != crate::Device::Cpu {
        return crate::cuda::ops::reduce::log_softmax_backward(y, g);
    }
    let cols = y.dims().last().copied().unwrap_or(1).max(1);
    let out =
        cpu::reduce::log_softmax_backward(&f32s(y, "log_softmax")?, &f32s(g, "log_softmax")?, cols);
    Tensor::from_vec(out, y.dims())
}
