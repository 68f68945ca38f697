//! Elementwise kernels (`elementwise.cu`): binary and unary maps, casts, fills, strided copies.

use super::{BLOCK, Cu, Launch, alloc, collapse, input, out_ptr, suffix};
use crate::backend::{Arg, Backend, BinaryOp, UnaryOp};
use crate::cuda::launch::{KArg, LaunchCfg};
use crate::cuda::{CudaDevice, CudaStorage};
use crate::layout::Layout;
use crate::storage::CpuStorage;
use crate::{DType, Error, Result};
use std::sync::Arc;

fn gs(n: usize, sms: u32) -> LaunchCfg {
    LaunchCfg::grid_stride(n, BLOCK, sms)
}

pub fn binary_name(op: BinaryOp) -> &'static str {
    match op {
        BinaryOp::Add => "add",
        BinaryOp::Sub => "sub",
        BinaryOp::Mul => "mul",
        BinaryOp::Div => "div",
        BinaryOp::Max => "max",
        BinaryOp::Min => "min",
        BinaryOp::Ge => "ge",
    }
}

/// The kernel of a unary op, and its (scale, bias) when it is the affine kernel.
pub fn unary_name(op: UnaryOp) -> (&'static str, Option<(f32, f32)>) {
    match op {
        UnaryOp::Neg => ("neg", None),
        UnaryOp::Exp => ("exp", None),
        UnaryOp::Log => ("log", None),
        UnaryOp::Sqr => ("sqr", None),
        UnaryOp::Sqrt => ("sqrt", None),
        UnaryOp::Sigmoid => ("sigmoid", None),
        UnaryOp::Silu => ("silu", None),
        UnaryOp::Tanh => ("tanh", None),
        UnaryOp::Affine(m, a) => ("affine", Some((m, a))),
    }
}

pub fn plan_binary(
    op: BinaryOp,
    sfx: &str,
    a: u64,
    b: u64,
    out: u64,
    n: usize,
    sms: u32,
) -> Launch {
    Launch::new(
        format!("{}_fwd_{sfx}", binary_name(op)),
        gs(n, sms),
        vec![
            KArg::Ptr(a),
            KArg::Ptr(b),
            KArg::Ptr(out),
            KArg::I64(n as i64),
        ],
    )
}

pub fn plan_unary(op: UnaryOp, sfx: &str, x: u64, out: u64, n: usize, sms: u32) -> Launch {
    let (name, affine) = unary_name(op);
    let mut args = vec![KArg::Ptr(x), KArg::Ptr(out), KArg::I64(n as i64)];
    if let Some((m, a)) = affine {
        args.extend([KArg::F32(m), KArg::F32(a)]);
    }
    Launch::new(format!("{name}_fwd_{sfx}"), gs(n, sms), args)
}

/// f32 → bf16 or bf16 → f32.
pub fn plan_cast(from: DType, x: u64, out: u64, n: usize, sms: u32) -> Launch {
    let name = if from == DType::F32 {
        "to_bf16_fwd_f32"
    } else {
        "to_f32_fwd_bf16"
    };
    Launch::new(
        name,
        gs(n, sms),
        vec![KArg::Ptr(x), KArg::Ptr(out), KArg::I64(n as i64)],
    )
}

/// Fill with `value` (f32 and bf16 take it as f32, u32 as an integer).
pub fn plan_fill(dtype: DType, out: u64, n: usize, value: f32, sms: u32) -> Result<Launch> {
    let (name, v) = match dtype {
        DType::F32 => ("fill_fwd_f32", KArg::F32(value)),
        DType::BF16 => ("fill_fwd_bf16", KArg::F32(value)),
        DType::U32 => ("fill_fwd_u32", KArg::U32(value as u32)),
        other => {
            return Err(Error::DType {
                op: "fill",
                got: other,
                want: "f32, bf16 or u32 (on CUDA)",
            });
        }
    };
    Ok(Launch::new(
        name,
        gs(n, sms),
        vec![KArg::Ptr(out), KArg::I64(n as i64), v],
    ))
}

fn copy_suffix(dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::BF16 => Ok("bf16"),
        DType::U32 => Ok("u32"),
        other => Err(Error::DType {
            op: "copy",
            got: other,
            want: "f32, bf16 or u32 (on CUDA)",
        }),
    }
}

