//! The run machinery PPO and GRPO share: their settings, the trained adapters (the actor, and
//! what the algorithm trains besides) over a frozen base, one AdamW step on them, the metrics
//! file, and checkpoints that resume bit-exactly — `model.safetensors` (the base and the actor
//! adapters, for `palm sample --lora actor`) and a state file with every trained tensor, the
//! optimizer moments, the RNG, the prompt cursor and β. One driver, generic over the
//! [`Algorithm`].

use crate::flags::{Actor, Optim, RlSchedule, Sources};
use crate::rollout::RewardSource;
use crate::run_dir::{RunDir, SavedState, StateMeta};
use crate::{Error, Result};
use palm_engine::{AdamW, Device, Rng, SafeFile, Tensor};
use palm_model::checkpoint::{config_of, load_lora, load_model, model_metadata, save_model_with};
use palm_model::{LoraScope, PalmConfig, PalmParams, Trainable};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const MODEL_FILE: &str = "model.safetensors";
pub const STATE_FILE: &str = "rl_state.safetensors";
/// The files an RL run writes besides the metrics.
pub const RUN_FILES: [&str; 2] = [STATE_FILE, MODEL_FILE];
/// The policy's adapters (docs/rlhf.md).
pub const ACTOR: &str = "actor";

/// What an algorithm trains besides the actor (PPO: its critic; GRPO: nothing, [`NoExtra`]).
/// The shared run makes, saves, loads, moves and optimises it with the actor without knowing
/// what it is: its tensors come after the actor's in the optimizer and the state file.
pub trait Extra: Trainable + Sized {
    /// The LoRA scopes it trains, each with a forward pass of its own (for the memory check).
    const LORA_SCOPES: usize;
    /// A fresh one, drawn from `rng` right after the actor's adapters of rank `lora_rank`.
    fn fresh(config: &PalmConfig, lora_rank: usize, rng: &mut Rng) -> Result<Self>;
    /// The one saved in a state file, its shapes checked against `config`.
    fn load(file: &SafeFile, config: &PalmConfig) -> Result<Self>;
    /// Its LoRA scopes, for the files' metadata (rank and alpha of each).
    fn scopes(&self) -> Vec<&LoraScope>;
    fn move_to(&mut self, device: Device) -> Result<()>;
}

/// Nothing trained besides the actor.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoExtra;

impl Trainable for NoExtra {
    fn trained(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }

    fn trained_mut(&mut self) -> Vec<&mut Tensor> {
        Vec::new()
    }
}

impl Extra for NoExtra {
    const LORA_SCOPES: usize = 0;

    fn fresh(_: &PalmConfig, _: usize, _: &mut Rng) -> Result<Self> {
        Ok(NoExtra)
    }

    fn load(_: &SafeFile, _: &PalmConfig) -> Result<Self> {
        Ok(NoExtra)
    }

    fn scopes(&self) -> Vec<&LoraScope> {
        Vec::new()
    }

    fn move_to(&mut self, _: Device) -> Result<()> {
        Ok(())
    }
}

/// What trains: the actor's adapters and the algorithm's `extra`. The base weights they sit on
/// are frozen (cut out of the gradient graph).
pub struct Learner<X> {
    pub actor: LoraScope,
    pub extra: X,
}

impl<X: Extra> Trainable for Learner<X> {
    fn trained(&self) -> Vec<(String, Tensor)> {
        let mut out = self.actor.trained();
        out.extend(self.extra.trained());
        out
    }

    fn trained_mut(&mut self) -> Vec<&mut Tensor> {
        let mut out = self.actor.tensors_mut();
        out.extend(self.extra.trained_mut());
        out
    }
}

impl<X: Extra> Learner<X> {
    /// The LoRA scopes, for the files' metadata (rank and alpha of each).
    fn scopes(&self) -> Vec<&LoraScope> {
        let mut out = vec![&self.actor];
        out.extend(self.extra.scopes());
        out
    }
}

/// Cut every base weight out of the gradient graph: only adapters (and heads) train.
pub fn freeze(params: &mut PalmParams) {
    for t in params.tensors_mut() {
        *t = t.detach();
    }
}

