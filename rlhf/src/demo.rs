//! The RLHF demo (issue 4): the whole pipeline in one run, from a small pretrained policy to a
//! PPO-tuned one, on the shipped corpus, with a scripted "human" (AFINN by default) standing in
//! for people. Every stage is the library's own: `Trainer` pretraining, rollouts, the labeler,
//! reward-model training, the PPO run. What this module adds is the glue, the held-out
//! before/after comparison and the report files (`summary.json`, `curves.svg`).

use crate::corpus::{Corpus, sentence_starts};
use crate::data::{PreferenceRecord, PromptRecord, RankingRecord, write_jsonl};
use crate::flags::{self, Actor, Cosine, Optim, RlSchedule, Sources};
use crate::labelers::{Labeler, rank_distinct};
use crate::plot::{self, Panel, Series};
use crate::ppo::{Ppo, PpoFlags, PpoRun, PpoSettings};
use crate::pretrain::{Pretrain, RunSettings, TrainDefaults};
use crate::reward::{Pooling, RewardModel};
use crate::reward_train::{self, TrainSettings};
use crate::rl_run::{self, Algorithm, secs, shuffle};
use crate::rollout::{self, Episode, Padded, RewardSource, Sampling, mean_std};
use crate::run_dir::{self, RunDir};
use crate::sampling::Stop;
use crate::trainer::{OptimSettings, Trainer};
use crate::{Error, Result};
use palm_engine::{Device, Rng};
use palm_model::checkpoint::load_model;
use palm_model::{LoraScope, PalmConfig, PalmParams, Tokenizer};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub const SUMMARY_FILE: &str = "summary.json";
pub const CURVES_FILE: &str = "curves.svg";
pub const PRESETS: &[&str] = &["quick", "reduced", "full"];

/// Everything the demo is configured by (a preset, then the command's overrides).
#[derive(Debug, Clone, Serialize)]
pub struct DemoSettings {
    /// The policy to start from; `None` pretrains one on the shipped corpus.
    pub policy: Option<PathBuf>,
    /// Where every stage computes (the summary records the result, not the machine).
    #[serde(skip)]
    pub device: Device,
    pub out: PathBuf,
    /// Replace the runs a previous demo left in `out` (see `RunDir::create`).
    #[serde(skip)]
    pub overwrite: bool,
    pub seed: u64,
    /// Pretraining (without `policy`): model size, steps, sequences per step, bytes per sequence, peak LR.
    pub model: PalmConfig,
    pub pretrain_steps: u64,
    pub pretrain_batch: u64,
    pub pretrain_seq: u64,
    pub pretrain_lr: f32,
    /// Prompts: sentence openings of this many bytes from the corpus's held-out part.
    pub prompt_bytes: usize,
    pub train_prompts: usize,
    pub held_out_prompts: usize,
    /// The scripted human (written as its name), and the responses it ranks per prompt.
    #[serde(serialize_with = "as_name")]
    pub labeler: Labeler,
    pub samples: usize,
    /// Responses (labelling, PPO rollouts and evaluation alike) end at `eos` or `max_new` bytes.
    pub max_new: usize,
    pub eos: Option<u32>,
    pub temperature: f32,
    pub rm_epochs: u64,
    pub rm_lr: f32,
    pub rm_batch: usize,
    pub rm_val_frac: f64,
    pub updates: u64,
    /// Episodes per PPO update.
    pub batch: usize,
    pub ppo_epochs: u64,
    pub minibatches: usize,
    pub lr: f32,
    pub beta: f32,
    pub lora_rank: usize,
    /// Samples per held-out prompt in the before/after comparison.
    pub eval_samples: usize,
}

fn as_name<S: serde::Serializer>(l: &Labeler, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(l)
}

