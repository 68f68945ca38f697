//! SwiGLU: silu(gate) · x, the PaLM feedforward gate (the seed's `x, gate = chunk(2)`).

use crate::ops::elementwise::sigmoid;
use rayon::prelude::*;

pub fn forward(x: &[f32], gate: &[f32]) -> Vec<f32> {
    x.par_iter()
        .zip(gate.par_iter())
        .map(|(&x, &g)| g * sigmoid(g) * x)
        .collect()
}

/// Returns (dx, dgate).
pub fn backward(x: &[f32], gate: &[f32], g: &[f32]) -> (Vec<f32>, Vec<f32>) {
    x.par_iter()
        .zip(gate.par_iter())
        .zip(g.par_iter())
        .map(|((&x, &a), &g)| {
            let s = sigmoid(a);
            let silu = a * s;
            (g * silu, g * x * s * (1.0 + a * (1.0 - s)))
        })
        .unzip()
}
