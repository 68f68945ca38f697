//! Rotary embedding with xPos scaling, half-split rotation: rot(u) = cat(−u[h:], u[:h]).
//! Tables are (positions × dh); row t of x uses table row t.

use super::simd;
use crate::backend::RopeTables;
use rayon::prelude::*;

/// out = (u·cos + rot(u)·sin) · s, with s = scale (or 1/scale when `inverse`), rows of dh;
/// row r of x uses table row r % n (the position is the second-to-last dim).
pub fn forward(x: &[f32], tables: &RopeTables, inverse: bool) -> Vec<f32> {
    by_rows(x, tables, inverse, forward_row)
}

/// The transpose of `forward`: dx = cos·(s·g) + rotᵀ(sin·s·g), rotᵀ(y) = cat(y[h:], −y[:h]).
pub fn backward(g: &[f32], tables: &RopeTables, inverse: bool) -> Vec<f32> {
    by_rows(g, tables, inverse, backward_row)
}

/// One row's table entries: cos, sin and the scale to apply, each dh long.
struct Row<'a> {
    cos: &'a [f32],
    sin: &'a [f32],
    scale: &'a [f32],
}

/// `row(out, x, tables)` for every row of dh, rows in parallel.
fn by_rows(
    x: &[f32],
    tables: &RopeTables,
    inverse: bool,
    row: fn(&mut [f32], &[f32], &Row),
) -> Vec<f32> {
    let scale = if inverse {
        &tables.inv_scale
    } else {
        &tables.scale
    };
    let (dh, n) = (tables.dh, tables.n);
    let mut out = super::buffers::take(x.len());
    out.par_chunks_mut(dh)
        .zip(x.par_chunks(dh))
        .with_min_len(super::min_rows(dh))
        .enumerate()
        .for_each(|(r, (o, u))| {
            let t = (r % n) * dh..(r % n + 1) * dh;
            let at = Row {
                cos: &tables.cos[t.clone()],
                sin: &tables.sin[t.clone()],
                scale: &scale[t],
            };
            row(o, u, &at);
        });
    out
}

simd::widest! {
    /// One row of `forward`.
    fn forward_row(o: &mut [f32], u: &[f32], t: &Row) = forward_body;
}

// Each half in its own loop, so neither has a branch per element and both vectorise.
#[inline(always)]
fn forward_body(o: &mut [f32], u: &[f32], t: &Row) {
    let h = o.len() / 2;
    let (u0, u1) = u[..2 * h].split_at(h);
    let (cos, sin, scale) = (&t.cos[..2 * h], &t.sin[..2 * h], &t.scale[..2 * h]);
    for j in 0..h {
        o[j] = (u0[j] * cos[j] + -u1[j] * sin[j]) * scale[j];
    }
    for j in h..2 * h {
        o[j] = (u1[j - h] * cos[j] + u0[j - h] * sin[j]) * scale[j];
    }
}

simd::widest! {
    /// One row of `backward`.
    fn backward_row(o: &mut [f32], g: &[f32], t: &Row) = backward_body;
}

#[inline(always)]
fn backward_body(o: &mut [f32], g: &[f32], t: &Row) {
    let h = o.len() / 2;
    let (g0, g1) = g[..2 * h].split_at(h);
    let (cos, sin, scale) = (&t.cos[..2 * h], &t.sin[..2 * h], &t.scale[..2 * h]);
    for j in 0..h {
        o[j] = g0[j] * scale[j] * cos[j] + g1[j] * sin[j + h] * scale[j + h];
    }
    for j in h..2 * h {
        o[j] = g1[j - h] * scale[j] * cos[j] + -g0[j - h] * sin[j - h] * scale[j - h];
    }
}
