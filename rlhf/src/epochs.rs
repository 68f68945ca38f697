//! The loop shape reward training and DPO share: epochs over a dataset in batches, each epoch in
//! a fresh shuffled order drawn from the run's RNG, resumable at any step.
//!
//! The RNG is used for nothing else during an epoch, so a run's position is its step and the RNG
//! as it was before the current epoch's shuffle ([`Batches::resume_rng`]): from those a resumed
//! run draws the same order and skips the batches already done.

use crate::run_dir::{RunDir, SavedState, StateMeta};
use crate::{Error, Result};
use palm_engine::{AdamW, AdamWConfig, Rng};
use palm_model::Trainable;

/// Where an epoch loop starts: step 0 with the RNG after set-up, or where a resumed run stopped.
pub struct Start {
    pub step: u64,
    /// The run's RNG (for a resumed run, [`Batches::resume_rng`] as the checkpoint saved it).
    pub rng: Rng,
    /// A resumed run's optimizer; a fresh run makes one.
    pub opt: Option<AdamW>,
    /// The sum of the current epoch's step losses so far (reward training reports their mean).
    pub epoch_loss: f64,
}

/// One session of an epoch loop: where it starts, the command's settings its checkpoints save
/// (so a resume rebuilds the same run), and the step to stop at as if interrupted.
pub struct Session {
    pub start: Start,
    pub settings: serde_json::Value,
    pub stop_at: Option<u64>,
}

/// Where an epoch loop's checkpoints go: its run kind, its (state, model) files, and the
/// command's settings they save.
pub struct Checkpoints {
    pub kind: &'static str,
    pub files: (&'static str, &'static str),
    pub settings: serde_json::Value,
}

/// Say where a run stopped as if interrupted, and how to continue it.
pub fn say_stopped(pb: &indicatif::ProgressBar, step: u64, run: &crate::run_dir::RunDir) {
    pb.abandon();
    crate::output::say(format!(
        "stopped at step {step}; continue with --resume {}",
        run.path().display()
    ));
}

/// The metadata key of [`Start::epoch_loss`] in a state file.
pub const EPOCH_LOSS_KEY: &str = "epoch_loss_bits";

impl Start {
    pub fn fresh(rng: Rng) -> Start {
        Start {
            step: 0,
            rng,
            opt: None,
            epoch_loss: 0.0,
        }
    }

    /// Where the run saved in `state` stopped, with its optimizer (`cfg`) over `trained`, whose
    /// tensors it restores.
    pub fn resumed(
        state: &SavedState,
        trained: &mut dyn Trainable,
        cfg: AdamWConfig,
    ) -> Result<Start> {
        state.restore(trained)?;
        Ok(Start {
            step: state.step,
            rng: state.rng.clone(),
            opt: Some(state.optimizer(cfg, trained)?),
            epoch_loss: f64::from_bits(state.int(EPOCH_LOSS_KEY)?),
        })
    }

    /// The optimizer: the resumed one (moved to where `trained` now lives) or a new one.
    pub fn optimizer(&mut self, cfg: AdamWConfig, trained: &dyn Trainable) -> Result<AdamW> {
        let tensors = trained.trained_tensors();
        Ok(match self.opt.take() {
            Some(mut opt) => {
                opt.follow(&tensors)?;
                opt
            }
            None => AdamW::new(cfg, &tensors)?,
        })
    }
}

pub struct Batches {
    items: usize,
    batch: usize,
    steps_per_epoch: u64,
    total: u64,
    step: u64,
    order: Vec<usize>,
    rng: Rng,
    /// The RNG before the current epoch's shuffle.
    epoch_rng: Rng,
}

impl Batches {
    /// `epochs` passes over `items` in batches of `batch`, from `step` (0, or where a resumed
    /// run stopped) with `rng` (the run's, or the resumed run's [`Batches::resume_rng`]).
    pub fn new(items: usize, batch: usize, epochs: u64, step: u64, rng: Rng) -> Result<Batches> {
        let batch = batch.max(1);
        let steps_per_epoch = items.div_ceil(batch) as u64;
        let total = steps_per_epoch
            .checked_mul(epochs)
            .ok_or_else(|| Error::Invalid(format!("{epochs} epochs is too many steps")))?;
        if step > total {
            return Err(Error::Invalid(format!(
                "the run is at step {step}, past its {total} steps"
            )));
        }
        let mut b = Batches {
            items,
            batch,
            steps_per_epoch,
            total,
            step,
            order: Vec::new(),
            epoch_rng: rng.clone(),
            rng,
        };
        if steps_per_epoch > 0 && !step.is_multiple_of(steps_per_epoch) {
            b.shuffle();
        }
        Ok(b)
    }

