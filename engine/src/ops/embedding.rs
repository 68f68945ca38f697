//! Embedding lookup: rows of a (V × d) table by integer id. Backward: scatter-add.

use crate::autograd::Op;
use crate::backend::Backend;
use crate::storage::on_backend;
use crate::{DType, Error, Result, Tensor};

/// `weight[ids]`: ids of any shape (u32) → ids.dims + [d]. Ids ≥ V are an error.
pub fn embedding(weight: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let d = match weight.dims() {
        [_, d] => *d,
        other => {
            return Err(Error::shape(
                "embedding",
                format!("table must be 2-D, got {other:?}"),
            ));
        }
    };
    let mut dims = ids.dims().to_vec();
    dims.push(d);
    let ids = ids.to_dtype(DType::U32)?;
    let out = on_backend!("embedding", [weight => ws, ids => is], {
        Backend::embedding((ws, weight.layout()), (is, ids.layout()))
    })?;
    Ok(Tensor::from_op(out, &dims, &[weight], || Op::Embedding {
        weight: weight.clone(),
        ids: ids.clone(),
    }))
}

pub(crate) fn backward(weight: &Tensor, ids: &Tensor, g: &Tensor) -> Result<Tensor> {
    let table = [weight.dims()[0], weight.dims()[1]];
    let out = on_backend!("embedding", [ids => is, g => gs], {
        Backend::embedding_backward(table, weight.dtype(), (is, ids.layout()), (gs, g.layout()))
    })?;
    Ok(Tensor::from_storage(out, weight.dims()))
}
