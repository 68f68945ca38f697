//! Reward-model training (docs/rlhf.md): rankings and pairs as token ids, a seeded held-out split,
//! AdamW with warmup + cosine over epochs of shuffled batches, and the held-out pairwise
//! accuracy after every epoch. A loop of its own rather than the shared `Trainer`, which
//! optimises `PalmParams` alone: a reward model also trains its segment embeddings and head,
//! and with `--lora` only adapters in front of a frozen trunk.

use crate::data::{PreferenceRecord, read_jsonl};
use crate::epochs::{Batches, Checkpoints, Session, Start, say_stopped};
use crate::flags::{Cosine, CosineDefaults, at_least};
use crate::reward::{Pooling, RewardModel, Scored, ranking_loss};
use crate::rl_run::shuffle;
use crate::run_dir::{Begin, RunDir};
use crate::trainer::{self, Throughput, progress_bar, say};
use crate::{Error, Result};
use palm_engine::{AdamW, Device, Rng, Tensor, no_grad};
use palm_model::Tokenizer;
use palm_model::checkpoint::load_model;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

pub const MODEL_FILE: &str = "reward.safetensors";

/// One prompt's responses as token ids, best first, with the margin of its pairs.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranked {
    pub prompt: Vec<u32>,
    pub responses: Vec<Vec<u32>>,
    pub margin: f32,
}

impl Ranked {
    /// A record fitted into `max_len` (≥ 2) tokens a sequence: a response longer than
    /// `max_len − 1` is cut at its end, and the prompt loses tokens from its front until the
    /// longest response fits, keeping at least its last one (one prompt for all responses, so
    /// they are compared in the same context). The flag says whether anything was cut.
    pub fn new(
        r: &PreferenceRecord,
        max_len: usize,
        tokenizer: &Tokenizer,
    ) -> Result<(Ranked, bool)> {
        let (prompt, responses, margin) = r.ranking();
        let keep = max_len.max(2) - 1;
        let mut responses = tokenizer.encode_all(&responses)?;
        let mut prompt = tokenizer.encode(prompt)?;
        let longest = responses.iter().map(Vec::len).max().unwrap_or(0);
        let room = max_len.max(2) - longest.min(keep);
        let cut = prompt.len() > room || longest > keep;
        prompt.drain(..prompt.len().saturating_sub(room));
        for resp in &mut responses {
            resp.truncate(keep);
        }
        let ranked = Ranked {
            prompt,
            responses,
            margin,
        };
        Ok((ranked, cut))
    }

    /// The C(K,2) (better, worse) pairs it holds.
    pub fn pairs(&self) -> usize {
        let k = self.responses.len();
        k * k.saturating_sub(1) / 2
    }
}

/// Shuffle `0..n` with `rng` and hold out `round(n · val_frac)` of it (at least one, leaving at
/// least one to train on): (train, held-out) indices.
pub fn split_held_out(n: usize, val_frac: f64, rng: &mut Rng) -> Result<(Vec<usize>, Vec<usize>)> {
    if n < 2 {
        return Err(Error::Invalid(format!(
            "need at least 2 rankings (one is held out), got {n}"
        )));
    }
    let mut idx: Vec<usize> = (0..n).collect();
    shuffle(&mut idx, rng);
    let held = ((n as f64 * val_frac).round() as usize).clamp(1, n - 1);
    let val = idx.split_off(n - held);
    Ok((idx, val))
}

/// `records` as `tokenizer`'s ids fitted into `seq_len`, split into (train, held-out) by
/// `split_held_out`, with the number of records that had to be cut.
pub fn split_records(
    records: &[PreferenceRecord],
    val_frac: f64,
    seq_len: usize,
    tokenizer: &Tokenizer,
    rng: &mut Rng,
) -> Result<(Vec<Ranked>, Vec<Ranked>, usize)> {
    let (train_idx, val_idx) = split_held_out(records.len(), val_frac, rng)?;
    let mut cut = 0;
    let mut ranked = |idx: &[usize]| -> Result<Vec<Ranked>> {
        idx.iter()
            .map(|&i| {
                let (r, was_cut) = Ranked::new(&records[i], seq_len, tokenizer)?;
                cut += usize::from(was_cut);
                Ok(r)
            })
            .collect()
    };
    let (train, val) = (ranked(&train_idx)?, ranked(&val_idx)?);
    Ok((train, val, cut))
}

/// The scores (N,) of every response of `batch`, ranking after ranking, in one forward pass.
fn score_batch(rm: &RewardModel, batch: &[&Ranked]) -> Result<Tensor> {
    let seqs: Vec<Scored> = batch
        .iter()
        .flat_map(|r| {
            r.responses.iter().map(|resp| Scored {
                prompt: &r.prompt,
                response: resp,
            })
        })
        .collect();
    rm.scores(&seqs)
}

