//! Reductions (`reduce.cu`): row sums and maxima, column sums, sums of squares.

use super::elementwise::{binary, cast, copy, unary};
use super::{
    BLOCK, Cu, Input, Launch, alloc, dense, input, input_as, int, out_ptr, row_block, suffix,
};
use crate::backend::{BinaryOp, UnaryOp};
use crate::cuda::launch::{KArg, LaunchCfg};
use crate::cuda::{CudaDevice, CudaStorage};
use crate::layout::Layout;
use crate::{DType, Result};
use std::sync::Arc;

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

/// Reduce a contiguous (rows, cols) buffer at `x` over its last dim with `kind` = sum | max.
fn rows_of(
    dev: &Arc<CudaDevice>,
    dtype: DType,
    x: u64,
    rows: usize,
    cols: usize,
    kind: &'static str,
) -> Result<CudaStorage> {
    let sfx = suffix(dtype, kind)?;
    let out = alloc(dev, dtype, rows)?;
    if rows > 0 {
        dev.run(&plan_rows(kind, sfx, x, out_ptr(&out), rows, cols)?)?;
    }
    Ok(out)
}

fn cols_of(
    dev: &Arc<CudaDevice>,
    dtype: DType,
    x: u64,
    rows: usize,
    cols: usize,
) -> Result<CudaStorage> {
    let sfx = suffix(dtype, "sum")?;
    let out = alloc(dev, dtype, cols)?;
    if cols > 0 {
        dev.run(&plan_cols(sfx, x, out_ptr(&out), rows, cols)?)?;
    }
    Ok(out)
}

fn last_dim(x: Cu) -> usize {
    x.1.dims().last().copied().unwrap_or(1).max(1)
}

/// Max over the last dim (one per row).
pub(crate) fn max_last(x: Cu) -> Result<CudaStorage> {
    let ix = input(x)?;
    let cols = last_dim(x);
    let rows = x.1.elem_count() / cols;
    rows_of(x.0.device(), x.0.dtype(), ix.ptr, rows, cols, "max")
}

/// Sum `x` down to `keep` (same rank, 1 where summed), one axis at a time: a trailing axis is a
/// row sum, a leading one a column sum, a middle one is moved last first. The partial sums stay
/// in f32 (a bf16 input is widened once and the result rounded once).
pub(crate) fn sum_to(x: Cu, keep: &[usize]) -> Result<CudaStorage> {
    let dev = x.0.device();
    let mut dims = x.1.dims().to_vec();
    let mut cur: Option<CudaStorage> = None;
    for axis in 0..keep.len() {
        if dims[axis] == keep[axis] {
            continue;
        }
        let a: usize = dims[..axis].iter().product();
        let d = dims[axis];
        let b: usize = dims[axis + 1..].iter().product();
        // The first reduction reads x as contiguous f32 (in place when it is); later ones the
        // previous partial sums.
        let held;
        let p = match &cur {
            Some(c) => out_ptr(c),
            None if a == 1 || b == 1 => {
                held = input_as(x, DType::F32)?;
                held.ptr
            }
            None => 0,
        };
        cur = Some(if b == 1 {
            rows_of(dev, DType::F32, p, a, d, "sum")?
        } else if a == 1 {
            cols_of(dev, DType::F32, p, d, b)?
        } else {
            let moved = Layout::contiguous(&[a, d, b]).transpose(1, 2)?;
            let moved = match &cur {
                Some(c) => copy((c, &moved))?,
                None => copy((&cast_or_copy(x)?, &moved))?,
            };
            rows_of(dev, DType::F32, out_ptr(&moved), a * b, d, "sum")?
        });
        dims[axis] = 1;
    }
    let Some(cur) = cur else {
        return copy(x);
    };
    match x.0.dtype() {
        DType::F32 => Ok(cur),
        other => cast((&cur, &dense(&dims)), other),
    }
}

/// `x` as contiguous f32 storage.
fn cast_or_copy(x: Cu) -> Result<CudaStorage> {
    match x.0.dtype() {
        DType::F32 => copy(x),
        _ => cast(x, DType::F32),
    }
}

/// log-softmax over the last dim from the row kernels and elementwise maps:
/// y = z − log Σ exp z with z = x − max x.
pub(crate) fn log_softmax(x: Cu) -> Result<CudaStorage> {
    let dims = x.1.dims();
    let mut kept = dims.to_vec();
    if let Some(l) = kept.last_mut() {
        *l = 1;
    }
    let row = dense(&kept).broadcast_as(dims)?;
    let full = dense(dims);
    let max = max_last(x)?;
    let z = binary(x, (&max, &row), BinaryOp::Sub)?;
    let e = unary((&z, &full), UnaryOp::Exp)?;
    let sum = sum_to((&e, &full), &kept)?;
    let lse = unary((&sum, &dense(&kept)), UnaryOp::Log)?;
    binary((&z, &full), (&lse, &row), BinaryOp::Sub)
}

/// Backward of log-softmax: g − softmax · Σ g.
pub(crate) fn log_softmax_backward(y: Cu, g: Cu) -> Result<CudaStorage> {
    let dims = y.1.dims();
    let mut kept = dims.to_vec();
    if let Some(l) = kept.last_mut() {
        *l = 1;
    }
    let row = dense(&kept).broadcast_as(dims)?;
    let full = dense(dims);
    let p = unary(y, UnaryOp::Exp)?;
    let gsum = sum_to(g, &kept)?;
    let pg = binary((&p, &full), (&gsum, &row), BinaryOp::Mul)?;
    binary(g, (&pg, &full), BinaryOp::Sub)
}

/// Σ x² over all of `xs` (float operands on one device): one launch per dtype into a device
/// f32 accumulator, read back once.
pub(crate) fn sum_of_squares(xs: &[Cu]) -> Result<f64> {
    let Some(first) = xs.first() else {
        return Ok(0.0);
    };
    let dev = first.0.device();
    let acc = CudaStorage::new(dev.alloc_zeroed(4)?, DType::F32);
    for dtype in [DType::F32, DType::BF16] {
        let group: Vec<(Input, usize)> = xs
            .iter()
            .filter(|x| x.0.dtype() == dtype && x.1.elem_count() > 0)
            .map(|&x| Ok((input(x)?, x.1.elem_count())))
            .collect::<Result<_>>()?;
        if group.is_empty() {
            continue;
        }
        let n = group.len();
        let mut words = vec![0u64; 2 * n];
        for (j, (x, len)) in group.iter().enumerate() {
            words[j] = x.ptr;
            words[n + j] = *len as u64;
        }
        let max_len = group.iter().map(|g| g.1).max().unwrap_or(0);
        let table = dev.upload(&words)?;
        dev.run(&plan_sumsq_multi(
            suffix(dtype, "sumsq")?,
            table.ptr(),
            n,
            max_len,
            out_ptr(&acc),
            dev.num_sms(),
        )?)?;
    }
    let mut total = [0f32];
    dev.download_at(acc.buffer(), 0, &mut total)?;
    Ok(f64::from(total[0]))
}
