//! Per-row log-probabilities and entropies (`logprob.cu`), read from the logits in their own
//! dtype; the backward recomputes softmax from the saved log-sum-exp.

use super::{Cu, Launch, alloc, input, int, out_ptr, row_block, suffix};
use crate::cuda::CudaStorage;
use crate::cuda::launch::{KArg, LaunchCfg};
use crate::{DType, Result};

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

/// (logp or entropy, lse), each one f32 per row: logp when `ids` is given, the entropy
/// otherwise.
pub(crate) fn forward(
    logits: Cu,
    ids: Option<Cu>,
    inv_temp: f32,
) -> Result<(CudaStorage, CudaStorage)> {
    let v = logits.1.dims().last().copied().unwrap_or(1);
    let sfx = suffix(logits.0.dtype(), "logprob")?;
    let il = input(logits)?;
    let ii = ids.map(input).transpose()?;
    let dev = logits.0.device();
    let rows = logits.1.elem_count() / v.max(1);
    let out = alloc(dev, DType::F32, rows)?;
    let lse = alloc(dev, DType::F32, rows)?;
    if rows > 0 {
        let (lp, h) = match ii {
            Some(_) => (out_ptr(&out), 0),
            None => (0, out_ptr(&out)),
        };
        let idp = ii.as_ref().map_or(0, |i| i.ptr);
        dev.run(&plan_fwd(
            sfx,
            il.ptr,
            idp,
            lp,
            h,
            out_ptr(&lse),
            rows,
            v,
            inv_temp,
        )?)?;
    }
    Ok((out, lse))
}

pub(crate) fn backward(
    logits: Cu,
    ids: Option<Cu>,
    lse: Cu,
    entropy: Option<Cu>,
    inv_temp: f32,
    g: Cu,
) -> Result<CudaStorage> {
    let v = logits.1.dims().last().copied().unwrap_or(1);
    let sfx = suffix(logits.0.dtype(), "logprob")?;
    let il = input(logits)?;
    let ii = ids.map(input).transpose()?;
    let ih = entropy.map(input).transpose()?;
    let (ilse, ig) = (input(lse)?, input(g)?);
    let dev = logits.0.device();
    let rows = logits.1.elem_count() / v.max(1);
    let out = alloc(dev, logits.0.dtype(), logits.1.elem_count())?;
    if rows > 0 {
        let idp = ii.as_ref().map_or(0, |i| i.ptr);
        let hp = ih.as_ref().map_or(0, |i| i.ptr);
        let (dlp, dh) = match ih {
            Some(_) => (0, ig.ptr),
            None => (ig.ptr, 0),
        };
        dev.run(&plan_bwd(
            sfx,
            il.ptr,
            idp,
            ilse.ptr,
            hp,
            dlp,
            dh,
            out_ptr(&out),
            rows,
            v,
            inv_temp,
        )?)?;
    }
    Ok(out)
}
