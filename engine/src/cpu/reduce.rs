//! Reductions: sums over any dims, row-wise max and log-softmax over the last dim, and the sum
//! of squares (gradient clipping).

use super::PAR_MIN;
use crate::layout::Layout;
use rayon::prelude::*;

/// Sum of a contiguous (dims) buffer into `out_dims` (same rank, reduced dims = 1).
pub fn sum_to(x: &[f32], dims: &[usize], out_dims: &[usize]) -> Vec<f32> {
    let n_out: usize = out_dims.iter().product();
    let last = *dims.last().unwrap_or(&1);
    // Fast path: only the last dim is reduced → independent row sums.
    if !dims.is_empty()
        && dims[..dims.len() - 1] == out_dims[..dims.len() - 1]
        && out_dims[dims.len() - 1] == 1
    {
        let row = |r: &[f32]| r.iter().map(|&v| v as f64).sum::<f64>() as f32;
        return if x.len() >= PAR_MIN {
            x.par_chunks(last.max(1)).map(row).collect()
        } else {
            x.chunks(last.max(1)).map(row).collect()
        };
    }
    if n_out == 1 {
        // Everything into one value: in f64, in 8 running sums (the offsets walk below costs
        // more than the adds).
        let mut acc = [0f64; 8];
        let chunks = x.chunks_exact(8);
        let tail: f64 = chunks.remainder().iter().map(|&v| f64::from(v)).sum();
        for c in chunks {
            for (a, &v) in acc.iter_mut().zip(c) {
                *a += f64::from(v);
            }
        }
        return vec![(acc.iter().sum::<f64>() + tail) as f32];
    }
    let mut acc = vec![0f64; n_out];
    let target = match Layout::contiguous(out_dims).broadcast_as(dims) {
        Ok(l) => l,
        Err(_) => unreachable!("out_dims is dims with some dims set to 1"),
    };
    for (&v, o) in x.iter().zip(target.offsets()) {
        acc[o] += v as f64;
    }
    acc.into_iter().map(|v| v as f32).collect()
}

/// Row maximum over the last dim.
pub fn max_last(x: &[f32], cols: usize) -> Vec<f32> {
    x.chunks(cols)
        .map(|r| r.iter().copied().fold(f32::NEG_INFINITY, f32::max))
        .collect()
}

/// log-softmax over rows of `cols`.
pub fn log_softmax(x: &[f32], cols: usize) -> Vec<f32> {
    let mut out = super::buffers::take(x.len());
    let f = |(o, r): (&mut [f32], &[f32])| {
        let m = r.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = m + r.iter().map(|&v| (v - m).exp()).sum::<f32>().ln();
        for (o, &v) in o.iter_mut().zip(r) {
            *o = v - lse;
        }
    };
    out.par_chunks_mut(cols)
        .zip(x.par_chunks(cols))
        .with_min_len(super::min_rows(cols))
        .for_each(f);
    out
}

/// Backward of log-softmax: g − softmax·Σg, rows of `cols`.
pub fn log_softmax_backward(y: &[f32], g: &[f32], cols: usize) -> Vec<f32> {
    let mut out = super::buffers::take(y.len());
    out.par_chunks_mut(cols)
        .zip(y.par_chunks(cols).zip(g.par_chunks(cols)))
        .with_min_len(super::min_rows(cols))
        .for_each(|(o, (y, g))| {
            let s: f32 = g.iter().sum();
            for ((o, &y), &g) in o.iter_mut().zip(y).zip(g) {
                *o = g - y.exp() * s;
            }
        });
    out
}

/// Σ x², in f64 (the gradient norm: millions of squares, whose f32 sum would lose digits),
/// in fixed chunks added in order: the same total whatever the thread count.
pub fn sum_of_squares(x: &[f32]) -> f64 {
    let parts: Vec<f64> = x.par_chunks(PAR_MIN).map(squares_f64).collect();
    parts.iter().sum()
}

super::simd::widest! {
    /// Σ x² of one chunk, in f64.
    fn squares_f64(x: &[f32]) -> f64 = squares_f64_body;
}

#[inline(always)]
fn squares_f64_body(x: &[f32]) -> f64 {
    // 32 running sums: one would be a chain of dependent adds, an add's latency per element.
    const WAYS: usize = 32;
    let mut acc = [0f64; WAYS];
    let chunks = x.chunks_exact(WAYS);
    let tail: f64 = chunks
        .remainder()
        .iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum();
    for c in chunks {
        for l in 0..WAYS {
            acc[l] += f64::from(c[l]) * f64::from(c[l]);
        }
    }
    acc.iter().sum::<f64>() + tail
}
