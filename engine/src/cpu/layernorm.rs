//! LayerNorm with a gain of (gamma + 1), no bias, biased variance, eps 1e-5 (PaLM, as the seed).

use rayon::prelude::*;

use crate::backend::LAYER_NORM_EPS as EPS;

/// Returns (y, stats) with stats = (mean, rstd) per row.
pub fn forward(x: &[f32], gamma: &[f32], d: usize) -> (Vec<f32>, Vec<f32>) {
    let rows = x.len() / d;
    let mut y = super::buffers::take(x.len());
    let mut stats = vec![0f32; rows * 2];
    y.par_chunks_mut(d)
        .zip(stats.par_chunks_mut(2))
        .zip(x.par_chunks(d))
        .with_min_len(super::min_rows(d))
        .for_each(|((y, st), x)| {
            let mean = x.iter().sum::<f32>() / d as f32;
            let var = x.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
            let rstd = 1.0 / (var + EPS).sqrt();
            for ((y, &x), &g) in y.iter_mut().zip(x).zip(gamma) {
                *y = (x - mean) * rstd * (g + 1.0);
            }
            st[0] = mean;
            st[1] = rstd;
        });
    (y, stats)
}

/// Returns (dx, dgamma).
pub fn backward(
    x: &[f32],
    gamma: &[f32],
    stats: &[f32],
    g: &[f32],
    d: usize,
) -> (Vec<f32>, Vec<f32>) {
    let mut dx = super::buffers::take(x.len());
    // Per-row dgamma contributions, summed in chunks so the result does not depend on threads.
    const CHUNK: usize = 64;
    let partial: Vec<Vec<f32>> = dx
        .par_chunks_mut(d * CHUNK)
        .zip(x.par_chunks(d * CHUNK).zip(g.par_chunks(d * CHUNK)))
        .zip(stats.par_chunks(2 * CHUNK))
        .with_min_len(super::min_rows(d * CHUNK))
        .map(|((dx, (x, g)), st)| {
            let mut dgamma = vec![0f32; d];
            for (r, st) in st.chunks(2).enumerate() {
                let (mean, rstd) = (st[0], st[1]);
                let (x, g, dx) = (
                    &x[r * d..(r + 1) * d],
                    &g[r * d..(r + 1) * d],
                    &mut dx[r * d..(r + 1) * d],
                );
                let mut sum_dxh = 0f32;
                let mut sum_dxh_xh = 0f32;
                for i in 0..d {
                    let xh = (x[i] - mean) * rstd;
                    let dxh = g[i] * (gamma[i] + 1.0);
                    sum_dxh += dxh;
                    sum_dxh_xh += dxh * xh;
                    dgamma[i] += g[i] * xh;
                }
                let (m1, m2) = (sum_dxh / d as f32, sum_dxh_xh / d as f32);
                for i in 0..d {
                    let xh = (x[i] - mean) * rstd;
                    dx[i] = rstd * (g[i] * (gamma[i] + 1.0) - m1 - xh * m2);
                }
            }
            dgamma
        })
        .collect();
    let mut dgamma = vec![0f32; d];
    for p in partial {
        for (a, b) in dgamma.iter_mut().zip(p) {
            *a += b;
        }
    }
    (dx, dgamma)
}