/// The mean over the batch's rankings of their ranking losses (each the mean over its pairs).
fn loss_of(scores: &Tensor, batch: &[&Ranked]) -> Result<Tensor> {
    let mut total: Option<Tensor> = None;
    let mut at = 0;
    for r in batch {
        let k = r.responses.len();
        let l = ranking_loss(&scores.narrow(0, at, k)?, r.margin)?;
        at += k;
        total = Some(match total {
            None => l,
            Some(t) => t.add(&l)?,
        });
    }
    let total = total.ok_or_else(|| Error::Invalid("an empty batch of rankings".into()))?;
    Ok(total.scale(1.0 / batch.len() as f32)?)
}

/// The training loss of one batch (with gradients).
pub fn batch_loss(rm: &RewardModel, batch: &[&Ranked]) -> Result<Tensor> {
    loss_of(&score_batch(rm, batch)?, batch)
}

/// How a reward model does on held-out rankings.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldOut {
    /// Mean ranking loss over the rankings.
    pub loss: f64,
    /// Pairs with r_better > r_worse (a tie counts as wrong).
    pub correct: usize,
    pub pairs: usize,
}

impl HeldOut {
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.pairs.max(1) as f64
    }
}

/// Score `rankings`, `batch` at a time, without gradients.
pub fn evaluate(rm: &RewardModel, rankings: &[Ranked], batch: usize) -> Result<HeldOut> {
    palm_engine::cpu::on_workers(|| {
        let _g = no_grad();
        let (mut loss, mut correct, mut pairs) = (0f64, 0, 0);
        for chunk in rankings.chunks(batch.max(1)) {
            let refs: Vec<&Ranked> = chunk.iter().collect();
            let scores = score_batch(rm, &refs)?;
            loss += loss_of(&scores, &refs)?.to_scalar()? as f64 * refs.len() as f64;
            let values = scores.to_vec::<f32>()?;
            let mut at = 0;
            for r in chunk {
                let s = &values[at..at + r.responses.len()];
                for i in 0..s.len() {
                    correct += s[i + 1..].iter().filter(|&&worse| s[i] > worse).count();
                }
                pairs += r.pairs();
                at += r.responses.len();
            }
        }
        Ok(HeldOut {
            loss: loss / rankings.len().max(1) as f64,
            correct,
            pairs,
        })
    })
}

/// `palm reward train`'s optimiser defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RewardDefaults;

impl CosineDefaults for RewardDefaults {
    const LR: &'static str = "0.0003";
    const MIN_LR: &'static str = "0.00003";
    const WARMUP: &'static str = "10";
    const WEIGHT_DECAY: &'static str = "0";
    const GRAD_CLIP: &'static str = "1";
}

/// How a reward model trains (`palm reward train`'s flags of it, saved with its runs).
#[derive(clap::Args, Debug, Clone, Serialize, Deserialize)]
pub struct TrainSettings {
    /// Passes over the training rankings.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub epochs: u64,
    /// Rankings per step (every response of a ranking is scored in the same batch).
    #[arg(long, default_value_t = 8, value_parser = at_least(1))]
    pub batch: usize,
    #[command(flatten)]
    #[serde(flatten)]
    pub optim: Cosine<RewardDefaults>,
}

/// The `format` of a reward-model run's state file, and its name.
pub const STATE_FORMAT: &str = "palm-reward-state";
pub const STATE_FILE: &str = "reward_state.safetensors";
/// The files a reward-model run writes besides the metrics.
pub const RUN_FILES: [&str; 2] = [STATE_FILE, MODEL_FILE];

