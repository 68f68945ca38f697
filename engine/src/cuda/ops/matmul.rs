//! Tensor-core matmul (`matmul.cu`): C = op(A)·op(B), bf16 in, f32 accumulate, bf16 or f32 out.
//! f32 operands are rounded to bf16 first (the tensor cores' input type), like PyTorch's
//! autocast; the result keeps the operands' dtype.

use super::elementwise::{cast, copy};
use super::{Cu, Launch, addr, alloc, dense, int, out_ptr};
use crate::cuda::CudaStorage;
use crate::cuda::launch::{KArg, LaunchCfg};
use crate::layout::Layout;
use crate::{DType, Error, Result};

/// One operand as the kernels read it: row-major (`trans = false`, element (i, j) at
/// `ptr + i·ld + j`) or stored transposed (`trans = true`, at `ptr + j·ld + i`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Operand {
    pub ptr: u64,
    pub trans: bool,
    pub ld: usize,
    /// Elements between batch entries (0 when shared).
    pub batch_stride: usize,
}

pub use crate::backend::MatmulDims as Dims;

fn aligned(o: &Operand) -> bool {
    o.ld.is_multiple_of(8) && o.batch_stride.is_multiple_of(8) && o.ptr.is_multiple_of(16)
}

/// The launch for C = op(A)·op(B) into a contiguous C. Picks the 128×128 tile when it fills the
/// GPU, the 64×64 one otherwise, and the unaligned variant when strides or addresses are not
/// multiples of 8 elements / 16 bytes.
pub fn plan_matmul(
    a: Operand,
    b: Operand,
    c: u64,
    d: Dims,
    f32_out: bool,
    sms: u32,
) -> Result<Launch> {
    let layout = match (a.trans, b.trans) {
        (false, false) => "nn",
        (false, true) => "nt",
        (true, false) => "tn",
        (true, true) => {
            return Err(Error::Invalid(
                "internal: matmul with both operands transposed (make one contiguous)".into(),
            ));
        }
    };
    let c_ok = d.n.is_multiple_of(8) && c.is_multiple_of(16);
    let big = d.m.div_ceil(128) * d.n.div_ceil(128) * d.batch >= sms as usize;
    let (tile, bm, threads, smem) = if !(aligned(&a) && aligned(&b) && c_ok) {
        ("_unaligned", 64, 128, 0)
    } else if big {
        ("", 128, 256, 81920)
    } else {
        ("_64", 64, 128, 0)
    };
    let out = if f32_out { "_f32out" } else { "" };
    let grid = (
        int(d.n.div_ceil(bm), "matmul grid")? as u32,
        int(d.m.div_ceil(bm), "matmul grid")? as u32,
        int(d.batch, "matmul batch")? as u32,
    );
    Ok(Launch::new(
        format!("matmul_{layout}_bf16{tile}{out}"),
        LaunchCfg::new(grid, (threads, 1, 1), smem),
        vec![
            KArg::Ptr(a.ptr),
            KArg::Ptr(b.ptr),
            KArg::Ptr(c),
            KArg::I32(int(d.m, "m")?),
            KArg::I32(int(d.n, "n")?),
            KArg::I32(int(d.k, "k")?),
            KArg::I32(int(a.ld, "lda")?),
            KArg::I32(int(b.ld, "ldb")?),
            KArg::I32(int(d.n, "ldc")?),
            KArg::I64(a.batch_stride as i64),
            KArg::I64(b.batch_stride as i64),
            KArg::I64((d.m * d.n) as i64),
            KArg::F32(1.0),
            KArg::F32(0.0),
        ],
    ))
}

