//! The RLHF losses and estimators of docs/rlhf.md (TRL / OpenRLHF / InstructGPT math) on engine
//! tensors: per-token log-probs and entropy under a response mask, the k1/k3 KL estimators,
//! GAE and whitening, PPO's clipped policy and value losses, KL controllers, DPO and GRPO.
//!
//! Differentiated inputs (the policy's log-probs, values) are tensors; what a loss treats as
//! constant (rollout log-probs, advantages, returns, masks) is host `f32`, row-major (b, n).
//! The engine has no elementwise max or clamp, so the clipped losses choose their branch per
//! token on the host and build the tensor of the chosen branch: where the clipped branch wins,
//! the clip is active and that branch is a constant (zero gradient), so value and gradient are
//! exactly those of the max/clip formula.

use crate::{Error, Result};
use palm_engine::{DType, Tensor};

fn bad(msg: String) -> Error {
    Error::Invalid(msg)
}

/// (b, n) of a 2-D tensor, or an error naming `what`.
fn dims2(t: &Tensor, what: &str) -> Result<(usize, usize)> {
    match t.dims() {
        [b, n] => Ok((*b, *n)),
        d => Err(bad(format!("{what} must be (batch, seq), got shape {d:?}"))),
    }
}

/// Check that a host slice holds `len` values.
fn check_len(what: &str, xs: &[f32], len: usize) -> Result<()> {
    if xs.len() == len {
        Ok(())
    } else {
        Err(bad(format!("{what}: {} values, expected {len}", xs.len())))
    }
}

/// A host vector as an f32 tensor of `dims` on the device of `like`.
fn constant(values: Vec<f32>, dims: &[usize], like: &Tensor) -> Result<Tensor> {
    Ok(Tensor::from_vec(values, dims)?.to_device(like.device())?)
}

/// Which next-token targets of one row count, as a mask of width `n` (1 = counted).
///
/// The row is `tokens` = prompt then response, unpadded; target t is `tokens[t + 1]`. Target t
/// counts when `tokens[t + 1]` is a response token (t + 1 ≥ `prompt_len`), is not padding
/// (t + 1 < `tokens.len()`), and no earlier response token was `eos` (the EOS itself counts:
/// the policy chose to stop). Positions from `tokens.len() − 1` to `n` are padding.
pub fn response_mask(tokens: &[u32], prompt_len: usize, eos: Option<u32>, n: usize) -> Vec<f32> {
    let mut mask = vec![0f32; n];
    let mut ended = false;
    for (t, m) in mask.iter_mut().enumerate() {
        let Some(&tok) = tokens.get(t + 1) else { break };
        if t + 1 < prompt_len {
            continue;
        }
        if ended {
            break;
        }
        *m = 1.0;
        ended = eos == Some(tok);
    }
    mask
}

/// Per-token log-probabilities of `ids` (b, n) u32 under `logits` (b, n, V):
/// logp[b, t] = log softmax(logits[b, t])[ids[b, t]], shape (b, n), f32. The engine's fused
/// `logprob` op (no (b, n, V) intermediate; its gradient is onehot − softmax per row).
pub fn token_logprobs(logits: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (b, n, v) = match logits.dims() {
        [b, n, v] => (*b, *n, *v),
        d => {
            return Err(bad(format!(
                "logits must be (batch, seq, vocab), got {d:?}"
            )));
        }
    };
    if dims2(ids, "token ids")? != (b, n) {
        return Err(bad(format!(
            "token ids {:?} do not match logits {:?}",
            ids.dims(),
            logits.dims()
        )));
    }
    let ids = ids.to_dtype(DType::U32)?;
    if let Some(&id) = ids.to_vec::<u32>()?.iter().find(|&&id| id as usize >= v) {
        return Err(bad(format!("token id {id} out of range for {v} classes")));
    }
    Ok(palm_engine::logprob(
        logits,
        &ids.to_device(logits.device())?,
        1.0,
    )?)
}

/// Per-token entropy of the policy, H[b, t] = −Σ_v p_v log p_v with p = softmax(logits[b, t]),
/// shape (b, n), f32 (the engine's fused `entropy` op).
pub fn token_entropy(logits: &Tensor) -> Result<Tensor> {
    match logits.dims() {
        [_, _, _] => Ok(palm_engine::entropy(logits, 1.0)?),
        d => Err(bad(format!(
            "logits must be (batch, seq, vocab), got {d:?}"
        ))),
    }
}