/// Fisher–Yates with the run's RNG.
pub fn shuffle<T>(v: &mut [T], rng: &mut Rng) {
    for i in (1..v.len()).rev() {
        v.swap(i, rng.below(i + 1));
    }
}

/// Where a run stands between updates: with the trained tensors and the moments, all that a
/// resume needs to continue as if never stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Updates done.
    pub update: u64,
    /// Index of the next prompt (prompts are taken in file order, cyclically).
    pub cursor: usize,
    pub rng: Rng,
    /// The KL coefficient now (the adaptive controller changes it).
    pub beta: f32,
}

impl Progress {
    /// The next `count` prompt indices, advancing the cursor.
    pub fn take_prompts(&mut self, count: usize, total: usize) -> Vec<usize> {
        let idx = (0..count).map(|i| (self.cursor + i) % total).collect();
        self.cursor = (self.cursor + count) % total;
        idx
    }
}

/// A checkpoint (see [`run_dir`]): the state file, then `model.safetensors` (base + actor
/// adapters), each atomically. `format` names the run kind; `settings` are its command settings
/// (JSON).
pub fn save_checkpoint<X: Extra>(
    run: &mut RunDir,
    base: &PalmParams,
    learner: &Learner<X>,
    opt: &AdamW,
    progress: &Progress,
    format: &'static str,
    settings: &serde_json::Value,
) -> Result<()> {
    let mut extra = model_metadata(&base.config, &base.tokenizer, &learner.scopes())?;
    extra.insert("cursor".into(), progress.cursor.to_string());
    // β as its bits: a decimal round trip is exact too, but bits make it obvious.
    extra.insert("beta_bits".into(), progress.beta.to_bits().to_string());
    let meta = StateMeta {
        kind: format,
        step: progress.update,
        rng: progress.rng.clone(),
        settings: settings.clone(),
        extra,
    };
    run.checkpoint(
        (STATE_FILE, MODEL_FILE),
        learner,
        opt,
        meta,
        |path, marks| Ok(save_model_with(path, base, &[&learner.actor], marks)?),
    )
}

/// A run checkpoint read back.
pub struct Checkpoint<A: Algorithm> {
    pub base: PalmParams,
    pub learner: Learner<A::Extra>,
    pub opt: AdamW,
    pub progress: Progress,
    pub settings: RlSettings<A::Flags>,
    /// The length of `metrics.jsonl` when it was taken.
    pub metrics_offset: u64,
}

/// Continue the run in `dir` (locked; its metrics cut back to the checkpoint): its checkpoint
/// read by [`load_checkpoint`], and the model file rewritten if a kill left it behind the state.
pub fn resume_checkpoint<A: Algorithm>(dir: &Path) -> Result<(RunDir, Checkpoint<A>)> {
    let (mut run, ck) = RunDir::resume(dir, STATE_FILE, |dir| {
        let ck = load_checkpoint::<A>(dir)?;
        let offset = ck.metrics_offset;
        Ok((ck, offset))
    })?;
    run.repair_model(MODEL_FILE, ck.progress.update, |path, marks| {
        Ok(save_model_with(
            path,
            &ck.base,
            &[&ck.learner.actor],
            marks,
        )?)
    })?;
    Ok((run, ck))
}

