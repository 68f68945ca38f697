//! LayerNorm with gain (γ + 1), no bias (`layernorm.cu`). The saved statistics on CUDA are a
//! (2, rows) f32 tensor: means, then reciprocal standard deviations.

use super::elementwise::cast;
use super::{Cu, Launch, alloc, dense, input, input_as, int, out_ptr, row_block, suffix};
use crate::backend::LAYER_NORM_EPS as EPS;
use crate::cuda::CudaStorage;
use crate::cuda::launch::{KArg, LaunchCfg};
use crate::{DType, Result};

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

/// (y, stats (2 × rows: means, then rstds)) for x (…, d) and γ (d).
pub(crate) fn forward(x: Cu, gamma: Cu) -> Result<(CudaStorage, CudaStorage)> {
    let cols = gamma.1.dims()[0].max(1);
    let dtype = x.0.dtype();
    let sfx = suffix(dtype, "layer_norm")?;
    // γ in the dtype of x (the kernels take one element type).
    let (ix, ig) = (input(x)?, input_as(gamma, dtype)?);
    let dev = x.0.device();
    let rows = x.1.elem_count() / cols;
    let y = alloc(dev, dtype, x.1.elem_count())?;
    let stats = alloc(dev, DType::F32, 2 * rows)?;
    if rows > 0 {
        let s = out_ptr(&stats);
        dev.run(&plan_fwd(
            sfx,
            ix.ptr,
            ig.ptr,
            out_ptr(&y),
            s,
            s + 4 * rows as u64,
            rows,
            cols,
        )?)?;
    }
    Ok((y, stats))
}

/// (dx, dγ) in the dtypes of x and γ.
pub(crate) fn backward(x: Cu, gamma: Cu, stats: Cu, g: Cu) -> Result<(CudaStorage, CudaStorage)> {
    let cols = gamma.1.dims()[0].max(1);
    let dtype = x.0.dtype();
    let sfx = suffix(dtype, "layer_norm")?;
    let (ix, igm, ig) = (input(x)?, input_as(gamma, dtype)?, input_as(g, dtype)?);
    let dev = x.0.device();
    let rows = x.1.elem_count() / cols;
    let parts = bwd_parts(rows, dev.num_sms());
    let dx = alloc(dev, dtype, x.1.elem_count())?;
    let partial = alloc(dev, DType::F32, parts * cols)?;
    let dgamma = alloc(dev, DType::F32, cols)?;
    if rows > 0 {
        let s = input(stats)?;
        dev.run(&plan_bwd(
            sfx,
            ix.ptr,
            igm.ptr,
            ig.ptr,
            s.ptr,
            s.ptr + 4 * rows as u64,
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
    let dgamma = match gamma.0.dtype() {
        DType::F32 => dgamma,
        other => cast((&dgamma, &dense(&[cols])), other)?,
    };
    Ok((dx, dgamma))
}
