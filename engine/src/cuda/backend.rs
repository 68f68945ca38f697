//! The CUDA backend behind the boundary: each op is the storage-level function of its kernel
//! family in `ops/` (launch plans plus the code that runs them).

use super::CudaStorage;
use super::ops::{
    attention, cross_entropy, elementwise, embedding, layernorm, logprob, matmul, reduce, rope,
    swiglu,
};
use crate::backend::{
    Arg, AttentionShape, Backend, BinaryOp, MatmulDims, RopeTables, Two, UnaryOp,
};
use crate::{DType, Result};

fn kernel_shape(s: &AttentionShape) -> attention::Shape {
    attention::Shape {
        b: s.b,
        h: s.h,
        n: s.n,
        m: s.m,
        d: s.d,
    }
}

impl Backend for CudaStorage {
    fn binary(a: Arg<Self>, b: Arg<Self>, op: BinaryOp) -> Result<Self> {
        elementwise::binary(a, b, op)
    }
    fn unary(x: Arg<Self>, op: UnaryOp) -> Result<Self> {
        elementwise::unary(x, op)
    }
    fn copy(x: Arg<Self>) -> Result<Self> {
        elementwise::copy(x)
    }
    fn cast(x: Arg<Self>, to: DType) -> Result<Self> {
        elementwise::cast(x, to)
    }
    fn cat(parts: &[Arg<Self>], dim: usize, dims: &[usize]) -> Result<Self> {
        elementwise::cat(parts, dim, dims)
    }
    fn write_into(dst: &mut Self, slot: &crate::layout::Layout, src: Arg<Self>) -> Result<()> {
        elementwise::write_into(dst, slot, src)
    }
    fn matmul(a: Arg<Self>, b: Arg<Self>, d: MatmulDims) -> Result<Self> {
        matmul::matmul(a, b, d)
    }
    fn sum_to(x: Arg<Self>, keep: &[usize]) -> Result<Self> {
        reduce::sum_to(x, keep)
    }
    fn sum_of_squares(xs: &[Arg<Self>]) -> Result<f64> {
        reduce::sum_of_squares(xs)
    }
    fn max_last(x: Arg<Self>) -> Result<Self> {
        reduce::max_last(x)
    }
    fn log_softmax(x: Arg<Self>) -> Result<Self> {
        reduce::log_softmax(x)
    }
    fn log_softmax_backward(y: Arg<Self>, g: Arg<Self>) -> Result<Self> {
        reduce::log_softmax_backward(y, g)
    }
    fn embedding(table: Arg<Self>, ids: Arg<Self>) -> Result<Self> {
        embedding::gather(table, ids)
    }
    fn embedding_backward(
        table_dims: [usize; 2],
        table_dtype: DType,
        ids: Arg<Self>,
        g: Arg<Self>,
    ) -> Result<Self> {
        embedding::scatter_add(table_dims, table_dtype, ids, g)
    }
    fn layer_norm(x: Arg<Self>, gamma: Arg<Self>) -> Result<(Self, Self)> {
        layernorm::forward(x, gamma)
    }
    fn layer_norm_backward(
        x: Arg<Self>,
        gamma: Arg<Self>,
        stats: Arg<Self>,
        g: Arg<Self>,
    ) -> Result<(Self, Self)> {
        layernorm::backward(x, gamma, stats, g)
    }
    fn rope(x: Arg<Self>, tables: &RopeTables, inverse: bool, backward: bool) -> Result<Self> {
        rope::apply(x, tables, inverse, backward)
    }
    fn fuses_attention(d: usize) -> bool {
        attention::fused_head_dim(d)
    }
    fn attention(
        q: Arg<Self>,
        k: Arg<Self>,
        v: Arg<Self>,
        s: &AttentionShape,
    ) -> Result<(Self, Self)> {
        attention::forward(q, k, v, kernel_shape(s), s.scale)
    }
    fn attention_backward(
        qkv: [Arg<Self>; 3],
        out: Arg<Self>,
        lse: Arg<Self>,
        g: Arg<Self>,
        s: &AttentionShape,
    ) -> Result<(Self, Self, Self)> {
        attention::backward(qkv, out, lse, g, kernel_shape(s), s.scale)
    }
    fn swiglu(x: Arg<Self>, gate: Arg<Self>) -> Result<Self> {
        swiglu::forward(x, gate)
    }
    fn swiglu_backward(x: Arg<Self>, gate: Arg<Self>, g: Arg<Self>) -> Result<Two<Self>> {
        swiglu::backward(x, gate, g)
    }
    fn cross_entropy(logits: Arg<Self>, targets: Arg<Self>, count: usize) -> Result<(Self, Self)> {
        cross_entropy::forward(logits, targets, count)
    }
    fn cross_entropy_backward(
        logits: Arg<Self>,
        targets: Arg<Self>,
        lse: Arg<Self>,
        count: usize,
        g: Arg<Self>,
    ) -> Result<Self> {
        cross_entropy::backward(logits, targets, lse, count, g)
    }
    fn logprob(logits: Arg<Self>, ids: Option<Arg<Self>>, inv_temp: f32) -> Result<(Self, Self)> {
        logprob::forward(logits, ids, inv_temp)
    }
    fn logprob_backward(
        logits: Arg<Self>,
        ids: Option<Arg<Self>>,
        lse: Arg<Self>,
        entropy: Option<Arg<Self>>,
        inv_temp: f32,
        g: Arg<Self>,
    ) -> Result<Self> {
        logprob::backward(logits, ids, lse, entropy, inv_temp, g)
    }
}
