//! Reductions (`reduce.cu`): row sums and maxima, column sums, sums of squares.

use super::{
    BLOCK, Launch, alloc, device_of, int, out_ptr, ptr, row_block, suffix, tensor, untracked,
};
use crate::cuda::launch::{KArg, LaunchCfg};
use crate::{DType, Result, Tensor};

/// `sum` or `max` over the last dim of a (rows, cols) buffer.
pub fn plan_rows(
    kind: &str,
    sfx: &str,
    x: u64,
    out: u64,
    rows: usize,
    cols: usize,
) -> Result<Launch> {
    Ok(Launch::new(
        format!("{kind}_rows_fwd_{sfx}"),
        LaunchCfg::rows(rows, row_block(cols), 0),
        vec![
            KArg::Ptr(x),
            KArg::Ptr(out),
            KArg::I32(int(rows, "rows")?),
            KArg::I32(int(cols, "cols")?),
        ],
    ))
}

/// Column sums of a (rows, cols) buffer: one thread per column, deterministic.
pub fn plan_cols(sfx: &str, x: u64, out: u64, rows: usize, cols: usize) -> Result<Launch> {
    let grid = cols.div_ceil(BLOCK as usize).max(1);
    Ok(Launch::new(
        format!("sum_cols_fwd_{sfx}"),
        LaunchCfg::new((int(grid, "grid")? as u32, 1, 1), (BLOCK, 1, 1), 0),
        vec![
            KArg::Ptr(x),
            KArg::Ptr(out),
            KArg::I32(int(rows, "rows")?),
            KArg::I32(int(cols, "cols")?),
        ],
    ))
}

/// `out[0] += Σ x²` over `n` tensors whose pointers and sizes sit in one device table (pointers,
/// then sizes, 8-byte words); `max_len` (the largest tensor) sizes the grid. `out` is f32 and
/// zeroed first.
pub fn plan_sumsq_multi(
    sfx: &str,
    table: u64,
    n: usize,
    max_len: usize,
    out: u64,
    sms: u32,
) -> Result<Launch> {
    let grid = max_len.div_ceil(2048).clamp(1, 2 * sms.max(1) as usize) as u32;
    Ok(Launch::new(
        format!("sumsq_multi_fwd_{sfx}"),
        LaunchCfg::new((grid, 1, 1), (BLOCK, 1, 1), 0),
        vec![
            KArg::Ptr(table),
            KArg::Ptr(table + 8 * n as u64),
            KArg::I32(int(n, "tensors")?),
            KArg::Ptr(out),
            KArg::I32(0),
        ],
    ))
}

/// Reduce the last dim of a contiguous tensor viewed as (rows, cols) with `kind` = sum | max.
fn rows_of(x: &Tensor, rows: usize, cols: usize, kind: &'static str) -> Result<Tensor> {
    let dev = device_of(x)?;
    let sfx = suffix(x.dtype(), kind)?;
    let out = alloc(&dev, x.dtype(), rows)?;
    if rows > 0 {
        dev.run(&plan_rows(kind, sfx, ptr(x)?, out_ptr(&out), rows, cols)?)?;
    }
    Ok(tensor(out, &[rows]))
}

fn cols_of(x: &Tensor, rows: usize, cols: usize) -> Result<Tensor> {
    let dev = device_of(x)?;
    let sfx = suffix(x.dtype(), "sum")?;
    let out = alloc(&dev, x.dtype(), cols)?;
    if cols > 0 {
        dev.run(&plan_cols(sfx, ptr(x)?, out_ptr(&out), rows, cols)?)?;
    }
    Ok(tensor(out, &[cols]))
}

/// Max over the last dim, keeping it as size 1.
pub(crate) fn max_last(x: &Tensor) -> Result<Tensor> {
    untracked(|| {
        let x = x.contiguous()?;
        let cols = x.dims().last().copied().unwrap_or(1).max(1);
        let rows = x.elem_count() / cols;
        let mut dims = x.dims().to_vec();
        if let Some(l) = dims.last_mut() {
            *l = 1;
        }
        rows_of(&x, rows, cols, "max")?.reshape(&dims)
    })
}

/// Sum `x` down to `keep` (same rank, 1 where summed), one axis at a time: a trailing axis is a
/// row sum, a leading one a column sum, a middle one is moved last first. The partial sums stay
/// in f32 (a bf16 input is widened once and the result rounded once).
pub(crate) fn sum_to(x: &Tensor, keep: &[usize]) -> Result<Tensor> {
    untracked(|| {
        let mut cur = x.to_dtype(DType::F32)?.contiguous()?;
        for axis in 0..keep.len() {
            let dims = cur.dims().to_vec();
            if dims[axis] == keep[axis] {
                continue;
            }
            let a: usize = dims[..axis].iter().product();
            let d = dims[axis];
            let b: usize = dims[axis + 1..].iter().product();
            let red = if b == 1 {
                rows_of(&cur, a, d, "sum")?
            } else if a == 1 {
                cols_of(&cur, d, b)?
            } else {
                let moved = cur.reshape(&[a, d, b])?.transpose(1, 2)?.contiguous()?;
                rows_of(&moved, a * b, d, "sum")?
            };
            let mut nd = dims;
            nd[axis] = 1;
            cur = red.reshape(&nd)?;
        }
        cur.to_dtype(x.dtype())
    })
}

/// log-softmax over the last dim from the row kernels and elementwise maps:
/// y = z − log Σ exp z with z = x − max x.
pub(crate) fn log_softmax(x: &Tensor) -> Result<Tensor> {
    untracked(|| {
        let z = x.sub(&max_last(x)?)?;
        let last = x.rank().saturating_sub(1);
        let lse = z.exp()?.sum_keepdim(&[last])?.log()?;
        z.sub(&lse)
    })
}

/// Backward of log-softmax: g − softmax · Σ g.
pub(crate) fn log_softmax_backward(y: &Tensor, g: &Tensor) -> Result<Tensor> {
    untracked(|| {
        let last = y.rank().saturating_sub(1);
        g.sub(&y.exp()?.mul(&g.sum_keepdim(&[last])?)?)
    })
}

/// Σ x² over all of `xs` (float tensors on one device) added into the device f32 scalar `acc`
/// (zeroed by the caller): one launch per dtype.
pub(crate) fn sumsq_into(xs: &[&Tensor], acc: &Tensor) -> Result<()> {
    debug_assert_eq!(acc.dtype(), DType::F32);
    let dev = device_of(acc)?;
    for dtype in [DType::F32, DType::BF16] {
        let group: Vec<Tensor> = xs
            .iter()
            .filter(|x| x.dtype() == dtype && x.elem_count() > 0)
            .map(|x| x.contiguous())
            .collect::<Result<_>>()?;
        if group.is_empty() {
            continue;
        }
        let n = group.len();
        let mut words = vec![0u64; 2 * n];
        for (j, x) in group.iter().enumerate() {
            words[j] = ptr(x)?;
            words[n + j] = x.elem_count() as u64;
        }
        let max_len = group.iter().map(Tensor::elem_count).max().unwrap_or(0);
        let table = dev.upload(&words)?;
        dev.run(&plan_sumsq_multi(
            suffix(dtype, "sumsq")?,
            table.ptr(),
            n,
            max_len,
            ptr(acc)?,
            dev.num_sms(),
        )?)?;
    }
    Ok(())
}
