//! Reverse-mode autodiff. Every op result that a gradient can flow through remembers its op and
//! inputs; `backward` walks that graph in reverse topological order with one short arm per op.

use crate::layout::Layout;
use crate::ops::{
    attention, cross_entropy, elementwise, embedding, layernorm, logprob, matmul, reduce, rope,
    shape, swiglu,
};
use crate::{Result, Tensor, TensorId};
use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

pub(crate) enum Op {
    Binary(Tensor, Tensor, elementwise::BinaryOp),
    Unary(Tensor, elementwise::UnaryOp),
    /// `x * mul + add`; only `mul` matters for the gradient.
    Affine(Tensor, f32),
    Cast(Tensor),
    Matmul(Tensor, Tensor),
    /// Sum over some dims, kept as size 1.
    Sum(Tensor),
    Broadcast(Tensor),
    Reshape(Tensor),
    Transpose(Tensor, usize, usize),
    Narrow(Tensor, usize, usize),
    Copy(Tensor),
    Cat(Vec<Tensor>, usize),
    Embedding {
        weight: Tensor,
        ids: Tensor,
    },
    LayerNorm {
        x: Tensor,
        gamma: Tensor,
        stats: Tensor,
    },
    Rope {
        x: Tensor,
        tables: Arc<rope::RopeTables>,
        inverse: bool,
    },
    Attention {
        q: Tensor,
        k: Tensor,
        v: Tensor,
        lse: Tensor,
        scale: f32,
    },
    Swiglu {
        x: Tensor,
        gate: Tensor,
    },
    CrossEntropy {
        logits: Tensor,
        targets: Tensor,
        lse: Tensor,
        count: usize,
    },
    LogSoftmax(Tensor),
    /// `logprob` (with ids) or `entropy` (with its saved output) of softmax(logits·inv_temp).
    Logprob {
        logits: Tensor,
        ids: Option<Tensor>,
        lse: Tensor,
        entropy: Option<Tensor>,
        inv_temp: f32,
    },
}

impl Op {
    fn inputs(&self) -> Vec<&Tensor> {
        match self {
            Op::Binary(a, b, _) | Op::Matmul(a, b) => vec![a, b],
            Op::Unary(x, _)
            | Op::Affine(x, _)
            | Op::Cast(x)
            | Op::Sum(x)
            | Op::Broadcast(x)
            | Op::Reshape(x)
            | Op::Transpose(x, ..)
            | Op::Narrow(x, ..)
            | Op::Copy(x)
            | Op::LogSoftmax(x) => vec![x],
            Op::Cat(xs, _) => xs.iter().collect(),
            Op::Embedding { weight, .. } => vec![weight],
            Op::LayerNorm { x, gamma, .. } => vec![x, gamma],
            Op::Rope { x, .. } => vec![x],
            Op::Attention { q, k, v, .. } => vec![q, k, v],
            Op::Swiglu { x, gate } => vec![x, gate],
            Op::CrossEntropy { logits, .. } | Op::Logprob { logits, .. } => vec![logits],
        }
    }
}

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

pub(crate) fn grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// While alive, ops record nothing (inference, optimizer updates, gradient arithmetic).
pub struct NoGradGuard {
    prev: bool,
}

pub fn no_grad() -> NoGradGuard {
    NoGradGuard {
        prev: GRAD_ENABLED.with(|g| g.replace(false)),
    }
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        GRAD_ENABLED.with(|g| g.set(self.prev));
    }
}

/// A gradient arriving in pieces along one dim (from `narrow`/`split` views of one tensor).
struct Piece {
    dim: usize,
    start: usize,
    grad: Tensor,
}

/// Gradients keyed by tensor id.
#[derive(Default)]
pub struct Grads {
    map: HashMap<TensorId, Tensor>,
    pieces: HashMap<TensorId, (Vec<usize>, Vec<Piece>)>,
}

