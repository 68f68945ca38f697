//! LayerNorm with gain (γ + 1), no bias (`layernorm.cu`). The saved statistics on CUDA are a
//! (2, rows) f32 tensor: means, then reciprocal standard deviations.

use super::{Launch, alloc, device_of, int, out_ptr, ptr, row_block, suffix, tensor, untracked};
use crate::cpu::layernorm::EPS;
use crate::cuda::launch::{KArg, LaunchCfg};
use crate::{DType, Result, Tensor};

pub fn plan_fwd(
    sfx: &str,
    x: u64,
    gamma: u64,
    y: u64,
    mean: u64,
    rstd: u64,
    rows: usize,
    cols: usize,
) -> Result<Launch> {
    Ok(Launch::new(
        format!("layernorm_fwd_{sfx}"),
        LaunchCfg::rows(rows, row_block(cols), 0),
        vec![
            KArg::Ptr(x),
            KArg::Ptr(gamma),
            KArg::Ptr(y),
            KArg::Ptr(mean),
            KArg::Ptr(rstd),
            KArg::I32(int(rows, "rows")?),
            KArg::I32(int(cols, "cols")?),
            KArg::F32(EPS),
        ],
    ))
}

/// Blocks of the backward: a fixed grid (≈ 2 per SM), each writing one partial dγ row.
pub fn bwd_parts(rows: usize, sms: u32) -> usize {
    rows.clamp(1, 2 * sms.max(1) as usize)
}

pub fn plan_bwd(
    sfx: &str,
    x: u64,
    gamma: u64,
    dy: u64,
    mean: u64,
    rstd: u64,
    dx: u64,
    partial: u64,
    rows: usize,
    cols: usize,
    sms: u32,
) -> Result<Launch> {
    let parts = bwd_parts(rows, sms);
    Ok(Launch::new(
        format!("layernorm_bwd_{sfx}"),
        LaunchCfg::new(
            (parts as u32, 1, 1),
            (row_block(cols), 1, 1),
            int(cols * 4, "layernorm smem")? as u32,
        ),
        vec![
            KArg::Ptr(x),
            KArg::Ptr(gamma),
            KArg::Ptr(dy),
            KArg::Ptr(mean),
            KArg::Ptr(rstd),
            KArg::Ptr(dx),
            KArg::Ptr(partial),
            KArg::I32(int(rows, "rows")?),
            KArg::I32(int(cols, "cols")?),
        ],
    ))
}

pub fn plan_dgamma(partial: u64, dgamma: u64, parts: usize, cols: usize) -> Result<Launch> {
    let block = 256u32;
    let grid = cols.div_ceil(block as usize).max(1);
    Ok(Launch::new(
        "layernorm_dgamma_bwd_f32",
        LaunchCfg::new((int(grid, "grid")? as u32, 1, 1), (block, 1, 1), 0),
        vec![
            KArg::Ptr(partial),
            KArg::Ptr(dgamma),
            KArg::I32(int(parts, "parts")?),
            KArg::I32(int(cols, "cols")?),
        ],
    ))
}

/// γ in the dtype of x (the kernels take one element type).
fn same_dtype(x: &Tensor, gamma: &Tensor) -> Result<Tensor> {
    gamma.to_dtype(x.dtype())?.contiguous()
}

/// (y, stats) for x (…, d) and γ (d).
pub(crate) fn forward(x: &Tensor, gamma: &Tensor) -> Result<(Tensor, Tensor)> {
    untracked(|| {
        let cols = gamma.dims()[0].max(1);
        let sfx = suffix(x.dtype(), "layer_norm")?;
        let x = x.contiguous()?;
        let gamma = same_dtype(&x, gamma)?;
        let dev = device_of(&x)?;
        let rows = x.elem_count() / cols;
        let y = alloc(&dev, x.dtype(), x.elem_count())?;
        let stats = alloc(&dev, DType::F32, 2 * rows)?;
        if rows > 0 {
            let s = out_ptr(&stats);
            dev.run(&plan_fwd(
                sfx,
                ptr(&x)?,
                ptr(&gamma)?,
                out_ptr(&y),
                s,
                s + 4 * rows as u64,
                rows,
                cols,
            )?)?;
        }
        Ok((tensor(y, x.dims()), tensor(stats, &[2, rows])))
    })
}

/// (dx, dγ) in the dtypes of x and γ.
pub(crate) fn backward(
    x: &Tensor,
    gamma: &Tensor,
    stats: &Tensor,
    g: &Tensor,
) -> Result<(Tensor, Tensor)> {
    untracked(|| {
        let cols = gamma.dims()[0].max(1);
        let sfx = suffix(x.dtype(), "layer_norm")?;
        let (x, g) = (x.contiguous()?, g.to_dtype(x.dtype())?.contiguous()?);
        let gm = same_dtype(&x, gamma)?;
        let dev = device_of(&x)?;
        let rows = x.elem_count() / cols;
        let parts = bwd_parts(rows, dev.num_sms());
        let dx = alloc(&dev, x.dtype(), x.elem_count())?;
        let partial = alloc(&dev, DType::F32, parts * cols)?;
        let dgamma = alloc(&dev, DType::F32, cols)?;
        if rows > 0 {
            let s = ptr(stats)?;
            dev.run(&plan_bwd(
                sfx,
                ptr(&x)?,
                ptr(&gm)?,
                ptr(&g)?,
                s,
                s + 4 * rows as u64,
                out_ptr(&dx),
                out_ptr(&partial),
                rows,
                cols,
                dev.num_sms(),
            )?)?;
            dev.run(&plan_dgamma(
                out_ptr(&partial),
                out_ptr(&dgamma),
                parts,
                cols,
            )?)?;
        } else {
            dev.zero(dgamma.buffer())?;
        }
        let dgamma = tensor(dgamma, gamma.dims()).to_dtype(gamma.dtype())?;
        Ok((tensor(dx, x.dims()), dgamma))
    })
}
