//! Fused cross-entropy over the last dim with an ignored target id: log-softmax, gather, mean
//! over the counted targets, and a gradient that never builds a separate softmax tensor.

use crate::autograd::Op;
use crate::backend::Backend;
use crate::storage::on_backend;
use crate::{DType, Error, IGNORE_ID, Result, Tensor};

/// Mean of −log softmax(logits)[target] over targets ≠ [`crate::IGNORE_ID`] (padding); also
/// returns that count.
/// logits (…, V), targets (…) u32. With no counted target the loss is 0 (not NaN).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<(Tensor, usize)> {
    let v = *logits
        .dims()
        .last()
        .ok_or_else(|| Error::shape("cross_entropy", "scalar logits"))?;
    if logits.dims()[..logits.rank() - 1] != *targets.dims() {
        return Err(Error::shape(
            "cross_entropy",
            format!("logits {:?} vs targets {:?}", logits.dims(), targets.dims()),
        ));
    }
    // The targets come to the host for the range check and the count of the mean (on CUDA one
    // small copy; the batch builders could pass the count instead).
    let targets = targets.to_dtype(DType::U32)?;
    let tv = targets.to_vec::<u32>()?;
    if let Some(bad) = tv.iter().find(|&&t| t as usize >= v) {
        return Err(Error::Invalid(format!(
            "target id {bad} out of range for {v} classes"
        )));
    }
    let count = tv.iter().filter(|&&t| t != IGNORE_ID).count();
    let (mean, lse) = on_backend!("cross_entropy", [logits => ls, targets => ts], {
        Backend::cross_entropy((ls, logits.layout()), (ts, targets.layout()), count)
    })?;
    let lse = Tensor::from_storage(lse, targets.dims());
    let t = Tensor::from_op(mean, &[], &[logits], || Op::CrossEntropy {
        logits: logits.clone(),
        targets: targets.clone(),
        lse,
        count,
    });
    Ok((t, count))
}

pub(crate) fn backward(
    logits: &Tensor,
    targets: &Tensor,
    lse: &Tensor,
    count: usize,
    g: &Tensor,
) -> Result<Tensor> {
    let g = g.to_dtype(DType::F32)?;
    let out = on_backend!(
        "cross_entropy",
        [logits => ls, targets => ts, lse => es, g => gs],
        Backend::cross_entropy_backward(
            (ls, logits.layout()),
            (ts, targets.layout()),
            (es, lse.layout()),
            count,
            (gs, g.layout()),
        )
    )?;
    Ok(Tensor::from_storage(out, logits.dims()))
}
