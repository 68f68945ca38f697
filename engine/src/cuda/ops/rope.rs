//! Rotary embedding with xPos scaling (`rope.cu`). The tables are uploaded once per
//! `RopeTables` (cached in it) as one (3, n, dh) f32 tensor: cos, sin, scale.

use super::elementwise::upload;
use super::{BLOCK, Cu, Launch, alloc, dense, input, int, out_ptr, suffix};
use crate::backend::RopeTables;
use crate::cuda::launch::{KArg, LaunchCfg};
use crate::cuda::{CudaDevice, CudaStorage};
use crate::{Error, Result};
use std::any::Any;
use std::sync::Arc;

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

/// The tables on the device of `x`, uploaded on first use (and cached with them: one GPU per
/// process in practice, so the first device to use them keeps its copy).
fn device_tables(t: &RopeTables, dev: &Arc<CudaDevice>) -> Result<Arc<dyn Any + Send + Sync>> {
    if let Some(d) = t.on_device.get()
        && d.downcast_ref::<CudaStorage>()
            .is_some_and(|s| s.device().ordinal() == dev.ordinal())
    {
        return Ok(d.clone());
    }
    let host = crate::cpu::owned([t.cos.as_slice(), &t.sin, &t.scale].concat());
    let n = 3 * t.n * t.dh;
    let d: Arc<dyn Any + Send + Sync> = Arc::new(upload(dev, (&host, &dense(&[n])))?);
    let _ = t.on_device.set(d.clone());
    Ok(d)
}

/// Forward (`bwd = false`, x → rotated) or its transpose (`bwd = true`, dout → dx).
pub(crate) fn apply(x: Cu, t: &RopeTables, inverse: bool, bwd: bool) -> Result<CudaStorage> {
    let sfx = suffix(x.0.dtype(), "rope")?;
    let ix = input(x)?;
    let dev = x.0.device();
    let tables = device_tables(t, dev)?;
    let tables = tables
        .downcast_ref::<CudaStorage>()
        .ok_or_else(|| Error::Invalid("internal: rope tables of another backend".into()))?;
    let rows = x.1.elem_count() / t.dh.max(1);
    let out = alloc(dev, x.0.dtype(), x.1.elem_count())?;
    let sign = if inverse { -1 } else { 1 };
    if rows > 0 {
        dev.run(&plan(
            bwd,
            sfx,
            ix.ptr,
            out_ptr(&out),
            out_ptr(tables),
            rows,
            t.dh,
            t.n,
            sign,
            dev.num_sms(),
        )?)?;
    }
    Ok(out)
}
