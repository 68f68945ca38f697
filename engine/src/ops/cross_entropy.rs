//! Fused cross-entropy over the last dim with an ignored target id: log-softmax, gather, mean
//! over the counted targets, and a gradient that never builds a separate softmax tensor.

use crate::autograd::Op;
use crate::cpu::{self, data, f32s, owned};
use crate::storage::Storage;
use crate::{Error, IGNORE_ID, Result, Tensor};

/// Mean of −log softmax(logits)[target] over targets ≠ [`crate::IGNORE_ID`] (padding); also
/// returns that count.
/// logits (…, V), targets (…) u32. With no counted target the loss is 0 (not NaN).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<(Tensor, usize)> {
    let device = crate::ops::same_device("cross_entropy", &[logits, targets])?;
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
    // On CUDA the targets come to the host for the range check and the count of the mean (one
    // small copy; the batch builders could pass the count instead).
    let tv = match device {
        crate::Device::Cpu => data::<u32>(targets, "cross_entropy targets")?,
        crate::Device::Cuda(_) => {
            std::borrow::Cow::Owned(targets.to_dtype(crate::DType::U32)?.to_vec::<u32>()?)
        }
    };
    if let Some(bad) = tv.iter().find(|&&t| t as usize >= v) {
        return Err(Error::Invalid(format!(
            "target id {bad} out of range for {v} classes"
        )));
    }
    let count = tv.iter().filter(|&&t| t != IGNORE_ID).count();
    if device != crate::Device::Cpu {
        let (mean, lse) = crate::cuda::ops::cross_entropy::forward(logits, targets, count)?;
        let t = mean.record(&[logits], || Op::CrossEntropy {
            logits: logits.clone(),
            targets: targets.clone(),
            lse,
            count,
        });
        return Ok((t, count));
    }
    let (lse, losses) =
        cpu::cross_entropy::forward(&f32s(logits, "cross_entropy")?, &tv, v, IGNORE_ID);
    let total: f64 = losses.iter().map(|&l| l as f64).sum();
    let mean = if count == 0 {
        0.0
    } else {
        (total / count as f64) as f32
    };
    let lse = Tensor::from_vec(lse, targets.dims())?;
    let t = Tensor::from_op(Storage::Cpu(owned(vec![mean])), &[], &[logits], || {
        Op::CrossEntropy {
            logits: logits.clone(),
            targets: targets.clone(),
            lse,
            count,
        }
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
    if logits.device() != crate::Device::Cpu {
        return crate::cuda::ops::cross_entropy::backward(logits, targets, lse, count, g);
    }
    let v = *logits.dims().last().unwrap_or(&1);
    let scale = if count == 0 {
        0.0
    } else {
        g.to_scalar()? / count as f32
    };
    let out = cpu::cross_entropy::backward(
        &f32s(logits, "cross_entropy")?,
        &data::<u32>(targets, "cross_entropy targets")?,
        &f32s(lse, "cross_entropy")?,
        v,
        IGNORE_ID,
        scale,
    );
    Tensor::from_vec(out, logits.dims())
}
