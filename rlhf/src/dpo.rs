//! DPO training (docs/rlhf.md): preference pairs as token ids, the frozen reference's sequence
//! log-probs computed once, and AdamW on the policy (all weights, or LoRA adapters of scope
//! `actor` in front of the frozen base) with warmup + cosine, reporting loss, implicit-reward
//! accuracy and margin per step and on held-out pairs.
//!
//! A loop of its own rather than the shared `Trainer`: that optimises and saves `PalmParams`
//! alone, while `--lora` trains (and saves) adapters, and its `Task` returns only a loss,
//! where DPO reports accuracy and margin every step.

use crate::data::{PreferenceRecord, read_jsonl};
use crate::epochs::{Batches, Checkpoints, Session, Start, say_stopped};
use crate::flags::{Cosine, CosineDefaults, at_least};
use crate::reward_train::{Ranked, split_held_out};
use crate::rl_math::{DpoStats, dpo_loss, masked_row_sums, response_mask, token_logprobs};
use crate::run_dir::{Begin, RunDir};
use crate::trainer::{self, Throughput, progress_bar, say};
use crate::{Error, Result};
use palm_engine::{AdamW, Device, Rng, Tensor, no_grad};
use palm_model::checkpoint::save_model_with;
use palm_model::{Forward, LoraScope, PalmParams, Tokenizer, Trainable};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const MODEL_FILE: &str = "model.safetensors";
/// The LoRA scope DPO trains (docs/rlhf.md: the policy is the actor).
pub const LORA_SCOPE: &str = "actor";

/// One preference as token ids: `chosen` preferred to `rejected` as answers to `prompt`.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub prompt: Vec<u32>,
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
}

/// The pairs of `records` fitted into `max_len` tokens a sequence (cut as the reward model's
/// data, see `Ranked::new`); a ranking of K gives its C(K,2) pairs, best over worse. Returns the
/// pairs and how many records were cut.
pub fn pairs_of(
    records: &[&PreferenceRecord],
    max_len: usize,
    tokenizer: &Tokenizer,
) -> Result<(Vec<Pair>, usize)> {
    let (mut pairs, mut cut) = (Vec::new(), 0);
    for r in records {
        let (ranked, was_cut) = Ranked::new(r, max_len, tokenizer)?;
        cut += usize::from(was_cut);
        let rs = &ranked.responses;
        for i in 0..rs.len() {
            for j in i + 1..rs.len() {
                pairs.push(Pair {
                    prompt: ranked.prompt.clone(),
                    chosen: rs[i].clone(),
                    rejected: rs[j].clone(),
                });
            }
        }
    }
    Ok((pairs, cut))
}

/// The policy being trained: the model and, with LoRA, adapters in front of a frozen copy.
pub struct Policy {
    pub params: PalmParams,
    pub lora: Option<LoraScope>,
}

/// What the optimiser updates: the adapters with LoRA (the base is frozen), else every weight.
impl Trainable for Policy {
    fn trained(&self) -> Vec<(String, Tensor)> {
        match &self.lora {
            Some(l) => l.trained(),
            None => self.params.trained(),
        }
    }

    fn trained_mut(&mut self) -> Vec<&mut Tensor> {
        match &mut self.lora {
            Some(l) => l.tensors_mut(),
            None => self.params.tensors_mut(),
        }
    }
}

impl Policy {
    /// All weights train.
    pub fn full(params: PalmParams) -> Self {
        Policy { params, lora: None }
    }

    /// Fresh adapters of scope `actor`, rank `r` (B = 0, so the policy starts as the reference),
    /// the base cut out of the gradient graph.
    pub fn with_lora(mut params: PalmParams, r: usize, rng: &mut Rng) -> Result<Self> {
        let mut lora = LoraScope::new(&params.config, LORA_SCOPE, r, None, rng)?;
        lora.move_to(params.device())?;
        for t in params.tensors_mut() {
            *t = t.detach();
        }
        Ok(Policy {
            params,
            lora: Some(lora),
        })
    }

    /// Save the base weights and (with LoRA) the `actor` adapters, atomically.
    pub fn save(&self, path: &Path, extra: &[(String, String)]) -> Result<()> {
        let loras: Vec<&LoraScope> = self.lora.iter().collect();
        Ok(save_model_with(path, &self.params, &loras, extra)?)
    }