/// Read the checkpoint of an `A` run in `dir` written by `save_checkpoint`. Every tensor is
/// checked against the model's config, so a state from another model is an error naming the
/// tensor.
pub fn load_checkpoint<A: Algorithm>(dir: &Path) -> Result<Checkpoint<A>> {
    let path = dir.join(STATE_FILE);
    let state = SavedState::open(&path, A::STATE_FORMAT)?;
    let bad = |msg: String| Error::data(&path, None, msg);
    let beta_bits = u32::try_from(state.int("beta_bits")?)
        .map_err(|_| bad("bad 'beta_bits' in the metadata".into()))?;
    let cursor = usize::try_from(state.int("cursor")?)
        .map_err(|_| bad("bad 'cursor' in the metadata".into()))?;
    let progress = Progress {
        update: state.step,
        cursor,
        rng: state.rng.clone(),
        beta: f32::from_bits(beta_bits),
    };
    let (mut base, _) = load_model(&dir.join(MODEL_FILE))?;
    let config = config_of(&state.file)?;
    if config != base.config {
        return Err(bad(format!(
            "its model config does not match {}",
            dir.join(MODEL_FILE).display()
        )));
    }
    freeze(&mut base);
    let actor = load_lora(&state.file, &base.config, ACTOR)?
        .ok_or_else(|| bad(format!("no '{ACTOR}' adapters")))?;
    let learner = Learner {
        actor,
        extra: A::Extra::load(&state.file, &base.config)?,
    };
    let settings: RlSettings<A::Flags> = state.settings_as()?;
    let opt = state.optimizer(settings.optim.adam(), &learner)?;
    Ok(Checkpoint {
        base,
        learner,
        opt,
        progress,
        settings,
        metrics_offset: state.metrics_offset,
    })
}

/// Move a run to `device`: the frozen base (still frozen), the trained adapters and head, the
/// optimizer's moments (rebuilt there with the same step) and a reward model.
pub fn move_to<X: Extra>(
    device: Device,
    base: &mut PalmParams,
    learner: &mut Learner<X>,
    opt: &mut AdamW,
    reward: &mut RewardSource,
) -> Result<()> {
    // Each move is a no-op for what is already there (a run built around a moved base).
    *base = base.to_device(device)?;
    freeze(base);
    learner.actor.move_to(device)?;
    learner.extra.move_to(device)?;
    opt.follow(&learner.trained_tensors())?;
    reward.move_to(device)
}

/// The sizes of an RL run's updates, to check before anything is allocated.
pub struct UpdateShape {
    /// Episodes per update.
    pub episodes: usize,
    pub minibatches: usize,
    pub max_prompt: usize,
    pub max_new: usize,
    pub lora_rank: usize,
    /// The LoRA scopes trained, each with a forward pass of its own: the actor's and those of
    /// the algorithm's [`Extra`] (PPO's critic).
    pub scopes: usize,
}

/// Refuse an RL run whose rollouts or minibatch steps would not fit on `device`.
pub fn check_memory(config: &PalmConfig, u: &UpdateShape, device: Device) -> Result<()> {
    use palm_model::budget;
    let trainable = (budget::lora(config, u.lora_rank).saturating_mul(u.scopes as u128))
        .saturating_add(config.dim as u128 + 1);
    let rows = u
        .episodes
        .div_ceil(u.minibatches.max(1))
        .saturating_mul(u.scopes);
    let need = budget::decoding(config, u.episodes, u.max_prompt, u.max_new).max(
        budget::adapter_training(
            config,
            trainable,
            rows,
            u.max_prompt.saturating_add(u.max_new),
        ),
    );
    budget::check(
        &format!(
            "updates of {} episodes of up to {} + {} tokens with LoRA rank {}",
            u.episodes, u.max_prompt, u.max_new, u.lora_rank
        ),
        need,
        device,
    )?;
    Ok(())
}