/// Σ_t x[b, t]·mask[b, t] for each row: (b, n) → (b,). A sequence's log-probability is this
/// sum of its counted tokens' log-probs.
pub fn masked_row_sums(x: &Tensor, mask: &[f32]) -> Result<Tensor> {
    let (b, n) = dims2(x, "masked_row_sums input")?;
    check_len("mask", mask, b * n)?;
    Ok(x.mul(&constant(mask.to_vec(), &[b, n], x)?)?
        .sum_keepdim(&[1])?
        .reshape(&[b])?)
}

/// Σ x·w over every element, for host weights `w` of the same shape as `x`.
fn weighted_sum(x: &Tensor, w: Vec<f32>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    Ok(x.mul(&constant(w, &dims, x)?)?.sum_all()?)
}

/// Σ mask, or an error when nothing is counted (a mean over no token is meaningless).
fn counted(mask: &[f32], what: &str) -> Result<f32> {
    let c: f32 = mask.iter().sum();
    if c > 0.0 {
        Ok(c)
    } else {
        Err(bad(format!("{what}: no counted token (the mask is all 0)")))
    }
}

/// Σ x·mask / Σ mask: the mean over counted tokens, a scalar tensor.
pub fn masked_mean(x: &Tensor, mask: &[f32]) -> Result<Tensor> {
    check_len("mask", mask, x.elem_count())?;
    let c = counted(mask, "masked_mean")?;
    weighted_sum(x, mask.iter().map(|m| m / c).collect())
}

/// The k1 KL estimator per token: logπ − logπ_ref (unbiased, can be negative).
pub fn kl_k1(logp: &Tensor, ref_logp: &Tensor) -> Result<Tensor> {
    Ok(logp.sub(ref_logp)?)
}

/// The k3 KL estimator per token: (r − 1) − log r with r = π_ref/π = exp(logπ_ref − logπ)
/// (unbiased for KL(π‖π_ref) under samples of π, and never negative).
pub fn kl_k3(logp: &Tensor, ref_logp: &Tensor) -> Result<Tensor> {
    let log_r = ref_logp.sub(logp)?;
    Ok(log_r.exp()?.affine(1.0, -1.0)?.sub(&log_r)?)
}

/// Host versions of k1/k3 for rollout statistics.
pub fn kl_k1_host(logp: f32, ref_logp: f32) -> f32 {
    logp - ref_logp
}

pub fn kl_k3_host(logp: f32, ref_logp: f32) -> f32 {
    let log_r = ref_logp - logp;
    log_r.exp() - 1.0 - log_r
}

/// PPO's per-token rewards (TRL): −β·KL_t on every counted token, plus the reward model's
/// score of row b at its last counted token. `kl`, `mask` are (b, n) row-major; `scores` (b,).
/// Rows without a counted token get no score (there is no token to credit).
pub fn token_rewards(kl: &[f32], scores: &[f32], mask: &[f32], beta: f32) -> Result<Vec<f32>> {
    let b = scores.len();
    if b == 0 || !mask.len().is_multiple_of(b) {
        return Err(bad(format!(
            "token_rewards: {} mask values for {b} scores",
            mask.len()
        )));
    }
    check_len("kl", kl, mask.len())?;
    let n = mask.len() / b;
    let mut r: Vec<f32> = kl.iter().zip(mask).map(|(k, m)| -beta * k * m).collect();
    for (row, score) in scores.iter().enumerate() {
        let m = &mask[row * n..(row + 1) * n];
        if let Some(last) = m.iter().rposition(|&x| x > 0.0) {
            r[row * n + last] += score;
        }
    }
    Ok(r)
}

/// Advantages and returns from GAE.
#[derive(Debug, Clone, PartialEq)]
pub struct Gae {
    pub advantages: Vec<f32>,
    pub returns: Vec<f32>,
}

