//! Fused cross-entropy (`cross_entropy.cu`): per-row loss and log-sum-exp from the logits in
//! their own dtype, and the gradient (softmax − onehot) · scale · dloss read on the device.

use super::elementwise::unary;
use super::reduce::sum_to;
use super::{Cu, Launch, alloc, dense, input, int, out_ptr, row_block, suffix};
use crate::backend::UnaryOp;
use crate::cuda::CudaStorage;
use crate::cuda::launch::{KArg, LaunchCfg};
use crate::{DType, Result};

pub fn plan_fwd(
    sfx: &str,
    logits: u64,
    targets: u64,
    loss: u64,
    lse: u64,
    rows: usize,
    v: usize,
) -> Result<Launch> {
    Ok(Launch::new(
        format!("cross_entropy_fwd_{sfx}"),
        LaunchCfg::rows(rows, row_block(v), 0),
        vec![
            KArg::Ptr(logits),
            KArg::Ptr(targets),
            KArg::Ptr(loss),
            KArg::Ptr(lse),
            KArg::I32(int(rows, "rows")?),
            KArg::I32(int(v, "classes")?),
        ],
    ))
}

pub fn plan_bwd(
    sfx: &str,
    logits: u64,
    targets: u64,
    lse: u64,
    dlogits: u64,
    rows: usize,
    v: usize,
    scale: f32,
    dloss: u64,
) -> Result<Launch> {
    Ok(Launch::new(
        format!("cross_entropy_bwd_{sfx}"),
        LaunchCfg::rows(rows, row_block(v), 0),
        vec![
            KArg::Ptr(logits),
            KArg::Ptr(targets),
            KArg::Ptr(lse),
            KArg::Ptr(dlogits),
            KArg::I32(int(rows, "rows")?),
            KArg::I32(int(v, "classes")?),
            KArg::F32(scale),
            KArg::Ptr(dloss),
        ],
    ))
}

/// (mean loss as a device f32 scalar, per-row lse) over the counted targets.
pub(crate) fn forward(logits: Cu, targets: Cu, count: usize) -> Result<(CudaStorage, CudaStorage)> {
    let v = logits.1.dims().last().copied().unwrap_or(1);
    let sfx = suffix(logits.0.dtype(), "cross_entropy")?;
    let (il, it) = (input(logits)?, input(targets)?);
    let dev = logits.0.device();
    let rows = targets.1.elem_count();
    let loss = alloc(dev, DType::F32, rows)?;
    let lse = alloc(dev, DType::F32, rows)?;
    if rows > 0 {
        dev.run(&plan_fwd(
            sfx,
            il.ptr,
            it.ptr,
            out_ptr(&loss),
            out_ptr(&lse),
            rows,
            v,
        )?)?;
    }
    let scale = if count == 0 { 0.0 } else { 1.0 / count as f32 };
    let total = sum_to((&loss, &dense(&[rows])), &[1])?;
    let mean = unary((&total, &dense(&[1])), UnaryOp::Affine(scale, 0.0))?;
    Ok((mean, lse))
}

/// dlogits = (softmax − onehot) · g / count, with g the device scalar gradient of the mean.
pub(crate) fn backward(
    logits: Cu,
    targets: Cu,
    lse: Cu,
    count: usize,
    g: Cu,
) -> Result<CudaStorage> {
    let v = logits.1.dims().last().copied().unwrap_or(1);
    let sfx = suffix(logits.0.dtype(), "cross_entropy")?;
    let (il, it, ilse, ig) = (input(logits)?, input(targets)?, input(lse)?, input(g)?);
    let dev = logits.0.device();
    let rows = targets.1.elem_count();
    let out = alloc(dev, logits.0.dtype(), logits.1.elem_count())?;
    let scale = if count == 0 { 0.0 } else { 1.0 / count as f32 };
    if rows > 0 {
        dev.run(&plan_bwd(
            sfx,
            il.ptr,
            it.ptr,
            ilse.ptr,
            out_ptr(&out),
            rows,
            v,
            scale,
            ig.ptr,
        )?)?;
    }
    Ok(out)
}
