//! Flash-style causal multi-query attention (`attention.cu`), bf16 tensor cores, head dims 64
//! and 128: q (b, h, n, d), k = v (b, m, d), strided views read in place when aligned.

use super::elementwise::{cast, copy};
use super::{Cu, Launch, addr, alloc, dense, input, int, out_ptr};
use crate::cuda::CudaStorage;
use crate::cuda::launch::{KArg, LaunchCfg};
use crate::{DType, Error, Result};

/// Sizes of one attention call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    pub b: usize,
    pub h: usize,
    pub n: usize,
    pub m: usize,
    pub d: usize,
}

/// A (b, h, n, d) or (b, m, d) operand: address and element strides (batch, head, row).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct View {
    pub ptr: u64,
    pub sb: usize,
    pub sh: usize,
    pub sn: usize,
}

/// Whether the fused kernels cover head dim `d` (others take the composed path in
/// `ops::attention`).
pub fn fused_head_dim(d: usize) -> bool {
    matches!(d, 64 | 128)
}

fn head_dim(d: usize) -> Result<&'static str> {
    match d {
        64 => Ok("d64"),
        128 => Ok("d128"),
        _ => Err(Error::Invalid(format!(
            "attention on CUDA supports head dims 64 and 128, got {d}"
        ))),
    }
}

fn fwd_smem(d: usize) -> u32 {
    if d == 64 { 46080 } else { 87040 }
}

fn bwd_smem(d: usize) -> u32 {
    if d == 64 { 46592 } else { 57600 }
}

fn strides3(v: &View) -> [KArg; 3] {
    [
        KArg::I64(v.sb as i64),
        KArg::I64(v.sh as i64),
        KArg::I64(v.sn as i64),
    ]
}

fn strides2(v: &View) -> [KArg; 2] {
    [KArg::I64(v.sb as i64), KArg::I64(v.sn as i64)]
}

pub fn plan_fwd(
    s: Shape,
    q: View,
    k: View,
    v: View,
    out: View,
    lse: u64,
    scale: f32,
) -> Result<Launch> {
    let hd = head_dim(s.d)?;
    let grid = (
        int(s.n.div_ceil(64), "query tiles")? as u32,
        int(s.h, "heads")? as u32,
        int(s.b, "batch")? as u32,
    );
    let mut args = vec![
        KArg::Ptr(q.ptr),
        KArg::Ptr(k.ptr),
        KArg::Ptr(v.ptr),
        KArg::Ptr(out.ptr),
        KArg::Ptr(lse),
    ];
    args.extend([s.b, s.h, s.n, s.m].iter().map(|&x| KArg::I32(x as i32)));
    args.extend(strides3(&q));
    args.extend(strides2(&k));
    args.extend(strides2(&v));
    args.extend(strides3(&out));
    args.extend([KArg::F32(scale), KArg::I32(1)]);
    Ok(Launch::new(
        format!("attention_{hd}_fwd_bf16"),
        LaunchCfg::new(grid, (128, 1, 1), fwd_smem(s.d)),
        args,
    ))
}

/// dvec = rowsum(dout ∘ out), one warp per (b, h, i) row.
pub fn plan_bwd_pre(s: Shape, out: View, dout: View, dvec: u64, sms: u32) -> Result<Launch> {
    let rows = s.b * s.h * s.n;
    let grid = rows.div_ceil(8).clamp(1, 16 * sms.max(1) as usize) as u32;
    let mut args = vec![KArg::Ptr(out.ptr), KArg::Ptr(dout.ptr), KArg::Ptr(dvec)];
    args.extend([s.b, s.h, s.n, s.d].iter().map(|&x| KArg::I32(x as i32)));
    args.extend(strides3(&out));
    args.extend(strides3(&dout));
    Ok(Launch::new(
        "attention_bwd_pre_bf16",
        LaunchCfg::new((grid, 1, 1), (256, 1, 1), 0),
        args,
    ))
}

/// Head groups of the backward: enough blocks to cover ~2 waves of the SMs.
pub fn head_groups(s: Shape, sms: u32) -> usize {
    let tiles = s.m.div_ceil(64) * s.b;
    (2 * sms as usize)
        .div_ceil(tiles.max(1))
        .clamp(1, s.h.max(1))
}

pub fn plan_bwd(
    s: Shape,
    q: View,
    k: View,
    v: View,
    dout: View,
    lse: u64,
    dvec: u64,
    dq: u64,
    dk: u64,
    dv: u64,
    scale: f32,
    sms: u32,
) -> Result<Launch> {
    let hd = head_dim(s.d)?;
    let g = head_groups(s, sms);
    let grid = (
        int(s.m.div_ceil(64), "key tiles")? as u32,
        g as u32,
        int(s.b, "batch")? as u32,
    );
    let mut args: Vec<KArg> = [q.ptr, k.ptr, v.ptr, dout.ptr, lse, dvec, dq, dk, dv]
        .iter()
        .map(|&p| KArg::Ptr(p))
        .collect();
    args.extend([s.b, s.h, s.n, s.m].iter().map(|&x| KArg::I32(x as i32)));
    args.extend(strides3(&q));
    args.extend(strides2(&k));
    args.extend(strides2(&v));
    args.extend(strides3(&dout));
    args.extend([KArg::F32(scale), KArg::I32(1)]);
    Ok(Launch::new(
        format!("attention_{hd}_bwd_bf16"),
        LaunchCfg::new(grid, (128, 1, 1), bwd_smem(s.d)),
        args,
    ))
}

