//! Elementwise kernels (`elementwise.cu`): binary and unary maps, casts, fills, strided copies.

use super::{BLOCK, Launch, alloc, collapse, device_of, out_ptr, ptr, suffix, tensor, untracked};
use crate::cuda::CudaDevice;
use crate::cuda::launch::{KArg, LaunchCfg};
use crate::layout::Layout;
use crate::ops::elementwise::{BinaryOp, UnaryOp};
use crate::{DType, Error, Result, Tensor};
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

// ---- tensor level ------------------------------------------------------------------------

/// `op(a, b)` for operands already broadcast to one shape and of one float dtype.
pub(crate) fn binary(a: &Tensor, b: &Tensor, op: BinaryOp) -> Result<Tensor> {
    untracked(|| {
        let name = binary_name(op);
        if a.dtype() != b.dtype() {
            return Err(Error::DType {
                op: name,
                got: b.dtype(),
                want: a.dtype().name(),
            });
        }
        let sfx = suffix(a.dtype(), name)?;
        let (a, b) = (a.contiguous()?, b.contiguous()?);
        let dev = device_of(&a)?;
        let n = a.elem_count();
        let out = alloc(&dev, a.dtype(), n)?;
        if n > 0 {
            dev.run(&plan_binary(
                op,
                sfx,
                ptr(&a)?,
                ptr(&b)?,
                out_ptr(&out),
                n,
                dev.num_sms(),
            ))?;
        }
        Ok(tensor(out, a.dims()))
    })
}

pub(crate) fn unary(x: &Tensor, op: UnaryOp) -> Result<Tensor> {
    untracked(|| {
        let sfx = suffix(x.dtype(), unary_name(op).0)?;
        let x = x.contiguous()?;
        let dev = device_of(&x)?;
        let n = x.elem_count();
        let out = alloc(&dev, x.dtype(), n)?;
        if n > 0 {
            dev.run(&plan_unary(
                op,
                sfx,
                ptr(&x)?,
                out_ptr(&out),
                n,
                dev.num_sms(),
            ))?;
        }
        Ok(tensor(out, x.dims()))
    })
}

/// f32 ↔ bf16 on the device; other conversions go through the host (ids, rarely used).
pub(crate) fn cast(x: &Tensor, dtype: DType) -> Result<Tensor> {
    untracked(|| {
        let dev = device_of(x)?;
        let floats = |d: DType| matches!(d, DType::F32 | DType::BF16);
        if !(floats(x.dtype()) && floats(dtype)) {
            let host = x.to_device(crate::Device::Cpu)?.to_dtype(dtype)?;
            return upload(&dev, &host);
        }
        let x = x.contiguous()?;
        let n = x.elem_count();
        let out = alloc(&dev, dtype, n)?;
        if n > 0 {
            dev.run(&plan_cast(
                x.dtype(),
                ptr(&x)?,
                out_ptr(&out),
                n,
                dev.num_sms(),
            ))?;
        }
        Ok(tensor(out, x.dims()))
    })
}

/// A new tensor filled with `value`.
pub(crate) fn full(
    dev: &Arc<CudaDevice>,
    dims: &[usize],
    dtype: DType,
    value: f32,
) -> Result<Tensor> {
    let n = crate::layout::elem_count(dims);
    let out = alloc(dev, dtype, n)?;
    if n > 0 {
        match plan_fill(dtype, out_ptr(&out), n, value, dev.num_sms()) {
            Ok(plan) => dev.run(&plan)?,
            // i64 / u8: fill on the host and upload.
            Err(_) => {
                let host = Tensor::full(value, dims, dtype, crate::Device::Cpu)?;
                return upload(dev, &host);
            }
        }
    }
    Ok(tensor(out, dims))
}

/// A contiguous device copy of a CPU tensor.
pub(crate) fn upload(dev: &Arc<CudaDevice>, host: &Tensor) -> Result<Tensor> {
    use crate::storage::CpuStorage;
    let host = host.contiguous()?;
    let buf = match host.cpu()? {
        CpuStorage::F32(b) => dev.upload(slice(b.as_slice(), &host))?,
        CpuStorage::BF16(b) => dev.upload(slice(b.as_slice(), &host))?,
        CpuStorage::U32(b) => dev.upload(slice(b.as_slice(), &host))?,
        CpuStorage::I64(b) => dev.upload(slice(b.as_slice(), &host))?,
        CpuStorage::U8(b) => dev.upload(slice(b.as_slice(), &host))?,
    };
    Ok(tensor(
        crate::cuda::CudaStorage::new(buf, host.dtype()),
        host.dims(),
    ))
}

fn slice<'a, T>(data: &'a [T], t: &Tensor) -> &'a [T] {
    let o = t.layout().offset();
    &data[o..o + t.elem_count()]
}

/// A contiguous copy of a strided view (broadcasts materialise). i64 / u8 go through the host.
pub(crate) fn contiguous(x: &Tensor) -> Result<Tensor> {
    untracked(|| {
        let dev = device_of(x)?;
        if copy_suffix(x.dtype()).is_err() {
            let host = x.to_device(crate::Device::Cpu)?;
            return upload(&dev, &host);
        }
        let n = x.elem_count();
        let out = alloc(&dev, x.dtype(), n)?;
        if n > 0 {
            let (d, [s]) = collapse(x.dims(), [x.layout().strides()])?;
            dev.run(&plan_copy(
                x.dtype(),
                super::storage(x)?.buffer().ptr(),
                out_ptr(&out),
                d,
                s,
                x.layout().offset(),
                dev.num_sms(),
            )?)?;
        }
        Ok(tensor(out, x.dims()))
    })
}

/// Concatenate along `dim` (shapes checked by the caller): each piece is copied into its slice.
pub(crate) fn cat(ts: &[&Tensor], dim: usize, dims: &[usize]) -> Result<Tensor> {
    untracked(|| {
        let dev = device_of(ts[0])?;
        let dtype = ts[0].dtype();
        copy_suffix(dtype)?;
        let out = alloc(&dev, dtype, crate::layout::elem_count(dims))?;
        let full = Layout::contiguous(dims);
        let mut start = 0;
        for t in ts {
            let len = t.dims()[dim];
            if t.elem_count() > 0 {
                let slot = full.narrow(dim, start, len)?;
                let (d, [s, tt]) = collapse(t.dims(), [t.layout().strides(), slot.strides()])?;
                dev.run(&plan_copy_into(
                    dtype,
                    super::storage(t)?.buffer().ptr(),
                    out_ptr(&out),
                    d,
                    s,
                    t.layout().offset(),
                    tt,
                    slot.offset(),
                    dev.num_sms(),
                )?)?;
            }
            start += len;
        }
        Ok(tensor(out, dims))
    })
}
