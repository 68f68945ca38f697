//! Token sampling on the device (`sampling.cu`): temperature, top-k, top-p and a counter-based
//! Philox RNG keyed by (seed, step, row), so no random state lives on the host.

use super::{Launch, alloc, device_of, int, out_ptr, ptr, suffix, tensor, untracked};
use crate::cuda::launch::{KArg, LaunchCfg};
use crate::{DType, Result, Tensor};

/// What to keep and how to draw; `top_k` 0 and `top_p` ≥ 1 turn those filters off,
/// `temperature` ≤ 0 takes the argmax.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub seed: u64,
    pub step: u64,
}

pub fn plan(
    sfx: &str,
    logits: u64,
    out: u64,
    rows: usize,
    v: usize,
    s: &Sampling,
) -> Result<Launch> {
    Ok(Launch::new(
        format!("sample_fwd_{sfx}"),
        LaunchCfg::rows(rows, 512, 0),
        vec![
            KArg::Ptr(logits),
            KArg::Ptr(out),
            KArg::I32(int(rows, "rows")?),
            KArg::I32(int(v, "vocab")?),
            KArg::F32(s.temperature),
            KArg::I32(int(s.top_k.min(v), "top-k")?),
            KArg::F32(s.top_p),
            KArg::U64(s.seed),
            KArg::U64(s.step),
        ],
    ))
}

/// One token id per row of `logits` (rows, V), as a (rows) u32 device tensor.
pub fn sample(logits: &Tensor, s: &Sampling) -> Result<Tensor> {
    untracked(|| {
        let v = logits.dims().last().copied().unwrap_or(1);
        let sfx = suffix(logits.dtype(), "sample")?;
        let logits = logits.contiguous()?;
        let dev = device_of(&logits)?;
        let rows = logits.elem_count() / v.max(1);
        let out = alloc(&dev, DType::U32, rows)?;
        if rows > 0 {
            dev.run(&plan(sfx, ptr(&logits)?, out_ptr(&out), rows, v, s)?)?;
        }
        Ok(tensor(out, &[rows]))
    })
}
