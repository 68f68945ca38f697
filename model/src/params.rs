//! PaLM's parameters under the seed's state-dict names, initialised as the seed does.

use crate::tokenizer::Tokenizer;
use crate::{Error, PalmConfig, Result};
use palm_engine::{DType, Device, Rng, Tensor};

#[derive(Clone)]
pub struct LayerParams {
    /// `layers.{i}.fn.norm.gamma` (D), applied as gamma + 1.
    pub norm_gamma: Tensor,
    /// `layers.{i}.fn.fused_attn_ff_proj.weight` (H·Dh + 2·Dh + 2F, D).
    pub fused_proj: Tensor,
    /// `layers.{i}.fn.attn_out.weight` (D, H·Dh).
    pub attn_out: Tensor,
    /// `layers.{i}.fn.ff_out.2.weight` (D, F).
    pub ff_out: Tensor,
}

#[derive(Clone)]
pub struct PalmParams {
    pub config: PalmConfig,
    /// `token_emb.weight` (V, D), tied with the output projection.
    pub token_emb: Tensor,
    pub layers: Vec<LayerParams>,
    /// `norm.gamma` (D).
    pub norm_gamma: Tensor,
    /// How text becomes this model's ids (bytes unless the model was trained with a BPE); it
    /// travels in the checkpoint.
    pub tokenizer: Tokenizer,
}

