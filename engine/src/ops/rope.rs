//! Rotary position embedding with xPos scaling, as the seed applies it to q and k.
//!
//! θ_j = 10000^(−2j/dh); freqs[t] = cat(t·θ, t·θ); ζ_j = (2j + 0.4·dh)/(1.4·dh);
//! scale[t] = cat(ζ^p, ζ^p) with p = (t − center)/scale_base. q uses scale, k uses 1/scale, so
//! q·k depends on the position difference only; `center` is free (the seed uses n/2).

use crate::autograd::Op;
use crate::backend::Backend;
use crate::storage::on_backend;
use crate::{Error, Result, Tensor};
use std::sync::Arc;

pub use crate::backend::RopeTables;

/// Apply to x (…, n, dh) where the second-to-last dim is the position; `inverse` divides by
/// the scale (keys).
pub fn rope(x: &Tensor, tables: &Arc<RopeTables>, inverse: bool) -> Result<Tensor> {
    let r = x.rank();
    if r < 2 || x.dims()[r - 1] != tables.dh || x.dims()[r - 2] != tables.n {
        return Err(Error::shape(
            "rope",
            format!(
                "input {:?} does not match tables (n {}, dh {})",
                x.dims(),
                tables.n,
                tables.dh
            ),
        ));
    }
    let out =
        on_backend!("rope", [x => xs], Backend::rope((xs, x.layout()), tables, inverse, false))?;
    Ok(Tensor::from_op(out, x.dims(), &[x], || Op::Rope {
        x: x.clone(),
        tables: tables.clone(),
        inverse,
    }))
}

pub(crate) fn backward(
    x: &Tensor,
    t: &Arc<RopeTables>,
    inverse: bool,
    g: &Tensor,
) -> Result<Tensor> {
    let out = on_backend!("rope", [g => gs], Backend::rope((gs, g.layout()), t, inverse, true))?;
    Ok(Tensor::from_storage(out, x.dims()))
}
