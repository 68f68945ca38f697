//! Fused cross-entropy (`cross_entropy.cu`): per-row loss and log-sum-exp from the logits in
//! their own dtype, and the gradient (softmax − onehot) · scale · dloss read on the device.

use super::{Launch, alloc, device_of, int, out_ptr, ptr, row_block, suffix, tensor, untracked};
use crate::cuda::launch::{KArg, LaunchCfg};
use crate::{DType, Result, Tensor};

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

/// (mean loss as a device f32 scalar, per-row lse) over the counted targets (`count` > 0).
pub(crate) fn forward(logits: &Tensor, targets: &Tensor, count: usize) -> Result<(Tensor, Tensor)> {
    untracked(|| {
        let v = logits.dims().last().copied().unwrap_or(1);
        let sfx = suffix(logits.dtype(), "cross_entropy")?;
        let logits = logits.contiguous()?;
        let targets = targets.to_dtype(DType::U32)?.contiguous()?;
        let dev = device_of(&logits)?;
        let rows = targets.elem_count();
        let loss = alloc(&dev, DType::F32, rows)?;
        let lse = alloc(&dev, DType::F32, rows)?;
        if rows > 0 {
            dev.run(&plan_fwd(
                sfx,
                ptr(&logits)?,
                ptr(&targets)?,
                out_ptr(&loss),
                out_ptr(&lse),
                rows,
                v,
            )?)?;
        }
        let scale = if count == 0 { 0.0 } else { 1.0 / count as f32 };
        let mean = tensor(loss, &[rows]).sum_all()?.scale(scale)?;
        Ok((mean, tensor(lse, targets.dims())))
    })
}

/// dlogits = (softmax − onehot) · g / count, with g the device scalar gradient of the mean.
pub(crate) fn backward(
    logits: &Tensor,
    targets: &Tensor,
    lse: &Tensor,
    count: usize,
    g: &Tensor,
) -> Result<Tensor> {
    untracked(|| {
        let v = logits.dims().last().copied().unwrap_or(1);
        let sfx = suffix(logits.dtype(), "cross_entropy")?;
        let logits = logits.contiguous()?;
        let targets = targets.to_dtype(DType::U32)?.contiguous()?;
        let g = g.to_dtype(DType::F32)?.contiguous()?;
        let dev = device_of(&logits)?;
        let rows = targets.elem_count();
        let out = alloc(&dev, logits.dtype(), logits.elem_count())?;
        let scale = if count == 0 { 0.0 } else { 1.0 / count as f32 };
        if rows > 0 {
            dev.run(&plan_bwd(
                sfx,
                ptr(&logits)?,
                ptr(&targets)?,
                ptr(lse)?,
                out_ptr(&out),
                rows,
                v,
                scale,
                ptr(&g)?,
            )?)?;
        }
        Ok(tensor(out, logits.dims()))
    })
}
