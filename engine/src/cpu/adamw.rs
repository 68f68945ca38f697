//! AdamW update of one f32 parameter, in place (PyTorch's formulation, decoupled decay).

use rayon::prelude::*;

pub use crate::backend::AdamWHyper as Hyper;

pub fn step(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: &Hyper) {
    let step_size = h.lr / h.bias1;
    let bias2_sqrt = h.bias2.sqrt();
    let decay = 1.0 - h.lr * h.weight_decay;
    // Elementwise, so splitting into chunks changes no result.
    const CHUNK: usize = super::PAR_MIN;
    p.par_chunks_mut(CHUNK)
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .enumerate()
        .for_each(|(c, (p, (m, v)))| {
            let g = &g[c * CHUNK..c * CHUNK + p.len()];
            for i in 0..p.len() {
                let gi = g[i];
                m[i] = h.beta1 * m[i] + (1.0 - h.beta1) * gi;
                v[i] = h.beta2 * v[i] + (1.0 - h.beta2) * gi * gi;
                let denom = v[i].sqrt() / bias2_sqrt + h.eps;
                p[i] = p[i] * decay - step_size * m[i] / denom;
            }
        });
}
