//! The CPU backend behind the boundary: each op reads its operands through their layouts (in
//! place when contiguous) and calls the f32 reference of its family in this folder.

use super::buffers::F32s;
use super::matmul::MatRef;
use super::{Rows, gather, gather_f32, owned};
use crate::backend::{
    Arg, AttentionShape, Backend, BinaryOp, MatmulDims, RopeTables, Two, UnaryOp,
};
use crate::storage::{Buf, CpuElement, CpuStorage};
use crate::{DType, Error, IGNORE_ID, Result};
use half::bf16;
use std::borrow::Cow;

/// The elements of an operand of type `T` in row-major order, borrowed when contiguous.
pub(crate) fn view<'a, T: CpuElement>(
    (s, l): Arg<'a, CpuStorage>,
    op: &'static str,
) -> Result<Cow<'a, [T]>> {
    let slice = T::view(s).ok_or(Error::DType {
        op,
        got: s.dtype(),
        want: T::DTYPE.name(),
    })?;
    Ok(match l.contiguous_range() {
        Some(r) => Cow::Borrowed(&slice[r]),
        None => Cow::Owned(gather(slice, l)),
    })
}

/// f32 elements, borrowed when contiguous (gathered into a recycled buffer otherwise): the
/// CPU backend computes in f32 only.
pub(crate) fn f32s<'a>((s, l): Arg<'a, CpuStorage>, op: &'static str) -> Result<F32s<'a>> {
    let slice = whole_f32(s, op)?;
    Ok(match l.contiguous_range() {
        Some(r) => F32s::Borrowed(&slice[r]),
        None => F32s::Taken(gather_f32(slice, l)),
    })
}

/// f32 elements as rows of the last dim, read in place when the rows are evenly spaced
/// (`Layout::uniform_rows`), gathered into a recycled buffer otherwise.
pub(crate) fn f32_rows<'a>(x: Arg<'a, CpuStorage>, op: &'static str) -> Result<Rows<'a>> {
    let (s, l) = x;
    let slice = whole_f32(s, op)?;
    if let Some((count, len, stride)) = l.uniform_rows() {
        return Ok(Rows::strided(
            F32s::Borrowed(slice),
            l.offset(),
            stride,
            len,
            count,
        ));
    }
    let len = last_dim(x);
    let data = gather_f32(slice, l);
    let count = data.len() / len; // last_dim is at least 1
    Ok(Rows::strided(F32s::Taken(data), 0, len, len, count))
}

/// The whole f32 buffer (for ops that walk a layout themselves).
fn whole_f32<'a>(s: &'a CpuStorage, op: &'static str) -> Result<&'a [f32]> {
    f32::view(s).ok_or(Error::DType {
        op,
        got: s.dtype(),
        want: "f32",
    })
}

/// A (b, m, d) operand whose rows are contiguous, read in place from its first element with
/// its batch stride (a KV cache narrowed to the positions so far); gathered otherwise.
fn batched_rows<'a>((s, l): Arg<'a, CpuStorage>) -> Result<(F32s<'a>, usize)> {
    let (dims, st) = (l.dims(), l.strides());
    let rows_contiguous = dims.len() == 3 && (dims[2] == 1 || st[2] == 1) && st[1] == dims[2];
    if rows_contiguous && dims[0] > 1 {
        let whole = whole_f32(s, "attention")?;
        let end = l.offset() + (dims[0] - 1) * st[0] + dims[1] * dims[2];
        return Ok((F32s::Borrowed(&whole[l.offset()..end]), st[0]));
    }
    Ok((f32s((s, l), "attention")?, dims[1..].iter().product()))
}

fn last_dim(x: Arg<CpuStorage>) -> usize {
    x.1.dims().last().copied().unwrap_or(1).max(1)
}

fn mat_ref<'a>((s, l): Arg<'a, CpuStorage>, batched: bool) -> Result<MatRef<'a>> {
    let st = l.strides();
    let r = st.len();
    Ok(MatRef {
        data: whole_f32(s, "matmul")?,
        offset: l.offset(),
        batch_stride: if batched { st[0] } else { 0 },
        row_stride: st[r - 2],
        col_stride: st[r - 1],
    })
}

