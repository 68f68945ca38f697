//! Gain-only LayerNorm, y = (x − mean)/sqrt(var + 1e-5) · (gamma + 1), over the last dim.

use crate::autograd::Op;
use crate::cpu::{self, f32s, owned};
use crate::storage::Storage;
use crate::{Error, Result, Tensor};

pub fn layer_norm(x: &Tensor, gamma: &Tensor) -> Result<Tensor> {
    let device = crate::ops::same_device("layer_norm", &[x, gamma])?;
    let d = *x
        .dims()
        .last()
        .ok_or_else(|| Error::shape("layer_norm", "scalar input"))?;
    if gamma.dims() != [d] {
        return Err(Error::shape(
            "layer_norm",
            format!(
                "gamma {:?} does not match input {:?}",
                gamma.dims(),
                x.dims()
            ),
        ));
    }
    if device != crate::Device::Cpu {
        let (y, stats) = crate::cuda::ops::layernorm::forward(x, gamma)?;
        return Ok(y.record(&[x, gamma], || Op::LayerNorm {
            x: x.clone(),
            gamma: gamma.clone(),
            stats,
        }));
    }
    let (y, stats) =
        cpu::layernorm::forward(&f32s(x, "layer_norm")?, &f32s(gamma, "layer_norm")?, d);
    let rows = x.elem_count() / d.max(1);
    let stats = Tensor::from_vec(stats, &[rows, 2])?;
    Ok(Tensor::from_op(
        Storage::Cpu(owned(y)),
        x.dims(),
        &[x, gamma],
        || Op::LayerNorm {
            x: x.clone(),
            gamma: gamma.clone(),
            stats,
        },
    ))
}

pub(crate) fn backward(
    x: &Tensor,
    gamma: &Tensor,
    stats: &Tensor,
    g: &Tensor,
) -> Result<(Tensor, Tensor)> {
    if x.device() != crate::Device::Cpu {
        return crate::cuda::ops::layernorm::backward(x, gamma, stats, g);
    }
    let d = gamma.dims()[0];
    let (dx, dg) = cpu::layernorm::backward(
        &f32s(x, "layer_norm")?,
        &f32s(gamma, "layer_norm")?,
        &f32s(stats, "layer_norm")?,
        &f32s(g, "layer_norm")?,
        d,
    );
    Ok((
        Tensor::from_vec(dx, x.dims())?,
        Tensor::from_vec(dg, gamma.dims())?,
    ))
}