/// How a (batch,) rows × cols view can be read without a copy, or `None`.
pub fn operand_of(dims: &[usize], strides: &[usize], ptr: u64) -> Option<Operand> {
    let r = dims.len();
    let (rows, cols) = (dims[r - 2], dims[r - 1]);
    let (rs, cs) = (strides[r - 2], strides[r - 1]);
    let batch_stride = if r == 3 && dims[0] > 1 { strides[0] } else { 0 };
    if cs == 1 || cols == 1 {
        let ld = if rows == 1 { cols.max(1) } else { rs };
        return Some(Operand {
            ptr,
            trans: false,
            ld,
            batch_stride,
        });
    }
    if rs == 1 || rows == 1 {
        let ld = if cols == 1 { rows.max(1) } else { cs };
        return Some(Operand {
            ptr,
            trans: true,
            ld,
            batch_stride,
        });
    }
    None
}

/// An operand as the kernels read it, with the copy it is read from when one was needed.
fn operand(x: Cu) -> Result<(Option<CudaStorage>, Operand)> {
    if let Some(o) = operand_of(x.1.dims(), x.1.strides(), addr(x)) {
        return Ok((None, o));
    }
    let c = copy(x)?;
    let o = operand_of(x.1.dims(), dense(x.1.dims()).strides(), out_ptr(&c))
        .ok_or_else(|| Error::Invalid("internal: contiguous matmul operand".into()))?;
    Ok((Some(c), o))
}

/// An f32 operand rounded to bf16 for the tensor cores. A transposed operand stays transposed
/// (its contiguous transpose is cast), so the kernel reads it in place rather than after a gather.
fn bf16_keeping_transpose(x: Cu) -> Result<(CudaStorage, Layout)> {
    let r = x.1.rank();
    if r >= 2 && !x.1.is_contiguous() {
        let back = x.1.transpose(r - 2, r - 1)?;
        if back.is_contiguous() {
            let c = cast((x.0, &back), DType::BF16)?;
            return Ok((c, dense(back.dims()).transpose(r - 2, r - 1)?));
        }
    }
    Ok((cast(x, DType::BF16)?, dense(x.1.dims())))
}

/// (m×k)·(k×n) or (b×m×k)·(b×k×n), shapes checked by the caller.
pub(crate) fn matmul(a: Cu, b: Cu, d: Dims) -> Result<CudaStorage> {
    if a.0.dtype() != b.0.dtype() {
        return Err(Error::DType {
            op: "matmul",
            got: b.0.dtype(),
            want: a.0.dtype().name(),
        });
    }
    let f32_out = match a.0.dtype() {
        DType::BF16 => false,
        DType::F32 => true,
        other => {
            return Err(Error::DType {
                op: "matmul",
                got: other,
                want: "f32 or bf16",
            });
        }
    };
    let dev = a.0.device();
    let out_dtype = if f32_out { DType::F32 } else { DType::BF16 };
    let n_out = d.batch * d.m * d.n;
    if d.k == 0 {
        return super::elementwise::full(dev, n_out, out_dtype, 0.0);
    }
    let rounded;
    let (a, b) = if f32_out {
        rounded = (bf16_keeping_transpose(a)?, bf16_keeping_transpose(b)?);
        ((&rounded.0.0, &rounded.0.1), (&rounded.1.0, &rounded.1.1))
    } else {
        (a, b)
    };
    // The operands as read (kept alive until the launch is queued).
    let (_a, oa) = operand(a)?;
    // No kernel reads both operands transposed: then B is copied into row-major order.
    let (_b, ob) = match operand(b)? {
        (_, o) if oa.trans && o.trans => {
            let c = copy(b)?;
            let o = operand_of(b.1.dims(), dense(b.1.dims()).strides(), out_ptr(&c))
                .ok_or_else(|| Error::Invalid("internal: contiguous matmul operand".into()))?;
            (Some(c), o)
        }
        read => read,
    };
    let out = alloc(dev, out_dtype, n_out)?;
    if n_out > 0 {
        dev.run(&plan_matmul(
            oa,
            ob,
            out_ptr(&out),
            d,
            f32_out,
            dev.num_sms(),
        )?)?;
    }
    Ok(out)
}