fn cat_of<T: CpuElement>(parts: &[Arg<CpuStorage>], dim: usize) -> Result<CpuStorage> {
    let outer: usize = parts[0].1.dims()[..dim].iter().product();
    let blocks: Vec<(Cow<[T]>, usize)> = parts
        .iter()
        .map(|&p| Ok((view::<T>(p, "cat")?, p.1.dims()[dim..].iter().product())))
        .collect::<Result<_>>()?;
    let total: usize = blocks.iter().map(|(d, _)| d.len()).sum();
    let mut out = Vec::with_capacity(total);
    for o in 0..outer {
        for (d, inner) in &blocks {
            out.extend_from_slice(&d[o * inner..(o + 1) * inner]);
        }
    }
    Ok(owned(out))
}

/// `cat_of` for f32, into a recycled buffer (concatenated gradients are large).
fn cat_f32(parts: &[Arg<CpuStorage>], dim: usize) -> Result<CpuStorage> {
    let outer: usize = parts[0].1.dims()[..dim].iter().product();
    let blocks: Vec<(F32s, usize)> = parts
        .iter()
        .map(|&p| Ok((f32s(p, "cat")?, p.1.dims()[dim..].iter().product())))
        .collect::<Result<_>>()?;
    let total: usize = blocks.iter().map(|(d, _)| d.len()).sum();
    let mut out = super::buffers::take(total);
    let mut at = 0;
    for o in 0..outer {
        for (d, inner) in &blocks {
            out[at..at + inner].copy_from_slice(&d[o * inner..(o + 1) * inner]);
            at += inner;
        }
    }
    Ok(owned(out))
}

/// `src`'s elements, in row-major order, over the elements of `dst` that `slot` addresses. A
/// mapped (file-backed) buffer is copied into memory first: the file is never written.
fn write_of<T: CpuElement>(
    dst: &mut Buf<T>,
    slot: &crate::layout::Layout,
    src: Arg<CpuStorage>,
) -> Result<()> {
    let from = view::<T>(src, "write_slice")?;
    if dst.is_mapped() {
        *dst = Buf::Owned(dst.as_slice().to_vec());
    }
    let Buf::Owned(to) = dst else {
        unreachable!("an owned buffer was just made")
    };
    let mut at = 0;
    slot.for_each_run(|start, len| {
        to[start..start + len].copy_from_slice(&from[at..at + len]);
        at += len;
    });
    Ok(())
}

fn convert<A: CpuElement, B: CpuElement>(
    x: Arg<CpuStorage>,
    f: impl Fn(A) -> Result<B>,
) -> Result<CpuStorage> {
    let v = view::<A>(x, "to_dtype")?;
    Ok(owned(v.iter().map(|&a| f(a)).collect::<Result<Vec<B>>>()?))
}

impl Backend for CpuStorage {
    fn binary(a: Arg<Self>, b: Arg<Self>, op: BinaryOp) -> Result<Self> {
        let (sa, sb) = (whole_f32(a.0, "binary")?, whole_f32(b.0, "binary")?);
        Ok(owned(super::elementwise::binary(sa, a.1, sb, b.1, op)))
    }

    fn unary(x: Arg<Self>, op: UnaryOp) -> Result<Self> {
        Ok(owned(super::elementwise::unary(&f32s(x, "unary")?, op)))
    }

    fn copy((s, l): Arg<Self>) -> Result<Self> {
        Ok(super::copy_strided(s, l))
    }

    fn cast(x: Arg<Self>, to: DType) -> Result<Self> {
        Ok(match (x.0.dtype(), to) {
            (from, to) if from == to => Self::copy(x)?,
            (DType::F32, DType::BF16) => owned(super::elementwise::f32_to_bf16(&view::<f32>(
                x, "to_dtype",
            )?)),
            (DType::BF16, DType::F32) => owned(super::elementwise::bf16_to_f32(&view::<bf16>(
                x, "to_dtype",
            )?)),
            (DType::U32, DType::F32) => convert(x, |v: u32| Ok(v as f32))?,
            (DType::U8, DType::F32) => convert(x, |v: u8| Ok(f32::from(v)))?,
            (DType::U32, DType::I64) => convert(x, |v: u32| Ok(i64::from(v)))?,
            (DType::I64, DType::U32) => convert(x, |v: i64| {
                u32::try_from(v).map_err(|_| Error::Invalid(format!("id {v} out of u32 range")))
            })?,
            (from, _) => {
                return Err(Error::DType {
                    op: "to_dtype",
                    got: from,
                    want: to.name(),
                });
            }
        })
    }

    fn cat(parts: &[Arg<Self>], dim: usize, _dims: &[usize]) -> Result<Self> {
        match parts[0].0.dtype() {
            DType::F32 => cat_f32(parts, dim),
            DType::BF16 => cat_of::<bf16>(parts, dim),
            DType::U32 => cat_of::<u32>(parts, dim),
            DType::I64 => cat_of::<i64>(parts, dim),
            DType::U8 => cat_of::<u8>(parts, dim),
        }
    }

