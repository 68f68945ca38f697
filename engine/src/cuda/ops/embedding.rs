//! Embedding gather and scatter-add (`embedding.cu`).

use super::{Launch, alloc, device_of, int, out_ptr, ptr, suffix, tensor, untracked};
use crate::cuda::launch::{KArg, LaunchCfg};
use crate::{DType, Result, Tensor};

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
pub(crate) fn gather(table: &Tensor, ids: &Tensor, out_dims: &[usize]) -> Result<Tensor> {
    untracked(|| {
        let (v, d) = (table.dims()[0], table.dims()[1]);
        let sfx = suffix(table.dtype(), "embedding")?;
        let (table, ids) = (table.contiguous()?, ids.to_dtype(DType::U32)?.contiguous()?);
        let dev = device_of(&table)?;
        let n = ids.elem_count();
        let out = alloc(&dev, table.dtype(), n * d)?;
        if n * d > 0 {
            dev.run(&plan(
                false,
                sfx,
                ptr(&ids)?,
                ptr(&table)?,
                out_ptr(&out),
                n,
                d,
                v,
            )?)?;
        }
        Ok(tensor(out, out_dims))
    })
}

/// Gradient of the table: rows of `g` added at their ids (f32 atomics), in the table's dtype.
pub(crate) fn scatter_add(table: &Tensor, ids: &Tensor, g: &Tensor) -> Result<Tensor> {
    untracked(|| {
        let (v, d) = (table.dims()[0], table.dims()[1]);
        let sfx = suffix(g.dtype(), "embedding")?;
        let (g, ids) = (g.contiguous()?, ids.to_dtype(DType::U32)?.contiguous()?);
        let dev = device_of(&g)?;
        let out = dev.alloc_zeroed(v * d * 4)?;
        let out = crate::cuda::CudaStorage::new(out, DType::F32);
        let n = ids.elem_count();
        if n * d > 0 {
            dev.run(&plan(
                true,
                sfx,
                ptr(&ids)?,
                ptr(&g)?,
                out_ptr(&out),
                n,
                d,
                v,
            )?)?;
        }
        tensor(out, table.dims()).to_dtype(table.dtype())
    })
}
