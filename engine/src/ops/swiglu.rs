//! Fused SwiGLU: silu(gate) · x (x and gate are usually two column ranges of one projection).

use crate::autograd::Op;
use crate::cpu::{self, f32s, owned};
use crate::storage::Storage;
use crate::{Error, Result, Tensor};

pub fn swiglu(x: &Tensor, gate: &Tensor) -> Result<Tensor> {
    let device = crate::ops::same_device("swiglu", &[x, gate])?;
    if x.dims() != gate.dims() {
        return Err(Error::shape(
            "swiglu",
            format!("x {:?} vs gate {:?}", x.dims(), gate.dims()),
        ));
    }
    if device != crate::Device::Cpu {
        let out = crate::cuda::ops::swiglu::forward(x, gate)?;
        return Ok(out.record(&[x, gate], || Op::Swiglu {
            x: x.clone(),
            gate: gate.clone(),
        }));
    }
    let out = cpu::swiglu::forward(&f32s(x, "swiglu")?, &f32s(gate, "swiglu")?);
    Ok(Tensor::from_op(
        Storage::Cpu(owned(out)),
        x.dims(),
        &[x, gate],
        || Op::Swiglu {
            x: x.clone(),
            gate: gate.clone(),
        },
    ))
}

pub(crate) fn backward(x: &Tensor, gate: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)> {
    if x.device() != crate::Device::Cpu {
        return crate::cuda::ops::swiglu::backward(x, gate, g);
    }
    let (dx, dg) = cpu::swiglu::backward(
        &f32s(x, "swiglu")?,
        &f32s(gate, "swiglu")?,
        &f32s(g, "swiglu")?,
    );
    Ok((
        Tensor::from_vec(dx, x.dims())?,
        Tensor::from_vec(dg, gate.dims())?,
    ))
}