    fn shuffle(&mut self) {
        self.epoch_rng = self.rng.clone();
        self.order = (0..self.items).collect();
        for i in (1..self.order.len()).rev() {
            self.order.swap(i, self.rng.below(i + 1));
        }
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Steps done.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Whether the last step finished an epoch (or none has run).
    pub fn at_epoch_end(&self) -> bool {
        self.step.is_multiple_of(self.steps_per_epoch.max(1))
    }

    /// The epoch (from 1) of the last step.
    pub fn epoch(&self) -> u64 {
        self.step.saturating_sub(1) / self.steps_per_epoch.max(1) + 1
    }

    /// The next batch's item indices, advancing the step; `None` after the last.
    pub fn next_batch(&mut self) -> Option<&[usize]> {
        if self.step >= self.total {
            return None;
        }
        let within = (self.step % self.steps_per_epoch) as usize;
        if within == 0 {
            self.shuffle();
        }
        self.step += 1;
        let start = within * self.batch;
        Some(&self.order[start..(start + self.batch).min(self.items)])
    }

    /// A checkpoint at the current step (see [`RunDir::checkpoint`]): the state file of `to`
    /// with the RNG a resume starts from and the epoch's running loss, then the model, which
    /// `write` saves to the path it is given with the metadata entries it is given.
    pub fn checkpoint(
        &self,
        run: &mut RunDir,
        to: &Checkpoints,
        epoch_loss: f64,
        trained: &dyn Trainable,
        opt: &AdamW,
        write: impl FnOnce(&std::path::Path, &[(String, String)]) -> Result<()>,
    ) -> Result<()> {
        let mut extra = std::collections::HashMap::new();
        extra.insert(EPOCH_LOSS_KEY.into(), epoch_loss.to_bits().to_string());
        let meta = StateMeta {
            kind: to.kind,
            step: self.step,
            rng: self.resume_rng(),
            settings: to.settings.clone(),
            extra,
        };
        run.checkpoint(to.files, trained, opt, meta, write)
    }

    /// The RNG a run resumed at the current step starts from.
    pub fn resume_rng(&self) -> Rng {
        if self.at_epoch_end() {
            self.rng.clone()
        } else {
            self.epoch_rng.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every batch of a run, in order.
    fn all(b: &mut Batches) -> Vec<Vec<usize>> {
        std::iter::from_fn(|| b.next_batch().map(<[usize]>::to_vec)).collect()
    }

    #[test]
    fn a_run_resumed_at_any_step_draws_the_same_batches() {
        let whole = all(&mut Batches::new(7, 3, 3, 0, Rng::new(5)).unwrap());
        assert_eq!(whole.len(), 9);
        for epoch in whole.chunks(3) {
            let mut seen: Vec<usize> = epoch.concat();
            seen.sort();
            assert_eq!(
                seen,
                (0..7).collect::<Vec<_>>(),
                "each epoch covers every item"
            );
        }
        for stop in 0..=9 {
            let mut first = Batches::new(7, 3, 3, 0, Rng::new(5)).unwrap();
            let mut got: Vec<Vec<usize>> = (0..stop)
                .map(|_| first.next_batch().unwrap().to_vec())
                .collect();
            let mut resumed = Batches::new(7, 3, 3, stop, first.resume_rng()).unwrap();
            got.extend(all(&mut resumed));
            assert_eq!(got, whole, "resumed at step {stop}");
        }
    }

    #[test]
    fn sizes_are_checked() {
        assert!(Batches::new(10, 1, u64::MAX, 0, Rng::new(0)).is_err());
        assert!(Batches::new(10, 5, 1, 3, Rng::new(0)).is_err());
        let mut b = Batches::new(0, 4, 2, 0, Rng::new(0)).unwrap();
        assert!(b.next_batch().is_none());
    }
}
