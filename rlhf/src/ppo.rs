//! PPO (docs/rlhf.md, the TRL / OpenRLHF / InstructGPT recipe) on a frozen base: the actor is the
//! base plus LoRA `actor`, the reference is the base itself, the critic is the base plus LoRA
//! `critic` and a per-token value head. One update = sample a batch of episodes, score them,
//! turn log-probs, KL, values and scores into advantages (GAE, whitened) and returns, then
//! `ppo_epochs` passes of `minibatches` clipped-loss AdamW steps.

use crate::critic::Critic;
use crate::flags::positive;
use crate::flags::{at_least, non_negative};
use crate::labelers::Labeler;
use crate::rl_math::{
    KlController, PpoBatch, PpoConfig, gae, kl_k1_host, kl_k3_host, ppo_loss, token_rewards, whiten,
};
use crate::rl_run::{self, Algorithm, Core, Learner, Report, RlRun, RlSettings};
use crate::rollout::{self, Episode, Padded, gather, mean_std};
use crate::trainer;
use crate::{Error, Result};
use palm_engine::{AdamW, Rng, no_grad};
use palm_model::PalmParams;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// The `format` of a PPO state file.
pub const STATE_FORMAT: &str = "palm-ppo-state";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KlEstimator {
    /// logπ − logπ_ref: unbiased, can be negative.
    K1,
    /// (r − 1) − log r, r = π_ref/π: unbiased and never negative.
    K3,
}

/// PPO's own settings and flags (the rest are the groups every RL run has, see [`RlSettings`]).
#[derive(clap::Args, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[group(id = "algorithm", conflicts_with = "resume")]
pub struct PpoFlags {
    /// Episodes (prompts) per update.
    #[arg(long, default_value_t = 16, value_parser = at_least(2))]
    pub batch: usize,
    /// Per-token KL estimator of the penalty.
    #[arg(long, value_enum, default_value_t = KlEstimator::K1)]
    pub kl: KlEstimator,
    /// KL coefficient β (the initial one with --target-kl).
    #[arg(long, default_value_t = 0.05)]
    pub beta: f32,
    /// Adapt β toward this KL per sequence (Ziegler et al.); fixed β without it.
    #[arg(long)]
    pub target_kl: Option<f32>,
    /// Horizon (episodes) of the adaptive β controller.
    #[arg(long, default_value_t = 10000.0)]
    pub kl_horizon: f32,
    /// Clip scores to ±this.
    #[arg(long)]
    pub score_clip: Option<f32>,
    /// Subtract this from the score of a response that hit --max-new without EOS.
    #[arg(long)]
    pub missing_eos_penalty: Option<f32>,
    /// Discount γ of the per-token rewards (GAE).
    #[arg(long, default_value_t = 1.0)]
    pub gamma: f32,
    /// GAE's λ: 1 is the Monte-Carlo return, 0 the one-step TD error.
    #[arg(long, default_value_t = 0.95)]
    pub lam: f32,
    /// Policy clip range ε.
    #[arg(long, default_value_t = 0.2)]
    pub clip: f32,
    /// Value clip range.
    #[arg(long, default_value_t = 0.2)]
    pub value_clip: f32,
    /// Weight of the value loss in the total loss.
    #[arg(long, default_value_t = 0.1)]
    pub vf_coef: f32,
    /// Weight of the entropy bonus.
    #[arg(long, default_value_t = 0.01)]
    pub ent_coef: f32,
    /// Passes over each rollout batch (at most 100: past a few, the clipped ratio stops learning).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub ppo_epochs: u64,
    /// Minibatches (AdamW steps) per pass.
    #[arg(long, default_value_t = 1, value_parser = at_least(1))]
    pub minibatches: usize,
}

/// Everything a PPO run is configured by, saved in its state so a resume continues alike.
pub type PpoSettings = RlSettings<PpoFlags>;

impl PpoFlags {
    pub fn kl_controller(&self, beta: f32) -> Result<KlController> {
        match self.target_kl {
            Some(t) => KlController::adaptive(beta, t, self.kl_horizon),
            None => KlController::fixed(beta),
        }
    }

    fn loss_config(&self) -> PpoConfig {
        PpoConfig {
            clip: self.clip,
            value_clip: self.value_clip,
            vf_coef: self.vf_coef,
            ent_coef: self.ent_coef,
        }
    }
}

/// Scores as PPO uses them: minus `missing_eos_penalty` for responses cut at the token limit,
/// then clipped to ±`clip`.
pub fn shape_scores(
    raw: &[f32],
    episodes: &[Episode],
    missing_eos_penalty: Option<f32>,
    clip: Option<f32>,
) -> Vec<f32> {
    raw.iter()
        .zip(episodes)
        .map(|(&s, e)| {
            let s = match missing_eos_penalty {
                Some(p) if !e.ended => s - p,
                _ => s,
            };
            clip.map_or(s, |c| s.clamp(-c, c))
        })
        .collect()
}

