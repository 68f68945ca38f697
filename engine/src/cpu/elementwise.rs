//! Elementwise maps: unary, binary with broadcasting, casts.

use super::PAR_MIN;
use crate::layout::Layout;
use crate::ops::elementwise::{BinaryOp, UnaryOp};
use half::bf16;
use rayon::prelude::*;

pub fn unary(x: &[f32], op: UnaryOp) -> Vec<f32> {
    let f = move |v: f32| op.apply(v);
    if x.len() >= PAR_MIN {
        x.par_iter().map(|&v| f(v)).collect()
    } else {
        x.iter().map(|&v| f(v)).collect()
    }
}

/// `a op b` where both views already have the output's dims (broadcast strides allowed).
pub fn binary(a: &[f32], la: &Layout, b: &[f32], lb: &Layout, op: BinaryOp) -> Vec<f32> {
    let f = move |x: f32, y: f32| op.apply(x, y);
    match (la.contiguous_range(), lb.contiguous_range()) {
        (Some(ra), Some(rb)) => {
            let (a, b) = (&a[ra], &b[rb]);
            if a.len() >= PAR_MIN {
                a.par_iter()
                    .zip(b.par_iter())
                    .map(|(&x, &y)| f(x, y))
                    .collect()
            } else {
                a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect()
            }
        }
        _ => {
            let (a, b) = (super::gather(a, la), super::gather(b, lb));
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
