//! SwiGLU: silu(gate) · x, the PaLM feedforward gate (the seed's `x, gate = chunk(2)`).

use crate::backend::sigmoid;
use rayon::prelude::*;

pub fn forward(x: &[f32], gate: &[f32]) -> Vec<f32> {
    let mut out = super::buffers::take(x.len());
    out.par_iter_mut()
        .zip(x.par_iter().zip(gate.par_iter()))
        .with_min_len(super::PAR_MIN)
        .for_each(|(o, (&x, &g))| *o = g * sigmoid(g) * x);
    out
}

/// Returns (dx, dgate).
pub fn backward(x: &[f32], gate: &[f32], g: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (mut dx, mut dgate) = (super::buffers::take(x.len()), super::buffers::take(x.len()));
    dx.par_iter_mut()
        .zip(dgate.par_iter_mut())
        .zip(x.par_iter().zip(gate.par_iter()).zip(g.par_iter()))
        .with_min_len(super::PAR_MIN)
        .for_each(|((dx, dgate), ((&x, &a), &g))| {
            let s = sigmoid(a);
            *dx = g * a * s;
            *dgate = g * x * s * (1.0 + a * (1.0 - s));
        });
    (dx, dgate)
}