/// Generalised advantage estimation over rows of `n` tokens (row-major, host):
/// δ_t = r_t + γ·V_{t'} − V_t, A_t = δ_t + γλ·A_{t'}, returns R_t = A_t + V_t, where t' is the
/// next counted token of the row (V and A after the last one are 0: the episode ends there).
/// Tokens with mask 0 get A = R = 0 and are skipped by the recursion, so the prompt and
/// padding do not take part.
pub fn gae(
    rewards: &[f32],
    values: &[f32],
    mask: &[f32],
    n: usize,
    gamma: f32,
    lam: f32,
) -> Result<Gae> {
    if n == 0 || !mask.len().is_multiple_of(n) {
        return Err(bad(format!(
            "gae: {} mask values do not make rows of {n}",
            mask.len()
        )));
    }
    check_len("gae rewards", rewards, mask.len())?;
    check_len("gae values", values, mask.len())?;
    let mut advantages = vec![0f32; mask.len()];
    let mut returns = vec![0f32; mask.len()];
    for row in 0..mask.len() / n {
        let (mut next_value, mut next_adv) = (0f32, 0f32);
        for t in (row * n..(row + 1) * n).rev() {
            if mask[t] == 0.0 {
                continue;
            }
            let delta = rewards[t] + gamma * next_value - values[t];
            next_adv = delta + gamma * lam * next_adv;
            advantages[t] = next_adv;
            returns[t] = next_adv + values[t];
            next_value = values[t];
        }
    }
    Ok(Gae {
        advantages,
        returns,
    })
}

/// Whitening over counted tokens (TRL's `masked_whiten`): (x − mean)/√(var + 1e-8), the
/// variance unbiased (Bessel); with `shift_mean` false the mean is added back. Uncounted
/// tokens become 0. Needs at least two counted tokens.
pub fn whiten(x: &[f32], mask: &[f32], shift_mean: bool) -> Result<Vec<f32>> {
    check_len("whiten mask", mask, x.len())?;
    let count: f64 = mask.iter().map(|&m| m as f64).sum();
    if count < 2.0 {
        return Err(bad(format!(
            "whiten needs at least 2 counted tokens, got {count}"
        )));
    }
    let mean = x
        .iter()
        .zip(mask)
        .map(|(&v, &m)| (v * m) as f64)
        .sum::<f64>()
        / count;
    let var = x
        .iter()
        .zip(mask)
        .map(|(&v, &m)| m as f64 * (v as f64 - mean).powi(2))
        .sum::<f64>()
        / (count - 1.0);
    let inv = 1.0 / (var + 1e-8).sqrt();
    Ok(x.iter()
        .zip(mask)
        .map(|(&v, &m)| {
            if m == 0.0 {
                return 0.0;
            }
            let w = (v as f64 - mean) * inv;
            (if shift_mean { w } else { w + mean }) as f32
        })
        .collect())
}

/// Past this a log-ratio is held (e^80 still fits f32 and bf16): uncounted tokens may hold
/// anything, and a counted token this far off has a clipped, gradient-free branch anyway.
const LOG_RATIO_LIMIT: f32 = 80.0;

/// `logp − other` on counted tokens, 0 elsewhere (so garbage at padding cannot overflow what is
/// built on it), held to ±[`LOG_RATIO_LIMIT`]; on `logp`'s device.
fn counted_log_ratio(logp: &Tensor, other: &[f32], mask: &Tensor) -> Result<Tensor> {
    let dims = logp.dims().to_vec();
    Ok(logp
        .sub(&constant(other.to_vec(), &dims, logp)?)?
        .clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)?
        .mul(mask)?)
}

/// The per-token clipped surrogate max(−A·ρ, −A·clip(ρ, 1 − ε, 1 + ε)), ρ = exp(logp − old),
/// and a 0/1 mask of where the clipped branch won (strictly; a tie is the unclipped branch,
/// which carries the gradient), both shaped like `logp` and computed on its device. Uncounted
/// tokens have ρ = 1 and advantage 0.
fn clipped_surrogate(
    logp: &Tensor,
    old_logp: &[f32],
    adv: &[f32],
    mask: &[f32],
    eps: f32,
) -> Result<(Tensor, Tensor)> {
    if !(eps > 0.0 && eps.is_finite()) {
        return Err(bad(format!("clip range ε must be > 0, got {eps}")));
    }
    let dims = logp.dims().to_vec();
    let len = logp.elem_count();
    check_len("old log-probs", old_logp, len)?;
    check_len("advantages", adv, len)?;
    check_len("mask", mask, len)?;
    let m = constant(mask.to_vec(), &dims, logp)?;
    let neg_adv = constant(adv.iter().map(|a| -a).collect(), &dims, logp)?.mul(&m)?;
    let ratio = counted_log_ratio(logp, old_logp, &m)?.exp()?;
    let unclipped = ratio.mul(&neg_adv)?;
    let clipped = ratio.clamp(1.0 - eps, 1.0 + eps)?.mul(&neg_adv)?;
    let won = unclipped.ge(&clipped)?.affine(-1.0, 1.0)?;
    Ok((unclipped.maximum(&clipped)?, won))
}

