//! The ops, one module per family: the public entry point (which dispatches on the device and
//! records the op for autograd) and its backward rule. CPU references live in `crate::cpu`
//! under the same names.

pub mod attention;
pub mod cross_entropy;
pub mod elementwise;
pub mod embedding;
pub mod layernorm;
pub mod logprob;
pub mod matmul;
pub mod reduce;
pub mod rope;
pub mod shape;
pub mod swiglu;

use crate::{Device, Error, Result, Tensor};

/// All operands on one device, or an error naming the op.
pub(crate) fn same_device(op: &'static str, ts: &[&Tensor]) -> Result<Device> {
    let d = ts[0].device();
    for t in &ts[1..] {
        if t.device() != d {
            return Err(Error::DeviceMismatch {
                op,
                lhs: d,
                rhs: t.device(),
            });
        }
    }
    Ok(d)
}