/// One batch of episodes with everything PPO's loss needs, host (b, n) row-major. Uncounted
/// positions (prompt, padding) hold 0 in `kl`, `rewards`, `advantages` and `returns`.
pub struct Experience {
    pub batch: Padded,
    pub scores: Vec<f32>,
    pub old_logp: Vec<f32>,
    pub ref_logp: Vec<f32>,
    pub values: Vec<f32>,
    /// The chosen KL estimator per token.
    pub kl: Vec<f32>,
    pub rewards: Vec<f32>,
    /// Whitened over the batch's counted tokens.
    pub advantages: Vec<f32>,
    pub returns: Vec<f32>,
}

impl Experience {
    /// Per-row sums of the per-token KL.
    pub fn sequence_kl(&self) -> Vec<f32> {
        self.kl
            .chunks(self.batch.n)
            .map(|r| r.iter().sum())
            .collect()
    }
}

/// Score `episodes` under the actor, the reference and the critic (no gradients) and compute
/// per-token rewards (−β·KL, the score at the last counted token), GAE and whitened advantages.
pub fn experience(
    base: &PalmParams,
    learner: &Learner<Critic>,
    episodes: &[Episode],
    scores: Vec<f32>,
    beta: f32,
    s: &PpoSettings,
) -> Result<Experience> {
    let critic = &learner.extra;
    let batch = Padded::new(episodes, s.actor.eos.0)?;
    let t = s.actor.temperature;
    let old_logp = rollout::logprobs_host(base, Some(&learner.actor), &batch, t)?;
    let ref_logp = rollout::logprobs_host(base, None, &batch, t)?;
    let values = {
        let _g = no_grad();
        critic.values(base, &batch)?.to_f32_vec()?
    };
    let estimator = match s.algo.kl {
        KlEstimator::K1 => kl_k1_host,
        KlEstimator::K3 => kl_k3_host,
    };
    let kl: Vec<f32> = (0..batch.mask.len())
        .map(|i| batch.mask[i] * estimator(old_logp[i], ref_logp[i]))
        .collect();
    let rewards = token_rewards(&kl, &scores, &batch.mask, beta)?;
    let g = gae(
        &rewards,
        &values,
        &batch.mask,
        batch.n,
        s.algo.gamma,
        s.algo.lam,
    )?;
    let advantages = whiten(&g.advantages, &batch.mask, true)?;
    Ok(Experience {
        batch,
        scores,
        old_logp,
        ref_logp,
        values,
        kl,
        rewards,
        advantages,
        returns: g.returns,
    })
}

/// Means over an update's minibatch steps.
#[derive(Debug, Default, Clone, Copy)]
pub struct TrainStats {
    pub policy_loss: f32,
    pub value_loss: f32,
    pub entropy: f32,
    pub approx_kl: f32,
    pub clip_frac: f32,
    pub value_clip_frac: f32,
    /// Mean of π/π_old over counted tokens.
    pub ratio: f32,
    pub grad_norm: f32,
    pub steps: usize,
}

impl TrainStats {
    fn add(&mut self, other: &TrainStats) {
        self.policy_loss += other.policy_loss;
        self.value_loss += other.value_loss;
        self.entropy += other.entropy;
        self.approx_kl += other.approx_kl;
        self.clip_frac += other.clip_frac;
        self.value_clip_frac += other.value_clip_frac;
        self.ratio += other.ratio;
        self.grad_norm += other.grad_norm;
        self.steps += 1;
    }

    fn mean(mut self) -> Self {
        let k = self.steps.max(1) as f32;
        for x in [
            &mut self.policy_loss,
            &mut self.value_loss,
            &mut self.entropy,
            &mut self.approx_kl,
            &mut self.clip_frac,
            &mut self.value_clip_frac,
            &mut self.ratio,
            &mut self.grad_norm,
        ] {
            *x /= k;
        }
        self
    }
}

/// Mean of exp(logp − old) over counted tokens.
pub fn mean_ratio(logp: &[f32], old: &[f32], mask: &[f32]) -> f32 {
    let (mut sum, mut count) = (0f64, 0f64);
    for i in 0..mask.len() {
        if mask[i] > 0.0 {
            sum += ((logp[i] - old[i]) as f64).exp();
            count += 1.0;
        }
    }
    (sum / count.max(1.0)) as f32
}

