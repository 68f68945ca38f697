//! Fused SwiGLU: silu(gate) · x (x and gate are usually two column ranges of one projection).

use crate::autograd::Op;
use crate::backend::Backend;
use crate::storage::on_backend;
use crate::{Error, Result, Tensor};

pub fn swiglu(x: &Tensor, gate: &Tensor) -> Result<Tensor> {
    if x.dims().is_empty() {
        return Err(Error::shape("swiglu", "x and gate need at least one dim"));
    }
    if x.dims() != gate.dims() {
        return Err(Error::shape(
            "swiglu",
            format!("x {:?} vs gate {:?}", x.dims(), gate.dims()),
        ));
    }
    let out = on_backend!("swiglu", [x => xs, gate => gs], {
        Backend::swiglu((xs, x.layout()), (gs, gate.layout()))
    })?;
    Ok(Tensor::from_op(out, x.dims(), &[x, gate], || Op::Swiglu {
        x: x.clone(),
        gate: gate.clone(),
    }))
}

pub(crate) fn backward(x: &Tensor, gate: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)> {
    let grads = on_backend!("swiglu", [x => xs, gate => gts, g => gs], {
        Backend::swiglu_backward((xs, x.layout()), (gts, gate.layout()), (gs, g.layout()))
    })?;
    Ok(crate::ops::pair(grads, x.dims()))
}
