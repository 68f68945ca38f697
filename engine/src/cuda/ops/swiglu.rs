//! Fused SwiGLU (`swiglu.cu`): out = silu(gate) · x, where x and gate are column ranges of one
//! row-major buffer (the fused projection), read in place.

use super::{
    Launch, alloc, base_ptr, device_of, int, out_ptr, ptr, storage, suffix, tensor, untracked,
};
use crate::cuda::launch::{KArg, LaunchCfg};
use crate::{Result, Tensor};

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
fn row_stride(t: &Tensor) -> Option<usize> {
    let (d, s) = (t.dims(), t.layout().strides());
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

/// (base pointer, ld, x offset, gate offset) of x and gate read in place when they are column
/// ranges of one buffer with one row stride; otherwise of a (rows, 2f) concatenation.
fn fused(x: &Tensor, gate: &Tensor) -> Result<(Tensor, u64, usize, usize, usize)> {
    let f = x.dims().last().copied().unwrap_or(0);
    let same = std::ptr::eq(storage(x)?, storage(gate)?);
    if same
        && let (Some(lx), Some(lg)) = (row_stride(x), row_stride(gate))
        && lx == lg
        && x.layout().offset() / lx.max(1) == gate.layout().offset() / lx.max(1)
    {
        let (ox, og) = (x.layout().offset(), gate.layout().offset());
        let base = ox.min(og);
        let p = base_ptr(x)? - ((ox - base) * x.dtype().size_in_bytes()) as u64;
        return Ok((x.clone(), p, lx, ox - base, og - base));
    }
    let r = x.rank();
    let both = Tensor::cat(&[x, gate], r - 1)?;
    Ok((both.clone(), ptr(&both)?, 2 * f, 0, f))
}

pub(crate) fn forward(x: &Tensor, gate: &Tensor) -> Result<Tensor> {
    untracked(|| {
        let sfx = suffix(x.dtype(), "swiglu")?;
        let f = x.dims().last().copied().unwrap_or(0);
        let rows = x.elem_count() / f.max(1);
        let (_keep, p, ld, xo, go) = fused(x, gate)?;
        let dev = device_of(x)?;
        let out = alloc(&dev, x.dtype(), x.elem_count())?;
        if rows * f > 0 {
            dev.run(&plan_fwd(sfx, p, ld, xo, go, out_ptr(&out), rows, f)?)?;
        }
        Ok(tensor(out, x.dims()))
    })
}

/// (dx, dgate) as two column views of one (…, 2f) buffer.
pub(crate) fn backward(x: &Tensor, gate: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)> {
    untracked(|| {
        let sfx = suffix(x.dtype(), "swiglu")?;
        let f = x.dims().last().copied().unwrap_or(0);
        let rows = x.elem_count() / f.max(1);
        let (_keep, p, ld, xo, go) = fused(x, gate)?;
        let g = g.to_dtype(x.dtype())?.contiguous()?;
        let dev = device_of(x)?;
        let dp = alloc(&dev, x.dtype(), 2 * x.elem_count())?;
        if rows * f > 0 {
            dev.run(&plan_bwd(
                sfx,
                p,
                ld,
                xo,
                go,
                ptr(&g)?,
                out_ptr(&dp),
                rows,
                f,
            )?)?;
        }
        let r = x.rank();
        let mut dims = x.dims().to_vec();
        dims[r - 1] = 2 * f;
        let both = tensor(dp, &dims);
        Ok((both.narrow(r - 1, 0, f)?, both.narrow(r - 1, f, f)?))
    })
}
