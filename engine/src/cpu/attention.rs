//! Causal multi-query attention: h query heads share one key/value head. Processed in blocks of
//! query rows so each block only touches the keys it can see (half the work of a full n×m
//! product), with the softmax statistics (log-sum-exp) saved for a recomputing backward.

use super::exp::exp;
use super::matmul::{MatRef, SharedB, gemm_into};
use super::simd;
use rayon::prelude::*;

const BLOCK: usize = 64;

use crate::backend::AttentionShape as Shape;

/// Keys visible to query rows [i0, i1).
fn visible_keys(s: &Shape, i1: usize) -> usize {
    (i1 + s.offset).min(s.m)
}

/// Rows of d contiguous floats, batch `bi`'s m rows starting at `bi * batch_stride`: keys and
/// values read in place from a longer buffer (a KV cache with room to grow).
#[derive(Clone, Copy)]
pub struct Batched<'a> {
    pub data: &'a [f32],
    pub batch_stride: usize,
}

/// q (b,h,n,d) contiguous, k/v (b,m,d) with contiguous rows. Returns (out (b,h,n,d), lse (b,h,n)).
pub fn forward(q: &[f32], k: Batched, v: Batched, s: &Shape) -> (Vec<f32>, Vec<f32>) {
    let (n, m, d) = (s.n, s.m, s.d);
    if n * d == 0 {
        // No queries, or no width: every score is 0, so row i's log-sum-exp counts its keys.
        let lse = (0..s.b * s.h * n)
            .map(|r| (visible_keys(s, r % n + 1) as f32).ln())
            .collect();
        return (super::buffers::zeros(s.b * s.h * n * d), lse);
    }
    let mut out = super::buffers::take(s.b * s.h * n * d);
    let mut lse = vec![0f32; s.b * s.h * n];
    let keys_t = shared(s, |bi| MatRef::rows(k.data, bi * k.batch_stride, d).t());
    out.par_chunks_mut(n * d)
        .zip(lse.par_chunks_mut(n))
        .enumerate()
        .for_each(|(bh, (out, lse))| {
            let bi = bh / s.h;
            // Scratch from the recycled buffers: fresh ones this size cost page faults and
            // page clears every step (written by gemm before they are read).
            let mut p = super::buffers::take(BLOCK * m);
            for i0 in (0..n).step_by(BLOCK) {
                let i1 = (i0 + BLOCK).min(n);
                let (rows, keys) = (i1 - i0, visible_keys(s, i1));
                let qb = MatRef::rows(q, (bh * n + i0) * d, d);
                keys_t[bi].product((rows, keys), &mut p, keys, &qb, s.scale, false);
                for r in 0..rows {
                    let row = &mut p[r * keys..(r + 1) * keys];
                    let visible = (i0 + r + s.offset + 1).min(keys);
                    lse[i0 + r] = softmax_row(row, visible);
                }
                let pm = MatRef::rows(&p, 0, keys);
                let vb = MatRef::rows(v.data, bi * v.batch_stride, d);
                gemm_into(
                    rows,
                    d,
                    keys,
                    &mut out[i0 * d..i1 * d],
                    d,
                    &pm,
                    &vb,
                    1.0,
                    false,
                    false,
                );
            }
            super::buffers::give(p);
        });
    (out, lse)
}

