//! AdamW (decoupled weight decay, none on 1-D parameters), global-norm gradient clipping and
//! the warmup + cosine learning-rate schedule.

use crate::backend::Backend;
use crate::cpu::adamw::{self, Hyper};
use crate::cpu::f32s;
use crate::storage::on_backend_all;
use crate::{DType, Device, Error, Grads, Result, Tensor};

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

impl AdamWConfig {
    /// The defaults (β₁ 0.9, β₂ 0.95, ε 1e-8) with this learning rate and weight decay, as every
    /// training loop configures it.
    pub fn new(lr: f32, weight_decay: f32) -> Self {
        AdamWConfig {
            lr,
            weight_decay,
            ..AdamWConfig::default()
        }
    }
}

/// First and second moments of one parameter.
pub type Moments = (Vec<f32>, Vec<f32>);

/// The moments of one parameter where the parameter lives: host vectors updated in place on the
/// CPU, device f32 tensors (owned by the optimizer alone, updated in place by the kernel) on CUDA.
enum Slot {
    Host(Vec<f32>, Vec<f32>),
    Device(Tensor, Tensor),
}

impl Slot {
    fn zeros(p: &Tensor) -> Result<Self> {
        Ok(match p.device() {
            Device::Cpu => Slot::Host(vec![0.0; p.elem_count()], vec![0.0; p.elem_count()]),
            d => Slot::Device(
                Tensor::zeros(p.dims(), DType::F32, d)?,
                Tensor::zeros(p.dims(), DType::F32, d)?,
            ),
        })
    }
    fn len(&self) -> usize {
        match self {
            Slot::Host(m, _) => m.len(),
            Slot::Device(m, _) => m.elem_count(),
        }
    }
}

pub struct AdamW {
    pub cfg: AdamWConfig,
    step: u64,
    /// First and second moments, one pair per parameter (f32, same shape and device).
    moments: Vec<Slot>,
}

impl AdamW {
    pub fn new(cfg: AdamWConfig, params: &[Tensor]) -> Result<Self> {
        let moments = params.iter().map(Slot::zeros).collect::<Result<_>>()?;
        Ok(AdamW {
            cfg,
            step: 0,
            moments,
        })
    }

    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// One update at learning rate `lr`; parameters without a gradient are left as they are
    /// (their moments too), as PyTorch does. Returns the new parameter tensors.
    pub fn step(&mut self, params: &mut [Tensor], grads: &Grads, lr: f32) -> Result<()> {
        self.update(params, grads, lr, 1.0)
    }

    /// `clip_grad_norm` to `max_norm`, then `step`: what every training loop does, with the
    /// same result, but on the CPU the clip's factor is applied inside the update's pass over
    /// the gradients instead of a pass (and a copy of every gradient) of its own. A non-finite
    /// norm is an error and nothing is updated: the update would write NaN into every weight.
    /// Returns the norm before clipping.
    pub fn clip_and_step(
        &mut self,
        params: &mut [Tensor],
        grads: &Grads,
        lr: f32,
        max_norm: f32,
    ) -> Result<f32> {
        let norm = grad_norm(grads, params)?;
        if !norm.is_finite() {
            return Err(Error::Invalid(format!(
                "the gradients' norm became {norm} (an overflow or a NaN); nothing was updated"
            )));
        }
        self.update(params, grads, lr, clip_factor(norm, max_norm).min(1.0))?;
        Ok(norm)
    }