    fn write_into(dst: &mut Self, slot: &crate::layout::Layout, src: Arg<Self>) -> Result<()> {
        match dst {
            CpuStorage::F32(b) => write_of(b, slot, src),
            CpuStorage::BF16(b) => write_of(b, slot, src),
            CpuStorage::U32(b) => write_of(b, slot, src),
            CpuStorage::I64(b) => write_of(b, slot, src),
            CpuStorage::U8(b) => write_of(b, slot, src),
        }
    }

    fn matmul(a: Arg<Self>, b: Arg<Self>, d: MatmulDims) -> Result<Self> {
        let batched = a.1.rank() == 3;
        Ok(owned(super::matmul::matmul(
            d.batch,
            d.m,
            d.n,
            d.k,
            &mat_ref(a, batched)?,
            &mat_ref(b, batched)?,
        )))
    }

    fn sum_to(x: Arg<Self>, keep: &[usize]) -> Result<Self> {
        Ok(owned(super::reduce::sum_to(
            &f32s(x, "sum")?,
            x.1.dims(),
            keep,
        )))
    }

    fn sum_of_squares(xs: &[Arg<Self>]) -> Result<f64> {
        let mut sq = 0f64;
        for &x in xs {
            sq += super::reduce::sum_of_squares(&f32s(x, "sum_of_squares")?);
        }
        Ok(sq)
    }

    fn max_last(x: Arg<Self>) -> Result<Self> {
        Ok(owned(super::reduce::max_last(
            &f32s(x, "max")?,
            last_dim(x),
        )))
    }

    fn log_softmax(x: Arg<Self>) -> Result<Self> {
        Ok(owned(super::reduce::log_softmax(
            &f32s(x, "log_softmax")?,
            last_dim(x),
        )))
    }

    fn log_softmax_backward(y: Arg<Self>, g: Arg<Self>) -> Result<Self> {
        Ok(owned(super::reduce::log_softmax_backward(
            &f32s(y, "log_softmax")?,
            &f32s(g, "log_softmax")?,
            last_dim(y),
        )))
    }

    fn embedding(table: Arg<Self>, ids: Arg<Self>) -> Result<Self> {
        let (v, d) = (table.1.dims()[0], table.1.dims()[1]);
        let idv = view::<u32>(ids, "embedding ids")?;
        if let Some(bad) = idv.iter().find(|&&i| i as usize >= v) {
            return Err(Error::Invalid(format!(
                "token id {bad} out of range for a vocabulary of {v}"
            )));
        }
        Ok(owned(super::embedding::gather(
            &f32s(table, "embedding")?,
            d,
            &idv,
        )))
    }

    fn embedding_backward(
        [v, d]: [usize; 2],
        _table_dtype: DType,
        ids: Arg<Self>,
        g: Arg<Self>,
    ) -> Result<Self> {
        Ok(owned(super::embedding::scatter_add(
            v,
            d,
            &view::<u32>(ids, "embedding ids")?,
            &f32s(g, "embedding")?,
        )))
    }

    fn layer_norm(x: Arg<Self>, gamma: Arg<Self>) -> Result<(Self, Self)> {
        let (y, stats) = super::layernorm::forward(
            &f32s(x, "layer_norm")?,
            &f32s(gamma, "layer_norm")?,
            last_dim(x),
        );
        Ok((owned(y), owned(stats)))
    }

    fn layer_norm_backward(
        x: Arg<Self>,
        gamma: Arg<Self>,
        stats: Arg<Self>,
        g: Arg<Self>,
    ) -> Result<(Self, Self)> {
        let (dx, dg) = super::layernorm::backward(
            &f32s(x, "layer_norm")?,
            &f32s(gamma, "layer_norm")?,
            &f32s(stats, "layer_norm")?,
            &f32s(g, "layer_norm")?,
            last_dim(x),
        );
        Ok((owned(dx), owned(dg)))
    }

    fn rope(x: Arg<Self>, tables: &RopeTables, inverse: bool, backward: bool) -> Result<Self> {
        let x = f32s(x, "rope")?;
        Ok(owned(if backward {
            super::rope::backward(&x, tables, inverse)
        } else {
            super::rope::forward(&x, tables, inverse)
        }))
    }

    fn fuses_attention(_d: usize) -> bool {
        true
    }

