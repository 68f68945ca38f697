//! The reward model (DESIGN §5): a PaLM trunk (optionally with a LoRA scope), segment
//! embeddings added to the token embeddings (prompt vs response, as the seed), pooling over the
//! final-LayerNorm output (`mean` over the sequence as the seed, or the `last` token as TRL),
//! and a linear head to one scalar. Trained on rankings with the pairwise loss below.

use crate::{Error, Result};
use palm_engine::{DType, Device, Rng, Tensor};
use palm_model::{Forward, LoraScope, PalmParams};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over every real (non-padding) position: the seed's choice.
    Mean,
    /// The last real position (TRL's choice).
    Last,
}

pub struct RewardModel {
    pub trunk: PalmParams,
    pub lora: Option<LoraScope>,
    /// Added to the embeddings of prompt positions (D).
    pub prompt_embed: Tensor,
    /// Added to the embeddings of response positions (D).
    pub response_embed: Tensor,
    /// `to_pred.weight` (1, D), no bias.
    pub head: Tensor,
    pub pooling: Pooling,
}

/// One scored sequence: prompt then response token ids.
pub struct Scored<'a> {
    pub prompt: &'a [u32],
    pub response: &'a [u32],
}

impl RewardModel {
    /// A reward model on a copy of `trunk`: segment embeddings 0 (as the seed), head like
    /// `nn.Linear(dim, 1)` (uniform ±1/√dim).
    pub fn new(trunk: PalmParams, pooling: Pooling, rng: &mut Rng) -> Result<Self> {
        let d = trunk.config.dim;
        let bound = 1.0 / (d as f32).sqrt();
        let head: Vec<f32> = (0..d)
            .map(|_| (rng.uniform() * 2.0 - 1.0) * bound)
            .collect();
        let zeros = || Tensor::zeros(&[d], DType::F32, Device::Cpu).map(|t| t.as_var());
        Ok(RewardModel {
            trunk,
            lora: None,
            prompt_embed: zeros()?,
            response_embed: zeros()?,
            head: Tensor::from_vec(head, &[1, d])?.as_var(),
            pooling,
        })
    }

    /// One scalar per sequence, (b,). Sequences are right-padded with 0 to the longest.
    pub fn scores(&self, batch: &[Scored]) -> Result<Tensor> {
        let d = self.trunk.config.dim;
        let n = batch
            .iter()
            .map(|s| s.prompt.len() + s.response.len())
            .max()
            .unwrap_or(0);
        if n == 0 {
            return Err(Error::Invalid("reward model: nothing to score".into()));
        }
        let b = batch.len();
        let (mut ids, mut is_prompt, mut pool) = (Vec::new(), Vec::new(), Vec::new());
        for s in batch {
            let len = s.prompt.len() + s.response.len();
            if len == 0 {
                return Err(Error::Invalid(
                    "reward model: an empty prompt and response".into(),
                ));
            }
            ids.extend(
                s.prompt
                    .iter()
                    .chain(s.response)
                    .copied()
                    .chain(std::iter::repeat(0))
                    .take(n),
            );
            is_prompt.extend((0..n).map(|t| if t < s.prompt.len() { 1.0f32 } else { 0.0 }));
            pool.extend((0..n).map(|t| match self.pooling {
                Pooling::Mean if t < len => 1.0 / len as f32,
                Pooling::Last if t + 1 == len => 1.0,
                _ => 0.0,
            }));
        }
        let tokens = Tensor::from_vec(ids, &[b, n])?;
        // extra = mask·prompt_embed + (1 − mask)·response_embed, (b, n, D)
        let mask = Tensor::from_vec(is_prompt, &[b, n, 1])?;
        let extra = mask
            .mul(&self.prompt_embed)?
            .add(&mask.affine(-1.0, 1.0)?.mul(&self.response_embed)?)?;
        let opts = &mut Forward {
            lora: self.lora.as_ref(),
            extra_embed: Some(&extra),
            ..Default::default()
        };
        let emb = self.trunk.embed(&tokens, opts)?;
        let pooled = emb
            .mul(&Tensor::from_vec(pool, &[b, n, 1])?)?
            .sum_keepdim(&[1])?
            .reshape(&[b, d])?;
        Ok(pooled.matmul(&self.head.t()?)?.reshape(&[b])?)
    }
}

/// The ranking loss of one prompt's K responses scored best to worst: the mean over all
/// C(K,2) pairs (i better than j) of −log σ(r_i − r_j − margin). Each response is scored once.
pub fn ranking_loss(scores: &Tensor, margin: f32) -> Result<Tensor> {
    let k = scores.elem_count();
    if k < 2 {
        return Err(Error::Invalid(format!(
            "a ranking needs at least 2 responses, got {k}"
        )));
    }
    // Differences r_i − r_j for i < j as one product with a ±1 pair matrix (P × K).
    let mut pairs = Vec::new();
    for i in 0..k {
        for j in i + 1..k {
            let mut row = vec![0f32; k];
            row[i] = 1.0;
            row[j] = -1.0;
            pairs.extend(row);
        }
    }
    let p = pairs.len() / k;
    let diff = Tensor::from_vec(pairs, &[p, k])?
        .matmul(&scores.reshape(&[k, 1])?)?
        .affine(1.0, -margin)?;
    // −log σ(x) = −log_softmax([x, 0])[0]: the engine's stable log-softmax does the work.
    let both = Tensor::cat(
        &[&diff, &Tensor::zeros(&[p, 1], DType::F32, Device::Cpu)?],
        1,
    )?;
    Ok(both.log_softmax()?.narrow(1, 0, 1)?.mean_all()?.neg()?)
}
