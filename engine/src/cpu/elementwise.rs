//! Elementwise maps: unary, binary with broadcasting, casts.

use super::PAR_MIN;
use crate::backend::{BinaryOp, UnaryOp};
use crate::layout::Layout;
use half::bf16;
use rayon::prelude::*;

pub fn unary(x: &[f32], op: UnaryOp) -> Vec<f32> {
    let mut out = super::buffers::take(x.len());
    if x.len() >= PAR_MIN {
        out.par_iter_mut()
            .zip(x.par_iter())
            .with_min_len(PAR_MIN)
            .for_each(|(o, &v)| *o = op.apply(v));
    } else {
        out.iter_mut().zip(x).for_each(|(o, &v)| *o = op.apply(v));
    }
    out
}

/// `a op b` where both views already have the output's dims (broadcast strides allowed).
pub fn binary(a: &[f32], la: &Layout, b: &[f32], lb: &Layout, op: BinaryOp) -> Vec<f32> {
    let f = move |x: f32, y: f32| op.apply(x, y);
    match (la.contiguous_range(), lb.contiguous_range()) {
        (Some(ra), Some(rb)) => {
            let (a, b) = (&a[ra], &b[rb]);
            let mut out = super::buffers::take(a.len());
            if a.len() >= PAR_MIN {
                out.par_iter_mut()
                    .zip(a.par_iter().zip(b.par_iter()))
                    .with_min_len(PAR_MIN)
                    .for_each(|(o, (&x, &y))| *o = f(x, y));
            } else {
                out.iter_mut()
                    .zip(a.iter().zip(b))
                    .for_each(|(o, (&x, &y))| *o = f(x, y));
            }
            out
        }
        _ => {
            let (a, b) = (super::gather_f32(a, la), super::gather_f32(b, lb));
            let dims = Layout::contiguous(la.dims());
            binary(&a, &dims, &b, &dims, op)
        }
    }
}

pub fn f32_to_bf16(x: &[f32]) -> Vec<bf16> {
    x.iter().map(|&v| bf16::from_f32(v)).collect()
}

pub fn bf16_to_f32(x: &[bf16]) -> Vec<f32> {
    x.iter().map(|v| v.to_f32()).collect()
}
