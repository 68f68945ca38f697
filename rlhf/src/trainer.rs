//! The training loop shared by every command that trains (pretraining now, SFT and the other
//! RLHF stages next): AdamW with warmup + cosine, gradient clipping, progress, metrics JSONL,
//! atomic checkpoints, and bit-exact resume (parameters, moments, step, RNG state).

use crate::flags::{Cosine, CosineDefaults};
use crate::run_dir::{RunDir, SavedState, StateMeta};
use crate::{Error, Result};
use indicatif::{ProgressBar, ProgressStyle};
use palm_engine::{AdamW, Device, Rng, Tensor};
use palm_model::checkpoint::{
    check_holds, config_of, get_checked, model_metadata, save_model_with, tokenizer_of,
};
use palm_model::{PalmConfig, PalmParams, Tokenizer, Trainable};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

/// Optimisation settings, saved with the run so a resume continues the same schedule. `D` gives
/// the command's defaults of the optimiser flags (see [`Cosine`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct OptimSettings<D: CosineDefaults> {
    pub steps: u64,
    #[serde(flatten)]
    pub optim: Cosine<D>,
    pub seed: u64,
}

/// One optimisation step on `loss` over `learner`'s trained tensors, as every training loop
/// takes it: a non-finite loss is an error (`what` names it; the run would only produce NaNs
/// after), then backward, the global gradient norm clipped to `grad_clip` and AdamW at `lr`.
/// Returns the loss and the gradient norm before clipping.
pub fn optimise(
    learner: &mut impl Trainable,
    opt: &mut AdamW,
    loss: Tensor,
    what: &str,
    lr: f32,
    grad_clip: f32,
) -> Result<(f32, f32)> {
    let value = loss.to_scalar()?;
    if !value.is_finite() {
        return Err(Error::Invalid(format!(
            "{what} became {value}; try a lower --lr"
        )));
    }
    let grads = loss.backward()?;
    drop(loss);
    let mut tensors = learner.trained_tensors();
    let norm = opt.clip_and_step(&mut tensors, &grads, lr, grad_clip)?;
    learner.set_trained(tensors)?;
    Ok((value, norm))
}

pub const MODEL_FILE: &str = "model.safetensors";
pub const STATE_FILE: &str = "train_state.safetensors";
/// The `format` of a training state (refused where a model is expected).
pub const STATE_FORMAT: &str = "palm-train-state";

/// The loop's state; `D` gives the command's optimiser defaults (see [`Cosine`]).
pub struct Trainer<D: CosineDefaults> {
    pub params: PalmParams,
    pub opt: AdamW,
    pub rng: Rng,
    pub step: u64,
    pub settings: OptimSettings<D>,
    /// Command-specific settings (JSON), saved and restored with the state.
    pub extra: serde_json::Value,
    /// The locked run folder with its metrics file.
    pub run: RunDir,
}

pub struct StepStats {
    pub loss: f32,
    pub lr: f32,
    pub grad_norm: f32,
}

impl<D: CosineDefaults> Trainer<D> {
    /// The files a run of this loop writes besides the metrics.
    pub const RUN_FILES: [&str; 2] = [STATE_FILE, MODEL_FILE];

    /// A fresh run of a new model reading text through `tokenizer`, in `out` (see
    /// [`RunDir::create`] for `overwrite`).
    pub fn new(
        config: &PalmConfig,
        tokenizer: Tokenizer,
        settings: OptimSettings<D>,
        extra: serde_json::Value,
        out: &Path,
        overwrite: bool,
    ) -> Result<Self> {
        let mut rng = Rng::new(settings.seed);
        let params = PalmParams::init(config, &mut rng)?.with_tokenizer(tokenizer)?;
        Self::from_params(params, settings, extra, out, overwrite, rng)
    }

    /// A fresh optimiser over given parameters (fine-tuning from a checkpoint).
    pub fn from_params(
        params: PalmParams,
        settings: OptimSettings<D>,
        extra: serde_json::Value,
        out: &Path,
        overwrite: bool,
        rng: Rng,
    ) -> Result<Self> {
        settings.optim.check()?;
        let opt = AdamW::new(settings.optim.adam(), &params.tensors())?;
        let run = RunDir::create(out, &Self::RUN_FILES, overwrite)?;
        Ok(Trainer {
            params,
            opt,
            rng,
            step: 0,
            settings,
            extra,
            run,
        })
    }

