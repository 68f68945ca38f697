//! GRPO (docs/rlhf.md, Shao et al. 2024): no critic. Each prompt gets a group of G sampled
//! responses; a response's advantage is its score standardised within its group, and the actor
//! (LoRA `actor` over the frozen policy) minimises the clipped ratio loss on its token log-probs,
//! optionally with β·k3 KL to the reference (the frozen policy itself).

use crate::flags::positive;
use crate::flags::{at_least, non_negative};
use crate::rl_math::{group_advantages, grpo_loss, kl_k3_host, masked_mean};
use crate::rl_run::{self, Algorithm, Core, Learner, NoExtra, Report, RlRun, RlSettings};
use crate::rollout::{self, Episode, Padded, gather, mean_std};
use crate::trainer;
use crate::{Error, Result};
use palm_engine::{AdamW, Rng, no_grad};
use palm_model::PalmParams;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// The `format` of a GRPO state file.
pub const STATE_FORMAT: &str = "palm-grpo-state";
/// Added to a group's standard deviation (a group of equal scores gets advantages 0).
const ADV_EPS: f32 = 1e-4;

/// GRPO's own settings and flags (the rest are the groups every RL run has, see [`RlSettings`]).
#[derive(clap::Args, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[group(id = "algorithm", conflicts_with = "resume")]
pub struct GrpoFlags {
    /// Prompts per update; the update has `batch · group` episodes.
    #[arg(long, default_value_t = 4, value_parser = at_least(1))]
    pub batch: usize,
    /// Responses sampled per prompt, G.
    #[arg(long, default_value_t = 4, value_parser = at_least(2))]
    pub group: usize,
    /// Weight of the k3 KL to the reference in the loss; 0 = none (the KL is still logged).
    #[arg(long, default_value_t = 0.04)]
    pub beta: f32,
    /// Ratio clip range ε.
    #[arg(long, default_value_t = 0.2)]
    pub clip: f32,
    /// Passes over each update's episodes (at most 100).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub epochs: u64,
    /// Minibatches (AdamW steps) per pass.
    #[arg(long, default_value_t = 1, value_parser = at_least(1))]
    pub minibatches: usize,
}

/// Everything a GRPO run is configured by, saved in its state so a resume continues alike.
pub type GrpoSettings = RlSettings<GrpoFlags>;

/// One update's episodes with their group advantages and rollout log-probs, host (b, n).
pub struct Groups {
    pub batch: Padded,
    pub scores: Vec<f32>,
    /// One per episode.
    pub advantages: Vec<f32>,
    pub old_logp: Vec<f32>,
    pub ref_logp: Vec<f32>,
}

/// Advantages within groups of `s.group` consecutive episodes and the log-probs of the actor
/// and the reference (no gradients).
pub fn groups(
    base: &PalmParams,
    learner: &Learner<NoExtra>,
    episodes: &[Episode],
    scores: Vec<f32>,
    s: &GrpoSettings,
) -> Result<Groups> {
    let advantages = group_advantages(&scores, s.algo.group, ADV_EPS)?;
    let batch = Padded::new(episodes, s.actor.eos.0)?;
    let t = s.actor.temperature;
    let old_logp = rollout::logprobs_host(base, Some(&learner.actor), &batch, t)?;
    // The reference is scored even with β = 0: the KL is logged either way.
    let ref_logp = rollout::logprobs_host(base, None, &batch, t)?;
    Ok(Groups {
        batch,
        scores,
        advantages,
        old_logp,
        ref_logp,
    })
}

/// Means over an update's minibatch steps.
#[derive(Debug, Default, Clone, Copy)]
pub struct TrainStats {
    pub loss: f32,
    pub clip_frac: f32,
    pub entropy: f32,
    pub ratio: f32,
    pub grad_norm: f32,
    pub steps: usize,
}

/// `epochs` passes over the groups' episodes in `minibatches` shuffled minibatches, one AdamW
/// step each.
pub fn train_on(
    base: &PalmParams,
    learner: &mut Learner<NoExtra>,
    opt: &mut AdamW,
    g: &Groups,
    s: &GrpoSettings,
    rng: &mut Rng,
) -> Result<TrainStats> {
    let (b, n) = (g.batch.b, g.batch.n);
    let (p, temperature) = (&s.algo, s.actor.temperature);
    let size = b.div_ceil(p.minibatches.max(1));
    let mut t = TrainStats::default();
    for _ in 0..p.epochs {
        let mut order: Vec<usize> = (0..b).collect();
        rl_run::shuffle(&mut order, rng);
        for idx in order.chunks(size) {
            let mb = g.batch.rows(idx);
            let logits = rollout::logits(base, Some(&learner.actor), &mb)?;
            let logp = rollout::token_logprobs(&logits, &mb, temperature)?;
            let old = gather(&g.old_logp, n, idx);
            let reference = gather(&g.ref_logp, n, idx);
            let adv: Vec<f32> = idx.iter().map(|&i| g.advantages[i]).collect();
            let out = grpo_loss(&logp, &old, &reference, &adv, &mb.mask, p.clip, p.beta)?;
            let entropy = {
                let _g = no_grad();
                masked_mean(&rollout::token_entropy(&logits, temperature)?, &mb.mask)?
                    .to_scalar()?
            };
            let ratio = crate::ppo::mean_ratio(&logp.to_f32_vec()?, &old, &mb.mask);
            t.loss += out.loss.to_scalar()?;
            t.clip_frac += out.clip_frac;
            t.entropy += entropy;
            t.ratio += ratio;
            let (lr, clip) = (s.optim.lr, s.optim.grad_clip);
            let (_, grad_norm) =
                trainer::optimise(learner, opt, out.loss, "the GRPO loss", lr, clip)?;
            t.grad_norm += grad_norm;
            t.steps += 1;
        }
    }
    let k = t.steps.max(1) as f32;
    Ok(TrainStats {
        loss: t.loss / k,
        clip_frac: t.clip_frac / k,
        entropy: t.entropy / k,
        ratio: t.ratio / k,
        grad_norm: t.grad_norm / k,
        steps: t.steps,
    })
}