/// Where the kernels can read a bf16 operand in place (d contiguous, strides ≡ 0 mod 8, 16-B
/// aligned), or `None`. Rank 4 (b, h, n, d) or 3 (b, m, d).
fn try_view(x: Cu) -> Option<View> {
    let (d, st) = (x.1.dims(), x.1.strides());
    let r = d.len();
    if st[r - 1] != 1 && d[r - 1] > 1 {
        return None;
    }
    let ptr = addr(x);
    let v = if r == 4 {
        View {
            ptr,
            sb: st[0],
            sh: st[1],
            sn: st[2],
        }
    } else {
        View {
            ptr,
            sb: st[0],
            sh: 0,
            sn: st[1],
        }
    };
    let ok = v.ptr % 16 == 0 && [v.sb, v.sh, v.sn].iter().all(|s| s % 8 == 0);
    ok.then_some(v)
}

/// A bf16 operand as the kernels read it: in place when they can, else a converted or
/// contiguous copy (kept alive by the returned storage).
fn view(x: Cu) -> Result<(Option<CudaStorage>, View)> {
    if x.0.dtype() == DType::BF16
        && let Some(v) = try_view(x)
    {
        return Ok((None, v));
    }
    let c = if x.0.dtype() == DType::BF16 {
        copy(x)?
    } else {
        cast(x, DType::BF16)?
    };
    let l = dense(x.1.dims());
    let v = try_view((&c, &l)).ok_or_else(|| {
        Error::Invalid(format!(
            "attention on CUDA: head dim {} is not a multiple of 8",
            x.1.dims()[x.1.rank() - 1]
        ))
    })?;
    Ok((Some(c), v))
}

fn contiguous_view(s: &CudaStorage, h: usize, n: usize, d: usize) -> View {
    View {
        ptr: out_ptr(s),
        sb: h * n * d,
        sh: n * d,
        sn: d,
    }
}

/// `s` (`n` elements of `from`) in `dtype`, converted when that differs.
fn in_dtype(s: CudaStorage, n: usize, from: DType, dtype: DType) -> Result<CudaStorage> {
    if from == dtype {
        return Ok(s);
    }
    cast((&s, &dense(&[n])), dtype)
}

/// (out in the dtype of q, lse (b, h, n) f32).
pub(crate) fn forward(
    q: Cu,
    k: Cu,
    v: Cu,
    s: Shape,
    scale: f32,
) -> Result<(CudaStorage, CudaStorage)> {
    head_dim(s.d)?;
    let (_q, vq) = view(q)?;
    let (_k, vk) = view(k)?;
    let (_v, vv) = view(v)?;
    let dev = q.0.device();
    let n_out = s.b * s.h * s.n * s.d;
    let out = alloc(dev, DType::BF16, n_out)?;
    let lse = alloc(dev, DType::F32, s.b * s.h * s.n)?;
    if s.b * s.h * s.n > 0 {
        let vo = contiguous_view(&out, s.h, s.n, s.d);
        dev.run(&plan_fwd(s, vq, vk, vv, vo, out_ptr(&lse), scale)?)?;
    }
    Ok((in_dtype(out, n_out, DType::BF16, q.0.dtype())?, lse))
}

/// (dq, dk, dv) in the dtypes of q, k, v.
pub(crate) fn backward(
    [q, k, v]: [Cu; 3],
    out: Cu,
    lse: Cu,
    g: Cu,
    s: Shape,
    scale: f32,
) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
    head_dim(s.d)?;
    let (_q, vq) = view(q)?;
    let (_k, vk) = view(k)?;
    let (_v, vv) = view(v)?;
    let (_o, vo) = view(out)?;
    let (_g, vg) = view(g)?;
    let ilse = input(lse)?;
    let dev = q.0.device();
    let f32_zeros = |n: usize| -> Result<CudaStorage> {
        Ok(CudaStorage::new(dev.alloc_zeroed(n * 4)?, DType::F32))
    };
    let (nq, nk) = (s.b * s.h * s.n * s.d, s.b * s.m * s.d);
    let dvec = alloc(dev, DType::F32, s.b * s.h * s.n)?;
    let dq = f32_zeros(nq)?;
    let dk = f32_zeros(nk)?;
    let dv = f32_zeros(nk)?;
    if s.b * s.h * s.n > 0 {
        dev.run(&plan_bwd_pre(s, vo, vg, out_ptr(&dvec), dev.num_sms())?)?;
        dev.run(&plan_bwd(
            s,
            vq,
            vk,
            vv,
            vg,
            ilse.ptr,
            out_ptr(&dvec),
            out_ptr(&dq),
            out_ptr(&dk),
            out_ptr(&dv),
            scale,
            dev.num_sms(),
        )?)?;
    }
    Ok((
        in_dtype(dq, nq, DType::F32, q.0.dtype())?,
        in_dtype(dk, nk, DType::F32, k.0.dtype())?,
        in_dtype(dv, nk, DType::F32, v.0.dtype())?,
    ))
}