    /// The log-probability of each response given its prompt, summed over the response's
    /// tokens: (rows,). Rows are right-padded with 0 to the longest; the prompt and padding are
    /// masked out. Every sequence must have at least 2 tokens in the batch's longest row.
    pub fn response_logprobs(&self, rows: &[(&[u32], &[u32])]) -> Result<Tensor> {
        let longest = rows.iter().map(|(p, r)| p.len() + r.len()).max();
        let n = match longest {
            Some(l) if l >= 2 => l - 1,
            _ => {
                return Err(Error::Invalid(
                    "dpo: no sequence of 2 tokens or more in a batch".into(),
                ));
            }
        };
        let (mut inputs, mut targets, mut mask) = (Vec::new(), Vec::new(), Vec::new());
        for (prompt, response) in rows {
            let tokens: Vec<u32> = prompt.iter().chain(response.iter()).copied().collect();
            let pad = |from: usize| {
                tokens
                    .iter()
                    .skip(from)
                    .copied()
                    .chain(std::iter::repeat(0))
            };
            inputs.extend(pad(0).take(n));
            targets.extend(pad(1).take(n));
            mask.extend(response_mask(&tokens, prompt.len(), None, n));
        }
        let b = rows.len();
        let inputs = Tensor::from_vec(inputs, &[b, n])?;
        let targets = Tensor::from_vec(targets, &[b, n])?;
        let opts = &mut Forward {
            lora: self.lora.as_ref(),
            ..Default::default()
        };
        let logits = self.params.logits(&inputs, opts)?;
        masked_row_sums(&token_logprobs(&logits, &targets)?, &mask)
    }

    /// (chosen, rejected) sequence log-probs of `pairs`, one forward pass for both.
    fn pair_logprobs(&self, pairs: &[&Pair]) -> Result<(Tensor, Tensor)> {
        let rows: Vec<(&[u32], &[u32])> = pairs
            .iter()
            .map(|p| (p.prompt.as_slice(), p.chosen.as_slice()))
            .chain(
                pairs
                    .iter()
                    .map(|p| (p.prompt.as_slice(), p.rejected.as_slice())),
            )
            .collect();
        let all = self.response_logprobs(&rows)?;
        let b = pairs.len();
        Ok((all.narrow(0, 0, b)?, all.narrow(0, b, b)?))
    }
}

/// Pairs with the frozen reference's sequence log-probs of their responses.
pub struct Scored {
    pub pairs: Vec<Pair>,
    pub ref_chosen: Vec<f32>,
    pub ref_rejected: Vec<f32>,
}

/// Score `pairs` under the reference (the policy before training), `batch` pairs at a time.
/// Done once: the reference is frozen, so its log-probs never change.
pub fn score_reference(reference: &Policy, pairs: Vec<Pair>, batch: usize) -> Result<Scored> {
    let (mut ref_chosen, mut ref_rejected) = (Vec::new(), Vec::new());
    palm_engine::cpu::on_workers(|| {
        let _g = no_grad();
        for chunk in pairs.chunks(batch.max(1)) {
            let refs: Vec<&Pair> = chunk.iter().collect();
            let (c, r) = reference.pair_logprobs(&refs)?;
            ref_chosen.extend(c.to_f32_vec()?);
            ref_rejected.extend(r.to_f32_vec()?);
        }
        Ok::<_, Error>(())
    })?;
    Ok(Scored {
        pairs,
        ref_chosen,
        ref_rejected,
    })
}

/// The DPO loss and statistics of the pairs `idx` of `data`.
fn batch_loss(
    policy: &Policy,
    data: &Scored,
    idx: &[usize],
    beta: f32,
) -> Result<crate::rl_math::DpoLoss> {
    let picked: Vec<&Pair> = idx.iter().map(|&i| &data.pairs[i]).collect();
    let (c, r) = policy.pair_logprobs(&picked)?;
    let ref_c: Vec<f32> = idx.iter().map(|&i| data.ref_chosen[i]).collect();
    let ref_r: Vec<f32> = idx.iter().map(|&i| data.ref_rejected[i]).collect();
    dpo_loss(&c, &r, &ref_c, &ref_r, beta)
}

/// How the policy does on held-out pairs.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldOut {
    pub loss: f64,
    pub stats: DpoStats,
}

