//! Per-token log-probabilities and entropies of softmax(logits / temperature), the quantities
//! RLHF works with (PPO ratios and KL, DPO, GRPO, the entropy bonus), without a log-softmax of
//! the whole vocabulary kept for the backward (it recomputes from the saved log-sum-exp).

use crate::autograd::Op;
use crate::backend::Backend;
use crate::storage::on_backend;
use crate::{DType, Error, Result, Tensor};

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
    classes(logits, temperature, "logprob")?;
    let dims = row_dims(logits);
    if ids.dims() != dims {
        return Err(Error::shape(
            "logprob",
            format!("logits {:?} vs ids {:?}", logits.dims(), ids.dims()),
        ));
    }
    let inv_temp = 1.0 / temperature;
    let ids = ids.to_dtype(DType::U32)?;
    let (out, lse) = on_backend!("logprob", [logits => ls, ids => is], {
        Backend::logprob((ls, logits.layout()), Some((is, ids.layout())), inv_temp)
    })?;
    let lse = Tensor::from_storage(lse, &dims);
    Ok(Tensor::from_op(out, &dims, &[logits], || Op::Logprob {
        logits: logits.clone(),
        ids: Some(ids.clone()),
        lse,
        entropy: None,
        inv_temp,
    }))
}

/// Entropy of softmax(logits / temperature) per row: logits (…, V) → (…) f32.
pub fn entropy(logits: &Tensor, temperature: f32) -> Result<Tensor> {
    classes(logits, temperature, "entropy")?;
    let dims = row_dims(logits);
    let inv_temp = 1.0 / temperature;
    let (out, lse) = on_backend!("entropy", [logits => ls], {
        Backend::logprob((ls, logits.layout()), None, inv_temp)
    })?;
    let lse = Tensor::from_storage(lse, &dims);
    let out = Tensor::from_storage(out, &dims);
    let saved = out.clone();
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
    let g = g.to_dtype(DType::F32)?;
    // The optional operands ride along as the logits' own storage when absent (never read).
    let (ids_t, h_t) = (ids.unwrap_or(logits), entropy.unwrap_or(logits));
    let out = on_backend!(
        "logprob",
        [logits => ls, ids_t => is, lse => es, h_t => hs, g => gs],
        Backend::logprob_backward(
            (ls, logits.layout()),
            ids.map(|t| (is, t.layout())),
            (es, lse.layout()),
            entropy.map(|t| (hs, t.layout())),
            inv_temp,
            (gs, g.layout()),
        )
    )?;
    Ok(Tensor::from_storage(out, logits.dims()))
}