/// The policy loss, clip fraction and approx-KL as scalar tensors on the device.
fn policy_terms(
    logp: &Tensor,
    old_logp: &[f32],
    adv: &[f32],
    mask: &[f32],
    eps: f32,
) -> Result<[Tensor; 3]> {
    dims2(logp, "policy log-probs")?;
    let (per_token, won) = clipped_surrogate(logp, old_logp, adv, mask, eps)?;
    let m = constant(mask.to_vec(), logp.dims(), logp)?;
    let approx_kl = masked_mean(&counted_log_ratio(logp, old_logp, &m)?.sqr()?, mask)?;
    Ok([
        masked_mean(&per_token, mask)?,
        masked_mean(&won, mask)?,
        approx_kl.scale(0.5)?,
    ])
}

/// PPO's clipped policy loss and its statistics.
pub struct PolicyLoss {
    /// mean over counted tokens of max(−A·ρ, −A·clip(ρ, 1 − ε, 1 + ε)), ρ = π/π_old.
    pub loss: Tensor,
    /// Fraction of counted tokens where the clipped branch won.
    pub clip_frac: f32,
    /// ½·mean over counted tokens of (logπ − logπ_old)² (TRL's approx-KL).
    pub approx_kl: f32,
}

/// PPO's clipped policy loss: `logp` (b, n) the current policy's log-probs of the rollout's
/// tokens; `old_logp`, `adv`, `mask` (b, n) from the rollout; clip range `eps`.
pub fn ppo_policy_loss(
    logp: &Tensor,
    old_logp: &[f32],
    adv: &[f32],
    mask: &[f32],
    eps: f32,
) -> Result<PolicyLoss> {
    let [loss, clip_frac, approx_kl] = policy_terms(logp, old_logp, adv, mask, eps)?;
    Ok(PolicyLoss {
        loss,
        clip_frac: clip_frac.to_scalar()?,
        approx_kl: approx_kl.to_scalar()?,
    })
}

/// PPO's clipped value loss and its clip fraction.
pub struct ValueLoss {
    /// ½·mean over counted tokens of max((V − R)², (V_old + clip(V − V_old, −ε_v, ε_v) − R)²).
    pub loss: Tensor,
    /// Fraction of counted tokens where the clipped branch won.
    pub clip_frac: f32,
}

/// PPO's clipped value loss: `values` (b, n) the critic's current predictions; `old_values`,
/// `returns`, `mask` (b, n) from the rollout; clip range `eps_v`.
pub fn ppo_value_loss(
    values: &Tensor,
    old_values: &[f32],
    returns: &[f32],
    mask: &[f32],
    eps_v: f32,
) -> Result<ValueLoss> {
    let [loss, clip_frac] = value_terms(values, old_values, returns, mask, eps_v)?;
    Ok(ValueLoss {
        loss,
        clip_frac: clip_frac.to_scalar()?,
    })
}

/// The value loss and its clip fraction as scalar tensors on the device. Where the clipped
/// branch wins strictly, V − V_old is outside ±ε_v, so that branch carries no gradient.
fn value_terms(
    values: &Tensor,
    old_values: &[f32],
    returns: &[f32],
    mask: &[f32],
    eps_v: f32,
) -> Result<[Tensor; 2]> {
    let dims = values.dims().to_vec();
    dims2(values, "values")?;
    if !(eps_v > 0.0 && eps_v.is_finite()) {
        return Err(bad(format!("value clip range must be > 0, got {eps_v}")));
    }
    let len = values.elem_count();
    check_len("old values", old_values, len)?;
    check_len("returns", returns, len)?;
    check_len("mask", mask, len)?;
    let old = constant(old_values.to_vec(), &dims, values)?;
    let ret = constant(returns.to_vec(), &dims, values)?;
    let plain = values.sub(&ret)?.sqr()?;
    let v_clip = old.add(&values.sub(&old)?.clamp(-eps_v, eps_v)?)?;
    let clip = v_clip.sub(&ret)?.sqr()?;
    let won = plain.ge(&clip)?.affine(-1.0, 1.0)?;
    Ok([
        masked_mean(&plain.maximum(&clip)?, mask)?.scale(0.5)?,
        masked_mean(&won, mask)?,
    ])
}

