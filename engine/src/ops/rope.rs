//! Rotary position embedding with xPos scaling, as the seed applies it to q and k.
//!
//! θ_j = 10000^(−2j/dh); freqs[t] = cat(t·θ, t·θ); ζ_j = (2j + 0.4·dh)/(1.4·dh);
//! scale[t] = cat(ζ^p, ζ^p) with p = (t − center)/scale_base. q uses scale, k uses 1/scale, so
//! q·k depends on the position difference only; `center` is free (the seed uses n/2).

use crate::autograd::Op;
use crate::cpu::{self, f32s, owned};
use crate::{Device, Error, Result, Tensor};
use std::sync::Arc;

/// cos, sin and xPos scale for a run of positions, each (positions × dh).
pub struct RopeTables {
    pub dh: usize,
    pub n: usize,
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub scale: Vec<f32>,
    /// The tables uploaded to a GPU on first use there (cos, sin, scale as one (3, n, dh) f32).
    pub(crate) on_device: std::sync::OnceLock<Tensor>,
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
            on_device: std::sync::OnceLock::new(),
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

    /// [`RopeTables::new`] through a small process-wide cache, so a training run builds (and on
    /// a GPU uploads) its tables once instead of on every forward.
    pub fn shared(
        dh: usize,
        start: usize,
        n: usize,
        center: f64,
        xpos: bool,
        scale_base: f64,
    ) -> Result<Arc<Self>> {
        type Key = (usize, usize, usize, u64, bool, u64);
        static CACHE: std::sync::Mutex<Vec<(Key, Arc<RopeTables>)>> =
            std::sync::Mutex::new(Vec::new());
        const KEEP: usize = 16;
        let key = (dh, start, n, center.to_bits(), xpos, scale_base.to_bits());
        let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, t)) = cache.iter().find(|(k, _)| *k == key) {
            return Ok(t.clone());
        }
        let t = Self::new(dh, start, n, center, xpos, scale_base)?;
        if cache.len() >= KEEP {
            cache.remove(0);
        }
        cache.push((key, t.clone()));
        Ok(t)
    }
}

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
    let out = match x.device() {
        Device::Cpu => Tensor::from_cpu(
            owned(cpu::rope::forward(&f32s(x, "rope")?, tables, inverse)),
            x.dims(),
        ),
        Device::Cuda(_) => crate::cuda::ops::rope::apply(x, tables, inverse, false)?,
    };
    Ok(out.record(&[x], || Op::Rope {
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
    if g.device() != Device::Cpu {
        return crate::cuda::ops::rope::apply(g, t, inverse, true);
    }
    let out = cpu::rope::backward(&f32s(g, "rope")?, t, inverse);
    Tensor::from_vec(out, x.dims())
}