/// Seconds since `t`.
pub fn secs(t: std::time::Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

/// The policy to start from, with its weights frozen: a model checkpoint, its `actor` adapters
/// (a LoRA run's output) merged in, so it is both the start and the reference.
pub fn load_policy(path: &Path) -> Result<PalmParams> {
    let mut params = load_merged_policy(path)?;
    freeze(&mut params);
    Ok(params)
}

/// A model checkpoint as a policy: a reward model's trunk, or a model with its `actor` adapters
/// (a LoRA run's output) merged in. Its weights stay trainable.
pub fn load_merged_policy(path: &Path) -> Result<PalmParams> {
    let (mut params, file) = load_model(path)?;
    if file.metadata().get("format").map(String::as_str) == Some(crate::reward::FORMAT) {
        crate::output::say(format!(
            "note: {} is a reward model; its trunk is used as the policy",
            path.display()
        ));
    }
    if let Some(actor) = load_lora(&file, &params.config, ACTOR)? {
        crate::output::say(format!(
            "note: {} holds '{ACTOR}' adapters; they are merged into the policy and the reference",
            path.display()
        ));
        actor.merge_into(&mut params)?;
    }
    Ok(params)
}

/// Prompts of a `{"prompt"}` JSONL file as `tokenizer`'s ids, each cut to its last `max`.
pub fn read_prompts(
    path: &Path,
    max: usize,
    tokenizer: &palm_model::Tokenizer,
) -> Result<Vec<Vec<u32>>> {
    let records = crate::data::read_jsonl::<crate::data::PromptRecord>(path)?;
    records
        .iter()
        .map(|r| {
            let t = tokenizer.encode(&r.prompt)?;
            Ok(t[t.len().saturating_sub(max)..].to_vec())
        })
        .collect()
}

/// What one update reports: its metrics line, the progress line, and a few samples.
pub struct Report {
    pub metrics: serde_json::Value,
    pub line: String,
    /// (prompt, response, score) of the first episodes.
    pub samples: Vec<(String, String, f32)>,
}

impl Report {
    fn get(&self, key: &str) -> f64 {
        self.metrics[key].as_f64().unwrap_or(f64::NAN)
    }
}

/// Everything an RL run is configured by, saved in its state so a resume continues alike: the
/// flag groups PPO and GRPO share and the algorithm's own, `F`, flattened into one JSON object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RlSettings<F> {
    #[serde(flatten)]
    pub sources: Sources,
    /// Updates in all.
    pub updates: u64,
    #[serde(flatten)]
    pub actor: Actor,
    #[serde(flatten)]
    pub algo: F,
    #[serde(flatten)]
    pub optim: Optim,
    #[serde(flatten)]
    pub schedule: RlSchedule,
}

impl<F> RlSettings<F> {
    /// The reward and the prompts (each cut to `--max-prompt`) the settings name, for a
    /// policy reading text through `tokenizer`.
    pub fn inputs(
        &self,
        tokenizer: &palm_model::Tokenizer,
    ) -> Result<(RewardSource, Vec<Vec<u32>>)> {
        let src = &self.sources;
        let reward = RewardSource::load(src.reward.as_deref(), src.rule.as_deref(), tokenizer)?;
        let prompts = read_prompts(&src.prompts, self.actor.max_prompt, tokenizer)?;
        Ok((reward, prompts))
    }
}

/// What PPO and GRPO each add to the run they share.
pub trait Algorithm: Sized {
    /// Its own flags, saved with the shared ones.
    type Flags: clap::Args
        + Serialize
        + serde::de::DeserializeOwned
        + Clone
        + PartialEq
        + std::fmt::Debug;
    /// What it trains besides the actor.
    type Extra: Extra;
    /// The `format` of the run's state file.
    const STATE_FORMAT: &'static str;
    /// Its own flags in their ranges (the flags' names in the messages).
    fn check(flags: &Self::Flags) -> Result<()>;
    /// Every setting in its range; a state read back gets the same checks as the flags.
    fn check_settings(s: &RlSettings<Self::Flags>) -> Result<()> {
        s.actor.check()?;
        s.optim.check()?;
        Self::check(&s.algo)
    }
    /// Episodes per update and minibatches per pass.
    fn update_size(flags: &Self::Flags) -> (usize, usize);
    /// The sizes of one update, for [`check_memory`].
    fn update_shape(s: &RlSettings<Self::Flags>) -> UpdateShape {
        let (episodes, minibatches) = Self::update_size(&s.algo);
        UpdateShape {
            episodes,
            minibatches,
            max_prompt: s.actor.max_prompt,
            max_new: s.actor.max_new,
            lora_rank: s.actor.lora_rank,
            scopes: 1 + Self::Extra::LORA_SCOPES,
        }
    }
    /// The KL coefficient a fresh run starts with.
    fn beta(flags: &Self::Flags) -> f32;
    /// The algorithm's part of a run configured by `s` whose KL coefficient is now `beta`.
    fn new(s: &RlSettings<Self::Flags>, beta: f32) -> Result<Self>;
    /// One update of the shared run; it counts itself in `core.progress.update`.
    fn update(
        &mut self,
        s: &RlSettings<Self::Flags>,
        core: &mut Core<Self::Extra>,
    ) -> Result<Report>;
}

