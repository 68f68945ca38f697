//! Gain-only LayerNorm, y = (x − mean)/sqrt(var + 1e-5) · (gamma + 1), over the last dim.

use crate::autograd::Op;
use crate::backend::Backend;
use crate::storage::on_backend;
use crate::{Error, Result, Tensor};

pub fn layer_norm(x: &Tensor, gamma: &Tensor) -> Result<Tensor> {
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
    let (y, stats) = on_backend!("layer_norm", [x => xs, gamma => gs], {
        Backend::layer_norm((xs, x.layout()), (gs, gamma.layout()))
    })?;
    // Per-row mean and rstd, in the backend's own arrangement.
    let stats = Tensor::from_storage(stats, &[2 * (x.elem_count() / d.max(1))]);
    Ok(Tensor::from_op(y, x.dims(), &[x, gamma], || {
        Op::LayerNorm {
            x: x.clone(),
            gamma: gamma.clone(),
            stats,
        }
    }))
}

pub(crate) fn backward(
    x: &Tensor,
    gamma: &Tensor,
    stats: &Tensor,
    g: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let (dx, dg) = on_backend!(
        "layer_norm",
        [x => xs, gamma => gms, stats => ss, g => gs],
        Backend::layer_norm_backward(
            (xs, x.layout()),
            (gms, gamma.layout()),
            (ss, stats.layout()),
            (gs, g.layout()),
        )
    )?;
    Ok((
        Tensor::from_storage(dx, x.dims()),
        Tensor::from_storage(dg, gamma.dims()),
    ))
}