/// PPO's coefficients (docs/rlhf.md defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PpoConfig {
    /// Policy clip range ε.
    pub clip: f32,
    /// Value clip range ε_v.
    pub value_clip: f32,
    pub vf_coef: f32,
    /// Weight of the entropy bonus (subtracted from the loss).
    pub ent_coef: f32,
}

impl Default for PpoConfig {
    fn default() -> Self {
        PpoConfig {
            clip: 0.2,
            value_clip: 0.2,
            vf_coef: 0.1,
            ent_coef: 0.01,
        }
    }
}

/// One rollout minibatch as PPO's loss needs it, host (b, n) row-major.
pub struct PpoBatch<'a> {
    pub old_logp: &'a [f32],
    pub old_values: &'a [f32],
    /// Whitened advantages.
    pub advantages: &'a [f32],
    pub returns: &'a [f32],
    pub mask: &'a [f32],
}

/// PPO's total loss and the metrics logged per update.
pub struct PpoLoss {
    /// policy_loss + vf_coef·value_loss − ent_coef·entropy.
    pub loss: Tensor,
    pub policy_loss: f32,
    pub value_loss: f32,
    /// Mean entropy over counted tokens.
    pub entropy: f32,
    pub approx_kl: f32,
    pub clip_frac: f32,
    pub value_clip_frac: f32,
}

/// The whole PPO loss from the current policy's log-probs and entropies and the critic's
/// values, each (b, n) over the rollout's tokens.
pub fn ppo_loss(
    logp: &Tensor,
    entropy: &Tensor,
    values: &Tensor,
    batch: &PpoBatch,
    cfg: &PpoConfig,
) -> Result<PpoLoss> {
    let [pg, clip_frac, approx_kl] =
        policy_terms(logp, batch.old_logp, batch.advantages, batch.mask, cfg.clip)?;
    let [vf, value_clip_frac] = value_terms(
        values,
        batch.old_values,
        batch.returns,
        batch.mask,
        cfg.value_clip,
    )?;
    let ent = masked_mean(entropy, batch.mask)?;
    let loss = pg
        .add(&vf.scale(cfg.vf_coef)?)?
        .sub(&ent.scale(cfg.ent_coef)?)?;
    // Every statistic in one copy to the host (the loss's per-token work stays on the device).
    let stats = {
        let _g = palm_engine::no_grad();
        let parts = [&pg, &vf, &ent, &approx_kl, &clip_frac, &value_clip_frac]
            .iter()
            .map(|t| Ok(t.reshape(&[1])?.to_dtype(palm_engine::DType::F32)?))
            .collect::<Result<Vec<Tensor>>>()?;
        let refs: Vec<&Tensor> = parts.iter().collect();
        Tensor::cat(&refs, 0)?.to_vec::<f32>()?
    };
    Ok(PpoLoss {
        policy_loss: stats[0],
        value_loss: stats[1],
        entropy: stats[2],
        approx_kl: stats[3],
        clip_frac: stats[4],
        value_clip_frac: stats[5],
        loss,
    })
}

/// The KL coefficient β of PPO's per-token reward: fixed, or adapted toward a target KL
/// (Ziegler et al. 2019).
#[derive(Debug, Clone, PartialEq)]
pub enum KlController {
    Fixed {
        beta: f32,
    },
    Adaptive {
        beta: f32,
        target: f32,
        horizon: f32,
    },
}

impl KlController {
    pub fn fixed(beta: f32) -> Result<Self> {
        if !(beta >= 0.0 && beta.is_finite()) {
            return Err(bad(format!("KL coefficient must be ≥ 0, got {beta}")));
        }
        Ok(KlController::Fixed { beta })
    }

