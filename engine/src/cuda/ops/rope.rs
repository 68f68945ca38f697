//! Rotary embedding with xPos scaling (`rope.cu`). The tables are uploaded once per
//! `RopeTables` (cached in it) as one (3, n, dh) f32 tensor: cos, sin, scale.

use super::{BLOCK, Launch, alloc, device_of, int, out_ptr, ptr, suffix, tensor, untracked};
use crate::cuda::launch::{KArg, LaunchCfg};
use crate::ops::rope::RopeTables;
use crate::{Result, Tensor};

/// Rows of dh (the position is row % n), tables at `tables` (cos, then sin, then scale, each
/// n·dh f32). `sign` +1 multiplies by the scale (q), −1 divides (k).
pub fn plan(
    bwd: bool,
    sfx: &str,
    x: u64,
    out: u64,
    tables: u64,
    rows: usize,
    dh: usize,
    n: usize,
    sign: i32,
    sms: u32,
) -> Result<Launch> {
    let dir = if bwd { "bwd" } else { "fwd" };
    let table = (n * dh * 4) as u64;
    Ok(Launch::new(
        format!("rope_{dir}_{sfx}"),
        LaunchCfg::grid_stride(rows * dh / 2, BLOCK, sms),
        vec![
            KArg::Ptr(x),
            KArg::Ptr(out),
            KArg::Ptr(tables),
            KArg::Ptr(tables + table),
            KArg::Ptr(tables + 2 * table),
            KArg::I32(int(rows, "rows")?),
            KArg::I32(int(dh, "dh")?),
            KArg::I32(1),
            KArg::I32(int(n, "n")?),
            KArg::I32(0),
            KArg::I32(sign),
        ],
    ))
}

/// The tables on the device of `x`, uploaded on first use.
fn device_tables(t: &RopeTables, x: &Tensor) -> Result<Tensor> {
    let dev = device_of(x)?;
    if let Some(d) = t.on_device.get()
        && d.device() == x.device()
    {
        return Ok(d.clone());
    }
    let host = [t.cos.as_slice(), &t.sin, &t.scale].concat();
    let host = Tensor::from_vec(host, &[3, t.n, t.dh])?;
    let d = super::elementwise::upload(&dev, &host)?;
    // The first device to use these tables caches them (one GPU per process in practice).
    let _ = t.on_device.set(d.clone());
    Ok(d)
}

/// Forward (`bwd = false`, x → rotated) or its transpose (`bwd = true`, dout → dx).
pub(crate) fn apply(x: &Tensor, t: &RopeTables, inverse: bool, bwd: bool) -> Result<Tensor> {
    untracked(|| {
        let sfx = suffix(x.dtype(), "rope")?;
        let x = x.contiguous()?;
        let dev = device_of(&x)?;
        let tables = device_tables(t, &x)?;
        let rows = x.elem_count() / t.dh.max(1);
        let out = alloc(&dev, x.dtype(), x.elem_count())?;
        let sign = if inverse { -1 } else { 1 };
        if rows > 0 {
            dev.run(&plan(
                bwd,
                sfx,
                ptr(&x)?,
                out_ptr(&out),
                ptr(&tables)?,
                rows,
                t.dh,
                t.n,
                sign,
                dev.num_sms(),
            )?)?;
        }
        Ok(tensor(out, x.dims()))
    })
}
