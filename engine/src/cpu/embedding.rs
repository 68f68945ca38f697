//! Embedding lookup (gather rows) and its backward (scatter-add rows).

/// Rows of `weight` (V × d) picked by `ids`. Ids were range-checked by the caller.
pub fn gather(weight: &[f32], d: usize, ids: &[u32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(ids.len() * d);
    for &i in ids {
        let i = i as usize;
        out.extend_from_slice(&weight[i * d..(i + 1) * d]);
    }
    out
}

/// Gradient of `gather`: `g` rows added into a zero (V × d) matrix.
pub fn scatter_add(v: usize, d: usize, ids: &[u32], g: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; v * d];
    for (r, &i) in ids.iter().enumerate() {
        let i = i as usize;
        for (o, x) in out[i * d..(i + 1) * d]
            .iter_mut()
            .zip(&g[r * d..(r + 1) * d])
        {
            *o += x;
        }
    }
    out
}
