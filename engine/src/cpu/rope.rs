//! Rotary embedding with xPos scaling, half-split rotation: rot(u) = cat(−u[h:], u[:h]).
//! Tables are (positions × dh); row t of x uses table row t.

use crate::backend::RopeTables;
use rayon::prelude::*;

/// out = (u·cos + rot(u)·sin) · s, with s = scale (or 1/scale when `inverse`), rows of dh;
/// row r of x uses table row r % n (the position is the second-to-last dim).
pub fn forward(x: &[f32], tables: &RopeTables, inverse: bool) -> Vec<f32> {
    let (cos, sin, scale) = (&tables.cos, &tables.sin, &tables.scale);
    let (dh, n) = (tables.dh, tables.n);
    let h = dh / 2;
    let mut out = super::buffers::take(x.len());
    out.par_chunks_mut(dh)
        .zip(x.par_chunks(dh))
        .with_min_len(super::min_rows(dh))
        .enumerate()
        .for_each(|(r, (o, u))| {
            let t = (r % n) * dh;
            for j in 0..dh {
                let rot = if j < h { -u[j + h] } else { u[j - h] };
                let s = if inverse {
                    1.0 / scale[t + j]
                } else {
                    scale[t + j]
                };
                o[j] = (u[j] * cos[t + j] + rot * sin[t + j]) * s;
            }
        });
    out
}

/// The transpose of `forward`: dx = cos·(s·g) + rotᵀ(sin·s·g), rotᵀ(y) = cat(y[h:], −y[:h]).
pub fn backward(g: &[f32], tables: &RopeTables, inverse: bool) -> Vec<f32> {
    let (cos, sin, scale) = (&tables.cos, &tables.sin, &tables.scale);
    let (dh, n) = (tables.dh, tables.n);
    let h = dh / 2;
    let mut out = super::buffers::take(g.len());
    out.par_chunks_mut(dh)
        .zip(g.par_chunks(dh))
        .with_min_len(super::min_rows(dh))
        .enumerate()
        .for_each(|(r, (o, g))| {
            let t = (r % n) * dh;
            let s = |j: usize| {
                if inverse {
                    1.0 / scale[t + j]
                } else {
                    scale[t + j]
                }
            };
            for j in 0..dh {
                let rot_t = if j < h {
                    g[j + h] * sin[t + j + h] * s(j + h)
                } else {
                    -g[j - h] * sin[t + j - h] * s(j - h)
                };
                o[j] = g[j] * s(j) * cos[t + j] + rot_t;
            }
        });
    out
}
