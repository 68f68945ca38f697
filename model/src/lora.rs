//! LoRA adapters as the seed's `finetune_modules.{scope}.{layer}.{0..3}`: for q, k, v (taking
//! the normed input h) and the attention output (taking the attention result O).
//! delta(x) = x·A·B·(alpha/r), A (in, r) ~ N(0, 1), B (r, out) = 0.

use crate::{Error, PalmConfig, PalmParams, Result};
use palm_engine::{DType, Device, Rng, Tensor};

pub struct Lora {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f32,
}

impl Lora {
    /// delta(x) in the dtype of x (the adapters are cast to it: bf16 on the GPU).
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let (a, b) = (self.a.to_dtype(x.dtype())?, self.b.to_dtype(x.dtype())?);
        Ok(x.matmul(&a)?.matmul(&b)?.scale(self.scale)?)
    }
    /// The dense update A·B·scale (in, out).
    pub fn delta(&self) -> Result<Tensor> {
        Ok(self.a.matmul(&self.b)?.scale(self.scale)?)
    }
}

/// One named set of adapters (e.g. `actor`, `critic`, `reward`).
pub struct LoraScope {
    pub name: String,
    pub r: usize,
    pub alpha: f32,
    /// Per layer: [q, k, v, o].
    pub layers: Vec<[Lora; 4]>,
}

impl LoraScope {
    /// (in, out) of the q, k, v, o adapters.
    pub(crate) fn io(config: &PalmConfig) -> [(usize, usize); 4] {
        let (d, dh, hd) = (config.dim, config.dim_head, config.attn_inner());
        [(d, hd), (d, dh), (d, dh), (hd, d)]
    }

    /// Move every adapter to `device` (still parameters).
    pub fn move_to(&mut self, device: Device) -> Result<()> {
        for t in self.tensors_mut() {
            *t = t.to_device(device)?.as_var();
        }
        Ok(())
    }

    /// Fresh adapters (B = 0, so the model is unchanged until trained). `alpha` defaults to r.
    pub fn new(
        config: &PalmConfig,
        name: &str,
        r: usize,
        alpha: Option<f32>,
        rng: &mut Rng,
    ) -> Result<Self> {
        if r == 0 {
            return Err(Error::Invalid("LoRA rank must be > 0".into()));
        }
        let alpha = alpha.unwrap_or(r as f32);
        let layers = (0..config.depth)
            .map(|_| {
                let mk = |(i, o): (usize, usize), rng: &mut Rng| -> Result<Lora> {
                    Ok(Lora {
                        a: Tensor::randn(&[i, r], 1.0, rng).as_var(),
                        b: Tensor::zeros(&[r, o], DType::F32, Device::Cpu)?.as_var(),
                        scale: alpha / r as f32,
                    })
                };
                let io = Self::io(config);
                Ok([
                    mk(io[0], rng)?,
                    mk(io[1], rng)?,
                    mk(io[2], rng)?,
                    mk(io[3], rng)?,
                ])
            })
            .collect::<Result<_>>()?;
        Ok(LoraScope {
            name: name.to_string(),
            r,
            alpha,
            layers,
        })
    }

    pub fn named(&self) -> Vec<(String, &Tensor)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            for (j, m) in l.iter().enumerate() {
                out.push((format!("finetune_modules.{}.{i}.{j}.A", self.name), &m.a));
                out.push((format!("finetune_modules.{}.{i}.{j}.B", self.name), &m.b));
            }
        }
        out
    }

    pub fn tensors_mut(&mut self) -> Vec<&mut Tensor> {
        self.layers
            .iter_mut()
            .flat_map(|l| l.iter_mut().flat_map(|m| [&mut m.a, &mut m.b]))
            .collect()
    }

    /// Load scope `name` through `get(name, shape)`; the rank comes from the first A.
    pub fn from_named(
        config: &PalmConfig,
        name: &str,
        r: usize,
        alpha: Option<f32>,
        mut get: impl FnMut(&str, &[usize]) -> Result<Tensor>,
    ) -> Result<Self> {
        let alpha = alpha.unwrap_or(r as f32);
        let io = Self::io(config);
        let layers = (0..config.depth)
            .map(|i| {
                let mut mk = |j: usize| -> Result<Lora> {
                    let (inp, out) = io[j];
                    Ok(Lora {
                        a: get(&format!("finetune_modules.{name}.{i}.{j}.A"), &[inp, r])?.as_var(),
                        b: get(&format!("finetune_modules.{name}.{i}.{j}.B"), &[r, out])?.as_var(),
                        scale: alpha / r as f32,
                    })
                };
                Ok([mk(0)?, mk(1)?, mk(2)?, mk(3)?])
            })
            .collect::<Result<_>>()?;
        Ok(LoraScope {
            name: name.to_string(),
            r,
            alpha,
            layers,
        })
    }

    /// Fold the adapters into the base weights (the merged model needs no LoRA at inference).
    pub fn merge_into(&self, params: &mut PalmParams) -> Result<()> {
        let _g = palm_engine::no_grad();
        let dims = params.config.fused_dims();
        for (l, p) in self.layers.iter().zip(params.layers.iter_mut()) {
            // q, k, v occupy the first rows of the fused projection (out, D).
            let mut start = 0;
            let mut rows = Vec::new();
            for (j, lora) in l[..3].iter().enumerate() {
                let w = p.fused_proj.narrow(0, start, dims[j])?;
                rows.push(w.add(&lora.delta()?.t()?)?);
                start += dims[j];
            }
            rows.push(
                p.fused_proj
                    .narrow(0, start, p.fused_proj.dims()[0] - start)?,
            );
            let refs: Vec<&Tensor> = rows.iter().collect();
            p.fused_proj = Tensor::cat(&refs, 0)?.as_var();
            p.attn_out = p.attn_out.add(&l[3].delta()?.t()?)?.as_var();
        }
        Ok(())
    }
}
