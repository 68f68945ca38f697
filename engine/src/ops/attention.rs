//! Fused causal multi-query attention: softmax(q·kᵀ·scale + causal mask)·v, one key/value
//! head shared by every query head; no n×m matrix is kept for the backward (it recomputes
//! from the saved log-sum-exp).

use crate::autograd::Op;
use crate::backend::{AttentionShape, Backend};
use crate::storage::on_backend;
use crate::{Error, Result, Tensor};

/// q (b, h, n, d); k, v (b, m, d) with m ≥ n. Query i is at position i + (m − n) and sees keys
/// up to that position (so a KV-cache step with n = 1 sees every cached key).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Result<Tensor> {
    let s = shape(q, k, v, scale)?;
    if !q.storage().fuses_attention(s.d) {
        return composed(q, k, v, &s);
    }
    let (out, lse) = on_backend!("attention", [q => qs, k => ks, v => vs], {
        Backend::attention((qs, q.layout()), (ks, k.layout()), (vs, v.layout()), &s)
    })?;
    let lse = Tensor::from_storage(lse, &[s.b, s.h, s.n]);
    Ok(Tensor::from_op(out, q.dims(), &[q, k, v], || {
        Op::Attention {
            q: q.clone(),
            k: k.clone(),
            v: v.clone(),
            lse,
            scale,
        }
    }))
}

/// Attention from primitive ops, for head dims the fused CUDA kernels do not cover: the
/// (b, h·n, m) scores are materialised, masked and softmaxed in f32, then cast back. Its
/// gradient flows through the primitives.
fn composed(q: &Tensor, k: &Tensor, v: &Tensor, s: &AttentionShape) -> Result<Tensor> {
    let (b, h, n, m, d) = (s.b, s.h, s.n, s.m, s.d);
    let dtype = q.dtype();
    let scores = q
        .reshape(&[b, h * n, d])?
        .matmul(&k.t()?)?
        .to_dtype(crate::DType::F32)?
        .scale(s.scale)?
        .reshape(&[b, h, n, m])?;
    // Query i sits at position i + (m − n) and sees keys up to there.
    let mask: Vec<f32> = (0..n * m)
        .map(|ij| {
            let (i, j) = (ij / m, ij % m);
            if j <= i + s.offset {
                0.0
            } else {
                f32::NEG_INFINITY
            }
        })
        .collect();
    let mask = Tensor::from_vec(mask, &[n, m])?.to_device(q.device())?;
    let probs = scores.add(&mask)?.softmax()?.to_dtype(dtype)?;
    probs
        .reshape(&[b, h * n, m])?
        .matmul(v)?
        .reshape(&[b, h, n, d])
}

fn shape(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Result<AttentionShape> {
    let err = || {
        Error::shape(
            "attention",
            format!(
                "q {:?}, k {:?}, v {:?}: expected q (b,h,n,d), k = v (b,m,d), m ≥ n",
                q.dims(),
                k.dims(),
                v.dims()
            ),
        )
    };
    let (b, h, n, d) = match q.dims() {
        [b, h, n, d] => (*b, *h, *n, *d),
        _ => return Err(err()),
    };
    let m = match k.dims() {
        [kb, m, kd] if *kb == b && *kd == d && *m >= n => *m,
        _ => return Err(err()),
    };
    if v.dims() != k.dims() {
        return Err(err());
    }
    Ok(AttentionShape {
        b,
        h,
        n,
        m,
        d,
        offset: m - n,
        scale,
    })
}

pub(crate) fn backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    scale: f32,
    g: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let s = shape(q, k, v, scale)?;
    let (dq, dk, dv) = on_backend!(
        "attention",
        [q => qs, k => ks, v => vs, out => os, lse => ls, g => gs],
        Backend::attention_backward(
            [(qs, q.layout()), (ks, k.layout()), (vs, v.layout())],
            (os, out.layout()),
            (ls, lse.layout()),
            (gs, g.layout()),
            &s,
        )
    )?;
    Ok((
        Tensor::from_storage(dq, q.dims()),
        Tensor::from_storage(dk, k.dims()),
        Tensor::from_storage(dv, v.dims()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;

    /// The composed path (what CUDA runs for head dims other than 64/128) equals the fused CPU
    /// kernel, forward and backward, with and without a KV-cache offset.
    #[test]
    fn composed_attention_matches_the_fused_kernel() {
        let mut rng = Rng::new(3);
        for (b, h, n, m, d) in [(2, 3, 5, 5, 4), (1, 2, 3, 7, 6), (2, 1, 1, 4, 2)] {
            let q = Tensor::randn(&[b, h, n, d], 1.0, &mut rng).as_var();
            let k = Tensor::randn(&[b, m, d], 1.0, &mut rng).as_var();
            let v = Tensor::randn(&[b, m, d], 1.0, &mut rng).as_var();
            let w = Tensor::randn(&[b, h, n, d], 1.0, &mut rng);
            let scale = (d as f32).powf(-0.5);
            let s = shape(&q, &k, &v, scale).unwrap();
            let fused = attention(&q, &k, &v, scale).unwrap();
            let comp = composed(&q, &k, &v, &s).unwrap();
            let close = |a: &Tensor, b: &Tensor| {
                let (a, b) = (a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
                let worst = a
                    .iter()
                    .zip(&b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max);
                assert!(worst < 1e-5, "max diff {worst}");
            };
            close(&fused, &comp);
            let gf = fused
                .mul(&w)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let gc = comp.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
            for t in [&q, &k, &v] {
                close(gf.get(t).unwrap(), gc.get(t).unwrap());
            }
        }
    }
}