/// Loss and implicit-reward statistics over every pair of `data`, without gradients.
pub fn evaluate(policy: &Policy, data: &Scored, batch: usize, beta: f32) -> Result<HeldOut> {
    palm_engine::cpu::on_workers(|| {
        let _g = no_grad();
        let (mut loss, mut correct) = (0f64, 0);
        let (mut margin, mut chosen, mut rejected) = (0f64, 0f64, 0f64);
        let all: Vec<usize> = (0..data.pairs.len()).collect();
        for idx in all.chunks(batch.max(1)) {
            let out = batch_loss(policy, data, idx, beta)?;
            let (k, s) = (idx.len() as f64, out.stats);
            loss += out.loss.to_scalar()? as f64 * k;
            correct += s.correct;
            margin += s.margin as f64 * k;
            chosen += s.chosen_reward as f64 * k;
            rejected += s.rejected_reward as f64 * k;
        }
        let n = data.pairs.len().max(1) as f64;
        Ok(HeldOut {
            loss: loss / n,
            stats: DpoStats {
                pairs: data.pairs.len(),
                correct,
                margin: (margin / n) as f32,
                chosen_reward: (chosen / n) as f32,
                rejected_reward: (rejected / n) as f32,
            },
        })
    })
}

/// `palm dpo`'s optimiser defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpoDefaults;

impl CosineDefaults for DpoDefaults {
    const LR: &'static str = "0.0001";
    const MIN_LR: &'static str = "0.00001";
    const WARMUP: &'static str = "10";
    const WEIGHT_DECAY: &'static str = "0";
    const GRAD_CLIP: &'static str = "1";
}

/// How DPO trains (`palm dpo`'s flags of it, saved with its runs).
#[derive(clap::Args, Debug, Clone, Serialize, Deserialize)]
pub struct TrainSettings {
    /// DPO's β: the strength of the implicit KL penalty toward the reference.
    #[arg(long, default_value_t = 0.1)]
    pub beta: f32,
    /// Passes over the training pairs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub epochs: u64,
    /// Pairs per step (chosen and rejected responses go through one forward pass).
    #[arg(long, default_value_t = 8, value_parser = at_least(1))]
    pub batch: usize,
    #[command(flatten)]
    #[serde(flatten)]
    pub optim: Cosine<DpoDefaults>,
    /// Validate on the held-out pairs (and save the model) every N steps as well as at the
    /// end; 0 = only at the end.
    #[arg(long, default_value_t = 50)]
    pub val_every: u64,
    /// Print loss, reward accuracy and margin every N steps (every step goes to
    /// metrics.jsonl); 0 = never.
    #[arg(long, default_value_t = 10)]
    pub log_every: u64,
}

/// The `format` of a DPO run's state file, and its name.
pub const STATE_FORMAT: &str = "palm-dpo-state";
pub const STATE_FILE: &str = "dpo_state.safetensors";
/// The files a DPO run writes besides the metrics.
pub const RUN_FILES: [&str; 2] = [STATE_FILE, MODEL_FILE];

/// Train `policy` on `train` from `start`, validating on `val` before training (a fresh run),
/// every `val_every` steps and at the end; a checkpoint (`dpo_state.safetensors`, then the
/// policy in `model.safetensors`) at each of those validations and at the session's `stop_at`, where the run
/// stops as if interrupted; the metrics of every step and validation appended to the run
/// folder's `metrics.jsonl`. The session's settings are saved with each checkpoint. Returns
/// the held-out results of this session, the untrained one first in a fresh run.
pub fn train(
    policy: &mut Policy,
    train: &Scored,
    val: &Scored,
    s: &TrainSettings,
    session: Session,
    run: &mut RunDir,
) -> Result<Vec<HeldOut>> {
    if train.pairs.is_empty() || val.pairs.is_empty() {
        return Err(Error::Invalid(
            "DPO needs pairs to train on and to hold out".into(),
        ));
    }
    let batch = s.batch.max(1);
    let Session {
        mut start,
        settings,
        stop_at,
    } = session;
    let to = Checkpoints {
        kind: STATE_FORMAT,
        files: (STATE_FILE, MODEL_FILE),
        settings,
    };
    let mut opt = start.optimizer(s.optim.adam(), policy)?;
    let mut batches = Batches::new(train.pairs.len(), batch, s.epochs, start.step, start.rng)?;
    let total = batches.total();
    let pb = progress_bar(total).with_position(start.step);
    let say = |line: String| say(&pb, line);
    let validate = |policy: &Policy, step: u64, run: &mut RunDir| -> Result<HeldOut> {
        let held = evaluate(policy, val, batch, s.beta)?;
        say(format!("step {step}: {}", held_line(&held)));
        run.log(&serde_json::json!({
            "step": step, "val_loss": held.loss, "val_accuracy": held.stats.accuracy(),
            "val_margin": held.stats.margin, "val_chosen_reward": held.stats.chosen_reward,
            "val_rejected_reward": held.stats.rejected_reward, "val_pairs": held.stats.pairs,
        }))?;
        Ok(held)
    };
    let mut results = Vec::new();
    if start.step == 0 {
        results.push(validate(policy, 0, run)?);
    }
    let mut speed = Throughput::default();
    while let Some(idx) = batches.next_batch() {
        let idx = idx.to_vec();
        let (step, epoch) = (batches.step(), batches.epoch());
        let lr = s.optim.lr_at(step - 1, total);
        let (loss, stats, grad_norm) =
            palm_engine::cpu::on_workers(|| optimise(policy, &mut opt, train, &idx, s, lr))?;
        speed.add(idx.len() as u64);
        run.log(&serde_json::json!({
            "step": step, "epoch": epoch, "loss": loss, "accuracy": stats.accuracy(),
            "margin": stats.margin, "chosen_reward": stats.chosen_reward,
            "rejected_reward": stats.rejected_reward, "lr": lr, "grad_norm": grad_norm,
            "pairs_per_s": speed.per_second(), "elapsed_s": speed.elapsed(),
        }))?;
        pb.set_position(step);
        pb.set_message(format!(
            "loss {loss:.3} acc {:.2} margin {:.3}",
            stats.accuracy(),
            stats.margin
        ));
        if s.log_every > 0 && step.is_multiple_of(s.log_every) {
            say(format!(
                "step {step} (epoch {epoch}): loss {loss:.4}, reward accuracy {:.3}, margin {:.4}, lr {lr:.2e}",
                stats.accuracy(),
                stats.margin
            ));
        }
        let last = step == total;
        let stop = stop_at == Some(step) && !last;
        let validating = last || (s.val_every > 0 && step.is_multiple_of(s.val_every));
        if validating {
            results.push(validate(policy, step, run)?);
        }
        if validating || stop {
            let model: &Policy = policy;
            batches.checkpoint(run, &to, 0.0, model, &opt, |path, marks| {
                model.save(path, marks)
            })?;
        }
        if stop {
            say_stopped(&pb, step, run);
            return Ok(results);
        }
    }
    pb.finish_and_clear();
    Ok(results)
}