impl DemoSettings {
    /// `quick` (the test's: seconds), `reduced` (the default: minutes on two CPU cores) or
    /// `full` (a bigger model, more data and updates).
    pub fn preset(name: &str, out: PathBuf) -> Option<Self> {
        let reduced = DemoSettings {
            device: Device::Cpu,
            policy: None,
            out,
            overwrite: false,
            seed: 0,
            model: PalmConfig::new(256, 128, 2, 4, 32),
            pretrain_steps: 1200,
            pretrain_batch: 16,
            pretrain_seq: 128,
            pretrain_lr: 3e-3,
            prompt_bytes: 16,
            train_prompts: 600,
            held_out_prompts: 100,
            labeler: Labeler::Afinn,
            samples: 8,
            max_new: 48,
            // Responses of one length: a reward model cannot prefer a length, nor the policy
            // exploit one by stopping early (tuning: with "." as EOS the policy learnt to stop).
            eos: None,
            temperature: 1.0,
            rm_epochs: 3,
            rm_lr: 3e-4,
            rm_batch: 8,
            rm_val_frac: 0.15,
            updates: 100,
            batch: 16,
            ppo_epochs: 4,
            minibatches: 2,
            lr: 1e-3,
            beta: 0.05,
            lora_rank: 8,
            eval_samples: 4,
        };
        Some(match name {
            "reduced" => reduced,
            "quick" => DemoSettings {
                model: PalmConfig::new(256, 32, 1, 2, 16),
                pretrain_steps: 150,
                pretrain_batch: 8,
                pretrain_seq: 64,
                pretrain_lr: 5e-3,
                train_prompts: 300,
                held_out_prompts: 32,
                samples: 4,
                max_new: 16,
                eos: Some(u32::from(b'.')),
                rm_epochs: 3,
                updates: 40,
                batch: 16,
                ppo_epochs: 2,
                lr: 3e-3,
                eval_samples: 8,
                ..reduced
            },
            "full" => DemoSettings {
                model: PalmConfig::new(256, 256, 4, 4, 64),
                pretrain_steps: 3000,
                pretrain_batch: 16,
                pretrain_seq: 256,
                pretrain_lr: 2e-3,
                // The held-out part has about 725 openings of 16 bytes.
                train_prompts: 600,
                held_out_prompts: 120,
                max_new: 64,
                rm_epochs: 3,
                updates: 200,
                batch: 32,
                minibatches: 4,
                lr: 5e-4,
                eval_samples: 8,
                ..reduced
            },
            _ => return None,
        })
    }

    fn sampling(&self) -> Sampling {
        Sampling {
            temperature: self.temperature,
            max_new: self.max_new,
            eos: self.eos,
        }
    }

    /// The PPO run's settings: the demo's choices and `palm ppo`'s defaults for the rest.
    fn ppo(&self, policy: PathBuf, reward: PathBuf, prompts: PathBuf) -> Result<PpoSettings> {
        Ok(PpoSettings {
            sources: Sources {
                policy,
                reward: Some(reward),
                rule: None,
                prompts,
                tokenizer: None,
            },
            updates: self.updates,
            actor: Actor {
                lora_rank: self.lora_rank,
                max_new: self.max_new,
                max_prompt: self.prompt_bytes,
                eos: Stop(self.eos),
                temperature: self.temperature,
            },
            algo: PpoFlags {
                batch: self.batch,
                beta: self.beta,
                ppo_epochs: self.ppo_epochs,
                minibatches: self.minibatches,
                ..flags::defaults()?
            },
            optim: Optim {
                lr: self.lr,
                ..flags::defaults()?
            },
            schedule: RlSchedule {
                sample_every: (self.updates / 4).max(1),
                ckpt_every: 0,
                seed: self.seed,
            },
        })
    }

    fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(m));
        if self.samples < 2 {
            return bad(format!("--samples must be ≥ 2, got {}", self.samples));
        }
        if self.train_prompts < 2 || self.held_out_prompts < 1 {
            return bad("need ≥ 2 training prompts and ≥ 1 held-out prompt".into());
        }
        if self.eval_samples < 1 || self.pretrain_steps < 1 {
            return bad("--eval-samples and --pretrain-steps must be ≥ 1".into());
        }
        if !(self.rm_val_frac > 0.0 && self.rm_val_frac < 1.0) {
            return bad("the reward model's held-out fraction must be in (0, 1)".into());
        }
        if !(1..=100).contains(&self.ppo_epochs) {
            return bad(format!(
                "--ppo-epochs must be 1 to 100, got {}",
                self.ppo_epochs
            ));
        }
        flags::positive("--rm-lr", self.rm_lr)?;
        flags::positive("--pretrain-lr", self.pretrain_lr)?;
        self.model.validate().map_err(Error::Invalid)?;
        // Before anything is trained: the stages' sizes (of the model it pretrains; a given
        // --policy is checked when it is loaded).
        use palm_model::budget;
        let m = &self.model;
        if self.policy.is_none() {
            budget::check(
                "pretraining",
                budget::training(
                    m,
                    self.pretrain_batch as usize,
                    self.pretrain_seq as usize + 1,
                ),
                self.device,
            )?;
        }
        budget::check(
            &format!(
                "labelling with --samples {} --max-new {}",
                self.samples, self.max_new
            ),
            budget::decoding(m, self.samples, self.prompt_bytes, self.max_new),
            self.device,
        )?;
        // The PPO run's sizes (its paths play no part).
        let ppo = self.ppo(PathBuf::new(), PathBuf::new(), PathBuf::new())?;
        rl_run::check_memory(m, &Ppo::update_shape(&ppo), self.device)
    }
}

/// How a policy does on the held-out prompts.
#[derive(Debug, Clone, Serialize)]
pub struct EvalStats {
    pub prompts: usize,
    pub samples: usize,
    /// The scripted human's score of each response: mean, standard deviation, standard error.
    pub gold_mean: f64,
    pub gold_std: f64,
    pub gold_se: f64,
    pub reward_mean: f64,
    pub reward_std: f64,
    /// Σ over response tokens of log π − log π_ref (k1) per response, mean and standard error.
    pub kl_mean: f64,
    pub kl_se: f64,
    /// Response bytes without the EOS.
    pub length_mean: f64,
    pub eos_rate: f64,
    /// The gold mean of each prompt's samples, in prompt order.
    pub per_prompt_gold: Vec<f64>,
}