    pub fn adaptive(beta: f32, target: f32, horizon: f32) -> Result<Self> {
        Self::fixed(beta)?;
        if !(target > 0.0 && target.is_finite() && horizon > 0.0 && horizon.is_finite()) {
            return Err(bad(format!(
                "adaptive KL needs target > 0 and horizon > 0, got {target} and {horizon}"
            )));
        }
        Ok(KlController::Adaptive {
            beta,
            target,
            horizon,
        })
    }

    pub fn beta(&self) -> f32 {
        match self {
            KlController::Fixed { beta } | KlController::Adaptive { beta, .. } => *beta,
        }
    }

    /// After a batch of `n_steps` samples with mean KL `kl`: an adaptive controller sets
    /// β ← β·(1 + clip((kl − target)/target, −0.2, 0.2)·n_steps/horizon); a fixed one keeps β.
    pub fn update(&mut self, kl: f32, n_steps: u64) {
        if let KlController::Adaptive {
            beta,
            target,
            horizon,
        } = self
        {
            let err = ((kl - *target) / *target).clamp(-0.2, 0.2);
            *beta *= 1.0 + err * n_steps as f32 / *horizon;
        }
    }
}

/// DPO's metrics over a batch of pairs, with implicit rewards β·(logπ − logπ_ref).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpoStats {
    pub pairs: usize,
    /// Pairs whose chosen reward is above the rejected one (a tie counts as wrong, as TRL).
    pub correct: usize,
    /// Mean chosen reward − rejected reward.
    pub margin: f32,
    pub chosen_reward: f32,
    pub rejected_reward: f32,
}

impl DpoStats {
    pub fn accuracy(&self) -> f32 {
        self.correct as f32 / self.pairs.max(1) as f32
    }
}

pub struct DpoLoss {
    pub loss: Tensor,
    pub stats: DpoStats,
}

/// The DPO loss (Rafailov et al. 2023), mean over B pairs of
/// −log σ(β·[(logπ(y_w) − logπ_ref(y_w)) − (logπ(y_l) − logπ_ref(y_l))]).
///
/// `chosen`, `rejected` (B,): the policy's sequence log-probs of the preferred and the
/// dispreferred responses; `ref_chosen`, `ref_rejected`: the frozen reference's, on the host.
pub fn dpo_loss(
    chosen: &Tensor,
    rejected: &Tensor,
    ref_chosen: &[f32],
    ref_rejected: &[f32],
    beta: f32,
) -> Result<DpoLoss> {
    let b = chosen.elem_count();
    if b == 0 || rejected.elem_count() != b {
        return Err(bad(format!(
            "dpo: {b} chosen and {} rejected log-probs",
            rejected.elem_count()
        )));
    }
    check_len("reference chosen log-probs", ref_chosen, b)?;
    check_len("reference rejected log-probs", ref_rejected, b)?;
    if !(beta > 0.0 && beta.is_finite()) {
        return Err(bad(format!("DPO β must be > 0, got {beta}")));
    }
    let (chosen, rejected) = (chosen.reshape(&[b, 1])?, rejected.reshape(&[b, 1])?);
    let ref_diff: Vec<f32> = ref_chosen
        .iter()
        .zip(ref_rejected)
        .map(|(c, r)| c - r)
        .collect();
    let x = chosen
        .sub(&rejected)?
        .sub(&constant(ref_diff, &[b, 1], &chosen)?)?
        .scale(beta)?;
    // −log σ(x) = −log_softmax([x, 0])[0]: stable for any x.
    let zeros = Tensor::zeros(&[b, 1], DType::F32, x.device())?;
    let loss = Tensor::cat(&[&x, &zeros], 1)?
        .log_softmax()?
        .narrow(1, 0, 1)?
        .mean_all()?
        .neg()?;
    let (pc, pr) = (chosen.to_f32_vec()?, rejected.to_f32_vec()?);
    let (mut correct, mut cr, mut rr) = (0, 0f64, 0f64);
    for i in 0..b {
        let c = beta * (pc[i] - ref_chosen[i]);
        let r = beta * (pr[i] - ref_rejected[i]);
        correct += usize::from(c > r);
        cr += c as f64;
        rr += r as f64;
    }
    let (cr, rr) = ((cr / b as f64) as f32, (rr / b as f64) as f32);
    Ok(DpoLoss {
        loss,
        stats: DpoStats {
            pairs: b,
            correct,
            margin: cr - rr,
            chosen_reward: cr,
            rejected_reward: rr,
        },
    })
}