/// One AdamW step on the pairs `idx`: (loss, statistics, gradient norm before clipping).
fn optimise(
    policy: &mut Policy,
    opt: &mut AdamW,
    data: &Scored,
    idx: &[usize],
    s: &TrainSettings,
    lr: f32,
) -> Result<(f32, DpoStats, f32)> {
    let out = batch_loss(policy, data, idx, s.beta)?;
    let what = "the DPO loss";
    let (value, norm) = trainer::optimise(policy, opt, out.loss, what, lr, s.optim.grad_clip)?;
    Ok((value, out.stats, norm))
}

pub fn held_line(h: &HeldOut) -> String {
    format!(
        "held-out loss {:.4}, reward accuracy {:.3} ({}/{} pairs), margin {:.4} (chosen {:.4}, rejected {:.4})",
        h.loss,
        h.stats.accuracy(),
        h.stats.correct,
        h.stats.pairs,
        h.stats.margin,
        h.stats.chosen_reward,
        h.stats.rejected_reward
    )
}

// ---- a run, fresh or resumed ------------------------------------------------------------------

/// What a DPO run is: saved with its checkpoints, so `--resume` rebuilds the same run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DpoRun {
    pub policy: PathBuf,
    pub data: PathBuf,
    pub lora: Option<u64>,
    pub seq_len: u64,
    pub val_frac: f64,
    pub seed: u64,
    #[serde(flatten)]
    pub tokenizer: crate::flags::TokenizerArg,
    #[serde(flatten)]
    pub train: TrainSettings,
}

impl DpoRun {
    /// The flags' checks, also applied to settings read back from a state.
    pub fn check(&self) -> Result<()> {
        let (bad, t) = (|m: &str| Err(Error::Invalid(m.to_string())), &self.train);
        if !(t.beta > 0.0 && t.beta.is_finite()) {
            return bad("--beta must be a positive number");
        }
        if !(self.val_frac > 0.0 && self.val_frac < 1.0) {
            return bad("--val-frac must be between 0 and 1 (exclusive)");
        }
        if t.epochs == 0 || t.batch == 0 || self.seq_len < 2 || self.lora == Some(0) {
            return bad("--epochs, --batch and --lora must be ≥ 1 and --seq-len ≥ 2");
        }
        t.optim.check()
    }
}

