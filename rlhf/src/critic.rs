//! PPO's value model: the frozen base with adapters of scope `critic` and a per-token value head.
//! It is PPO's extra trainable ([`Extra`]): the shared RL run (`rl_run.rs`) makes, saves, loads,
//! moves and optimises it beside the actor without knowing what it is.

use crate::rl_run::Extra;
use crate::rollout::Padded;
use crate::{Error, Result};
use palm_engine::{Device, Rng, SafeFile, Tensor};
use palm_model::checkpoint::{get_checked, load_lora};
use palm_model::{LoraScope, PalmConfig, PalmParams, Trainable};

/// The critic's adapters (docs/rlhf.md).
pub const CRITIC: &str = "critic";

/// The value model: the frozen base with adapters of scope `critic` and a linear head from the
/// final-LayerNorm output to one value per position (`value_head.weight` (1, D), `.bias` (1)).
pub struct Critic {
    pub lora: LoraScope,
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Trainable for Critic {
    fn trained(&self) -> Vec<(String, Tensor)> {
        let mut out = self.lora.trained();
        out.push(("value_head.weight".into(), self.weight.clone()));
        out.push(("value_head.bias".into(), self.bias.clone()));
        out
    }

    fn trained_mut(&mut self) -> Vec<&mut Tensor> {
        let mut out = self.lora.tensors_mut();
        out.extend([&mut self.weight, &mut self.bias]);
        out
    }
}

impl Extra for Critic {
    const LORA_SCOPES: usize = 1;

    fn fresh(config: &PalmConfig, lora_rank: usize, rng: &mut Rng) -> Result<Self> {
        Critic::new(config, lora_rank, rng)
    }

    fn load(file: &SafeFile, config: &PalmConfig) -> Result<Self> {
        let lora = load_lora(file, config, CRITIC)?
            .ok_or_else(|| Error::data(file.path(), None, format!("no '{CRITIC}' adapters")))?;
        Ok(Critic {
            lora,
            weight: get_checked(file, "value_head.weight", &[1, config.dim])?.as_var(),
            bias: get_checked(file, "value_head.bias", &[1])?.as_var(),
        })
    }

    fn scopes(&self) -> Vec<&LoraScope> {
        vec![&self.lora]
    }

    /// The adapters and the head.
    fn move_to(&mut self, device: Device) -> Result<()> {
        self.lora.move_to(device)?;
        for t in [&mut self.weight, &mut self.bias] {
            *t = t.to_device(device)?.as_var();
        }
        Ok(())
    }
}

impl Critic {
    /// Fresh adapters (B = 0) and a head like `nn.Linear(dim, 1)` (uniform ±1/√dim, bias 0).
    pub fn new(config: &PalmConfig, r: usize, rng: &mut Rng) -> Result<Self> {
        let lora = LoraScope::new(config, CRITIC, r, None, rng)?;
        let d = config.dim;
        let bound = 1.0 / (d as f32).sqrt();
        let w: Vec<f32> = (0..d)
            .map(|_| (rng.uniform() * 2.0 - 1.0) * bound)
            .collect();
        Ok(Critic {
            lora,
            weight: Tensor::from_vec(w, &[1, d])?.as_var(),
            bias: Tensor::from_vec(vec![0f32], &[1])?.as_var(),
        })
    }

    /// V (b, n): position t values the state after the batch's input tokens 0..=t, i.e. before
    /// target t is chosen, so values line up with the targets' log-probs and mask.
    pub fn values(&self, base: &PalmParams, batch: &Padded) -> Result<Tensor> {
        let opts = &mut palm_model::Forward {
            lora: Some(&self.lora),
            ..Default::default()
        };
        let h = base.embed(&batch.input_tensor()?, opts)?;
        // The head runs in the trunk's compute dtype (bf16 on a GPU); values come back in f32.
        let (w, b) = (
            self.weight.to_dtype(h.dtype())?,
            self.bias.to_dtype(h.dtype())?,
        );
        Ok(h.matmul(&w.t()?)?
            .add(&b)?
            .reshape(&[batch.b, batch.n])?
            .to_dtype(palm_engine::DType::F32)?)
    }
}