/// What every RL run holds: the frozen base, what trains, the optimizer, where it stands, its
/// inputs and its run folder.
pub struct Core<X> {
    pub base: PalmParams,
    pub learner: Learner<X>,
    pub opt: AdamW,
    pub progress: Progress,
    pub prompts: Vec<Vec<u32>>,
    pub reward: RewardSource,
    /// The locked run folder with its metrics file.
    pub run: RunDir,
}

/// An RL run: its settings, the shared part and the algorithm (PPO, GRPO); one driver for both.
pub struct RlRun<A: Algorithm> {
    pub settings: RlSettings<A::Flags>,
    pub core: Core<A::Extra>,
    pub algo: A,
}

impl<A: Algorithm> RlRun<A> {
    /// A fresh run of `settings` into `out` (see [`RunDir::create`] for `overwrite`):
    /// everything is read and checked before the run folder is created.
    pub fn start(
        settings: RlSettings<A::Flags>,
        out: &Path,
        overwrite: bool,
        device: Device,
    ) -> Result<Self> {
        A::check_settings(&settings)?;
        let policy = &settings.sources.policy;
        let tokenizer = settings.sources.tokenizer.as_deref();
        let base = crate::flags::with_tokenizer(tokenizer, load_policy(policy)?, policy)?;
        let (reward, prompts) = settings.inputs(&base.tokenizer)?;
        check_memory(&base.config, &A::update_shape(&settings), device)?;
        let run = RunDir::create(out, &RUN_FILES, overwrite)?;
        Self::new(settings, base, reward, prompts, run)
    }

    /// A fresh run from `base` (frozen: the start and the reference) into `run`: new actor
    /// adapters, the algorithm's extra trainable and an optimizer, seeded by the settings' seed.
    pub fn new(
        settings: RlSettings<A::Flags>,
        base: PalmParams,
        reward: RewardSource,
        prompts: Vec<Vec<u32>>,
        run: RunDir,
    ) -> Result<Self> {
        if prompts.is_empty() {
            return Err(Error::Invalid("an RL run needs at least one prompt".into()));
        }
        let (s, config) = (&settings, &base.config);
        let mut rng = Rng::new(s.schedule.seed);
        let actor = LoraScope::new(config, ACTOR, s.actor.lora_rank, None, &mut rng)?;
        let extra = A::Extra::fresh(config, s.actor.lora_rank, &mut rng)?;
        let learner = Learner { actor, extra };
        let opt = AdamW::new(s.optim.adam(), &learner.trained_tensors())?;
        let beta = A::beta(&s.algo);
        let algo = A::new(s, beta)?;
        let progress = Progress {
            update: 0,
            cursor: 0,
            rng,
            beta,
        };
        Ok(RlRun {
            core: Core {
                base,
                learner,
                opt,
                progress,
                prompts,
                reward,
                run,
            },
            algo,
            settings,
        })
    }

    /// Continue the run saved in `dir` with its own settings (`updates` may change).
    pub fn resume(dir: &Path, updates: Option<u64>, device: Device) -> Result<Self> {
        let (run, ck) = resume_checkpoint::<A>(dir)?;
        let mut settings = ck.settings;
        if let Some(u) = updates {
            settings.updates = u;
        }
        // A state edited by hand gets the checks the flags get.
        A::check_settings(&settings)?;
        check_memory(&ck.base.config, &A::update_shape(&settings), device)?;
        let (reward, prompts) = settings.inputs(&ck.base.tokenizer)?;
        Ok(RlRun {
            algo: A::new(&settings, ck.progress.beta)?,
            core: Core {
                base: ck.base,
                learner: ck.learner,
                opt: ck.opt,
                progress: ck.progress,
                prompts,
                reward,
                run,
            },
            settings,
        })
    }