/// The before/after comparison in `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub before: EvalStats,
    pub after: EvalStats,
    /// Mean over prompts of (after − before) of the prompt's gold mean, and its standard error.
    pub gold_gain: f64,
    pub gold_gain_se: f64,
    pub prompts_improved: usize,
    pub prompts_worse: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct RewardReport {
    pub rankings: usize,
    /// Prompts whose responses the labeler could not order (all tied or fewer than 2 distinct).
    pub skipped_prompts: usize,
    pub train_rankings: usize,
    pub held_out_rankings: usize,
    pub held_out_pairs: usize,
    pub accuracy_untrained: f64,
    pub accuracy: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SamplePair {
    pub prompt: String,
    pub before: String,
    pub before_gold: i64,
    pub after: String,
    pub after_gold: i64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    pub pretrain_s: f64,
    pub label_s: f64,
    pub reward_s: f64,
    pub ppo_s: f64,
    pub eval_s: f64,
    pub total_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub labeler: String,
    pub policy: PathBuf,
    pub train_prompts: usize,
    pub held_out: Comparison,
    pub reward_model: RewardReport,
    pub samples: Vec<SamplePair>,
    pub timings: Timings,
    pub settings: DemoSettings,
}

/// Run the demo into `s.out`: pretrain (unless given a policy), label, train the reward model,
/// PPO, compare on held-out prompts; write `summary.json` and `curves.svg` there.
pub fn run(s: &DemoSettings) -> Result<Summary> {
    s.check()?;
    let total = Instant::now();
    let mut timings = Timings::default();
    let corpus = Corpus::load(None, 0.05, s.pretrain_seq as usize, &Tokenizer::bytes())?;
    // Prompts first: too few is an error before anything is trained.
    let mut rng = Rng::new(s.seed);
    let (train_prompts, held_out) = prompts(&corpus, s, &mut rng)?;
    std::fs::create_dir_all(&s.out).map_err(|e| Error::io(&s.out, e))?;
    let prompts_path = s.out.join("prompts.jsonl");
    write_prompts(&prompts_path, &train_prompts)?;
    write_prompts(&s.out.join("held_out_prompts.jsonl"), &held_out)?;

    let policy_path = match &s.policy {
        Some(p) => p.clone(),
        None => {
            let t = Instant::now();
            let path = pretrain(&corpus, s)?;
            timings.pretrain_s = secs(t);
            path
        }
    };
    let mut base = rl_run::load_policy(&policy_path)?.to_device(s.device)?;
    rl_run::freeze(&mut base);

    crate::output::say(format!(
        "[2/5] labelling: {} samples for each of {} prompts, ranked by {}",
        s.samples,
        train_prompts.len(),
        s.labeler
    ));
    let t = Instant::now();
    let (rankings, skipped) = label(&base, &train_prompts, s, &mut rng)?;
    write_jsonl(&s.out.join("rankings.jsonl"), &rankings)?;
    timings.label_s = secs(t);
    crate::output::say(format!(
        "{} rankings written ({skipped} prompts skipped: their responses all scored alike), {:.1}s",
        rankings.len(),
        timings.label_s
    ));

    crate::output::say("[3/5] reward model");
    let t = Instant::now();
    let (rm, rm_report) = reward_model(&policy_path, rankings, skipped, s, &mut rng)?;
    timings.reward_s = secs(t);
    let reward_path = s.out.join("reward").join(reward_train::MODEL_FILE);

    let held_tokens = base.tokenizer.encode_all(&held_out)?;
    let reward = RewardSource::Model(Box::new(rm));
    let t = Instant::now();
    let (before, before_eps) = evaluate(&base, None, &held_tokens, &reward, s)?;
    timings.eval_s = secs(t);

    let settings = s.ppo(policy_path.clone(), reward_path, prompts_path)?;
    Ppo::check_settings(&settings)?;
    crate::output::say(format!(
        "[4/5] PPO: {} updates of {} episodes × {} epochs × {} minibatches, lr {}, β {}, LoRA rank {}",
        s.updates, s.batch, s.ppo_epochs, s.minibatches, s.lr, s.beta, s.lora_rank
    ));
    let t = Instant::now();
    rl_run::check_memory(&base.config, &Ppo::update_shape(&settings), s.device)?;
    let dir = RunDir::create(&s.out, &rl_run::RUN_FILES, s.overwrite)?;
    let train_tokens = base.tokenizer.encode_all(&train_prompts)?;
    let mut run = PpoRun::new(settings, base, reward, train_tokens, dir)?;
    run.move_to(s.device)?;
    run.algo.gold = Some(s.labeler.clone());
    run.drive(None)?;
    timings.ppo_s = secs(t);

    crate::output::say("[5/5] held-out comparison");
    let t = Instant::now();
    let (after, after_eps) = evaluate(
        &run.core.base,
        Some(&run.core.learner.actor),
        &held_tokens,
        &run.core.reward,
        s,
    )?;
    timings.eval_s += secs(t);
    let held_out = compare(before, after);
    let samples = sample_pairs(&before_eps, &after_eps, s, &run.core.base.tokenizer, 4);
    write_curves(&s.out)?;
    timings.total_s = secs(total);
    let summary = Summary {
        labeler: s.labeler.to_string(),
        policy: policy_path,
        train_prompts: train_prompts.len(),
        held_out,
        reward_model: rm_report,
        samples,
        timings,
        settings: s.clone(),
    };
    let json = serde_json::to_string_pretty(&summary)
        .map_err(|e| Error::Invalid(format!("cannot serialise the summary: {e}")))?;
    let path = s.out.join(SUMMARY_FILE);
    std::fs::write(&path, json + "\n").map_err(|e| Error::io(&path, e))?;
    Ok(summary)
}

/// Sentence openings of the corpus's held-out part, shuffled with the demo's RNG, split into
/// (training, held-out) prompts.
fn prompts(corpus: &Corpus, s: &DemoSettings, rng: &mut Rng) -> Result<(Vec<String>, Vec<String>)> {
    let mut starts = sentence_starts(&corpus.val_text, s.prompt_bytes);
    // Saturating: --prompts and --held-out near 2^64 are refused below, not wrapped.
    let need = s.train_prompts.saturating_add(s.held_out_prompts);
    if starts.len() < need {
        return Err(Error::Invalid(format!(
            "the held-out part of {} has {} sentence openings of {} bytes, fewer than the {need} prompts asked for",
            corpus.name,
            starts.len(),
            s.prompt_bytes
        )));
    }
    shuffle(&mut starts, rng);
    starts.truncate(need);
    let held = starts.split_off(s.train_prompts);
    Ok((starts, held))
}

fn write_prompts(path: &Path, prompts: &[String]) -> Result<()> {
    let records: Vec<PromptRecord> = prompts
        .iter()
        .map(|p| PromptRecord { prompt: p.clone() })
        .collect();
    write_jsonl(path, &records)
}

/// Pretrain `s.model` on the corpus with the shared `Trainer` into `out/pretrain` (a `palm
/// train` run folder); the path of its model.
fn pretrain(corpus: &Corpus, s: &DemoSettings) -> Result<PathBuf> {
    let dir = s.out.join("pretrain");
    let warmup = (s.pretrain_steps / 10).max(1);
    let settings = OptimSettings::<TrainDefaults> {
        steps: s.pretrain_steps,
        optim: Cosine::new(s.pretrain_lr, s.pretrain_lr / 10.0, warmup, 0.1, 0.5),
        seed: s.seed,
    };
    let run = RunSettings {
        data: None,
        batch: s.pretrain_batch,
        seq_len: s.pretrain_seq,
        val_every: 0,
        val_windows: 16,
        sample_every: 0,
        sample_tokens: 80,
        ckpt_every: 0,
    };
    let extra = serde_json::to_value(&run).map_err(|e| Error::Invalid(e.to_string()))?;
    let mut trainer = Trainer::new(
        &s.model,
        Tokenizer::bytes(),
        settings,
        extra,
        &dir,
        s.overwrite,
    )?;
    trainer.to_device(s.device)?;
    crate::output::say(format!(
        "[1/5] pretraining {:.2}M parameters on {}: {} steps of {}×{} bytes",
        s.model.num_params() as f64 / 1e6,
        corpus.name,
        s.pretrain_steps,
        s.pretrain_batch,
        s.pretrain_seq
    ));
    let task = Pretrain::new(corpus, &run, s.seed);
    trainer.run(&task, &run.schedule(None))?;
    Ok(dir.join(crate::trainer::MODEL_FILE))
}

/// `s.samples` rollouts per prompt from the policy, ranked by the labeler. Responses that
/// score alike are not ordered (the labeler cannot tell them apart, and an arbitrary order
/// would teach the reward model noise): a ranking keeps the first response of each score, and
/// a prompt whose responses all tie is skipped. Returns the rankings and the skipped count.
fn label(
    base: &PalmParams,
    prompts: &[String],
    s: &DemoSettings,
    rng: &mut Rng,
) -> Result<(Vec<RankingRecord>, usize)> {
    let mut out = Vec::new();
    let mut skipped = 0;
    // A few prompts per `generate` call: one batch through the KV cache, progress between.
    for chunk in prompts.chunks(16) {
        let mut rows: Vec<Vec<u32>> = Vec::new();
        for p in chunk {
            rows.extend(std::iter::repeat_n(base.tokenizer.encode(p)?, s.samples));
        }
        let episodes = rollout::sample_episodes(base, None, &rows, &s.sampling(), rng)?;
        for (prompt, eps) in chunk.iter().zip(episodes.chunks(s.samples)) {
            let texts = eps
                .iter()
                .map(|e| base.tokenizer.decode(e.text()))
                .collect();
            let Some((ranked, scores)) = rank_distinct(&s.labeler, texts) else {
                skipped += 1;
                continue;
            };
            let responses: Vec<String> = ranked
                .into_iter()
                .zip(&scores)
                .enumerate()
                .filter(|(i, (_, sc))| *i == 0 || scores[i - 1] != **sc)
                .map(|(_, (r, _))| r)
                .collect();
            if responses.len() < 2 {
                skipped += 1;
                continue;
            }
            out.push(RankingRecord {
                prompt: prompt.clone(),
                responses,
            });
        }
    }
    if out.len() < 2 {
        return Err(Error::Invalid(format!(
            "only {} of {} prompts got responses the labeler could rank; use more prompts or samples",
            out.len(),
            prompts.len()
        )));
    }
    Ok((out, skipped))
}

/// Train a reward model (the policy's trunk, fully trained, mean pooling) on the rankings into
/// `out/reward`.
fn reward_model(
    policy: &Path,
    rankings: Vec<RankingRecord>,
    skipped: usize,
    s: &DemoSettings,
    rng: &mut Rng,
) -> Result<(RewardModel, RewardReport)> {
    let records: Vec<PreferenceRecord> = rankings
        .into_iter()
        .map(PreferenceRecord::Ranking)
        .collect();
    let seq_len = s.prompt_bytes + s.max_new + 1;
    let (trunk, _) = load_model(policy)?;
    let (train, val, _) =
        reward_train::split_records(&records, s.rm_val_frac, seq_len, &trunk.tokenizer, rng)?;
    let mut rm = RewardModel::new(trunk, Pooling::Mean, rng)?;
    rm.move_to(s.device)?;
    let settings = TrainSettings {
        epochs: s.rm_epochs,
        batch: s.rm_batch,
        optim: Cosine::new(s.rm_lr, s.rm_lr / 10.0, 5, 0.0, 1.0),
    };
    let mut run = RunDir::create(&s.out.join("reward"), &reward_train::RUN_FILES, s.overwrite)?;
    let session = crate::epochs::Session {
        start: crate::epochs::Start::fresh(rng.clone()),
        settings: serde_json::json!({"demo": "reward model"}),
        stop_at: None,
    };
    let results = reward_train::train(&mut rm, &train, &val, &settings, session, &mut run)?;
    let (Some(first), Some(last)) = (results.first(), results.last()) else {
        return Err(Error::Invalid("reward training ran no epoch".into()));
    };
    let report = RewardReport {
        rankings: records.len(),
        skipped_prompts: skipped,
        train_rankings: train.len(),
        held_out_rankings: val.len(),
        held_out_pairs: last.pairs,
        accuracy_untrained: first.accuracy(),
        accuracy: last.accuracy(),
    };
    Ok((rm, report))
}

/// Sample `s.eval_samples` responses per held-out prompt from the base with adapters `actor`
/// (none: the reference itself) with a fixed seed, and score them: gold, reward model, KL to
/// the reference, length.
fn evaluate(
    base: &PalmParams,
    actor: Option<&LoraScope>,
    prompts: &[Vec<u32>],
    reward: &RewardSource,
    s: &DemoSettings,
) -> Result<(EvalStats, Vec<Episode>)> {
    let k = s.eval_samples;
    let rows: Vec<Vec<u32>> = prompts
        .iter()
        .flat_map(|p| std::iter::repeat_n(p.clone(), k))
        .collect();
    // The same draws before and after: only the policy differs.
    let mut rng = Rng::new(s.seed ^ 0xE7A1);
    let episodes = rollout::sample_episodes(base, actor, &rows, &s.sampling(), &mut rng)?;
    let gold: Vec<f32> = episodes
        .iter()
        .map(|e| s.labeler.score(&base.tokenizer.decode(e.text())) as f32)
        .collect();
    let rm = reward.score(&episodes, 64)?;
    let kl = palm_engine::cpu::on_workers(|| sequence_kl(base, actor, &episodes, s))?;
    let lengths: Vec<f32> = episodes.iter().map(|e| e.text().len() as f32).collect();
    let n = episodes.len();
    let (gold_mean, gold_std) = mean_std(&gold);
    let (reward_mean, reward_std) = mean_std(&rm);
    let (kl_mean, kl_std) = mean_std(&kl);
    let se = |sd: f32| sd as f64 / (n as f64).sqrt();
    let stats = EvalStats {
        prompts: prompts.len(),
        samples: n,
        gold_mean: gold_mean as f64,
        gold_std: gold_std as f64,
        gold_se: se(gold_std),
        reward_mean: reward_mean as f64,
        reward_std: reward_std as f64,
        kl_mean: kl_mean as f64,
        kl_se: se(kl_std),
        length_mean: mean_std(&lengths).0 as f64,
        eos_rate: episodes.iter().filter(|e| e.ended).count() as f64 / n.max(1) as f64,
        per_prompt_gold: gold.chunks(k).map(|c| mean_std(c).0 as f64).collect(),
    };
    Ok((stats, episodes))
}

/// Σ over each response's counted tokens of log π − log π_ref: the k1 estimate of KL(π‖π_ref)
/// of that sequence (0 for the reference itself).
fn sequence_kl(
    base: &PalmParams,
    actor: Option<&LoraScope>,
    episodes: &[Episode],
    s: &DemoSettings,
) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(episodes.len());
    for chunk in episodes.chunks(64) {
        let batch = Padded::new(chunk, s.eos)?;
        let logp = rollout::logprobs_host(base, actor, &batch, s.temperature)?;
        let ref_logp = match actor {
            Some(_) => rollout::logprobs_host(base, None, &batch, s.temperature)?,
            None => logp.clone(),
        };
        for row in 0..batch.b {
            let span = row * batch.n..(row + 1) * batch.n;
            out.push(
                span.map(|i| batch.mask[i] * (logp[i] - ref_logp[i]))
                    .sum::<f32>(),
            );
        }
    }
    Ok(out)
}

