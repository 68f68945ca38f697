//! Embedding lookup: rows of a (V × d) table by integer id. Backward: scatter-add.

use crate::autograd::Op;
use crate::cpu::{self, data, f32s, owned};
use crate::storage::Storage;
use crate::{Error, Result, Tensor};

/// `weight[ids]`: ids of any shape (u32) → ids.dims + [d]. Ids ≥ V are an error.
pub fn embedding(weight: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let device = crate::ops::same_device("embedding", &[weight, ids])?;
    let (v, d) = match weight.dims() {
        [v, d] => (*v, *d),
        other => {
            return Err(Error::shape(
                "embedding",
                format!("table must be 2-D, got {other:?}"),
            ));
        }
    };
    let mut dims = ids.dims().to_vec();
    dims.push(d);
    if device != crate::Device::Cpu {
        let out = crate::cuda::ops::embedding::gather(weight, ids, &dims)?;
        return Ok(out.record(&[weight], || Op::Embedding {
            weight: weight.clone(),
            ids: ids.clone(),
        }));
    }
    let idv = data::<u32>(ids, "embedding ids")?;
    if let Some(bad) = idv.iter().find(|&&i| i as usize >= v) {
        return Err(Error::Invalid(format!(
            "token id {bad} out of range for a vocabulary of {v}"
        )));
    }
    let out = cpu::embedding::gather(&f32s(weight, "embedding")?, d, &idv);
    Ok(Tensor::from_op(
        Storage::Cpu(owned(out)),
        &dims,
        &[weight],
        || Op::Embedding {
            weight: weight.clone(),
            ids: ids.clone(),
        },
    ))
}

pub(crate) fn backward(weight: &Tensor, ids: &Tensor, g: &Tensor) -> Result<Tensor> {
    if weight.device() != crate::Device::Cpu {
        return crate::cuda::ops::embedding::scatter_add(weight, ids, g);
    }
    let (v, d) = (weight.dims()[0], weight.dims()[1]);
    let out = cpu::embedding::scatter_add(
        v,
        d,
        &data::<u32>(ids, "embedding ids")?,
        &f32s(g, "embedding")?,
    );
    Tensor::from_vec(out, weight.dims())
}
