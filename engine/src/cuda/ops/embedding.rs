//! Embedding gather and scatter-add (`embedding.cu`).

use super::elementwise::cast;
use super::{Cu, Launch, alloc, dense, input, int, out_ptr, suffix};
use crate::cuda::CudaStorage;
use crate::cuda::launch::{KArg, LaunchCfg};
use crate::{DType, Result};

fn block(dim: usize) -> u32 {
    (dim.div_ceil(8).div_ceil(32) * 32).clamp(32, 256) as u32
}

/// Forward (`bwd = false`: ids, table → out) or backward (`bwd = true`: ids, dout → f32 dtable,
/// zeroed first); both take (ids, data, out, n_ids, dim, vocab).
pub fn plan(
    bwd: bool,
    sfx: &str,
    ids: u64,
    data: u64,
    out: u64,
    n_ids: usize,
    dim: usize,
    vocab: usize,
) -> Result<Launch> {
    let dir = if bwd { "bwd" } else { "fwd" };
    Ok(Launch::new(
        format!("embedding_{dir}_{sfx}"),
        LaunchCfg::rows(n_ids, block(dim), 0),
        vec![
            KArg::Ptr(ids),
            KArg::Ptr(data),
            KArg::Ptr(out),
            KArg::I32(int(n_ids, "ids")?),
            KArg::I32(int(dim, "dim")?),
            KArg::I32(int(vocab, "vocab")?),
        ],
    ))
}

/// Rows of `table` (v, d) for u32 `ids`. Ids ≥ v give zero rows on the device (checking them
/// would cost a host round trip; the batch builders check ids on the host).
pub(crate) fn gather(table: Cu, ids: Cu) -> Result<CudaStorage> {
    let (v, d) = (table.1.dims()[0], table.1.dims()[1]);
    let sfx = suffix(table.0.dtype(), "embedding")?;
    let (it, ii) = (input(table)?, input(ids)?);
    let dev = table.0.device();
    let n = ids.1.elem_count();
    let out = alloc(dev, table.0.dtype(), n * d)?;
    if n * d > 0 {
        dev.run(&plan(false, sfx, ii.ptr, it.ptr, out_ptr(&out), n, d, v)?)?;
    }
    Ok(out)
}

/// Gradient of the (v, d) table: rows of `g` added at their ids (f32 atomics), in `dtype`.
pub(crate) fn scatter_add([v, d]: [usize; 2], dtype: DType, ids: Cu, g: Cu) -> Result<CudaStorage> {
    let sfx = suffix(g.0.dtype(), "embedding")?;
    let (ig, ii) = (input(g)?, input(ids)?);
    let dev = g.0.device();
    let out = CudaStorage::new(dev.alloc_zeroed(v * d * 4)?, DType::F32);
    let n = ids.1.elem_count();
    if n * d > 0 {
        dev.run(&plan(true, sfx, ii.ptr, ig.ptr, out_ptr(&out), n, d, v)?)?;
    }
    if dtype == DType::F32 {
        return Ok(out);
    }
    cast((&out, &dense(&[v, d])), dtype)
}
