//! AdamW update of one f32 parameter (PyTorch's formulation, decoupled decay).

use super::simd;
use rayon::prelude::*;

pub use crate::backend::AdamWHyper as Hyper;

/// The updated parameter into `out` from `p` (the one it replaces, left as it is), and the
/// moments m and v in place: one pass over the five, rather than a copy of p and then an
/// update of the copy. The gradient is `g · grad_scale` (gradient clipping's factor, or 1),
/// rounded as a separate scaling would round it.
pub fn step(
    out: &mut [f32],
    p: &[f32],
    g: &[f32],
    grad_scale: f32,
    m: &mut [f32],
    v: &mut [f32],
    h: &Hyper,
) {
    let len = out.len();
    assert!(
        p.len() == len && g.len() == len && m.len() == len && v.len() == len,
        "adamw: parameter, gradient and moments of different lengths"
    );
    let k = Constants {
        h: *h,
        grad_scale,
        step_size: h.lr / h.bias1,
        bias2_sqrt: h.bias2.sqrt(),
        decay: 1.0 - h.lr * h.weight_decay,
    };
    // Elementwise, so splitting into chunks changes no result.
    const CHUNK: usize = super::PAR_MIN;
    out.par_chunks_mut(CHUNK)
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .enumerate()
        .for_each(|(c, (out, (m, v)))| {
            let at = c * CHUNK..c * CHUNK + out.len();
            run(out, &p[at.clone()], &g[at], m, v, &k);
        });
}

/// What every element's update uses.
#[derive(Clone, Copy)]
struct Constants {
    h: Hyper,
    grad_scale: f32,
    step_size: f32,
    bias2_sqrt: f32,
    decay: f32,
}

simd::widest! {
    /// One chunk of `step` (all slices of out's length).
    fn run(out: &mut [f32], p: &[f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: &Constants) = run_body;
}

#[inline(always)]
fn run_body(out: &mut [f32], p: &[f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: &Constants) {
    let len = out.len();
    let (p, g, m, v) = (&p[..len], &g[..len], &mut m[..len], &mut v[..len]);
    let h = &k.h;
    for i in 0..len {
        let gi = g[i] * k.grad_scale;
        m[i] = h.beta1 * m[i] + (1.0 - h.beta1) * gi;
        v[i] = h.beta2 * v[i] + (1.0 - h.beta2) * gi * gi;
        let denom = v[i].sqrt() / k.bias2_sqrt + h.eps;
        out[i] = p[i] * k.decay - k.step_size * m[i] / denom;
    }
}
