//! Fused log-softmax + negative log-likelihood with ignored target 0, and its gradient.

use rayon::prelude::*;

/// Per row: (lse, loss) where loss = lse − logit[target], 0 for ignored rows.
pub fn forward(logits: &[f32], targets: &[u32], v: usize, ignore: u32) -> (Vec<f32>, Vec<f32>) {
    logits
        .par_chunks(v)
        .zip(targets.par_iter())
        .with_min_len(super::min_rows(v))
        .map(|(row, &t)| {
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = m + row.iter().map(|&x| (x - m).exp()).sum::<f32>().ln();
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
            for (o, &x) in o.iter_mut().zip(row) {
                *o = (x - lse).exp() * scale;
            }
            o[t as usize] -= scale;
        });
    out
}