/// (element count, the arguments both copy kernels start with: src, dst, n, d0..d3, s0..s3,
/// source offset).
fn copy_args(
    src: u64,
    dst: u64,
    d: [usize; 4],
    s: [i64; 4],
    soff: usize,
) -> Result<(usize, Vec<KArg>)> {
    let n: usize = d.iter().product();
    let mut args = vec![KArg::Ptr(src), KArg::Ptr(dst), KArg::I64(n as i64)];
    for v in d {
        args.push(KArg::I32(super::int(v, "copy dim")?));
    }
    args.extend(s.iter().map(|&v| KArg::I64(v)));
    args.push(KArg::I64(soff as i64));
    Ok((n, args))
}

/// A strided view (`offset`, `strides`, ≤ 4 dims after collapsing) → a contiguous buffer.
pub fn plan_copy(
    dtype: DType,
    src: u64,
    dst: u64,
    d: [usize; 4],
    s: [i64; 4],
    offset: usize,
    sms: u32,
) -> Result<Launch> {
    let (n, args) = copy_args(src, dst, d, s, offset)?;
    Ok(Launch::new(
        format!("copy_strided_fwd_{}", copy_suffix(dtype)?),
        gs(n, sms),
        args,
    ))
}

/// A strided view → a strided view of another buffer (a slice of a concatenation): the
/// destination's strides `t` and offset `doff` follow the source's.
pub fn plan_copy_into(
    dtype: DType,
    src: u64,
    dst: u64,
    d: [usize; 4],
    s: [i64; 4],
    soff: usize,
    t: [i64; 4],
    doff: usize,
    sms: u32,
) -> Result<Launch> {
    let (n, mut args) = copy_args(src, dst, d, s, soff)?;
    args.extend(t.iter().map(|&v| KArg::I64(v)));
    args.push(KArg::I64(doff as i64));
    Ok(Launch::new(
        format!("copy_into_fwd_{}", copy_suffix(dtype)?),
        gs(n, sms),
        args,
    ))
}

// ---- storage level ------------------------------------------------------------------------

/// `op(a, b)` for operands laid out over one shape, of one float dtype.
pub(crate) fn binary(a: Cu, b: Cu, op: BinaryOp) -> Result<CudaStorage> {
    let name = binary_name(op);
    if a.0.dtype() != b.0.dtype() {
        return Err(Error::DType {
            op: name,
            got: b.0.dtype(),
            want: a.0.dtype().name(),
        });
    }
    let sfx = suffix(a.0.dtype(), name)?;
    let (ia, ib) = (input(a)?, input(b)?);
    let dev = a.0.device();
    let n = a.1.elem_count();
    let out = alloc(dev, a.0.dtype(), n)?;
    if n > 0 {
        dev.run(&plan_binary(
            op,
            sfx,
            ia.ptr,
            ib.ptr,
            out_ptr(&out),
            n,
            dev.num_sms(),
        ))?;
    }
    Ok(out)
}

pub(crate) fn unary(x: Cu, op: UnaryOp) -> Result<CudaStorage> {
    let sfx = suffix(x.0.dtype(), unary_name(op).0)?;
    let ix = input(x)?;
    let dev = x.0.device();
    let n = x.1.elem_count();
    let out = alloc(dev, x.0.dtype(), n)?;
    if n > 0 {
        dev.run(&plan_unary(
            op,
            sfx,
            ix.ptr,
            out_ptr(&out),
            n,
            dev.num_sms(),
        ))?;
    }
    Ok(out)
}

/// f32 ↔ bf16 on the device; other conversions go through the host (ids, rarely used).
pub(crate) fn cast(x: Cu, dtype: DType) -> Result<CudaStorage> {
    let dev = x.0.device();
    let floats = |d: DType| matches!(d, DType::F32 | DType::BF16);
    if !(floats(x.0.dtype()) && floats(dtype)) {
        let host = download(x)?;
        let n = x.1.elem_count();
        let host = CpuStorage::cast((&host, &super::dense(&[n])), dtype)?;
        return upload(dev, (&host, &super::dense(&[n])));
    }
    let ix = input(x)?;
    let n = x.1.elem_count();
    let out = alloc(dev, dtype, n)?;
    if n > 0 {
        dev.run(&plan_cast(
            x.0.dtype(),
            ix.ptr,
            out_ptr(&out),
            n,
            dev.num_sms(),
        ))?;
    }
    Ok(out)
}

/// `n` elements filled with `value`.
pub(crate) fn full(
    dev: &Arc<CudaDevice>,
    n: usize,
    dtype: DType,
    value: f32,
) -> Result<CudaStorage> {
    let out = alloc(dev, dtype, n)?;
    if n > 0 {
        match plan_fill(dtype, out_ptr(&out), n, value, dev.num_sms()) {
            Ok(plan) => dev.run(&plan)?,
            // i64 / u8: fill on the host and upload.
            Err(_) => {
                let host = crate::cpu::filled(value, n, dtype);
                return upload(dev, (&host, &super::dense(&[n])));
            }
        }
    }
    Ok(out)
}