/// Before vs after, paired by prompt.
fn compare(before: EvalStats, after: EvalStats) -> Comparison {
    let diffs: Vec<f32> = before
        .per_prompt_gold
        .iter()
        .zip(&after.per_prompt_gold)
        .map(|(b, a)| (a - b) as f32)
        .collect();
    let (gain, sd) = mean_std(&diffs);
    // The sample standard deviation (n − 1) for the standard error of the mean.
    let n = diffs.len() as f64;
    let se = sd as f64 * (n / (n - 1.0).max(1.0)).sqrt() / n.max(1.0).sqrt();
    Comparison {
        gold_gain: gain as f64,
        gold_gain_se: se,
        prompts_improved: diffs.iter().filter(|d| **d > 0.0).count(),
        prompts_worse: diffs.iter().filter(|d| **d < 0.0).count(),
        before,
        after,
    }
}

/// The first sample of each of the first `count` held-out prompts, before and after.
fn sample_pairs(
    before: &[Episode],
    after: &[Episode],
    s: &DemoSettings,
    tokenizer: &Tokenizer,
    count: usize,
) -> Vec<SamplePair> {
    let text = |e: &Episode| tokenizer.decode(e.text());
    before
        .iter()
        .zip(after)
        .step_by(s.eval_samples)
        .take(count)
        .map(|(b, a)| SamplePair {
            prompt: tokenizer.decode(&b.prompt),
            before: text(b),
            before_gold: s.labeler.score(&text(b)),
            after: text(a),
            after_gold: s.labeler.score(&text(a)),
        })
        .collect()
}

