//! Elementwise ops: binary with numpy broadcasting, unary maps, affine, casts.

use crate::autograd::Op;
use crate::backend::Backend;
use crate::storage::on_backend;
use crate::{DType, Error, Result, Tensor};

pub use crate::backend::{BinaryOp, UnaryOp, sigmoid};

/// The shape two operands broadcast to (numpy rules).
pub fn broadcast_dims(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let n = a.len().max(b.len());
    let get = |d: &[usize], i: usize| {
        if i + d.len() < n {
            1
        } else {
            d[i + d.len() - n]
        }
    };
    (0..n)
        .map(|i| match (get(a, i), get(b, i)) {
            (x, y) if x == y => Ok(x),
            (1, y) => Ok(y),
            (x, 1) => Ok(x),
            _ => Err(Error::shape(
                op,
                format!("cannot broadcast {a:?} with {b:?}"),
            )),
        })
        .collect()
}

impl Tensor {
    fn binary(&self, rhs: &Tensor, op: BinaryOp, name: &'static str) -> Result<Tensor> {
        let dims = broadcast_dims(name, self.dims(), rhs.dims())?;
        let (a, b) = (self.broadcast_as(&dims)?, rhs.broadcast_as(&dims)?);
        let out = on_backend!(name, [a => sa, b => sb], {
            Backend::binary((sa, a.layout()), (sb, b.layout()), op)
        })?;
        Ok(Tensor::from_op(out, &dims, &[&a, &b], || {
            Op::Binary(a.clone(), b.clone(), op)
        }))
    }

    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Add, "add")
    }
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Sub, "sub")
    }
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Mul, "mul")
    }
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Div, "div")
    }
    /// The elementwise larger of the two (broadcast); the gradient goes to the larger, to
    /// `self` on a tie.
    pub fn maximum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Max, "maximum")
    }
    /// The elementwise smaller of the two (broadcast); the gradient goes to the smaller, to
    /// `self` on a tie.
    pub fn minimum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Min, "minimum")
    }
    /// 1 where `self ≥ rhs`, else 0 (broadcast; NaN compares false). A mask: no gradient
    /// flows through it.
    pub fn ge(&self, rhs: &Tensor) -> Result<Tensor> {
        let _g = crate::autograd::no_grad();
        self.binary(rhs, BinaryOp::Ge, "ge")
    }
    /// `self` limited to [lo, hi] (the gradient flows where it is inside).
    pub fn clamp(&self, lo: f32, hi: f32) -> Result<Tensor> {
        if lo.is_nan() || hi.is_nan() || lo > hi {
            return Err(Error::Invalid(format!(
                "clamp: bounds {lo}..{hi} are not ordered"
            )));
        }
        let bound = |v: f32| Tensor::full(v, &[1], self.dtype(), self.device());
        self.minimum(&bound(hi)?)?.maximum(&bound(lo)?)
    }
    /// `a` where `mask` is 1, `b` where it is 0 (broadcast): `b + mask·(a − b)`, with the
    /// gradient going to the side chosen.
    pub fn select(mask: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let mask = mask.detach();
        a.mul(&mask)?.add(&b.mul(&mask.affine(-1.0, 1.0)?)?)
    }

    fn unary(&self, op: UnaryOp, name: &'static str) -> Result<Tensor> {
        let out = on_backend!(name, [self => s], Backend::unary((s, self.layout()), op))?;
        Ok(Tensor::from_op(out, self.dims(), &[self], || match op {
            UnaryOp::Affine(m, _) => Op::Affine(self.clone(), m),
            _ => Op::Unary(self.clone(), op),
        }))
    }

    pub fn neg(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Neg, "neg")
    }
    pub fn exp(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Exp, "exp")
    }
    pub fn log(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Log, "log")
    }
    pub fn sqr(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sqr, "sqr")
    }
    pub fn sqrt(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sqrt, "sqrt")
    }
    pub fn sigmoid(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sigmoid, "sigmoid")
    }
    pub fn silu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Silu, "silu")
    }
    pub fn tanh(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Tanh, "tanh")
    }
    /// `self * mul + add`.
    pub fn affine(&self, mul: f32, add: f32) -> Result<Tensor> {
        self.unary(UnaryOp::Affine(mul, add), "affine")
    }
    pub fn scale(&self, mul: f32) -> Result<Tensor> {
        self.affine(mul, 0.0)
    }

    /// Convert the element type (f32 ↔ bf16; integer ids → f32).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if self.dtype() == dtype {
            return Ok(self.clone());
        }
        let differentiable = self.dtype().is_float() && dtype.is_float();
        let inputs: &[&Tensor] = if differentiable { &[self] } else { &[] };
        if let Some(copy) = self.shadow(dtype) {
            return Ok(copy.record(inputs, || Op::Cast(self.clone())));
        }
        let supported = differentiable
            || matches!(
                (self.dtype(), dtype),
                (DType::U32 | DType::U8, DType::F32)
                    | (DType::U32, DType::I64)
                    | (DType::I64, DType::U32)
            );
        if !supported {
            return Err(Error::DType {
                op: "to_dtype",
                got: self.dtype(),
                want: dtype.name(),
            });
        }
        let out = on_backend!("to_dtype", [self => s], {
            Backend::cast((s, self.layout()), dtype)
        })?;
        Ok(Tensor::from_op(out, self.dims(), inputs, || {
            Op::Cast(self.clone())
        }))
    }
}

pub(crate) fn binary_backward(
    a: &Tensor,
    b: &Tensor,
    op: BinaryOp,
    g: &Tensor,
) -> Result<(Tensor, Tensor)> {
    Ok(match op {
        BinaryOp::Add => (g.clone(), g.clone()),
        BinaryOp::Sub => (g.clone(), g.neg()?),
        BinaryOp::Mul => (g.mul(b)?, g.mul(a)?),
        // d(a/b)/db = -a/b²
        BinaryOp::Div => (g.div(b)?, g.mul(a)?.div(&b.sqr()?)?.neg()?),
        // To the chosen side; a tie goes to `a`.
        BinaryOp::Max => {
            let ga = g.mul(&a.ge(b)?)?;
            let gb = g.sub(&ga)?;
            (ga, gb)
        }
        BinaryOp::Min => {
            let ga = g.mul(&b.ge(a)?)?;
            let gb = g.sub(&ga)?;
            (ga, gb)
        }
        BinaryOp::Ge => (g.scale(0.0)?, g.scale(0.0)?),
    })
}

pub(crate) fn unary_backward(x: &Tensor, y: &Tensor, op: UnaryOp, g: &Tensor) -> Result<Tensor> {
    match op {
        UnaryOp::Neg => g.neg(),
        UnaryOp::Exp => g.mul(y),
        UnaryOp::Log => g.div(x),
        UnaryOp::Sqr => g.mul(&x.scale(2.0)?),
        UnaryOp::Sqrt => g.div(&y.scale(2.0)?),
        // σ' = σ(1 − σ)
        UnaryOp::Sigmoid => g.mul(&y.mul(&y.affine(-1.0, 1.0)?)?),
        // silu' = σ(x)(1 + x(1 − σ(x)))
        UnaryOp::Silu => {
            let s = x.sigmoid()?;
            g.mul(&s.mul(&x.mul(&s.affine(-1.0, 1.0)?)?.affine(1.0, 1.0)?)?)
        }
        UnaryOp::Tanh => g.mul(&y.sqr()?.affine(-1.0, 1.0)?),
        UnaryOp::Affine(m, _) => g.scale(m),
    }
}