    /// `step` with every gradient multiplied by `grad_scale` first.
    fn update(
        &mut self,
        params: &mut [Tensor],
        grads: &Grads,
        lr: f32,
        grad_scale: f32,
    ) -> Result<()> {
        let _g = crate::no_grad();
        // Every size is checked before anything changes: an error leaves the step count and
        // every weight as they were. Both updates run over the parameter's length (the device
        // kernel reads m, v and the gradient for as many elements as the parameter has).
        if params.len() != self.moments.len() {
            return Err(Error::shape(
                "adamw",
                format!(
                    "{} parameters for an optimizer made for {}",
                    params.len(),
                    self.moments.len()
                ),
            ));
        }
        for (i, (p, slot)) in params.iter().zip(&self.moments).enumerate() {
            let Some(g) = grads.get(p) else { continue };
            let len = p.elem_count();
            if g.elem_count() != len || slot.len() != len {
                return Err(Error::shape(
                    "adamw",
                    format!(
                        "parameter {i} has {len} elements, its gradient {} and its moments {} \
                         (a parameter list other than the optimizer's)",
                        g.elem_count(),
                        slot.len()
                    ),
                ));
            }
            if matches!(slot, Slot::Device(..)) && p.dtype() != DType::F32 {
                return Err(Error::DType {
                    op: "adamw",
                    got: p.dtype(),
                    want: "f32 (master weights)",
                });
            }
        }
        self.step += 1;
        let t = self.step as i32;
        let c = self.cfg;
        // Device parameters are updated together, in one multi-tensor launch, after the loop:
        // (index, new parameter, weight decay, gradient).
        let mut device: Vec<(usize, Tensor, f32, Tensor)> = Vec::new();
        for (i, (p, slot)) in params.iter_mut().zip(self.moments.iter_mut()).enumerate() {
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
            let len = p.elem_count();
            match slot {
                Slot::Host(m, v) => {
                    // The new weights in a recycled buffer: a fresh one costs a page fault
                    // per 4 KiB every step (120 MB for `enwik8`).
                    let mut data = crate::cpu::buffers::take(len);
                    let (old, g) = (f32s(p, "adamw")?, f32s(g, "adamw")?);
                    adamw::step(&mut data, &old, &g, grad_scale, m, v, &h);
                    drop(old); // a borrow of p, which is replaced next
                    *p = Tensor::from_vec(data, p.dims())?.as_var();
                }
                Slot::Device(..) => {
                    // A fresh buffer: the old parameter may be shared (a frozen reference copy).
                    let next = crate::cuda::ops::adamw::private_copy(p)?;
                    // The kernel reads the gradient as it is: a scaled copy where clipping asks.
                    let g = if grad_scale == 1.0 {
                        g.clone()
                    } else {
                        g.scale(grad_scale)?
                    };
                    device.push((i, next, h.weight_decay, g));
                }
            }
        }
        if device.is_empty() {
            return Ok(());
        }
        use crate::cuda::ops::adamw as k;
        let mut slots = Vec::with_capacity(device.len());
        for (i, next, wd, g) in &device {
            let Slot::Device(m, v) = &self.moments[*i] else {
                return Err(Error::Invalid("internal: adamw slot moved".into()));
            };
            slots.push(k::Slot {
                param: next,
                m,
                v,
                grad: g,
                weight_decay: *wd,
            });
        }
        let hk = k::Step {
            lr,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            weight_decay: 0.0,
            bias1: 1.0 - c.beta1.powi(t),
            bias2: 1.0 - c.beta2.powi(t),
        };
        let copies = k::step_multi(&slots, &hk)?;
        drop(slots);
        for ((i, next, ..), copy) in device.into_iter().zip(copies) {
            let var = next.as_var();
            // The bf16 copy the kernel wrote: the next forward's cast of this weight is free.
            var.set_shadow(copy)?;
            params[i] = var;
        }
        Ok(())
    }

    /// Rebuild the moments on the devices of `params` (the same parameters, moved), keeping the
    /// step and the values.
    pub fn follow(&mut self, params: &[Tensor]) -> Result<()> {
        let (step, moments) = self.state()?;
        let mut moved = AdamW::new(self.cfg, params)?;
        moved.restore(step, moments)?;
        *self = moved;
        Ok(())
    }

    /// (step, moments) for a training checkpoint (copied to the host).
    pub fn state(&self) -> Result<(u64, Vec<Moments>)> {
        let moments = self
            .moments
            .iter()
            .map(|s| match s {
                Slot::Host(m, v) => Ok((m.clone(), v.clone())),
                Slot::Device(m, v) => Ok((m.to_vec::<f32>()?, v.to_vec::<f32>()?)),
            })
            .collect::<Result<_>>()?;
        Ok((self.step, moments))
    }

    /// Restore from a checkpoint; the moments must match the parameters' sizes.
    pub fn restore(&mut self, step: u64, moments: Vec<Moments>) -> Result<()> {
        if moments.len() != self.moments.len()
            || moments
                .iter()
                .zip(&self.moments)
                .any(|(a, b)| a.0.len() != b.len() || a.1.len() != b.len())
        {
            return Err(crate::Error::Invalid(
                "optimizer state does not match the model's parameters".into(),
            ));
        }
        for (slot, (m, v)) in self.moments.iter_mut().zip(moments) {
            *slot = match slot {
                Slot::Host(..) => Slot::Host(m, v),
                Slot::Device(old, _) => {
                    let (dims, dev) = (old.dims().to_vec(), old.device());
                    Slot::Device(
                        Tensor::from_vec(m, &dims)?.to_device(dev)?,
                        Tensor::from_vec(v, &dims)?.to_device(dev)?,
                    )
                }
            };
        }
        self.step = step;
        Ok(())
    }
}

/// Scale all gradients of `params` so their global L2 norm is at most `max_norm` (PyTorch's
/// `clip_grad_norm_`). Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut Grads, params: &[Tensor], max_norm: f32) -> Result<f32> {
    let _g = crate::no_grad();
    let norm = grad_norm(grads, params)?;
    let coef = clip_factor(norm, max_norm);
    if coef < 1.0 {
        for p in params {
            if let Some(g) = grads.remove(p) {
                grads.insert(p, g.scale(coef)?);
            }
        }
    }
    Ok(norm)
}

/// The global L2 norm of the gradients `params` have.
fn grad_norm(grads: &Grads, params: &[Tensor]) -> Result<f32> {
    let gs: Vec<&Tensor> = params.iter().filter_map(|p| grads.get(p)).collect();
    // On CUDA one launch per gradient dtype and one f32 read back (the norm is logged every step).
    let sq = on_backend_all!("clip_grad_norm", &gs => parts, Backend::sum_of_squares(&parts))?;
    Ok(sq.sqrt() as f32)
}

/// What clipping to `max_norm` multiplies gradients of norm `norm` by, where it is below 1.
fn clip_factor(norm: f32, max_norm: f32) -> f32 {
    max_norm / (norm + 1e-6)
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