/// Train `rm` on `train` from the session's start, reporting on `val` before training (a fresh run) and
/// after every epoch; a checkpoint (`reward_state.safetensors`, then `reward.safetensors`) after
/// every epoch and at the session's `stop_at`, where the run stops as if interrupted; the metrics appended to
/// the run folder's `metrics.jsonl`. The session's settings are saved with each checkpoint.
/// Returns the held-out results of this session, the untrained one first in a fresh run.
pub fn train(
    rm: &mut RewardModel,
    train: &[Ranked],
    val: &[Ranked],
    s: &TrainSettings,
    session: Session,
    run: &mut RunDir,
) -> Result<Vec<HeldOut>> {
    if train.is_empty() || val.is_empty() {
        return Err(Error::Invalid(
            "reward training needs rankings to train on and to hold out".into(),
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
    let mut opt = start.optimizer(s.optim.adam(), rm)?;
    let mut batches = Batches::new(train.len(), batch, s.epochs, start.step, start.rng)?;
    let total = batches.total();
    let steps_per_epoch = train.len().div_ceil(batch) as u64;
    let pb = progress_bar(total).with_position(start.step);
    let say = |line: String| say(&pb, line);
    let mut results = Vec::new();
    if start.step == 0 {
        let untrained = evaluate(rm, val, batch)?;
        say(format!("epoch 0 (untrained): {}", held_line(&untrained)));
        run.log(&epoch_json(0, 0, None, &untrained))?;
        results.push(untrained);
    }
    let mut speed = Throughput::default();
    let mut epoch_loss = start.epoch_loss;
    while let Some(chunk) = batches.next_batch() {
        let picked: Vec<&Ranked> = chunk.iter().map(|&i| &train[i]).collect();
        let step = batches.step();
        let epoch = batches.epoch();
        let lr = s.optim.lr_at(step - 1, total);
        let (loss, grad_norm) = palm_engine::cpu::on_workers(|| {
            optimise(rm, &mut opt, &picked, lr, s.optim.grad_clip)
        })?;
        epoch_loss += loss as f64;
        speed.add(picked.iter().map(|r| r.responses.len() as u64).sum());
        run.log(&serde_json::json!({
            "step": step, "epoch": epoch, "loss": loss, "lr": lr, "grad_norm": grad_norm,
            "responses_per_s": speed.per_second(), "elapsed_s": speed.elapsed(),
        }))?;
        pb.set_position(step);
        pb.set_message(format!("epoch {epoch} loss {loss:.3}"));
        if pb.is_hidden() && step.is_multiple_of(20) {
            crate::output::say(format!("step {step} loss {loss:.4} lr {lr:.2e}"));
        }
        let stop = stop_at == Some(step) && step < total;
        if batches.at_epoch_end() {
            let train_loss = epoch_loss / steps_per_epoch as f64;
            epoch_loss = 0.0;
            let held = evaluate(rm, val, batch)?;
            say(format!(
                "epoch {epoch}/{}: train loss {train_loss:.4}, {}, {:.1}s",
                s.epochs,
                held_line(&held),
                speed.elapsed()
            ));
            run.log(&epoch_json(epoch, step, Some(train_loss), &held))?;
            results.push(held);
        }
        if batches.at_epoch_end() || stop {
            let model: &RewardModel = rm;
            batches.checkpoint(run, &to, epoch_loss, model, &opt, |path, marks| {
                model.save_with(path, marks)
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

/// One AdamW step on a batch: (loss, gradient norm before clipping).
fn optimise(
    rm: &mut RewardModel,
    opt: &mut AdamW,
    batch: &[&Ranked],
    lr: f32,
    grad_clip: f32,
) -> Result<(f32, f32)> {
    let loss = batch_loss(rm, batch)?;
    trainer::optimise(rm, opt, loss, "the reward-model loss", lr, grad_clip)
}

pub fn held_line(h: &HeldOut) -> String {
    format!(
        "held-out loss {:.4}, pairwise accuracy {:.3} ({}/{} pairs)",
        h.loss,
        h.accuracy(),
        h.correct,
        h.pairs
    )
}

fn epoch_json(epoch: u64, step: u64, train_loss: Option<f64>, h: &HeldOut) -> serde_json::Value {
    serde_json::json!({
        "epoch": epoch, "step": step, "train_loss": train_loss, "val_loss": h.loss,
        "val_accuracy": h.accuracy(), "val_correct": h.correct, "val_pairs": h.pairs,
    })
}

// ---- a run, fresh or resumed ------------------------------------------------------------------

/// What a reward-model run is: saved with its checkpoints, so `--resume` rebuilds the same run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RewardRun {
    pub checkpoint: PathBuf,
    pub data: PathBuf,
    pub pooling: Pooling,
    /// The LoRA rank (with --lora).
    pub lora: Option<u64>,
    pub seq_len: u64,
    pub val_frac: f64,
    pub seed: u64,
    #[serde(flatten)]
    pub tokenizer: crate::flags::TokenizerArg,
    #[serde(flatten)]
    pub train: TrainSettings,
}

impl RewardRun {
    /// The flags' checks, also applied to settings read back from a state.
    pub fn check(&self) -> Result<()> {
        if !(self.val_frac > 0.0 && self.val_frac < 1.0) {
            return Err(Error::Invalid(
                "--val-frac must be between 0 and 1 (exclusive)".into(),
            ));
        }
        let t = &self.train;
        if t.epochs == 0 || t.batch == 0 || self.seq_len < 2 || self.lora == Some(0) {
            return Err(Error::Invalid(
                "--epochs, --batch and --lora-rank must be ≥ 1 and --seq-len ≥ 2".into(),
            ));
        }
        t.optim.check()
    }
}

/// Train (or continue) the reward-model run `begin` names on `device`, stopping after step
/// `stop_at` as if interrupted when given.
pub fn run(begin: Begin<RewardRun>, device: Device, stop_at: Option<u64>) -> Result<()> {
    // A resumed run is locked before its state is read; a fresh one checks its data and
    // checkpoint before anything is created on disk.
    let mut opened = begin.open(STATE_FILE, STATE_FORMAT)?;
    let r = &opened.settings;
    r.check()?;
    let records = read_jsonl::<PreferenceRecord>(&r.data)?;
    let (trunk, file) = load_model(&r.checkpoint)?;
    let trunk = r.tokenizer.apply(trunk, &r.checkpoint)?;
    if opened.resumed.is_none()
        && file.metadata().get("format").map(String::as_str) == Some(crate::reward::FORMAT)
    {
        crate::output::say(format!(
            "note: {} is a reward model; only its trunk is used (a fresh head and segment embeddings)",
            r.checkpoint.display()
        ));
    }
    let mut rng = Rng::new(r.seed);
    let (train_set, val_set, cut) = split_records(
        &records,
        r.val_frac,
        r.seq_len as usize,
        &trunk.tokenizer,
        &mut rng,
    )
    .map_err(|e| Error::data(&r.data, None, e.to_string()))?;
    if cut > 0 {
        crate::output::say(format!(
            "note: {cut} ranking(s) cut to --seq-len {}",
            r.seq_len
        ));
    }
    // Each step scores every response of `--batch` rankings at once.
    let widest = train_set
        .iter()
        .map(|r| r.responses.len())
        .max()
        .unwrap_or(2);
    let rows = r.train.batch.min(train_set.len()).saturating_mul(widest);
    // Sequences are as long as the data's, up to --seq-len.
    let seq = train_set
        .iter()
        .map(|r| r.prompt.len() + r.responses.iter().map(Vec::len).max().unwrap_or(0))
        .max()
        .unwrap_or(0)
        .min(r.seq_len as usize);
    let c = &trunk.config;
    let need = match r.lora {
        Some(rank) => {
            let trainable =
                palm_model::budget::lora(c, rank as usize).saturating_add(c.dim as u128);
            palm_model::budget::adapter_training(c, trainable, rows, seq)
        }
        None => palm_model::budget::training(c, rows, seq),
    };
    palm_model::budget::check(
        &format!(
            "reward training with --batch {} --seq-len {seq}",
            r.train.batch
        ),
        need,
        device,
    )?;
    let mut rm = RewardModel::new(trunk, r.pooling, &mut rng)?;
    if let Some(rank) = r.lora {
        rm.add_lora(rank as usize, &mut rng)?;
    }
    let (mut run, start) = match opened.resumed.take() {
        Some((mut run, state)) => {
            let start = Start::resumed(&state, &mut rm, r.train.optim.adam())?;
            run.repair_model(MODEL_FILE, state.step, |path, marks| {
                rm.save_with(path, marks)
            })?;
            (run, start)
        }
        None => (opened.folder(&RUN_FILES)?, Start::fresh(rng)),
    };
    rm.move_to(device)?;
    let pairs = |rs: &[Ranked]| rs.iter().map(Ranked::pairs).sum::<usize>();
    let c = &rm.trunk.config;
    let what = match r.lora {
        Some(rank) => format!("frozen, LoRA rank {rank} trained"),
        None => "trained".to_string(),
    };
    let steps_per_epoch = train_set.len().div_ceil(r.train.batch) as u64;
    crate::output::say(format!(
        "reward model on a {:.2}M-parameter trunk ({what}), {} pooling; {} rankings ({} pairs) to train, {} held out ({} pairs) from {}; {} epoch(s) of {steps_per_epoch} steps of {}",
        c.num_params() as f64 / 1e6,
        r.pooling.name(),
        train_set.len(),
        pairs(&train_set),
        val_set.len(),
        pairs(&val_set),
        r.data.display(),
        r.train.epochs,
        r.train.batch
    ));
    let timer = std::time::Instant::now();
    let saved = serde_json::to_value(r)
        .map_err(|e| Error::Invalid(format!("cannot serialise the settings: {e}")))?;
    let session = Session {
        start,
        settings: saved,
        stop_at,
    };
    let results = train(&mut rm, &train_set, &val_set, &r.train, session, &mut run)?;
    if stop_at.is_some_and(|s| s < steps_per_epoch.saturating_mul(r.train.epochs)) {
        return Ok(());
    }
    let last = results
        .last()
        .ok_or_else(|| Error::Invalid("reward training ran no epoch".into()))?;
    crate::output::emit(format!(
        "done: {} epoch(s), {}, {:.1}s; model in {}",
        r.train.epochs,
        held_line(last),
        timer.elapsed().as_secs_f64(),
        run.join(MODEL_FILE).display()
    ));
    Ok(())
}
