//! Mixed-precision AdamW (`adamw.cu`): f32 parameter, moments and gradient (bf16 gradients are
//! read as they are), updated in one pass; clipping reads the device sum of squares.

use super::{BLOCK, Launch, ptr, suffix};
use crate::cuda::launch::{KArg, LaunchCfg};
use crate::{Result, Tensor};

/// The hyper-parameters of one step of one tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// 1 − β1^t and 1 − β2^t.
    pub bias1: f32,
    pub bias2: f32,
}

pub fn plan(gsfx: &str, p: u64, m: u64, v: u64, g: u64, n: usize, h: &Step, sms: u32) -> Launch {
    let grid = n.div_ceil(BLOCK as usize).clamp(1, 4 * sms.max(1) as usize) as u32;
    Launch::new(
        format!("adamw_fwd_{gsfx}"),
        LaunchCfg::new((grid, 1, 1), (BLOCK, 1, 1), 0),
        vec![
            KArg::Ptr(p),
            KArg::Ptr(m),
            KArg::Ptr(v),
            KArg::Ptr(g),
            KArg::Ptr(0),
            KArg::I64(n as i64),
            KArg::F32(h.lr),
            KArg::F32(h.beta1),
            KArg::F32(h.beta2),
            KArg::F32(h.eps),
            KArg::F32(h.weight_decay),
            KArg::F32(h.bias1),
            KArg::F32(h.bias2),
            KArg::F32(1.0),
            KArg::Ptr(0),
            KArg::F32(0.0),
        ],
    )
}

/// Update `p`, `m`, `v` in place from `g`. `p` must be a buffer no other tensor shares (the
/// optimizer copies the parameter first), `m` and `v` belong to the optimizer alone.
pub(crate) fn step(p: &Tensor, m: &Tensor, v: &Tensor, g: &Tensor, h: &Step) -> Result<()> {
    let g = g.contiguous()?;
    let gsfx = suffix(g.dtype(), "adamw")?;
    let dev = super::device_of(p)?;
    let n = p.elem_count();
    if n > 0 {
        dev.run(&plan(
            gsfx,
            ptr(p)?,
            ptr(m)?,
            ptr(v)?,
            ptr(&g)?,
            n,
            h,
            dev.num_sms(),
        ))?;
    }
    Ok(())
}

/// A private copy of a contiguous f32 device tensor (the new parameter the step writes).
pub(crate) fn private_copy(t: &Tensor) -> Result<Tensor> {
    let t = t.contiguous()?;
    let s = super::storage(&t)?;
    let size = s.dtype().size_in_bytes();
    let buf = s.device().copy_range(
        s.buffer(),
        t.layout().offset() * size,
        t.elem_count() * size,
    )?;
    Ok(super::tensor(
        crate::cuda::CudaStorage::new(buf, t.dtype()),
        t.dims(),
    ))
}