    /// Continue the run saved in `dir`; `steps` (if given) replaces the planned total. A model
    /// file that a kill left a checkpoint behind the state is rewritten from the state.
    pub fn resume(dir: &Path, steps: Option<u64>) -> Result<Self> {
        let (run, l) = RunDir::resume(dir, STATE_FILE, |dir| read_state(dir, steps))?;
        let mut t = Trainer {
            params: l.params,
            opt: l.opt,
            rng: l.rng,
            step: l.step,
            settings: l.settings,
            extra: l.extra,
            run,
        };
        let (params, step) = (&t.params, t.step);
        t.run.repair_model(MODEL_FILE, step, |path, marks| {
            Ok(save_model_with(path, params, &[], marks)?)
        })?;
        Ok(t)
    }
}

/// A training state read back, before it has its run folder.
struct Loaded<D: CosineDefaults> {
    params: PalmParams,
    opt: AdamW,
    rng: Rng,
    step: u64,
    settings: OptimSettings<D>,
    extra: serde_json::Value,
}

/// The training state in `dir` and the metrics offset of its checkpoint.
fn read_state<D: CosineDefaults>(dir: &Path, steps: Option<u64>) -> Result<(Loaded<D>, u64)> {
    let path = dir.join(STATE_FILE);
    let state = SavedState::open(&path, STATE_FORMAT)?;
    let saved: SavedSettings<D> = state.settings_as()?;
    let mut settings = saved.optim;
    if let Some(s) = steps {
        settings.steps = s;
    }
    settings
        .optim
        .check()
        .map_err(|e| Error::data(&path, None, format!("bad 'settings' in the metadata: {e}")))?;
    let config = config_of(&state.file)?;
    check_holds(&state.file, &config)?;
    let params = PalmParams::from_named(&config, |n, s| get_checked(&state.file, n, s))?
        .with_tokenizer(tokenizer_of(&state.file, &config)?)?;
    let opt = state.optimizer(settings.optim.adam(), &params)?;
    let loaded = Loaded {
        params,
        opt,
        rng: state.rng.clone(),
        step: state.step,
        settings,
        extra: saved.run,
    };
    Ok((loaded, state.metrics_offset))
}

/// The settings a training state records.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
struct SavedSettings<D: CosineDefaults> {
    optim: OptimSettings<D>,
    /// The command's own (`Trainer::extra`).
    run: serde_json::Value,
}

impl<D: CosineDefaults> Trainer<D> {
    /// Move the parameters and the optimizer state to `device` (CUDA trains in mixed precision:
    /// f32 master weights and moments, bf16 compute).
    pub fn to_device(&mut self, device: Device) -> Result<()> {
        if self.params.device() == device {
            return Ok(());
        }
        self.params = self.params.to_device(device)?;
        Ok(self.opt.follow(&self.params.tensors())?)
    }

    /// The command's own settings ([`Trainer::extra`]) as it saved them.
    pub fn run_settings<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(self.extra.clone())
            .map_err(|e| Error::Invalid(format!("bad run settings in the training state: {e}")))
    }

    pub fn lr(&self) -> f32 {
        self.settings.optim.lr_at(self.step, self.settings.steps)
    }

    pub fn done(&self) -> bool {
        self.step >= self.settings.steps
    }

    /// One optimisation step on the loss `f` builds from the current parameters.
    pub fn step(
        &mut self,
        f: impl FnOnce(&PalmParams, &mut Rng) -> Result<Tensor> + Send,
    ) -> Result<StepStats> {
        // On a pool worker, so the ops' small parallel loops run inline (see `on_workers`).
        palm_engine::cpu::on_workers(|| self.step_inner(f))
    }

    fn step_inner(
        &mut self,
        f: impl FnOnce(&PalmParams, &mut Rng) -> Result<Tensor>,
    ) -> Result<StepStats> {
        let loss = f(&self.params, &mut self.rng)?;
        let lr = self.lr();
        let (loss_value, grad_norm) = optimise(
            &mut self.params,
            &mut self.opt,
            loss,
            &format!("the loss at step {}", self.step),
            lr,
            self.settings.optim.grad_clip,
        )?;
        self.step += 1;
        Ok(StepStats {
            loss: loss_value,
            lr,
            grad_norm,
        })
    }

    /// Append one JSON object to the run's metrics file.
    pub fn log(&mut self, value: serde_json::Value) -> Result<()> {
        self.run.log(&value)
    }

    /// A checkpoint (see [`run_dir`]): the full training state, then the model (loadable by
    /// `palm sample`/`eval` and by the seed), each atomically.
    pub fn save(&mut self) -> Result<()> {
        let settings = serde_json::to_value(SavedSettings {
            optim: self.settings.clone(),
            run: self.extra.clone(),
        })
        .map_err(|e| Error::Invalid(format!("cannot serialise the settings: {e}")))?;
        let meta = StateMeta {
            kind: STATE_FORMAT,
            step: self.step,
            rng: self.rng.clone(),
            settings,
            extra: model_metadata(&self.params.config, &self.params.tokenizer, &[])?,
        };
        let params = &self.params;
        self.run.checkpoint(
            (STATE_FILE, MODEL_FILE),
            params,
            &self.opt,
            meta,
            |path, marks| Ok(save_model_with(path, params, &[], marks)?),
        )
    }
}

