//! Fused causal multi-query attention: softmax(q·kᵀ·scale + causal mask)·v, one key/value
//! head shared by every query head; no n×m matrix is kept for the backward (it recomputes
//! from the saved log-sum-exp).

use crate::autograd::Op;
use crate::cpu::{self, f32s, owned};
use crate::storage::Storage;
use crate::{Error, Result, Tensor};

/// q (b, h, n, d); k, v (b, m, d) with m ≥ n. Query i is at position i + (m − n) and sees keys
/// up to that position (so a KV-cache step with n = 1 sees every cached key).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Result<Tensor> {
    crate::ops::require_cpu("attention", &[q, k, v])?;
    let s = shape(q, k, v, scale)?;
    let (out, lse) = cpu::attention::forward(
        &f32s(q, "attention")?,
        &f32s(k, "attention")?,
        &f32s(v, "attention")?,
        &s,
    );
    let lse = Tensor::from_vec(lse, &[s.b, s.h, s.n])?;
    Ok(Tensor::from_op(
        Storage::Cpu(owned(out)),
        q.dims(),
        &[q, k, v],
        || Op::Attention {
            q: q.clone(),
            k: k.clone(),
            v: v.clone(),
            lse,
            scale,
        },
    ))
}

fn shape(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Result<cpu::attention::Shape> {
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
    Ok(cpu::attention::Shape {
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
    let (dq, dk, dv) = cpu::attention::backward(
        &f32s(q, "attention")?,
        &f32s(k, "attention")?,
        &f32s(v, "attention")?,
        &f32s(out, "attention")?,
        &f32s(lse, "attention")?,
        &f32s(g, "attention")?,
        &s,
    );
    Ok((
        Tensor::from_vec(dq, q.dims())?,
        Tensor::from_vec(dk, k.dims())?,
        Tensor::from_vec(dv, v.dims())?,
    ))
}
