//! Elementwise ops: binary with numpy broadcasting, unary maps, affine, casts.

use crate::autograd::Op;
use crate::cpu::{self, f32s, owned};
use crate::storage::{CpuStorage, Storage};
use crate::{DType, Device, Error, Result, Tensor, cuda};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    /// The larger; NaN if either is NaN (as `torch.maximum`).
    Max,
    /// The smaller; NaN if either is NaN.
    Min,
    /// 1 where a ≥ b, else 0 (NaN compares false): a mask, carrying no gradient.
    Ge,
}

impl BinaryOp {
    #[inline]
    pub fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
            // When neither comparison holds one is NaN, and so is a + b.
            BinaryOp::Max => {
                if a >= b {
                    a
                } else if b > a {
                    b
                } else {
                    a + b
                }
            }
            BinaryOp::Min => {
                if a <= b {
                    a
                } else if b < a {
                    b
                } else {
                    a + b
                }
            }
            BinaryOp::Ge => f32::from(u8::from(a >= b)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqr,
    Sqrt,
    Sigmoid,
    Silu,
    Tanh,
    /// `x * mul + add`.
    Affine(f32, f32),
}

impl UnaryOp {
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            UnaryOp::Neg => -x,
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Sqr => x * x,
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Sigmoid => sigmoid(x),
            UnaryOp::Silu => x * sigmoid(x),
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Affine(m, a) => x * m + a,
        }
    }
}

#[inline]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

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
        let device = crate::ops::same_device(name, &[self, rhs])?;
        let dims = broadcast_dims(name, self.dims(), rhs.dims())?;
        let (a, b) = (self.broadcast_as(&dims)?, rhs.broadcast_as(&dims)?);
        if device != Device::Cpu {
            let out = cuda::ops::elementwise::binary(&a, &b, op)?;
            return Ok(out.record(&[&a, &b], || Op::Binary(a.clone(), b.clone(), op)));
        }
        let out = {
            let (sa, sb) = (cpu_f32(&a, name)?, cpu_f32(&b, name)?);
            cpu::elementwise::binary(sa, a.layout(), sb, b.layout(), op)
        };
        Ok(Tensor::from_op(
            Storage::Cpu(owned(out)),
            &dims,
            &[&a, &b],
            || Op::Binary(a.clone(), b.clone(), op),
        ))
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
        let out = match self.device() {
            Device::Cpu => Tensor::from_cpu(
                owned(cpu::elementwise::unary(&f32s(self, name)?, op)),
                self.dims(),
            ),
            Device::Cuda(_) => cuda::ops::elementwise::unary(self, op)?,
        };
        Ok(out.record(&[self], || match op {
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
        if self.device() != Device::Cpu {
            let out = cuda::ops::elementwise::cast(self, dtype)?;
            return Ok(out.record(inputs, || Op::Cast(self.clone())));
        }
        use cpu::data;
        let s: CpuStorage = match (self.dtype(), dtype) {
            (DType::F32, DType::BF16) => owned(cpu::elementwise::f32_to_bf16(&data::<f32>(
                self, "to_dtype",
            )?)),
            (DType::BF16, DType::F32) => owned(cpu::elementwise::bf16_to_f32(&data::<half::bf16>(
                self, "to_dtype",
            )?)),
            (DType::U32, DType::F32) => owned(
                data::<u32>(self, "to_dtype")?
                    .iter()
                    .map(|&v| v as f32)
                    .collect::<Vec<_>>(),
            ),
            (DType::I64, DType::U32) => owned(
                data::<i64>(self, "to_dtype")?
                    .iter()
                    .map(|&v| {
                        u32::try_from(v)
                            .map_err(|_| Error::Invalid(format!("id {v} out of u32 range")))
                    })
                    .collect::<Result<Vec<_>>>()?,
            ),
            (DType::U32, DType::I64) => owned(
                data::<u32>(self, "to_dtype")?
                    .iter()
                    .map(|&v| v as i64)
                    .collect::<Vec<_>>(),
            ),
            (DType::U8, DType::F32) => owned(
                data::<u8>(self, "to_dtype")?
                    .iter()
                    .map(|&v| v as f32)
                    .collect::<Vec<_>>(),
            ),
            (from, _) => {
                return Err(Error::DType {
                    op: "to_dtype",
                    got: from,
                    want: dtype.name(),
                });
            }
        };
        Ok(Tensor::from_op(
            Storage::Cpu(s),
            self.dims(),
            inputs,
            || Op::Cast(self.clone()),
        ))
    }
}

/// The whole f32 buffer of a CPU tensor (for ops that walk its layout themselves).
fn cpu_f32<'a>(t: &'a Tensor, op: &'static str) -> Result<&'a [f32]> {
    match t.cpu()? {
        CpuStorage::F32(b) => Ok(b.as_slice()),
        _ => Err(Error::DType {
            op,
            got: t.dtype(),
            want: "f32",
        }),
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
