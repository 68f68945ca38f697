//! AdamW (decoupled weight decay, none on 1-D parameters), global-norm gradient clipping and
//! the warmup + cosine learning-rate schedule.

use crate::cpu::adamw::{self, Hyper};
use crate::cpu::f32s;
use crate::{Grads, Result, Tensor};
use rayon::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        }
    }
}

/// First and second moments of one parameter.
pub type Moments = (Vec<f32>, Vec<f32>);

pub struct AdamW {
    pub cfg: AdamWConfig,
    step: u64,
    /// First and second moments, one pair per parameter (f32, same shape).
    moments: Vec<Moments>,
}

impl AdamW {
    pub fn new(cfg: AdamWConfig, params: &[Tensor]) -> Self {
        let moments = params
            .iter()
            .map(|p| (vec![0.0; p.elem_count()], vec![0.0; p.elem_count()]))
            .collect();
        AdamW {
            cfg,
            step: 0,
            moments,
        }
    }

    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// One update at learning rate `lr`; parameters without a gradient are left as they are
    /// (their moments too), as PyTorch does. Returns the new parameter tensors.
    pub fn step(&mut self, params: &mut [Tensor], grads: &Grads, lr: f32) -> Result<()> {
        let _g = crate::no_grad();
        self.step += 1;
        let t = self.step as i32;
        let c = self.cfg;
        for (p, (m, v)) in params.iter_mut().zip(self.moments.iter_mut()) {
            let Some(g) = grads.get(p) else { continue };
            let h = Hyper {
                lr,
                beta1: c.beta1,
                beta2: c.beta2,
                eps: c.eps,
                // No decay on gains and other 1-D parameters.
                weight_decay: if p.rank() >= 2 { c.weight_decay } else { 0.0 },
                bias1: 1.0 - c.beta1.powi(t),
                bias2: 1.0 - c.beta2.powi(t),
            };
            let mut data = p.to_vec::<f32>()?;
            adamw::step(&mut data, &f32s(g, "adamw")?, m, v, &h);
            *p = Tensor::from_vec(data, p.dims())?.as_var();
        }
        Ok(())
    }

    /// (step, moments) for a training checkpoint.
    pub fn state(&self) -> (u64, &[Moments]) {
        (self.step, &self.moments)
    }

    /// Restore from a checkpoint; the moments must match the parameters' sizes.
    pub fn restore(&mut self, step: u64, moments: Vec<Moments>) -> Result<()> {
        if moments.len() != self.moments.len()
            || moments
                .iter()
                .zip(&self.moments)
                .any(|(a, b)| a.0.len() != b.0.len() || a.1.len() != b.1.len())
        {
            return Err(crate::Error::Invalid(
                "optimizer state does not match the model's parameters".into(),
            ));
        }
        self.step = step;
        self.moments = moments;
        Ok(())
    }
}

/// Scale all gradients of `params` so their global L2 norm is at most `max_norm` (PyTorch's
/// `clip_grad_norm_`). Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut Grads, params: &[Tensor], max_norm: f32) -> Result<f32> {
    let _g = crate::no_grad();
    let mut sq = 0f64;
    for p in params {
        if let Some(g) = grads.get(p) {
            // Fixed chunks summed in order: the same norm whatever the thread count.
            let parts: Vec<f64> = f32s(g, "clip_grad_norm")?
                .par_chunks(crate::cpu::PAR_MIN)
                .map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
                .collect();
            sq += parts.iter().sum::<f64>();
        }
    }
    let norm = sq.sqrt() as f32;
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for p in params {
            if let Some(g) = grads.remove(p) {
                grads.insert(p, g.scale(coef)?);
            }
        }
    }
    Ok(norm)
}

/// Linear warmup for `warmup` steps, then cosine decay to `min_lr` at `total`.
pub fn lr_at(step: u64, warmup: u64, total: u64, lr: f32, min_lr: f32) -> f32 {
    if step < warmup {
        return lr * (step + 1) as f32 / warmup as f32;
    }
    if step >= total {
        return min_lr;
    }
    let progress = (step - warmup) as f32 / (total - warmup).max(1) as f32;
    min_lr + 0.5 * (lr - min_lr) * (1.0 + (std::f32::consts::PI * progress).cos())
}