/// What a command plugs into the shared loop.
pub trait Task: Sync {
    /// The loss of one training batch, drawn with the run's RNG.
    fn loss(&self, params: &PalmParams, rng: &mut Rng) -> Result<Tensor>;
    /// Score the held-out data.
    fn validate(&self, params: &PalmParams) -> Result<Validation>;
    /// A sample to show progress, if the task has one.
    fn sample(&self, _params: &PalmParams, _step: u64) -> Result<Option<String>> {
        Ok(None)
    }
}

pub struct Validation {
    /// Logged to metrics.jsonl with the step.
    pub metrics: serde_json::Value,
    /// Printed after `step N: `.
    pub line: String,
    /// Printed in the final line.
    pub summary: String,
}

/// When the loop validates, samples and checkpoints (every N steps, 0 = only at the end).
pub struct Schedule {
    pub tokens_per_step: u64,
    pub val_every: u64,
    pub sample_every: u64,
    pub ckpt_every: u64,
    /// Stop after this step as if interrupted (checkpointing first).
    pub stop_at: Option<u64>,
}

impl<D: CosineDefaults> Trainer<D> {
    /// Train until the planned step count (or `stop_at`): a progress bar with loss and tokens/s
    /// (plain lines when stderr is not a terminal), a metrics line per step, validation, samples
    /// and checkpoints on schedule and at the end.
    pub fn run(&mut self, task: &dyn Task, s: &Schedule) -> Result<()> {
        if self.done() {
            crate::output::say(format!(
                "already at step {} of {}: nothing to do (pass a larger --steps)",
                self.step, self.settings.steps
            ));
            return Ok(());
        }
        let pb = progress_bar(self.settings.steps).with_position(self.step);
        let say = |s: String| say(&pb, s);
        let due = |every: u64, step: u64| every > 0 && step.is_multiple_of(every);
        let mut speed = Throughput::default();
        let mut summary = None;
        while !self.done() {
            let stats = self.step(|params, rng| task.loss(params, rng))?;
            speed.add(s.tokens_per_step);
            let step = self.step;
            self.log(serde_json::json!({
                "step": step, "loss": stats.loss, "lr": stats.lr, "grad_norm": stats.grad_norm,
                "tokens_per_s": speed.per_second(), "elapsed_s": speed.elapsed(),
            }))?;
            pb.set_position(step);
            pb.set_message(format!(
                "loss {:.3}  {:.0} tok/s",
                stats.loss,
                speed.per_second()
            ));
            if pb.is_hidden() && step.is_multiple_of(20) {
                crate::output::say(format!(
                    "step {step} loss {:.4} lr {:.2e} {:.0} tok/s",
                    stats.loss,
                    stats.lr,
                    speed.per_second()
                ));
            }
            let last = self.done() || s.stop_at == Some(step);
            if last || due(s.val_every, step) {
                let v = task.validate(&self.params)?;
                let mut metrics = v.metrics;
                metrics["step"] = step.into();
                self.log(metrics)?;
                say(format!("step {step}: {}", v.line));
                summary = Some(v.summary);
            }
            if (last || due(s.sample_every, step))
                && let Some(text) = task.sample(&self.params, step)?
            {
                say(format!("step {step} sample: {text}"));
            }
            if last || due(s.ckpt_every, step) {
                self.save()?;
            }
            if s.stop_at == Some(step) && !self.done() {
                pb.abandon();
                crate::output::say(format!(
                    "stopped at step {step}; continue with --resume {}",
                    self.run.path().display()
                ));
                return Ok(());
            }
        }
        pb.finish();
        crate::output::emit(format!(
            "done: {} steps, {}, {:.0} tokens/s, {:.1}s; model in {}",
            self.step,
            summary.unwrap_or_default(),
            speed.per_second(),
            speed.elapsed(),
            self.run.join(MODEL_FILE).display()
        ));
        if let Device::Cuda(i) = self.params.device() {
            let dev = palm_engine::cuda::CudaDevice::get(i)?;
            let pool = if dev.pool_enabled() {
                ""
            } else {
                " (PALM_POOL=off)"
            };
            crate::output::say(format!("GPU memory pool{pool}: {}", dev.pool_stats()));
        }
        Ok(())
    }
}