/// GRPO's part of an RL run: nothing besides its settings.
pub struct Grpo;

/// A GRPO run.
pub type GrpoRun = RlRun<Grpo>;

impl Algorithm for Grpo {
    type Flags = GrpoFlags;
    type Extra = NoExtra;
    const STATE_FORMAT: &'static str = STATE_FORMAT;

    fn check(g: &GrpoFlags) -> Result<()> {
        positive("--clip", g.clip)?;
        non_negative("--beta", g.beta)?;
        let (episodes, _) = Self::update_size(g);
        if g.minibatches > episodes {
            return Err(Error::Invalid(format!(
                "--minibatches {} is more than the {episodes} episodes of an update",
                g.minibatches
            )));
        }
        Ok(())
    }

    fn update_size(g: &GrpoFlags) -> (usize, usize) {
        (g.batch.saturating_mul(g.group), g.minibatches)
    }

    fn beta(flags: &GrpoFlags) -> f32 {
        flags.beta
    }

    fn new(_: &GrpoSettings, _: f32) -> Result<Self> {
        Ok(Grpo)
    }

    /// One update: G responses to each of `batch` prompts, group advantages, the epochs.
    fn update(&mut self, s: &GrpoSettings, core: &mut Core<NoExtra>) -> Result<Report> {
        let p = &s.algo;
        let t0 = Instant::now();
        let idx = core.progress.take_prompts(p.batch, core.prompts.len());
        let prompts: Vec<Vec<u32>> = idx
            .iter()
            .flat_map(|&i| std::iter::repeat_n(core.prompts[i].clone(), p.group))
            .collect();
        let episodes = rollout::sample_episodes(
            &core.base,
            Some(&core.learner.actor),
            &prompts,
            &s.actor.sampling(&core.base.tokenizer)?,
            &mut core.progress.rng,
        )?;
        let scores = core.reward.score(&episodes, p.batch * p.group)?;
        let g = palm_engine::cpu::on_workers(|| {
            groups(&core.base, &core.learner, &episodes, scores, s)
        })?;
        let rollout_s = rl_run::secs(t0);
        let t1 = Instant::now();
        let (base, learner, opt, rng) = (
            &core.base,
            &mut core.learner,
            &mut core.opt,
            &mut core.progress.rng,
        );
        let stats = palm_engine::cpu::on_workers(|| train_on(base, learner, opt, &g, s, rng))?;
        let train_s = rl_run::secs(t1);
        core.progress.update += 1;

        let n = g.batch.n;
        let seq_kl: Vec<f32> = (0..g.batch.b)
            .map(|r| {
                (r * n..(r + 1) * n)
                    .map(|i| g.batch.mask[i] * kl_k3_host(g.old_logp[i], g.ref_logp[i]))
                    .sum()
            })
            .collect();
        let (kl, _) = mean_std(&seq_kl);
        let (score_mean, score_std) = mean_std(&g.scores);
        let (length, _) = mean_std(&g.batch.lengths());
        let eos_rate = episodes.iter().filter(|e| e.ended).count() as f32 / episodes.len() as f32;
        // Groups whose responses all scored alike teach nothing (advantages 0).
        let flat = g
            .scores
            .chunks(p.group)
            .filter(|c| c.iter().all(|&x| x == c[0]))
            .count() as f32
            / p.batch as f32;
        let metrics = serde_json::json!({
            "update": core.progress.update,
            "episodes": core.progress.update * (p.batch * p.group) as u64,
            "score_mean": score_mean, "score_std": score_std,
            "kl": kl, "beta": p.beta, "loss": stats.loss, "entropy": stats.entropy,
            "clip_frac": stats.clip_frac, "ratio_mean": stats.ratio,
            "grad_norm": stats.grad_norm, "flat_groups": flat,
            "response_length": length, "eos_rate": eos_rate,
            "rollout_s": rollout_s, "train_s": train_s,
        });
        let line = format!(
            "score {score_mean:.3}±{score_std:.3} kl {kl:.4} loss {:.4} ent {:.3} clip {:.3} flat groups {flat:.2} len {length:.1} eos {eos_rate:.2} ({rollout_s:.2}s rollout, {train_s:.2}s train)",
            stats.loss, stats.entropy, stats.clip_frac
        );
        Ok(Report {
            metrics,
            line,
            samples: rl_run::samples_of(&episodes, &g.scores, 2, &core.base.tokenizer),
        })
    }
}