/// The PPO curves from `out/metrics.jsonl` as `out/curves.svg`: the scores (reward model and
/// gold), the KL to the reference and the entropy, per update.
pub fn write_curves(out: &Path) -> Result<()> {
    let path = out.join(run_dir::METRICS_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::data(&path, Some(i + 1), e.to_string()))?;
        rows.push(v);
    }
    let series = |key: &str, name: &str, color: &str| Series {
        name: name.into(),
        color: color.into(),
        points: rows
            .iter()
            .filter_map(|r| Some((r["update"].as_f64()?, r[key].as_f64()?)))
            .collect(),
    };
    let panels = [
        Panel {
            title: "score per update (rollout means)".into(),
            series: vec![
                series("score_mean", "reward-model score", "#1f77b4"),
                series("gold_score_mean", "gold score (labeler)", "#2ca02c"),
            ],
        },
        Panel {
            title: "KL to the reference (nats per response)".into(),
            series: vec![series("kl", "KL", "#d62728")],
        },
        Panel {
            title: "policy entropy (nats per token)".into(),
            series: vec![series("entropy", "entropy", "#9467bd")],
        },
    ];
    let svg = plot::chart(
        "palm rlhf-demo: PPO against the reward model",
        "update",
        &panels,
    );
    let path = out.join(CURVES_FILE);
    std::fs::write(&path, svg).map_err(|e| Error::io(&path, e))
}