    /// One update.
    pub fn update(&mut self) -> Result<Report> {
        self.algo.update(&self.settings, &mut self.core)
    }

    /// A checkpoint of the run.
    pub fn save(&mut self) -> Result<()> {
        let settings = serde_json::to_value(&self.settings)
            .map_err(|e| Error::Invalid(format!("cannot serialise the settings: {e}")))?;
        let c = &mut self.core;
        save_checkpoint(
            &mut c.run,
            &c.base,
            &c.learner,
            &c.opt,
            &c.progress,
            A::STATE_FORMAT,
            &settings,
        )
    }

    /// Move the run to `device` (see [`move_to`]).
    pub fn move_to(&mut self, device: Device) -> Result<()> {
        let c = &mut self.core;
        move_to(
            device,
            &mut c.base,
            &mut c.learner,
            &mut c.opt,
            &mut c.reward,
        )
    }

    /// Run updates until the planned total (or `stop_at`): a metrics line and a progress line
    /// per update, the instability warnings, samples and checkpoints on schedule and at the end.
    pub fn drive(&mut self, stop_at: Option<u64>) -> Result<()> {
        let total = self.settings.updates;
        let RlSchedule {
            sample_every,
            ckpt_every,
            ..
        } = self.settings.schedule;
        if self.core.progress.update >= total {
            crate::output::say(format!(
                "already at update {} of {total}: nothing to do (pass a larger --updates)",
                self.core.progress.update
            ));
            return Ok(());
        }
        let due = |every: u64, u: u64| every > 0 && u.is_multiple_of(every);
        let timer = std::time::Instant::now();
        let mut last_score = f64::NAN;
        while self.core.progress.update < total {
            let r = self.update()?;
            self.core.run.log(&r.metrics)?;
            let u = self.core.progress.update;
            last_score = r.get("score_mean");
            crate::output::say(format!("update {u}/{total}: {}", r.line));
            warn_if_unstable(r.get("kl"), r.get("ratio_mean"));
            let stop = stop_at == Some(u);
            let last = u == total || stop;
            if last || due(sample_every, u) {
                for (p, resp, score) in &r.samples {
                    crate::output::say(format!("  sample (score {score:.3}): {p:?} → {resp:?}"));
                }
            }
            if last || due(ckpt_every, u) {
                self.save()?;
            }
            if stop && u < total {
                crate::output::say(format!(
                    "stopped at update {u}; continue with --resume {}",
                    self.core.run.path().display()
                ));
                return Ok(());
            }
        }
        crate::output::emit(format!(
            "done: {total} updates, last score mean {last_score:.3}, {:.1}s; model in {} (sample with --lora {ACTOR})",
            secs(timer),
            self.core.run.join(MODEL_FILE).display(),
        ));
        Ok(())
    }
}

/// The instability warnings of docs/rlhf.md: a KL estimate below −1 (the policy gives its own
/// samples less mass than the reference does: k1 is unreliable there) and a mean ratio above 10.
pub fn warn_if_unstable(kl: f64, ratio: f64) {
    if kl < -1.0 {
        crate::output::warn(format!(
            "warning: KL {kl:.3} < −1: the policy puts less mass on its own samples than the reference (try --kl k3, a larger --beta or a lower --lr)"
        ));
    }
    if ratio > 10.0 {
        crate::output::warn(format!(
            "warning: mean ratio π/π_old {ratio:.2} > 10: updates are too large (lower --lr or the epochs)"
        ));
    }
}

/// The first `k` episodes as (prompt, response, score) for printing.
pub fn samples_of(
    episodes: &[crate::rollout::Episode],
    scores: &[f32],
    k: usize,
    tokenizer: &palm_model::Tokenizer,
) -> Vec<(String, String, f32)> {
    episodes
        .iter()
        .zip(scores)
        .take(k)
        .map(|(e, &s)| (tokenizer.decode(&e.prompt), tokenizer.decode(e.text()), s))
        .collect()
}