/// The bar every training loop shows: step count, times, and the loop's message. Hidden when
/// stderr is not a terminal (the loops then print plain lines through [`say`]).
pub fn progress_bar(total: u64) -> ProgressBar {
    crate::output::start();
    if crate::output::quiet() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb
}

/// Print a line above the bar, or as a plain line when the bar is hidden.
pub fn say(pb: &ProgressBar, line: String) {
    if crate::output::quiet() {
        return;
    }
    if pb.is_hidden() {
        eprintln!("{line}")
    } else {
        pb.println(line)
    }
}

/// Wall-clock timer for throughput.
pub struct Throughput {
    start: Instant,
    tokens: u64,
}

impl Default for Throughput {
    fn default() -> Self {
        Throughput {
            start: Instant::now(),
            tokens: 0,
        }
    }
}

impl Throughput {
    pub fn add(&mut self, tokens: u64) {
        self.tokens += tokens;
    }
    pub fn per_second(&self) -> f64 {
        self.tokens as f64 / self.start.elapsed().as_secs_f64().max(1e-9)
    }
    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palm_engine::AdamWConfig;

    /// What every training loop's step refuses: a non-finite loss (named as the caller names
    /// it), and a finite loss with a NaN gradient. Neither changes a weight or the optimizer; a
    /// finite step changes both.
    #[test]
    fn a_step_stops_at_a_non_finite_loss_or_gradient() {
        let config = PalmConfig::new(16, 8, 1, 2, 4);
        let mut params = PalmParams::init(&config, &mut Rng::new(1)).unwrap();
        let mut opt = AdamW::new(AdamWConfig::default(), &params.tensors()).unwrap();
        let before = params.tensors()[0].to_vec::<f32>().unwrap();
        let emb = |p: &PalmParams| p.tensors()[0].clone();

        let nan = emb(&params).sum_all().unwrap().scale(f32::NAN).unwrap();
        let err = optimise(&mut params, &mut opt, nan, "the test loss", 1e-3, 1.0).unwrap_err();
        assert!(
            err.to_string().contains("the test loss became NaN"),
            "{err}"
        );

        // Σ√(0·x) is 0, and its gradient 0 · ∞ is NaN.
        let zero = emb(&params)
            .scale(0.0)
            .unwrap()
            .sqrt()
            .unwrap()
            .sum_all()
            .unwrap();
        let err = optimise(&mut params, &mut opt, zero, "the test loss", 1e-3, 1.0).unwrap_err();
        assert!(err.to_string().contains("norm became NaN"), "{err}");

        assert_eq!(opt.step_count(), 0);
        assert_eq!(params.tensors()[0].to_vec::<f32>().unwrap(), before);
        let fine = emb(&params).sqr().unwrap().sum_all().unwrap();
        let (loss, norm) =
            optimise(&mut params, &mut opt, fine, "the test loss", 1e-3, 1.0).unwrap();
        assert!(loss > 0.0 && norm > 0.0);
        assert_eq!(opt.step_count(), 1);
        assert_ne!(params.tensors()[0].to_vec::<f32>().unwrap(), before);
    }
}
