//! Fused SwiGLU (`swiglu.cu`): out = silu(gate) · x, where x and gate are column ranges of one
//! row-major buffer (the fused projection), read in place.

use super::elementwise::cat;
use super::{Cu, Launch, addr, alloc, input_as, int, out_ptr, suffix};
use crate::Result;
use crate::backend::Two;
use crate::cuda::CudaStorage;
use crate::cuda::launch::{KArg, LaunchCfg};
use crate::layout::Layout;

pub fn plan_fwd(
    sfx: &str,
    p: u64,
    ld: usize,
    x_off: usize,
    gate_off: usize,
    out: u64,
    rows: usize,
    f: usize,
) -> Result<Launch> {
    Ok(Launch::new(
        format!("swiglu_fwd_{sfx}"),
        LaunchCfg::rows(rows, 256, 0),
        vec![
            KArg::Ptr(p),
            KArg::I32(int(ld, "ld")?),
            KArg::I32(int(x_off, "x offset")?),
            KArg::I32(int(gate_off, "gate offset")?),
            KArg::Ptr(out),
            KArg::I32(int(rows, "rows")?),
            KArg::I32(int(f, "f")?),
        ],
    ))
}

/// dx, dgate into one (rows, 2f) buffer: dx in columns [0, f), dgate in [f, 2f).
pub fn plan_bwd(
    sfx: &str,
    p: u64,
    ld: usize,
    x_off: usize,
    gate_off: usize,
    dout: u64,
    dp: u64,
    rows: usize,
    f: usize,
) -> Result<Launch> {
    Ok(Launch::new(
        format!("swiglu_bwd_{sfx}"),
        LaunchCfg::rows(rows, 256, 0),
        vec![
            KArg::Ptr(p),
            KArg::I32(int(ld, "ld")?),
            KArg::I32(int(x_off, "x offset")?),
            KArg::I32(int(gate_off, "gate offset")?),
            KArg::Ptr(dout),
            KArg::Ptr(dp),
            KArg::I32(int(2 * f, "ld_d")?),
            KArg::I32(0),
            KArg::I32(int(f, "f")?),
            KArg::I32(int(rows, "rows")?),
            KArg::I32(int(f, "f")?),
        ],
    ))
}

/// The row stride of a view whose leading dims collapse onto one stride and whose last dim is
/// contiguous, or `None`.
fn row_stride(l: &Layout) -> Option<usize> {
    let (d, s) = (l.dims(), l.strides());
    let r = d.len();
    if r < 2 || (s[r - 1] != 1 && d[r - 1] > 1) {
        return None;
    }
    let ld = s[r - 2];
    let mut want = ld;
    for i in (0..r - 1).rev() {
        if d[i] > 1 && s[i] != want {
            return None;
        }
        want = want.checked_mul(d[i])?;
    }
    Some(ld)
}

/// Where the kernels read x and gate: one buffer with row stride `ld`, x at column `xo` and
/// gate at `go` of each row.
struct Fused {
    base: u64,
    ld: usize,
    xo: usize,
    go: usize,
    _copy: Option<CudaStorage>,
}

/// x and gate read in place when they are column ranges of one buffer with one row stride;
/// otherwise from a (rows, 2f) concatenation.
fn fused(x: Cu, gate: Cu) -> Result<Fused> {
    let f = x.1.dims().last().copied().unwrap_or(0);
    if std::ptr::eq(x.0, gate.0)
        && let (Some(lx), Some(lg)) = (row_stride(x.1), row_stride(gate.1))
        && lx == lg
        && x.1.offset() / lx.max(1) == gate.1.offset() / lx.max(1)
    {
        let (ox, og) = (x.1.offset(), gate.1.offset());
        let base = ox.min(og);
        let p = addr(x) - ((ox - base) * x.0.dtype().size_in_bytes()) as u64;
        return Ok(Fused {
            base: p,
            ld: lx,
            xo: ox - base,
            go: og - base,
            _copy: None,
        });
    }
    let r = x.1.rank();
    let mut dims = x.1.dims().to_vec();
    dims[r - 1] = 2 * f;
    let both = cat(&[x, gate], r - 1, &dims)?;
    Ok(Fused {
        base: out_ptr(&both),
        ld: 2 * f,
        xo: 0,
        go: f,
        _copy: Some(both),
    })
}

pub(crate) fn forward(x: Cu, gate: Cu) -> Result<CudaStorage> {
    let sfx = suffix(x.0.dtype(), "swiglu")?;
    let f = x.1.dims().last().copied().unwrap_or(0);
    let rows = x.1.elem_count() / f.max(1);
    let p = fused(x, gate)?;
    let dev = x.0.device();
    let out = alloc(dev, x.0.dtype(), x.1.elem_count())?;
    if rows * f > 0 {
        dev.run(&plan_fwd(
            sfx,
            p.base,
            p.ld,
            p.xo,
            p.go,
            out_ptr(&out),
            rows,
            f,
        )?)?;
    }
    Ok(out)
}

/// (dx, dgate) as two column views of one (…, 2f) buffer.
pub(crate) fn backward(x: Cu, gate: Cu, g: Cu) -> Result<Two<CudaStorage>> {
    let dtype = x.0.dtype();
    let sfx = suffix(dtype, "swiglu")?;
    let f = x.1.dims().last().copied().unwrap_or(0);
    let rows = x.1.elem_count() / f.max(1);
    let p = fused(x, gate)?;
    let ig = input_as(g, dtype)?;
    let dev = x.0.device();
    let dp = alloc(dev, dtype, 2 * x.1.elem_count())?;
    if rows * f > 0 {
        dev.run(&plan_bwd(
            sfx,
            p.base,
            p.ld,
            p.xo,
            p.go,
            ig.ptr,
            out_ptr(&dp),
            rows,
            f,
        )?)?;
    }
    Two::side_by_side(dp, x.1.dims())
}