impl Grads {
    pub fn get(&self, t: &Tensor) -> Option<&Tensor> {
        self.map.get(&t.id())
    }
    pub fn remove(&mut self, t: &Tensor) -> Option<Tensor> {
        self.map.remove(&t.id())
    }
    pub fn insert(&mut self, t: &Tensor, g: Tensor) {
        self.map.insert(t.id(), g);
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn accumulate(&mut self, id: TensorId, g: Tensor) -> Result<()> {
        let g = match self.map.remove(&id) {
            Some(prev) => prev.add(&g)?,
            None => g,
        };
        self.map.insert(id, g);
        Ok(())
    }

    /// Gather the pieces of `id` into one gradient: a single concatenation when they tile the
    /// dim (a split), zero-filled gaps otherwise; overlapping pieces are added.
    fn settle(&mut self, id: TensorId) -> Result<()> {
        let Some((dims, mut pieces)) = self.pieces.remove(&id) else {
            return Ok(());
        };
        pieces.sort_by_key(|p| (p.dim, p.start));
        let dim = pieces[0].dim;
        let tiles = pieces.iter().all(|p| p.dim == dim)
            && pieces
                .windows(2)
                .all(|w| w[0].start + w[0].grad.dims()[dim] <= w[1].start);
        if tiles {
            // Pieces that are already side by side in one buffer, together the whole of it
            // (the SwiGLU backward writes dx and dgate so), are that buffer: no copy.
            let whole = Layout::contiguous(&dims);
            let mut at = 0;
            let in_place = pieces.iter().all(|p| {
                let len = p.grad.dims()[dim];
                let here = p.start == at
                    && p.grad.shares_storage(&pieces[0].grad)
                    && whole
                        .narrow(dim, p.start, len)
                        .is_ok_and(|l| &l == p.grad.layout());
                at += len;
                here
            }) && at == dims[dim];
            if in_place {
                let g = pieces[0].grad.view_untracked(whole);
                return self.accumulate(id, g);
            }
            let (dtype, device) = (pieces[0].grad.dtype(), pieces[0].grad.device());
            let mut parts = Vec::new();
            let mut at = 0;
            for p in &pieces {
                if p.start > at {
                    let mut zd = dims.clone();
                    zd[dim] = p.start - at;
                    parts.push(Tensor::zeros(&zd, dtype, device)?);
                }
                at = p.start + p.grad.dims()[dim];
                parts.push(p.grad.clone());
            }
            if at < dims[dim] {
                let mut zd = dims.clone();
                zd[dim] = dims[dim] - at;
                parts.push(Tensor::zeros(&zd, dtype, device)?);
            }
            let refs: Vec<&Tensor> = parts.iter().collect();
            return self.accumulate(id, Tensor::cat(&refs, dim)?);
        }
        for p in pieces {
            let full = shape::pad_narrow(&p.grad, &dims, p.dim, p.start)?;
            self.accumulate(id, full)?;
        }
        Ok(())
    }
}

fn push(grads: &mut Grads, t: &Tensor, g: Tensor) -> Result<()> {
    if t.tracks() {
        grads.accumulate(t.id(), g)
    } else {
        Ok(())
    }
}

fn topo_order(root: &Tensor) -> Vec<Tensor> {
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    // Iterative DFS: deep models would overflow the stack with recursion.
    let mut stack = vec![(root.clone(), false)];
    while let Some((t, expanded)) = stack.pop() {
        if expanded {
            order.push(t);
            continue;
        }
        if !seen.insert(t.id()) {
            continue;
        }
        stack.push((t.clone(), true));
        if let Some(op) = t.op() {
            for i in op.inputs() {
                if i.tracks() && !seen.contains(&i.id()) {
                    stack.push((i.clone(), false));
                }
            }
        }
    }
    order
}

impl Tensor {
    /// Gradients of this scalar with respect to every tensor it depends on.
    pub fn backward(&self) -> Result<Grads> {
        if self.elem_count() != 1 {
            return Err(crate::Error::shape(
                "backward",
                format!("needs a scalar loss, got shape {:?}", self.dims()),
            ));
        }
        let _guard = no_grad();
        let mut grads = Grads::default();
        grads.insert(
            self,
            Tensor::full(1.0, self.dims(), self.dtype(), self.device())?,
        );
        for node in topo_order(self).iter().rev() {
            grads.settle(node.id())?;
            let Some(op) = node.op() else { continue };
            let Some(g) = grads.map.get(&node.id()).cloned() else {
                continue;
            };
            if !node.is_var() {
                grads.map.remove(&node.id());
            }
            match op {
                Op::Binary(a, b, bop) => {
                    let (ga, gb) = elementwise::binary_backward(a, b, *bop, &g)?;
                    push(&mut grads, a, ga)?;
                    push(&mut grads, b, gb)?;
                }
                Op::Unary(x, uop) => push(
                    &mut grads,
                    x,
                    elementwise::unary_backward(x, node, *uop, &g)?,
                )?,
                Op::Affine(x, mul) => push(&mut grads, x, g.affine(*mul, 0.0)?)?,
                Op::Cast(x) => push(&mut grads, x, g.to_dtype(x.dtype())?)?,
                Op::Matmul(a, b) => {
                    let (ga, gb) = matmul::backward(a, b, &g)?;
                    push(&mut grads, a, ga)?;
                    push(&mut grads, b, gb)?;
                }
                Op::Sum(x) => push(&mut grads, x, g.broadcast_as(x.dims())?)?,
                Op::Broadcast(x) => push(&mut grads, x, reduce::sum_to(&g, x.dims())?)?,
                Op::Reshape(x) => push(&mut grads, x, g.reshape(x.dims())?)?,
                Op::Transpose(x, a, b) => push(&mut grads, x, g.transpose(*a, *b)?)?,
                Op::Copy(x) => push(&mut grads, x, g)?,
                Op::Narrow(x, dim, start) => {
                    if x.tracks() {
                        let entry = grads
                            .pieces
                            .entry(x.id())
                            .or_insert_with(|| (x.dims().to_vec(), Vec::new()));
                        entry.1.push(Piece {
                            dim: *dim,
                            start: *start,
                            grad: g,
                        });
                    }
                }
                Op::Cat(xs, dim) => {
                    let mut start = 0;
                    for x in xs {
                        let len = x.dims()[*dim];
                        push(&mut grads, x, g.narrow(*dim, start, len)?)?;
                        start += len;
                    }
                }
                Op::Embedding { weight, ids } => {
                    push(&mut grads, weight, embedding::backward(weight, ids, &g)?)?
                }
                Op::LayerNorm { x, gamma, stats } => {
                    let (gx, gg) = layernorm::backward(x, gamma, stats, &g)?;
                    push(&mut grads, x, gx)?;
                    push(&mut grads, gamma, gg)?;
                }
                Op::Rope { x, tables, inverse } => {
                    push(&mut grads, x, rope::backward(x, tables, *inverse, &g)?)?
                }
                Op::Attention {
                    q,
                    k,
                    v,
                    lse,
                    scale,
                } => {
                    let (gq, gk, gv) = attention::backward(q, k, v, node, lse, *scale, &g)?;
                    push(&mut grads, q, gq)?;
                    push(&mut grads, k, gk)?;
                    push(&mut grads, v, gv)?;
                }
                Op::Swiglu { x, gate } => {
                    let (gx, gg) = swiglu::backward(x, gate, &g)?;
                    push(&mut grads, x, gx)?;
                    push(&mut grads, gate, gg)?;
                }
                Op::CrossEntropy {
                    logits,
                    targets,
                    lse,
                    count,
                } => push(
                    &mut grads,
                    logits,
                    cross_entropy::backward(logits, targets, lse, *count, &g)?,
                )?,
                Op::LogSoftmax(x) => push(&mut grads, x, reduce::log_softmax_backward(node, &g)?)?,
                Op::Logprob {
                    logits,
                    ids,
                    lse,
                    entropy,
                    inv_temp,
                } => push(
                    &mut grads,
                    logits,
                    logprob::backward(logits, ids.as_ref(), lse, entropy.as_ref(), *inv_temp, &g)?,
                )?,
            }
        }
        Ok(grads)
    }
}
