//! Per-token log-probabilities and entropies of softmax(logits / temperature), the quantities
//! RLHF works with (PPO ratios and KL, DPO, GRPO, the entropy bonus), without a log-softmax of
//! the whole vocabulary kept for the backward (it recomputes from the saved log-sum-exp).

use crate::autograd::Op;
use crate::cpu::{self, data, f32s, owned};
use crate::{DType, Device, Error, Result, Tensor};

fn classes(logits: &Tensor, temperature: f32, op: &'static str) -> Result<usize> {
    if !(temperature > 0.0 && temperature.is_finite()) {
        return Err(Error::Invalid(format!(
            "{op}: temperature must be positive, got {temperature}"
        )));
    }
    logits
        .dims()
        .last()
        .copied()
        .filter(|&v| v > 0)
        .ok_or_else(|| Error::shape(op, "logits need a last (class) dim"))
}

fn row_dims(logits: &Tensor) -> Vec<usize> {
    logits.dims()[..logits.rank() - 1].to_vec()
}

/// log softmax(logits / temperature)[ids] per row: logits (…, V), ids (…) u32 → (…) f32.
/// An id ≥ V gives 0 and no gradient (padding beyond the vocabulary).
pub fn logprob(logits: &Tensor, ids: &Tensor, temperature: f32) -> Result<Tensor> {
    let device = crate::ops::same_device("logprob", &[logits, ids])?;
    let v = classes(logits, temperature, "logprob")?;
    let dims = row_dims(logits);
    if ids.dims() != dims {
        return Err(Error::shape(
            "logprob",
            format!("logits {:?} vs ids {:?}", logits.dims(), ids.dims()),
        ));
    }
    let inv_temp = 1.0 / temperature;
    let (out, lse) = match device {
        Device::Cpu => {
            let ids = ids.to_dtype(DType::U32)?;
            let (lp, lse) = cpu::logprob::logprob(
                &f32s(logits, "logprob")?,
                &data::<u32>(&ids, "logprob ids")?,
                v,
                inv_temp,
            );
            (Tensor::from_vec(lp, &dims)?, Tensor::from_vec(lse, &dims)?)
        }
        Device::Cuda(_) => crate::cuda::ops::logprob::forward(logits, Some(ids), inv_temp, false)?,
    };
    Ok(out.record(&[logits], || Op::Logprob {
        logits: logits.clone(),
        ids: Some(ids.clone()),
        lse,
        entropy: None,
        inv_temp,
    }))
}

/// Entropy of softmax(logits / temperature) per row: logits (…, V) → (…) f32.
pub fn entropy(logits: &Tensor, temperature: f32) -> Result<Tensor> {
    let v = classes(logits, temperature, "entropy")?;
    let dims = row_dims(logits);
    let inv_temp = 1.0 / temperature;
    let (out, lse) = match logits.device() {
        Device::Cpu => {
            let (h, lse) = cpu::logprob::entropy(&f32s(logits, "entropy")?, v, inv_temp);
            (Tensor::from_vec(h, &dims)?, Tensor::from_vec(lse, &dims)?)
        }
        Device::Cuda(_) => crate::cuda::ops::logprob::forward(logits, None, inv_temp, true)?,
    };
    let saved = out.detach();
    Ok(out.record(&[logits], || Op::Logprob {
        logits: logits.clone(),
        ids: None,
        lse,
        entropy: Some(saved),
        inv_temp,
    }))
}

/// Gradient of the logits: of logp when `ids` is given, else of the entropy.
pub(crate) fn backward(
    logits: &Tensor,
    ids: Option<&Tensor>,
    lse: &Tensor,
    entropy: Option<&Tensor>,
    inv_temp: f32,
    g: &Tensor,
) -> Result<Tensor> {
    if logits.device() != Device::Cpu {
        return crate::cuda::ops::logprob::backward(logits, ids, lse, entropy, inv_temp, g);
    }
    let v = *logits.dims().last().unwrap_or(&1);
    let g = f32s(g, "logprob")?;
    let ids = ids.map(|t| t.to_dtype(DType::U32)).transpose()?;
    let ids = ids
        .as_ref()
        .map(|t| data::<u32>(t, "logprob ids"))
        .transpose()?;
    let h = entropy.map(|t| f32s(t, "entropy")).transpose()?;
    let up = cpu::logprob::Upstream {
        ids: ids.as_deref(),
        dlogp: ids.as_ref().map(|_| &g[..]),
        entropy: h.as_deref(),
        dentropy: h.as_ref().map(|_| &g[..]),
    };
    let out = cpu::logprob::backward(
        &f32s(logits, "logprob")?,
        &f32s(lse, "logprob")?,
        &up,
        v,
        inv_temp,
    );
    Ok(Tensor::from_cpu(owned(out), logits.dims()))
}
