//! Per-row log-probabilities and entropies (`logprob.cu`), read from the logits in their own
//! dtype; the backward recomputes softmax from the saved log-sum-exp.

use super::{Launch, alloc, device_of, int, out_ptr, ptr, row_block, suffix, tensor, untracked};
use crate::cuda::launch::{KArg, LaunchCfg};
use crate::{DType, Result, Tensor};

/// Outputs (each nullable): logp (needs ids), entropy, lse.
pub fn plan_fwd(
    sfx: &str,
    logits: u64,
    ids: u64,
    logp: u64,
    entropy: u64,
    lse: u64,
    rows: usize,
    v: usize,
    inv_temp: f32,
) -> Result<Launch> {
    Ok(Launch::new(
        format!("logprob_fwd_{sfx}"),
        LaunchCfg::rows(rows, row_block(v), 0),
        vec![
            KArg::Ptr(logits),
            KArg::Ptr(ids),
            KArg::Ptr(logp),
            KArg::Ptr(entropy),
            KArg::Ptr(lse),
            KArg::I32(int(rows, "rows")?),
            KArg::I32(int(v, "classes")?),
            KArg::F32(inv_temp),
        ],
    ))
}

/// dlogits from per-row dlogp (with ids) and/or dentropy (with the forward's entropy).
pub fn plan_bwd(
    sfx: &str,
    logits: u64,
    ids: u64,
    lse: u64,
    entropy: u64,
    dlogp: u64,
    dentropy: u64,
    dlogits: u64,
    rows: usize,
    v: usize,
    inv_temp: f32,
) -> Result<Launch> {
    Ok(Launch::new(
        format!("logprob_bwd_{sfx}"),
        LaunchCfg::rows(rows, row_block(v), 0),
        vec![
            KArg::Ptr(logits),
            KArg::Ptr(ids),
            KArg::Ptr(lse),
            KArg::Ptr(entropy),
            KArg::Ptr(dlogp),
            KArg::Ptr(dentropy),
            KArg::Ptr(dlogits),
            KArg::I32(int(rows, "rows")?),
            KArg::I32(int(v, "classes")?),
            KArg::F32(inv_temp),
        ],
    ))
}

/// (logp or entropy, lse), each (…) f32: logp when `ids` is given, the entropy otherwise.
pub(crate) fn forward(
    logits: &Tensor,
    ids: Option<&Tensor>,
    inv_temp: f32,
    want_entropy: bool,
) -> Result<(Tensor, Tensor)> {
    untracked(|| {
        let v = logits.dims().last().copied().unwrap_or(1);
        let dims = logits.dims()[..logits.rank() - 1].to_vec();
        let sfx = suffix(logits.dtype(), "logprob")?;
        let logits = logits.contiguous()?;
        let ids = ids
            .map(|t| t.to_dtype(DType::U32)?.contiguous())
            .transpose()?;
        let dev = device_of(&logits)?;
        let rows = logits.elem_count() / v.max(1);
        let out = alloc(&dev, DType::F32, rows)?;
        let lse = alloc(&dev, DType::F32, rows)?;
        if rows > 0 {
            let (lp, h) = if want_entropy {
                (0, out_ptr(&out))
            } else {
                (out_ptr(&out), 0)
            };
            let idp = ids.as_ref().map(ptr).transpose()?.unwrap_or(0);
            dev.run(&plan_fwd(
                sfx,
                ptr(&logits)?,
                idp,
                lp,
                h,
                out_ptr(&lse),
                rows,
                v,
                inv_temp,
            )?)?;
        }
        Ok((tensor(out, &dims), tensor(lse, &dims)))
    })
}

pub(crate) fn backward(
    logits: &Tensor,
    ids: Option<&Tensor>,
    lse: &Tensor,
    entropy: Option<&Tensor>,
    inv_temp: f32,
    g: &Tensor,
) -> Result<Tensor> {
    untracked(|| {
        let v = logits.dims().last().copied().unwrap_or(1);
        let sfx = suffix(logits.dtype(), "logprob")?;
        let logits = logits.contiguous()?;
        let ids = ids
            .map(|t| t.to_dtype(DType::U32)?.contiguous())
            .transpose()?;
        let g = g.to_dtype(DType::F32)?.contiguous()?;
        let dev = device_of(&logits)?;
        let rows = logits.elem_count() / v.max(1);
        let out = alloc(&dev, logits.dtype(), logits.elem_count())?;
        if rows > 0 {
            let idp = ids.as_ref().map(ptr).transpose()?.unwrap_or(0);
            let hp = entropy.map(ptr).transpose()?.unwrap_or(0);
            let (dlp, dh) = if entropy.is_some() {
                (0, ptr(&g)?)
            } else {
                (ptr(&g)?, 0)
            };
            dev.run(&plan_bwd(
                sfx,
                ptr(&logits)?,
                idp,
                ptr(lse)?,
                hp,
                dlp,
                dh,
                out_ptr(&out),
                rows,
                v,
                inv_temp,
            )?)?;
        }
        Ok(tensor(out, logits.dims()))
    })
}