/// GRPO's advantages (Shao et al. 2024): rewards come in consecutive groups of `group`
/// responses to one prompt; each becomes (r − mean)/(std + eps) within its group, std unbiased
/// (as TRL's `torch.std`). A group of equal rewards gets advantages 0.
pub fn group_advantages(rewards: &[f32], group: usize, eps: f32) -> Result<Vec<f32>> {
    if group < 2 || rewards.is_empty() || !rewards.len().is_multiple_of(group) {
        return Err(bad(format!(
            "GRPO needs groups of at least 2 responses: {} rewards in groups of {group}",
            rewards.len()
        )));
    }
    let mut out = Vec::with_capacity(rewards.len());
    for g in rewards.chunks(group) {
        let k = g.len() as f64;
        let mean = g.iter().map(|&r| r as f64).sum::<f64>() / k;
        let var = g.iter().map(|&r| (r as f64 - mean).powi(2)).sum::<f64>() / (k - 1.0);
        let denom = var.sqrt() + eps as f64;
        out.extend(g.iter().map(|&r| ((r as f64 - mean) / denom) as f32));
    }
    Ok(out)
}

/// GRPO's loss and its statistics.
pub struct GrpoLoss {
    pub loss: Tensor,
    pub clip_frac: f32,
    /// Mean k3 KL to the reference over counted tokens.
    pub kl: f32,
}

/// GRPO's clipped ratio loss, averaged per response then over responses (the paper's
/// 1/G Σ_i 1/|o_i| Σ_t):
/// L = mean_i mean_t∈o_i [max(−A_i·ρ, −A_i·clip(ρ, 1 − ε, 1 + ε)) + β·k3_t],
/// ρ = π/π_old per token, A_i the response's group advantage, k3 against the reference.
///
/// `logp` (b, n) the current policy's log-probs; `old_logp`, `ref_logp`, `mask` (b, n);
/// `adv` (b,). With β = 0 the reference is not used (`ref_logp` may be empty).
pub fn grpo_loss(
    logp: &Tensor,
    old_logp: &[f32],
    ref_logp: &[f32],
    adv: &[f32],
    mask: &[f32],
    eps: f32,
    beta: f32,
) -> Result<GrpoLoss> {
    let (b, n) = dims2(logp, "policy log-probs")?;
    check_len("GRPO advantages", adv, b)?;
    check_len("mask", mask, b * n)?;
    let per_token_adv: Vec<f32> = (0..b * n).map(|i| adv[i / n]).collect();
    let (mut per_token, won) = clipped_surrogate(logp, old_logp, &per_token_adv, mask, eps)?;
    let mut kl = 0.0;
    if beta != 0.0 {
        check_len("reference log-probs", ref_logp, b * n)?;
        // k3 = e^d − d − 1 with d = logπ_ref − logπ, 0 at uncounted tokens (so k3 is 0 there).
        let m = constant(mask.to_vec(), &[b, n], logp)?;
        let d = counted_log_ratio(logp, ref_logp, &m)?.neg()?;
        let k3 = d.exp()?.affine(1.0, -1.0)?.sub(&d)?;
        kl = masked_mean(&k3, mask)?.to_scalar()?;
        per_token = per_token.add(&k3.scale(beta)?)?;
    }
    // Weights 1/(|o_i|·responses) over each response's counted tokens.
    let lens: Vec<f32> = mask.chunks(n).map(|m| m.iter().sum()).collect();
    let responses = lens.iter().filter(|&&l| l > 0.0).count();
    if responses == 0 {
        return Err(bad("GRPO loss: no counted token in any response".into()));
    }
    let w: Vec<f32> = (0..b * n)
        .map(|i| {
            let l = lens[i / n];
            if l > 0.0 {
                mask[i] / (l * responses as f32)
            } else {
                0.0
            }
        })
        .collect();
    Ok(GrpoLoss {
        loss: weighted_sum(&per_token, w)?,
        clip_frac: masked_mean(&won, mask)?.to_scalar()?,
        kl,
    })
}