/// The PPO loss of the experience's rows `idx` under the current actor and critic.
pub fn minibatch_loss(
    base: &PalmParams,
    learner: &Learner<Critic>,
    exp: &Experience,
    idx: &[usize],
    s: &PpoSettings,
) -> Result<(crate::rl_math::PpoLoss, f32)> {
    let mb = exp.batch.rows(idx);
    let n = mb.n;
    let logits = rollout::logits(base, Some(&learner.actor), &mb)?;
    let logp = rollout::token_logprobs(&logits, &mb, s.actor.temperature)?;
    let entropy = rollout::token_entropy(&logits, s.actor.temperature)?;
    let values = learner.extra.values(base, &mb)?;
    let (old_logp, old_values) = (gather(&exp.old_logp, n, idx), gather(&exp.values, n, idx));
    let (advantages, returns) = (
        gather(&exp.advantages, n, idx),
        gather(&exp.returns, n, idx),
    );
    let batch = PpoBatch {
        old_logp: &old_logp,
        old_values: &old_values,
        advantages: &advantages,
        returns: &returns,
        mask: &mb.mask,
    };
    let ratio = mean_ratio(&logp.to_f32_vec()?, &old_logp, &mb.mask);
    Ok((
        ppo_loss(&logp, &entropy, &values, &batch, &s.algo.loss_config())?,
        ratio,
    ))
}

/// `ppo_epochs` passes over the experience, each in `minibatches` shuffled minibatches, one
/// AdamW step per minibatch.
pub fn train_on(
    base: &PalmParams,
    learner: &mut Learner<Critic>,
    opt: &mut AdamW,
    exp: &Experience,
    s: &PpoSettings,
    rng: &mut Rng,
) -> Result<TrainStats> {
    let b = exp.batch.b;
    let size = b.div_ceil(s.algo.minibatches.max(1));
    let mut total = TrainStats::default();
    for _ in 0..s.algo.ppo_epochs {
        let mut order: Vec<usize> = (0..b).collect();
        rl_run::shuffle(&mut order, rng);
        for idx in order.chunks(size) {
            let (out, ratio) = minibatch_loss(base, learner, exp, idx, s)?;
            let (lr, clip) = (s.optim.lr, s.optim.grad_clip);
            let (_, grad_norm) =
                trainer::optimise(learner, opt, out.loss, "the PPO loss", lr, clip)?;
            total.add(&TrainStats {
                policy_loss: out.policy_loss,
                value_loss: out.value_loss,
                entropy: out.entropy,
                approx_kl: out.approx_kl,
                clip_frac: out.clip_frac,
                value_clip_frac: out.value_clip_frac,
                ratio,
                grad_norm,
                steps: 0,
            });
        }
    }
    Ok(total.mean())
}

/// 1 − Var(R − V)/Var(R) over counted tokens: how much of the returns the critic explains.
pub fn explained_variance(values: &[f32], returns: &[f32], mask: &[f32]) -> f32 {
    let pick = |f: &dyn Fn(usize) -> f32| -> Vec<f32> {
        (0..mask.len()).filter(|&i| mask[i] > 0.0).map(f).collect()
    };
    let (_, sd_r) = mean_std(&pick(&|i| returns[i]));
    let (_, sd_d) = mean_std(&pick(&|i| returns[i] - values[i]));
    if sd_r == 0.0 {
        return 0.0;
    }
    1.0 - (sd_d * sd_d) / (sd_r * sd_r)
}

/// PPO's part of an RL run: the KL controller and an optional gold rule.
pub struct Ppo {
    pub kl_ctl: KlController,
    /// A scripted score of each rollout, logged as `gold_score_mean` beside the score trained
    /// on and never trained on: how the demo watches a reward model's policy by the rule the
    /// model was fitted to.
    pub gold: Option<Labeler>,
}

/// A PPO run.
pub type PpoRun = RlRun<Ppo>;

impl Algorithm for Ppo {
    type Flags = PpoFlags;
    type Extra = Critic;
    const STATE_FORMAT: &'static str = STATE_FORMAT;

    fn check(p: &PpoFlags) -> Result<()> {
        positive("--clip", p.clip)?;
        positive("--value-clip", p.value_clip)?;
        positive("--kl-horizon", p.kl_horizon)?;
        if let Some(t) = p.target_kl {
            positive("--target-kl", t)?;
        }
        if let Some(c) = p.score_clip {
            positive("--score-clip", c)?;
        }
        non_negative("--beta", p.beta)?;
        non_negative("--vf-coef", p.vf_coef)?;
        non_negative("--ent-coef", p.ent_coef)?;
        non_negative(
            "--missing-eos-penalty",
            p.missing_eos_penalty.unwrap_or(0.0),
        )?;
        if !(0.0..=1.0).contains(&p.gamma) || !(0.0..=1.0).contains(&p.lam) {
            return Err(Error::Invalid("--gamma and --lam must be in [0, 1]".into()));
        }
        if p.minibatches > p.batch {
            return Err(Error::Invalid(format!(
                "--minibatches {} is more than the --batch of {} episodes",
                p.minibatches, p.batch
            )));
        }
        Ok(())
    }

