//! Fused log-softmax + negative log-likelihood with ignored target 0, and its gradient.

use super::exp::exp;
use super::simd;
use rayon::prelude::*;

/// Per row: (lse, loss) where loss = lse − logit[target], 0 for ignored rows.
pub fn forward(logits: &[f32], targets: &[u32], v: usize, ignore: u32) -> (Vec<f32>, Vec<f32>) {
    logits
        .par_chunks(v)
        .zip(targets.par_iter())
        .with_min_len(super::min_rows(v))
        .map(|(row, &t)| {
            let lse = log_sum_exp(row);
            let loss = if t == ignore {
                0.0
            } else {
                lse - row[t as usize]
            };
            (lse, loss)
        })
        .unzip()
}

/// d(mean loss)/dlogits · g = g/count · (softmax − onehot), zero on ignored rows.
pub fn backward(
    logits: &[f32],
    targets: &[u32],
    lse: &[f32],
    v: usize,
    ignore: u32,
    scale: f32,
) -> Vec<f32> {
    let mut out = super::buffers::zeros(logits.len());
    out.par_chunks_mut(v)
        .zip(logits.par_chunks(v))
        .zip(targets.par_iter().zip(lse.par_iter()))
        .with_min_len(super::min_rows(v))
        .for_each(|((o, row), (&t, &lse))| {
            if t == ignore {
                return;
            }
            softmax_times(o, row, lse, scale);
            o[t as usize] -= scale;
        });
    out
}

simd::widest! {
    /// log Σ e^x over a row, from its maximum (so no term overflows).
    fn log_sum_exp(row: &[f32]) -> f32 = log_sum_exp_body;
}

#[inline(always)]
fn log_sum_exp_body(row: &[f32]) -> f32 {
    let m = simd::max(row);
    let mut e = [0f32; 16];
    let mut sum = 0.0;
    // e^(x − m) in 16-element pieces on the stack, each summed in 16 lanes.
    for piece in row.chunks(16) {
        for (e, &x) in e.iter_mut().zip(piece) {
            *e = exp(x - m);
        }
        sum += simd::sum(&e[..piece.len()]);
    }
    m + sum.ln()
}

simd::widest! {
    /// `out = scale · e^(x − lse)`: the softmax of a row whose log-sum-exp is `lse`, scaled.
    fn softmax_times(out: &mut [f32], row: &[f32], lse: f32, scale: f32) = softmax_times_body;
}

#[inline(always)]
fn softmax_times_body(out: &mut [f32], row: &[f32], lse: f32, scale: f32) {
    for (o, &x) in out.iter_mut().zip(row) {
        *o = exp(x - lse) * scale;
    }
}
