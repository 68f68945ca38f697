//! Matrix multiply: (m×k)·(k×n), batched (b×m×k)·(b×k×n), or (…×m×k)·(k×n) with the leading
//! dims flattened. Backward: dA = dC·Bᵀ, dB = Aᵀ·dC (views, no copies).

use crate::autograd::Op;
use crate::backend::{Backend, MatmulDims};
use crate::storage::on_backend;
use crate::{Error, Result, Tensor};

impl Tensor {
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        let (ra, rb) = (self.rank(), rhs.rank());
        if ra > 2 && rb == 2 {
            // Fold the leading dims into rows: one large GEMM instead of many small ones.
            let lead = &self.dims()[..ra - 1];
            let rows: usize = lead.iter().product();
            let out = self.reshape(&[rows, self.dims()[ra - 1]])?.matmul(rhs)?;
            let mut dims = lead.to_vec();
            dims.push(rhs.dims()[1]);
            return out.reshape(&dims);
        }
        if ra > 3 && ra == rb {
            let batch: usize = self.dims()[..ra - 2].iter().product();
            let (m, k, n) = (self.dims()[ra - 2], self.dims()[ra - 1], rhs.dims()[rb - 1]);
            if self.dims()[..ra - 2] != rhs.dims()[..rb - 2] {
                return Err(self.mm_err(rhs));
            }
            let out = self
                .reshape(&[batch, m, k])?
                .matmul(&rhs.reshape(&[batch, k, n])?)?;
            let mut dims = self.dims()[..ra - 1].to_vec();
            dims.push(n);
            return out.reshape(&dims);
        }
        self.matmul_primitive(rhs)
    }

    fn mm_err(&self, rhs: &Tensor) -> Error {
        Error::shape(
            "matmul",
            format!("cannot multiply {:?} by {:?}", self.dims(), rhs.dims()),
        )
    }

    fn matmul_primitive(&self, rhs: &Tensor) -> Result<Tensor> {
        let (ra, rb) = (self.rank(), rhs.rank());
        let batched = match (ra, rb) {
            (2, 2) => false,
            (3, 3) if self.dims()[0] == rhs.dims()[0] => true,
            _ => return Err(self.mm_err(rhs)),
        };
        let (m, k) = (self.dims()[ra - 2], self.dims()[ra - 1]);
        let (k2, n) = (rhs.dims()[rb - 2], rhs.dims()[rb - 1]);
        if k != k2 {
            return Err(self.mm_err(rhs));
        }
        let batch = if batched { self.dims()[0] } else { 1 };
        let dims: Vec<usize> = if batched {
            vec![batch, m, n]
        } else {
            vec![m, n]
        };
        let d = MatmulDims { batch, m, n, k };
        let out = on_backend!("matmul", [self => a, rhs => b], {
            Backend::matmul((a, self.layout()), (b, rhs.layout()), d)
        })?;
        Ok(Tensor::from_op(out, &dims, &[self, rhs], || {
            Op::Matmul(self.clone(), rhs.clone())
        }))
    }
}

pub(crate) fn backward(a: &Tensor, b: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)> {
    // Produce each gradient in its operand's memory order: for a transposed view (W.t(), the
    // usual linear layer) compute (gᵀ·a)ᵀ, so the gradient of W itself comes out contiguous.
    let ga = if !a.tracks() {
        g.clone()
    } else if column_major(a) {
        b.matmul(&g.t()?)?.t()?
    } else {
        g.matmul(&b.t()?)?
    };
    let gb = if !b.tracks() {
        g.clone()
    } else if column_major(b) {
        g.t()?.matmul(a)?.t()?
    } else {
        a.t()?.matmul(g)?
    };
    Ok((ga, gb))
}

/// The last two dims are stored transposed (a `.t()` of a row-major matrix).
fn column_major(t: &Tensor) -> bool {
    let s = t.layout().strides();
    let d = t.dims();
    let r = s.len();
    r >= 2 && s[r - 2] == 1 && d[r - 2] > 1 && s[r - 1] >= d[r - 2]
}