    fn update_size(p: &PpoFlags) -> (usize, usize) {
        (p.batch, p.minibatches)
    }

    fn beta(flags: &PpoFlags) -> f32 {
        flags.beta
    }

    fn new(s: &PpoSettings, beta: f32) -> Result<Self> {
        Ok(Ppo {
            kl_ctl: s.algo.kl_controller(beta)?,
            gold: None,
        })
    }

    /// One update: rollout, experience, PPO epochs, the β controller.
    fn update(&mut self, s: &PpoSettings, core: &mut Core<Critic>) -> Result<Report> {
        let p = &s.algo;
        let t0 = Instant::now();
        let idx = core.progress.take_prompts(p.batch, core.prompts.len());
        let prompts: Vec<Vec<u32>> = idx.iter().map(|&i| core.prompts[i].clone()).collect();
        let episodes = rollout::sample_episodes(
            &core.base,
            Some(&core.learner.actor),
            &prompts,
            &s.actor.sampling(&core.base.tokenizer)?,
            &mut core.progress.rng,
        )?;
        let raw = core.reward.score(&episodes, p.batch)?;
        let scores = shape_scores(&raw, &episodes, p.missing_eos_penalty, p.score_clip);
        let beta = self.kl_ctl.beta();
        let exp = palm_engine::cpu::on_workers(|| {
            experience(&core.base, &core.learner, &episodes, scores, beta, s)
        })?;
        let rollout_s = rl_run::secs(t0);
        let t1 = Instant::now();
        let (base, learner, opt, rng) = (
            &core.base,
            &mut core.learner,
            &mut core.opt,
            &mut core.progress.rng,
        );
        let stats = palm_engine::cpu::on_workers(|| train_on(base, learner, opt, &exp, s, rng))?;
        let train_s = rl_run::secs(t1);

        let seq_kl = exp.sequence_kl();
        let (kl, _) = mean_std(&seq_kl);
        self.kl_ctl.update(kl, p.batch as u64);
        core.progress.beta = self.kl_ctl.beta();
        core.progress.update += 1;
        let (raw_mean, _) = mean_std(&raw);
        let (score_mean, score_std) = mean_std(&exp.scores);
        let lengths = exp.batch.lengths();
        let (length, _) = mean_std(&lengths);
        let eos_rate = episodes.iter().filter(|e| e.ended).count() as f32 / episodes.len() as f32;
        let metrics = serde_json::json!({
            "update": core.progress.update,
            "episodes": core.progress.update * p.batch as u64,
            "score_mean": score_mean, "score_std": score_std, "raw_score_mean": raw_mean,
            "kl": kl, "non_score_reward": -beta * kl, "beta": beta,
            "entropy": stats.entropy, "approx_kl": stats.approx_kl,
            "clip_frac": stats.clip_frac, "ratio_mean": stats.ratio,
            "policy_loss": stats.policy_loss, "value_loss": stats.value_loss,
            "value_clip_frac": stats.value_clip_frac,
            "explained_variance": explained_variance(&exp.values, &exp.returns, &exp.batch.mask),
            "grad_norm": stats.grad_norm, "response_length": length, "eos_rate": eos_rate,
            "rollout_s": rollout_s, "train_s": train_s,
        });
        let mut metrics = metrics;
        let mut gold_line = String::new();
        if let Some(rule) = &self.gold {
            let gold: Vec<f32> = episodes
                .iter()
                .map(|e| rule.score(&core.base.tokenizer.decode(e.text())) as f32)
                .collect();
            let (gold_mean, _) = mean_std(&gold);
            metrics["gold_score_mean"] = gold_mean.into();
            gold_line = format!("{rule} {gold_mean:.3} ");
        }
        let line = format!(
            "{gold_line}score {score_mean:.3}±{score_std:.3} kl {kl:.4} β {beta:.4} ent {:.3} approx-kl {:.4} clip {:.3} vloss {:.4} len {length:.1} eos {eos_rate:.2} ({rollout_s:.2}s rollout, {train_s:.2}s train)",
            stats.entropy, stats.approx_kl, stats.clip_frac, stats.value_loss
        );
        Ok(Report {
            metrics,
            line,
            samples: rl_run::samples_of(&episodes, &exp.scores, 2, &core.base.tokenizer),
        })
    }
}