/// A contiguous device copy of a host operand.
pub(crate) fn upload(dev: &Arc<CudaDevice>, x: Arg<CpuStorage>) -> Result<CudaStorage> {
    use crate::cpu::backend::view;
    let buf = match x.0 {
        CpuStorage::F32(_) => dev.upload(&view::<f32>(x, "upload")?)?,
        CpuStorage::BF16(_) => dev.upload(&view::<half::bf16>(x, "upload")?)?,
        CpuStorage::U32(_) => dev.upload(&view::<u32>(x, "upload")?)?,
        CpuStorage::I64(_) => dev.upload(&view::<i64>(x, "upload")?)?,
        CpuStorage::U8(_) => dev.upload(&view::<u8>(x, "upload")?)?,
    };
    Ok(CudaStorage::new(buf, x.0.dtype()))
}

/// A contiguous host copy of a device operand (waits for the stream).
pub(crate) fn download(x: Cu) -> Result<CpuStorage> {
    let c;
    let (s, l) = if x.1.is_contiguous() {
        x
    } else {
        c = (copy(x)?, super::dense(x.1.dims()));
        (&c.0, &c.1)
    };
    let (dev, at, n) = (
        s.device(),
        l.offset() * s.dtype().size_in_bytes(),
        l.elem_count(),
    );
    fn get<T: bytemuck::Pod>(
        dev: &CudaDevice,
        s: &CudaStorage,
        at: usize,
        n: usize,
    ) -> Result<Vec<T>> {
        let mut out = vec![T::zeroed(); n];
        dev.download_at(s.buffer(), at, &mut out)?;
        Ok(out)
    }
    use crate::cpu::owned;
    Ok(match s.dtype() {
        DType::F32 => owned(get::<f32>(dev, s, at, n)?),
        DType::BF16 => owned(get::<half::bf16>(dev, s, at, n)?),
        DType::U32 => owned(get::<u32>(dev, s, at, n)?),
        DType::I64 => owned(get::<i64>(dev, s, at, n)?),
        DType::U8 => owned(get::<u8>(dev, s, at, n)?),
    })
}

/// A contiguous copy of a strided view (broadcasts materialise). i64 / u8 go through the host.
pub(crate) fn copy(x: Cu) -> Result<CudaStorage> {
    let (s, l) = x;
    let dev = s.device();
    if copy_suffix(s.dtype()).is_err() {
        let host = download(x)?;
        return upload(dev, (&host, &super::dense(l.dims())));
    }
    let n = l.elem_count();
    let out = alloc(dev, s.dtype(), n)?;
    if n > 0 {
        let (d, [st]) = collapse(l.dims(), [l.strides()])?;
        dev.run(&plan_copy(
            s.dtype(),
            s.buffer().ptr(),
            out_ptr(&out),
            d,
            st,
            l.offset(),
            dev.num_sms(),
        )?)?;
    }
    Ok(out)
}

/// Concatenate along `dim` into `dims` (shapes checked by the caller): each piece is copied
/// into its slice.
pub(crate) fn cat(parts: &[Cu], dim: usize, dims: &[usize]) -> Result<CudaStorage> {
    let dev = parts[0].0.device();
    let mut out = alloc(dev, parts[0].0.dtype(), crate::layout::elem_count(dims))?;
    let full = Layout::contiguous(dims);
    let mut start = 0;
    for &part in parts {
        let len = part.1.dims()[dim];
        write_into(&mut out, &full.narrow(dim, start, len)?, part)?;
        start += len;
    }
    Ok(out)
}

/// Copy `src` over the elements of `dst` that `slot` addresses (same dims and dtype, checked
/// by the caller), in place.
pub(crate) fn write_into(dst: &mut CudaStorage, slot: &Layout, (s, l): Cu) -> Result<()> {
    let dev = s.device();
    copy_suffix(s.dtype())?;
    if l.elem_count() == 0 {
        return Ok(());
    }
    let (d, [st, tt]) = collapse(l.dims(), [l.strides(), slot.strides()])?;
    dev.run(&plan_copy_into(
        s.dtype(),
        s.buffer().ptr(),
        out_ptr(dst),
        d,
        st,
        l.offset(),
        tt,
        slot.offset(),
        dev.num_sms(),
    )?)
}
