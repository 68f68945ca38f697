//! The ops, one module per family: the public entry point (which checks its operands, hands them
//! to their backend through `storage::on_backend!` and records the op for autograd once) and its
//! backward rule (which goes through the same boundary). The backends implement
//! `crate::backend::Backend`: the CPU reference in `crate::cpu`, the kernels in
//! `crate::cuda::ops`, under the same family names.

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

use crate::{Device, Error, Tensor};

/// The error for operands on different devices.
pub(crate) fn device_mismatch(op: &'static str, devices: &[Device]) -> Error {
    let lhs = devices[0];
    let rhs = devices.iter().copied().find(|d| *d != lhs).unwrap_or(lhs);
    Error::DeviceMismatch { op, lhs, rhs }
}

/// Two results as tensors of `dims` each: separate buffers, or views of one.
pub(crate) fn pair(
    t: crate::backend::Two<crate::storage::Storage>,
    dims: &[usize],
) -> (Tensor, Tensor) {
    use crate::backend::Two;
    match t {
        Two::Separate(a, b) => (Tensor::from_storage(a, dims), Tensor::from_storage(b, dims)),
        Two::Shared(s, la, lb) => {
            let s = std::sync::Arc::new(s);
            (Tensor::new(s.clone(), la, None), Tensor::new(s, lb, None))
        }
    }
}
