//! SwiGLU: silu(gate) · x, the PaLM feedforward gate (the seed's `x, gate = chunk(2)`).

use super::exp::exp;
use super::simd;
use rayon::prelude::*;

/// σ(a) with the vectorisable e^x (`backend::sigmoid` calls libm per element).
#[inline(always)]
fn sigmoid(a: f32) -> f32 {
    1.0 / (1.0 + exp(-a))
}

pub fn forward(x: &[f32], gate: &[f32]) -> Vec<f32> {
    let mut out = super::buffers::take(x.len());
    out.par_chunks_mut(super::PAR_MIN)
        .zip(
            x.par_chunks(super::PAR_MIN)
                .zip(gate.par_chunks(super::PAR_MIN)),
        )
        .for_each(|(o, (x, g))| forward_run(o, x, g));
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

/// Returns (dx, dgate).
pub fn backward(x: &[f32], gate: &[f32], g: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (mut dx, mut dgate) = (super::buffers::take(x.len()), super::buffers::take(x.len()));
    let n = super::PAR_MIN;
    dx.par_chunks_mut(n)
        .zip(dgate.par_chunks_mut(n))
        .zip(x.par_chunks(n).zip(gate.par_chunks(n)).zip(g.par_chunks(n)))
        .for_each(|((dx, dgate), ((x, a), g))| backward_run(dx, dgate, x, a, g));
    (dx, dgate)
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