/// Train (or continue) the DPO run `begin` names on `device`, stopping after step `stop_at` as if
/// interrupted when given.
pub fn run(begin: Begin<DpoRun>, device: Device, stop_at: Option<u64>) -> Result<()> {
    // A resumed run is locked before its state is read; a fresh one checks its data and
    // checkpoint before anything is created on disk.
    let mut opened = begin.open(STATE_FILE, STATE_FORMAT)?;
    let r = &opened.settings;
    r.check()?;
    let records = read_jsonl::<PreferenceRecord>(&r.data)?;
    let params = crate::rl_run::load_merged_policy(&r.policy)?;
    let params = r.tokenizer.apply(params, &r.policy)?;
    let mut rng = Rng::new(r.seed);
    let (train_idx, val_idx) = split_held_out(records.len(), r.val_frac, &mut rng)
        .map_err(|e| Error::data(&r.data, None, e.to_string()))?;
    let seq_len = r.seq_len as usize;
    let pick = |idx: &[usize]| idx.iter().map(|&i| &records[i]).collect::<Vec<_>>();
    let (train_pairs, cut_t) = pairs_of(&pick(&train_idx), seq_len, &params.tokenizer)?;
    let (val_pairs, cut_v) = pairs_of(&pick(&val_idx), seq_len, &params.tokenizer)?;
    if cut_t + cut_v > 0 {
        crate::output::say(format!(
            "note: {} record(s) cut to --seq-len {}",
            cut_t + cut_v,
            r.seq_len
        ));
    }
    // Each step scores the chosen and the rejected response of `--batch` pairs.
    let rows = r.train.batch.min(train_pairs.len()).saturating_mul(2);
    // Sequences are as long as the data's (already cut to --seq-len).
    let longest = train_pairs
        .iter()
        .map(|p| p.prompt.len() + p.chosen.len().max(p.rejected.len()))
        .max()
        .unwrap_or(0);
    let c = &params.config;
    let need = match r.lora {
        Some(rank) => {
            let trainable = palm_model::budget::lora(c, rank as usize);
            palm_model::budget::adapter_training(c, trainable, rows, longest)
        }
        None => palm_model::budget::training(c, rows, longest),
    };
    palm_model::budget::check(
        &format!("DPO with --batch {} --seq-len {seq_len}", r.train.batch),
        need,
        device,
    )?;
    let params = params.to_device(device)?;
    let mut policy = match r.lora {
        Some(rank) => Policy::with_lora(params, rank as usize, &mut rng)?,
        None => Policy::full(params),
    };
    let what = match r.lora {
        Some(rank) => format!("frozen, LoRA rank {rank} (scope {LORA_SCOPE}) trained"),
        None => "all weights trained".to_string(),
    };
    let batch = r.train.batch;
    crate::output::say(format!(
        "DPO (β = {}) of a {:.2}M-parameter policy ({what}) from {}; {} pairs to train, {} held out, from {}; {} epoch(s) of {} steps of {} pairs",
        r.train.beta,
        policy.params.config.num_params() as f64 / 1e6,
        r.policy.display(),
        train_pairs.len(),
        val_pairs.len(),
        r.data.display(),
        r.train.epochs,
        train_pairs.len().div_ceil(batch),
        batch
    ));
    let steps = (train_pairs.len().div_ceil(batch) as u64).saturating_mul(r.train.epochs);
    let (mut run, state) = match opened.resumed.take() {
        Some((run, state)) => (run, Some(state)),
        None => (opened.folder(&RUN_FILES)?, None),
    };
    let timer = std::time::Instant::now();
    // The policy has not trained yet (a resumed one gets its trained tensors after this), so it
    // is the reference.
    let train_set = score_reference(&policy, train_pairs, batch)?;
    let val_set = score_reference(&policy, val_pairs, batch)?;
    let start = match &state {
        Some(state) => {
            let start = Start::resumed(state, &mut policy, r.train.optim.adam())?;
            let p = &policy;
            run.repair_model(MODEL_FILE, state.step, |path, marks| p.save(path, marks))?;
            start
        }
        None => Start::fresh(rng),
    };
    let session = Session {
        start,
        settings: serde_json::to_value(r)
            .map_err(|e| Error::Invalid(format!("cannot serialise the settings: {e}")))?,
        stop_at,
    };
    let results = train(
        &mut policy,
        &train_set,
        &val_set,
        &r.train,
        session,
        &mut run,
    )?;
    if stop_at.is_some_and(|s| s < steps) {
        return Ok(());
    }
    let last = results
        .last()
        .ok_or_else(|| Error::Invalid("DPO ran no validation".into()))?;
    let sample_hint = if r.lora.is_some() {
        format!(" (sample with --lora {LORA_SCOPE})")
    } else {
        String::new()
    };
    crate::output::emit(format!(
        "done: {}, {:.1}s; model in {}{sample_hint}",
        held_line(last),
        timer.elapsed().as_secs_f64(),
        run.join(MODEL_FILE).display()
    ));
    Ok(())
}