    fn attention(
        q: Arg<Self>,
        k: Arg<Self>,
        v: Arg<Self>,
        s: &AttentionShape,
    ) -> Result<(Self, Self)> {
        let (k, k_stride) = batched_rows(k)?;
        let (v, v_stride) = batched_rows(v)?;
        let rows = |data, batch_stride| super::attention::Batched { data, batch_stride };
        let (out, lse) = super::attention::forward(
            &f32s(q, "attention")?,
            rows(&k, k_stride),
            rows(&v, v_stride),
            s,
        );
        Ok((owned(out), owned(lse)))
    }

    fn attention_backward(
        [q, k, v]: [Arg<Self>; 3],
        out: Arg<Self>,
        lse: Arg<Self>,
        g: Arg<Self>,
        s: &AttentionShape,
    ) -> Result<(Self, Self, Self)> {
        let (dq, dk, dv) = super::attention::backward(
            &f32s(q, "attention")?,
            &f32s(k, "attention")?,
            &f32s(v, "attention")?,
            &f32s(out, "attention")?,
            &f32s(lse, "attention")?,
            &f32s(g, "attention")?,
            s,
        );
        Ok((owned(dq), owned(dk), owned(dv)))
    }

    fn swiglu(x: Arg<Self>, gate: Arg<Self>) -> Result<Self> {
        Ok(owned(super::swiglu::forward(
            &f32_rows(x, "swiglu")?,
            &f32_rows(gate, "swiglu")?,
        )))
    }

    fn swiglu_backward(x: Arg<Self>, gate: Arg<Self>, g: Arg<Self>) -> Result<Two<Self>> {
        let both = super::swiglu::backward(
            &f32_rows(x, "swiglu")?,
            &f32_rows(gate, "swiglu")?,
            &f32_rows(g, "swiglu")?,
        );
        Two::side_by_side(owned(both), x.1.dims())
    }

    fn cross_entropy(logits: Arg<Self>, targets: Arg<Self>, count: usize) -> Result<(Self, Self)> {
        let (lse, losses) = super::cross_entropy::forward(
            &f32s(logits, "cross_entropy")?,
            &view::<u32>(targets, "cross_entropy targets")?,
            last_dim(logits),
            IGNORE_ID,
        );
        let total: f64 = losses.iter().map(|&l| f64::from(l)).sum();
        let mean = if count == 0 {
            0.0
        } else {
            (total / count as f64) as f32
        };
        Ok((owned(vec![mean]), owned(lse)))
    }

    fn cross_entropy_backward(
        logits: Arg<Self>,
        targets: Arg<Self>,
        lse: Arg<Self>,
        count: usize,
        g: Arg<Self>,
    ) -> Result<Self> {
        let scale = if count == 0 {
            0.0
        } else {
            f32s(g, "cross_entropy")?[0] / count as f32
        };
        Ok(owned(super::cross_entropy::backward(
            &f32s(logits, "cross_entropy")?,
            &view::<u32>(targets, "cross_entropy targets")?,
            &f32s(lse, "cross_entropy")?,
            last_dim(logits),
            IGNORE_ID,
            scale,
        )))
    }

    fn logprob(logits: Arg<Self>, ids: Option<Arg<Self>>, inv_temp: f32) -> Result<(Self, Self)> {
        let x = f32s(logits, "logprob")?;
        let v = last_dim(logits);
        let (out, lse) = match ids {
            Some(ids) => {
                super::logprob::logprob(&x, &view::<u32>(ids, "logprob ids")?, v, inv_temp)
            }
            None => super::logprob::entropy(&x, v, inv_temp),
        };
        Ok((owned(out), owned(lse)))
    }

    fn logprob_backward(
        logits: Arg<Self>,
        ids: Option<Arg<Self>>,
        lse: Arg<Self>,
        entropy: Option<Arg<Self>>,
        inv_temp: f32,
        g: Arg<Self>,
    ) -> Result<Self> {
        let g = f32s(g, "logprob")?;
        let ids = ids.map(|t| view::<u32>(t, "logprob ids")).transpose()?;
        let h = entropy.map(|t| f32s(t, "entropy")).transpose()?;
        let up = super::logprob::Upstream {
            ids: ids.as_deref(),
            dlogp: ids.as_ref().map(|_| &g[..]),
            entropy: h.as_deref(),
            dentropy: h.as_ref().map(|_| &g[..]),
        };
        Ok(owned(super::logprob::backward(
            &f32s(logits, "logprob")?,
            &f32s(lse, "logprob")?,
            &up,
            last_dim(logits),
            inv_temp,
        )))
    }
}