/// The before/after table and samples, as printed at the end of the demo.
pub fn report(sum: &Summary) -> Vec<String> {
    let (b, a) = (&sum.held_out.before, &sum.held_out.after);
    let h = &sum.held_out;
    let rm = &sum.reward_model;
    let mut out = vec![
        format!(
            "reward model: held-out pairwise accuracy {:.3} on {} pairs ({:.3} untrained); {} rankings",
            rm.accuracy, rm.held_out_pairs, rm.accuracy_untrained, rm.rankings
        ),
        format!(
            "held-out prompts: {} × {} samples",
            b.prompts, sum.settings.eval_samples
        ),
        format!("{:<26}{:>18}{:>18}", "", "before", "after"),
        format!(
            "{:<26}{:>18}{:>18}",
            format!("gold score ({})", sum.labeler),
            format!("{:.3} ± {:.3}", b.gold_mean, b.gold_std),
            format!("{:.3} ± {:.3}", a.gold_mean, a.gold_std)
        ),
        format!(
            "{:<26}{:>18}{:>18}",
            "reward-model score",
            format!("{:.3} ± {:.3}", b.reward_mean, b.reward_std),
            format!("{:.3} ± {:.3}", a.reward_mean, a.reward_std)
        ),
        format!(
            "{:<26}{:>18.3}{:>18.3}",
            "KL to reference (nats)", b.kl_mean, a.kl_mean
        ),
        format!(
            "{:<26}{:>18.1}{:>18.1}",
            "response length (bytes)", b.length_mean, a.length_mean
        ),
        format!("{:<26}{:>18.2}{:>18.2}", "EOS rate", b.eos_rate, a.eos_rate),
        format!(
            "gold gain {:+.3} ± {:.3} (paired by prompt, standard error): {} prompts up, {} down, {} equal",
            h.gold_gain,
            h.gold_gain_se,
            h.prompts_improved,
            h.prompts_worse,
            b.prompts - h.prompts_improved - h.prompts_worse
        ),
    ];
    for p in &sum.samples {
        out.push(format!("prompt {:?}", p.prompt));
        out.push(format!("  before ({:+}): {:?}", p.before_gold, p.before));
        out.push(format!("  after  ({:+}): {:?}", p.after_gold, p.after));
    }
    let t = &sum.timings;
    out.push(format!(
        "time: pretraining {:.1}s, labelling {:.1}s, reward model {:.1}s, PPO {:.1}s, evaluation {:.1}s; total {:.1}s",
        t.pretrain_s, t.label_s, t.reward_s, t.ppo_s, t.eval_s, t.total_s
    ));
    out
}
