//! Per-row log-probability of a chosen token and entropy of softmax(x / temperature), and their
//! gradients (RLHF: PPO, DPO, GRPO). z = x·inv_temp, lse = log Σ exp z.

use rayon::prelude::*;

fn lse_of(z: impl Iterator<Item = f32> + Clone) -> f32 {
    let m = z.clone().fold(f32::NEG_INFINITY, f32::max);
    m + z.map(|v| (v - m).exp()).sum::<f32>().ln()
}

/// (logp, lse) per row; an id ≥ V gives logp 0.
pub fn logprob(logits: &[f32], ids: &[u32], v: usize, inv_temp: f32) -> (Vec<f32>, Vec<f32>) {
    logits
        .par_chunks(v)
        .zip(ids.par_iter())
        .with_min_len(super::min_rows(v))
        .map(|(row, &id)| {
            let l = lse_of(row.iter().map(|x| x * inv_temp));
            let lp = row.get(id as usize).map_or(0.0, |x| x * inv_temp - l);
            (lp, l)
        })
        .unzip()
}

/// (entropy, lse) per row: H = lse − Σ p·z.
pub fn entropy(logits: &[f32], v: usize, inv_temp: f32) -> (Vec<f32>, Vec<f32>) {
    logits
        .par_chunks(v)
        .with_min_len(super::min_rows(v))
        .map(|row| {
            let l = lse_of(row.iter().map(|x| x * inv_temp));
            let pz: f32 = row
                .iter()
                .map(|x| {
                    let z = x * inv_temp;
                    (z - l).exp() * z
                })
                .sum();
            (l - pz, l)
        })
        .unzip()
}

/// dlogits for upstream per-row gradients of logp (with `ids`) and of the entropy (with the
/// forward's `entropy`): dz_c = dlogp·([c = id] − p_c) − dH·p_c·(log p_c + H), dx = inv_temp·dz.
pub struct Upstream<'a> {
    pub ids: Option<&'a [u32]>,
    pub dlogp: Option<&'a [f32]>,
    pub entropy: Option<&'a [f32]>,
    pub dentropy: Option<&'a [f32]>,
}

pub fn backward(logits: &[f32], lse: &[f32], up: &Upstream, v: usize, inv_temp: f32) -> Vec<f32> {
    let mut out = super::buffers::zeros(logits.len());
    out.par_chunks_mut(v)
        .zip(logits.par_chunks(v))
        .enumerate()
        .with_min_len(super::min_rows(v))
        .for_each(|(r, (o, row))| {
            let id = up.ids.map_or(usize::MAX, |ids| ids[r] as usize);
            let gl = up.dlogp.map_or(0.0, |d| if id < v { d[r] } else { 0.0 });
            let (gh, h) = match (up.dentropy, up.entropy) {
                (Some(d), Some(e)) => (d[r], e[r]),
                _ => (0.0, 0.0),
            };
            for (c, (o, &x)) in o.iter_mut().zip(row).enumerate() {
                let lp = x * inv_temp - lse[r];
                let p = lp.exp();
                let onehot = if c == id { 1.0 } else { 0.0 };
                *o = inv_temp * (gl * (onehot - p) - gh * p * (lp + h));
            }
        });
    out
}
