//! Rotary position embedding with xPos scaling, as the seed applies it to q and k.
//!
//! θ_j = 10000^(−2j/dh); freqs[t] = cat(t·θ, t·θ); ζ_j = (2j + 0.4·dh)/(1.4·dh);
//! scale[t] = cat(ζ^p, ζ^p) with p = (t − center)/scale_base. q uses scale, k uses 1/scale, so
//! q·k depends on the position difference only; `center` is free (the seed uses n/2).

use crate::autograd::Op;
use crate::cpu::{self, f32s, owned};
use crate::storage::Storage;
use crate::{Error, Result, Tensor};
use std::sync::Arc;

/// cos, sin and xPos scale for a run of positions, each (positions × dh).
pub struct RopeTables {
    pub dh: usize,
    pub n: usize,
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub scale: Vec<f32>,
}

impl RopeTables {
    /// Tables for absolute positions `start .. start + n`. With `xpos == false` the scale is 1.
    pub fn new(
        dh: usize,
        start: usize,
        n: usize,
        center: f64,
        xpos: bool,
        scale_base: f64,
    ) -> Result<Arc<Self>> {
        if dh == 0 || !dh.is_multiple_of(2) {
            return Err(Error::shape("rope", format!("head dim {dh} must be even")));
        }
        let h = dh / 2;
        let mut t = RopeTables {
            dh,
            n,
            cos: vec![0.0; n * dh],
            sin: vec![0.0; n * dh],
            scale: vec![1.0; n * dh],
        };
        for r in 0..n {
            let pos = (start + r) as f64;
            let power = (pos - center) / scale_base;
            for j in 0..h {
                let theta = 1.0 / 10000f64.powf(2.0 * j as f64 / dh as f64);
                let f = pos * theta;
                let zeta = (2.0 * j as f64 + 0.4 * dh as f64) / (1.4 * dh as f64);
                let s = if xpos { zeta.powf(power) } else { 1.0 };
                for jj in [j, j + h] {
                    t.cos[r * dh + jj] = f.cos() as f32;
                    t.sin[r * dh + jj] = f.sin() as f32;
                    t.scale[r * dh + jj] = s as f32;
                }
            }
        }
        Ok(Arc::new(t))
    }
}

/// Apply to x (…, n, dh) where the second-to-last dim is the position; `inverse` divides by
/// the scale (keys).
pub fn rope(x: &Tensor, tables: &Arc<RopeTables>, inverse: bool) -> Result<Tensor> {
    crate::ops::require_cpu("rope", &[x])?;
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
    let t = tables;
    let out = cpu::rope::forward(&f32s(x, "rope")?, t, inverse);
    Ok(Tensor::from_op(
        Storage::Cpu(owned(out)),
        x.dims(),
        &[x],
        || Op::Rope {
            x: x.clone(),
            tables: tables.clone(),
            inverse,
        },
    ))
}

pub(crate) fn backward(
    x: &Tensor,
    t: &Arc<RopeTables>,
    inverse: bool,
    g: &Tensor,
) -> Result<Tensor> {
    let out = cpu::rope::backward(&f32s(g, "rope")?, t, inverse);
    Tensor::from_vec(out, x.dims())
}