/// Gradients (dq, dk, dv) given the forward's out and lse; dk/dv summed over the heads.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    g: &[f32],
    s: &Shape,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (n, m, d) = (s.n, s.m, s.d);
    if n * d == 0 {
        let zeros = || super::buffers::zeros(s.b * m * d);
        return (super::buffers::zeros(q.len()), zeros(), zeros());
    }
    let mut dq = super::buffers::take(q.len());
    let keys_t = shared(s, |bi| MatRef::rows(k, bi * m * d, d).t());
    let values_t = shared(s, |bi| MatRef::rows(v, bi * m * d, d).t());
    // Per (batch, head) partial dk/dv, reduced over heads below (MQA shares k and v).
    let partial: Vec<[Vec<f32>; 2]> = dq
        .par_chunks_mut(n * d)
        .enumerate()
        .map(|(bh, dq)| {
            let bi = bh / s.h;
            // Recycled scratch (see the forward); p and dp are written by gemm before use.
            let mut dk = super::buffers::zeros(m * d);
            let mut dv = super::buffers::zeros(m * d);
            let mut p = super::buffers::take(BLOCK * m);
            let mut dp = super::buffers::take(BLOCK * m);
            for i0 in (0..n).step_by(BLOCK) {
                let i1 = (i0 + BLOCK).min(n);
                let (rows, keys) = (i1 - i0, visible_keys(s, i1));
                let qb = MatRef::rows(q, (bh * n + i0) * d, d);
                let gb = MatRef::rows(g, (bh * n + i0) * d, d);
                let kb = MatRef::rows(k, bi * m * d, d);
                keys_t[bi].product((rows, keys), &mut p, keys, &qb, s.scale, false);
                values_t[bi].product((rows, keys), &mut dp, keys, &gb, 1.0, false);
                for r in 0..rows {
                    let i = i0 + r;
                    let visible = (i + s.offset + 1).min(keys);
                    let o = &out[(bh * n + i) * d..(bh * n + i + 1) * d];
                    let gr = &g[(bh * n + i) * d..(bh * n + i + 1) * d];
                    let (pr, dpr) = (
                        &mut p[r * keys..(r + 1) * keys],
                        &mut dp[r * keys..(r + 1) * keys],
                    );
                    softmax_grad_row(pr, dpr, visible, lse[bh * n + i], o, gr);
                }
                let pm = MatRef::rows(&p, 0, keys);
                let dsm = MatRef::rows(&dp, 0, keys);
                // dq = dS·k·scale ; dk += dSᵀ·q·scale ; dv += Pᵀ·dO
                gemm_into(
                    rows,
                    d,
                    keys,
                    &mut dq[i0 * d..i1 * d],
                    d,
                    &dsm,
                    &kb,
                    s.scale,
                    false,
                    false,
                );
                gemm_into(
                    keys,
                    d,
                    rows,
                    &mut dk,
                    d,
                    &dsm.t(),
                    &qb,
                    s.scale,
                    true,
                    false,
                );
                gemm_into(keys, d, rows, &mut dv, d, &pm.t(), &gb, 1.0, true, false);
            }
            super::buffers::give(p);
            super::buffers::give(dp);
            [dk, dv]
        })
        .collect();
    // The heads' partial sums, added in head order (the same sums, bitwise, on any thread
    // count), rows in parallel: one thread adding them all left the other idle.
    let reduce = |which: usize| {
        let mut total = super::buffers::take(s.b * m * d);
        total
            .par_chunks_mut(d)
            .with_min_len(super::min_rows(d))
            .enumerate()
            .for_each(|(row, out)| {
                let (bi, at) = (row / m, (row % m) * d);
                let Some((first, rest)) = partial[bi * s.h..(bi + 1) * s.h].split_first() else {
                    return out.fill(0.0); // no heads
                };
                out.copy_from_slice(&first[which][at..at + d]);
                for head in rest {
                    for (o, x) in out.iter_mut().zip(&head[which][at..at + d]) {
                        *o += x;
                    }
                }
            });
        total
    };
    let (dk, dv) = (reduce(0), reduce(1));
    for buffer in partial.into_iter().flatten() {
        super::buffers::give(buffer);
    }
    (dq, dk, dv)
}

/// Each batch element's keys (or values) seen transposed, d × m, `view(batch)`: the right-hand
/// operand of every score product of that element's heads and query blocks, packed once.
fn shared<'a>(s: &Shape, view: impl Fn(usize) -> MatRef<'a> + Sync) -> Vec<SharedB<'a>> {
    (0..s.b)
        .into_par_iter()
        .map(|bi| SharedB::new(s.d, s.m, view(bi), s.n.min(BLOCK)))
        .collect()
}

simd::widest! {
    /// A row of scores → its softmax over the first `visible` (the rest set to 0); returns the
    /// row's log-sum-exp, which the backward recomputes the probabilities from.
    fn softmax_row(row: &mut [f32], visible: usize) -> f32 = softmax_row_body;
}

#[inline(always)]
fn softmax_row_body(row: &mut [f32], visible: usize) -> f32 {
    let (seen, hidden) = row.split_at_mut(visible);
    let mx = simd::max(seen);
    for x in seen.iter_mut() {
        *x = exp(*x - mx);
    }
    let sum = simd::sum(seen);
    let inv = 1.0 / sum;
    for x in seen.iter_mut() {
        *x *= inv;
    }
    hidden.fill(0.0);
    mx + sum.ln()
}

simd::widest! {
    /// One query row of the backward: scores `p` → probabilities e^(s − lse), and `dp` (dO·vᵀ)
    /// → the scores' gradient p · (dp − Σ o·dO), over the first `visible` keys (0 past them).
    fn softmax_grad_row(p: &mut [f32], dp: &mut [f32], visible: usize, lse: f32, o: &[f32], g: &[f32]) = softmax_grad_row_body;
}

#[inline(always)]
fn softmax_grad_row_body(
    p: &mut [f32],
    dp: &mut [f32],
    visible: usize,
    lse: f32,
    o: &[f32],
    g: &[f32],
) {
    let delta = simd::dot(o, g);
    let (seen, hidden) = p.split_at_mut(visible);
    let (dseen, dhidden) = dp.split_at_mut(visible);
    for (p, dp) in seen.iter_mut().zip(dseen.iter_mut()) {
        *p = exp(*p - lse);
        *dp = *p * (*dp - delta);
    }
    hidden.fill(0.0);
    dhidden.fill(0.0);
}