impl PalmParams {
    /// Fresh parameters: embedding N(0, 0.02) as the seed; linear weights as PyTorch's
    /// `nn.Linear` default (kaiming-uniform, U(−1/√fan_in, 1/√fan_in)); gains 0.
    pub fn init(config: &PalmConfig, rng: &mut Rng) -> Result<Self> {
        config.validate().map_err(Error::Config)?;
        let d = config.dim;
        let linear = |out: usize, inp: usize, rng: &mut Rng| -> Result<Tensor> {
            let bound = 1.0 / (inp as f32).sqrt();
            let data = (0..out * inp)
                .map(|_| (rng.uniform() * 2.0 - 1.0) * bound)
                .collect();
            Ok(Tensor::from_vec(data, &[out, inp])?.as_var())
        };
        let zeros = |n: usize| -> Result<Tensor> {
            Ok(Tensor::zeros(&[n], DType::F32, Device::Cpu)?.as_var())
        };
        let token_emb = Tensor::randn(&[config.num_tokens, d], 0.02, rng).as_var();
        let layers = (0..config.depth)
            .map(|_| {
                Ok(LayerParams {
                    norm_gamma: zeros(d)?,
                    fused_proj: linear(config.fused_width(), d, rng)?,
                    attn_out: linear(d, config.attn_inner(), rng)?,
                    ff_out: linear(d, config.ff_inner(), rng)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(PalmParams {
            config: config.clone(),
            token_emb,
            layers,
            norm_gamma: zeros(d)?,
            tokenizer: Tokenizer::bytes(),
        })
    }

    /// The same model reading and writing text through `tokenizer`, whose ids must all fit in
    /// the vocabulary.
    pub fn with_tokenizer(mut self, tokenizer: Tokenizer) -> Result<Self> {
        tokenizer.check_fits(self.config.num_tokens, "the model")?;
        self.tokenizer = tokenizer;
        Ok(self)
    }

    /// Every parameter with its seed state-dict name, in a fixed order.
    pub fn named(&self) -> Vec<(String, &Tensor)> {
        let mut out = vec![("token_emb.weight".to_string(), &self.token_emb)];
        for (i, l) in self.layers.iter().enumerate() {
            out.push((format!("layers.{i}.fn.norm.gamma"), &l.norm_gamma));
            out.push((
                format!("layers.{i}.fn.fused_attn_ff_proj.weight"),
                &l.fused_proj,
            ));
            out.push((format!("layers.{i}.fn.attn_out.weight"), &l.attn_out));
            out.push((format!("layers.{i}.fn.ff_out.2.weight"), &l.ff_out));
        }
        out.push(("norm.gamma".to_string(), &self.norm_gamma));
        out
    }

    /// The same order as `named`, mutable (for optimizer updates).
    pub fn tensors_mut(&mut self) -> Vec<&mut Tensor> {
        let mut out = vec![&mut self.token_emb];
        for l in &mut self.layers {
            out.extend([
                &mut l.norm_gamma,
                &mut l.fused_proj,
                &mut l.attn_out,
                &mut l.ff_out,
            ]);
        }
        out.push(&mut self.norm_gamma);
        out
    }

    pub fn tensors(&self) -> Vec<Tensor> {
        self.named().into_iter().map(|(_, t)| t.clone()).collect()
    }

    /// Where the parameters live (the embedding's device; all move together).
    pub fn device(&self) -> Device {
        self.token_emb.device()
    }

    /// A copy with every parameter on `device`, still marked as a parameter.
    pub fn to_device(&self, device: Device) -> Result<Self> {
        self.map(|t| Ok(t.to_device(device)?.as_var()))
    }

    /// A copy with every parameter in `dtype` (untracked): the bf16 weights sampling reuses on
    /// every token instead of casting the f32 masters each time.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        self.map(|t| Ok(t.to_dtype(dtype)?.detach()))
    }

    fn map(&self, mut f: impl FnMut(&Tensor) -> Result<Tensor>) -> Result<Self> {
        let mut out = self.clone();
        let new = self
            .tensors()
            .iter()
            .map(&mut f)
            .collect::<Result<Vec<_>>>()?;
        out.set_tensors(new)?;
        Ok(out)
    }

    /// Replace every parameter (same order as `named`), checking shapes.
    pub fn set_tensors(&mut self, new: Vec<Tensor>) -> Result<()> {
        crate::Trainable::set_trained(self, new)
    }

    /// The expected shape of every parameter of `config`, by name.
    pub fn expected_shapes(config: &PalmConfig) -> Vec<(String, Vec<usize>)> {
        let d = config.dim;
        let mut out = vec![("token_emb.weight".to_string(), vec![config.num_tokens, d])];
        for i in 0..config.depth {
            out.push((format!("layers.{i}.fn.norm.gamma"), vec![d]));
            out.push((
                format!("layers.{i}.fn.fused_attn_ff_proj.weight"),
                vec![config.fused_width(), d],
            ));
            out.push((
                format!("layers.{i}.fn.attn_out.weight"),
                vec![d, config.attn_inner()],
            ));
            out.push((
                format!("layers.{i}.fn.ff_out.2.weight"),
                vec![d, config.ff_inner()],
            ));
        }
        out.push(("norm.gamma".to_string(), vec![d]));
        out
    }

    /// Build from tensors by name (e.g. a checkpoint); every tensor must be present with its
    /// expected shape. `get` reports a missing name as an error.
    pub fn from_named(
        config: &PalmConfig,
        mut get: impl FnMut(&str, &[usize]) -> Result<Tensor>,
    ) -> Result<Self> {
        config.validate().map_err(Error::Config)?;
        let mut it = Self::expected_shapes(config).into_iter();
        let mut next = || -> Result<Tensor> {
            let (name, shape) = it
                .next()
                .ok_or_else(|| Error::Invalid("parameter list exhausted".into()))?;
            Ok(get(&name, &shape)?.as_var())
        };
        let token_emb = next()?;
        let mut layers = Vec::new();
        for _ in 0..config.depth {
            layers.push(LayerParams {
                norm_gamma: next()?,
                fused_proj: next()?,
                attn_out: next()?,
                ff_out: next()?,
            });
        }
        let norm_gamma = next()?;
        Ok(PalmParams {
            config: config.clone(),
            token_emb,
            layers,
            norm_gamma,
            tokenizer: Tokenizer::bytes(),
        })
    }
}
