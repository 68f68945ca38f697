//! SwiGLU: silu(gate) · x, the PaLM feedforward gate (the seed's `x, gate = chunk(2)`).

use super::Rows;
use super::exp::exp;
use super::simd;
use rayon::prelude::*;

/// σ(a) with the vectorisable e^x (`backend::sigmoid` calls libm per element).
#[inline(always)]
fn sigmoid(a: f32) -> f32 {
    1.0 / (1.0 + exp(-a))
}

/// `silu(gate) · x`, both read row by row in place (each is half of a slice of the fused
/// projection's output: gathering them cost two copies of it per layer).
pub fn forward(x: &Rows, gate: &Rows) -> Vec<f32> {
    let (len, count) = (x.len, x.count);
    let mut out = super::buffers::take(len * count);
    if out.is_empty() {
        return out;
    }
    let rows = super::min_rows(len);
    out.par_chunks_mut(rows * len)
        .enumerate()
        .for_each(|(c, out)| {
            for (r, o) in out.chunks_mut(len).enumerate() {
                let i = c * rows + r;
                forward_run(o, x.row(i), gate.row(i));
            }
        });
    out
}

simd::widest! {
    /// `out = silu(gate) · x` over one run of elements.
    fn forward_run(out: &mut [f32], x: &[f32], gate: &[f32]) = forward_body;
}

#[inline(always)]
fn forward_body(out: &mut [f32], x: &[f32], gate: &[f32]) {
    for (o, (&x, &g)) in out.iter_mut().zip(x.iter().zip(gate)) {
        *o = g * sigmoid(g) * x;
    }
}

/// (dx | dgate) side by side in one (count, 2·len) buffer: each row's dx, then its dgate, as
/// the fused projection's gradient lays them out (so its pieces join without a copy). The
/// operands are read row by row as in `forward`.
pub fn backward(x: &Rows, gate: &Rows, g: &Rows) -> Vec<f32> {
    let (len, count) = (x.len, x.count);
    let mut both = super::buffers::take(2 * len * count);
    if both.is_empty() {
        return both;
    }
    let rows = super::min_rows(2 * len);
    both.par_chunks_mut(rows * 2 * len)
        .enumerate()
        .for_each(|(c, chunk)| {
            for (r, row) in chunk.chunks_mut(2 * len).enumerate() {
                let i = c * rows + r;
                let (dx, dgate) = row.split_at_mut(len);
                backward_run(dx, dgate, x.row(i), gate.row(i), g.row(i));
            }
        });
    both
}

simd::widest! {
    /// SwiGLU's gradients over one run of elements.
    fn backward_run(dx: &mut [f32], dgate: &mut [f32], x: &[f32], gate: &[f32], g: &[f32]) = backward_body;
}

#[inline(always)]
fn backward_body(dx: &mut [f32], dgate: &mut [f32], x: &[f32], gate: &[f32], g: &[f32]) {
    for ((dx, dgate), ((&x, &a), &g)) in dx
        .iter_mut()
        .zip(dgate.iter_mut())
        .zip(x.iter().zip(gate).zip(g))
    {
        let s = sigmoid(a);
        *dx = g * a * s;
        *dgate = g * x * s * (1.0 + a * (1.0 - s));
    }
}
