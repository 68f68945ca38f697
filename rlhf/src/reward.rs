//! The reward model (docs/rlhf.md): a PaLM trunk (optionally with a LoRA scope), segment
//! embeddings added to the token embeddings (prompt vs response, as the seed), pooling over the
//! final-LayerNorm output (`mean` over the sequence as the seed, or the `last` token as TRL),
//! and a linear head to one scalar. Trained on rankings with the pairwise loss below; saved as
//! one self-contained safetensors file (trunk, adapters, segment embeddings, head, pooling).

use crate::{Error, Result};
use palm_engine::{DType, Device, Rng, SafeFile, Tensor, no_grad};
use palm_model::checkpoint::{get_checked, load_lora, model_metadata, model_tensors, params_of};
use palm_model::{Forward, LoraScope, PalmParams, Trainable};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The LoRA scope a reward model trains (docs/rlhf.md).
pub const LORA_SCOPE: &str = "reward";
/// The `format` metadata of a saved reward model.
pub const FORMAT: &str = palm_model::checkpoint::REWARD_FORMAT;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Mean over every real (non-padding) position: the seed's choice.
    Mean,
    /// The last real position (TRL's choice).
    Last,
}

impl Pooling {
    pub fn name(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Last => "last",
        }
    }
}

pub struct RewardModel {
    pub trunk: PalmParams,
    /// With adapters the trunk is frozen: only they, the segment embeddings and the head train.
    pub lora: Option<LoraScope>,
    /// Added to the embeddings of prompt positions (D).
    pub prompt_embed: Tensor,
    /// Added to the embeddings of response positions (D).
    pub response_embed: Tensor,
    /// `to_pred.weight` (1, D), no bias.
    pub head: Tensor,
    pub pooling: Pooling,
}

/// One scored sequence: prompt then response token ids.
pub struct Scored<'a> {
    pub prompt: &'a [u32],
    pub response: &'a [u32],
}

impl RewardModel {
    /// A reward model on a copy of `trunk`: segment embeddings 0 (as the seed), head like
    /// `nn.Linear(dim, 1)` (uniform ±1/√dim).
    pub fn new(trunk: PalmParams, pooling: Pooling, rng: &mut Rng) -> Result<Self> {
        let d = trunk.config.dim;
        let bound = 1.0 / (d as f32).sqrt();
        let head: Vec<f32> = (0..d)
            .map(|_| (rng.uniform() * 2.0 - 1.0) * bound)
            .collect();
        let zeros = || Tensor::zeros(&[d], DType::F32, Device::Cpu).map(|t| t.as_var());
        Ok(RewardModel {
            trunk,
            lora: None,
            prompt_embed: zeros()?,
            response_embed: zeros()?,
            head: Tensor::from_vec(head, &[1, d])?.as_var(),
            pooling,
        })
    }

    /// One scalar per sequence, (b,). Sequences are right-padded with 0 to the longest.
    pub fn scores(&self, batch: &[Scored]) -> Result<Tensor> {
        let d = self.trunk.config.dim;
        let n = batch
            .iter()
            .map(|s| s.prompt.len() + s.response.len())
            .max()
            .unwrap_or(0);
        if n == 0 {
            return Err(Error::Invalid("reward model: nothing to score".into()));
        }
        let b = batch.len();
        let (mut ids, mut is_prompt, mut pool) = (Vec::new(), Vec::new(), Vec::new());
        for s in batch {
            let len = s.prompt.len() + s.response.len();
            if len == 0 {
                return Err(Error::Invalid(
                    "reward model: an empty prompt and response".into(),
                ));
            }
            ids.extend(
                s.prompt
                    .iter()
                    .chain(s.response)
                    .copied()
                    .chain(std::iter::repeat(0))
                    .take(n),
            );
            is_prompt.extend((0..n).map(|t| if t < s.prompt.len() { 1.0f32 } else { 0.0 }));
            pool.extend((0..n).map(|t| match self.pooling {
                Pooling::Mean if t < len => 1.0 / len as f32,
                Pooling::Last if t + 1 == len => 1.0,
                _ => 0.0,
            }));
        }
        // Host-built inputs go to the trunk's device; f32 parameters are cast to its compute
        // dtype (bf16 on a GPU), and the scores come back in f32.
        let (device, dtype) = (self.trunk.device(), self.trunk.compute_dtype());
        let tokens = Tensor::from_vec(ids, &[b, n])?.to_device(device)?;
        // extra = mask·prompt_embed + (1 − mask)·response_embed, (b, n, D)
        let mask = Tensor::from_vec(is_prompt, &[b, n, 1])?
            .to_device(device)?
            .to_dtype(dtype)?;
        let extra = mask.mul(&self.prompt_embed.to_dtype(dtype)?)?.add(
            &mask
                .affine(-1.0, 1.0)?
                .mul(&self.response_embed.to_dtype(dtype)?)?,
        )?;
        let opts = &mut Forward {
            lora: self.lora.as_ref(),
            extra_embed: Some(&extra),
            ..Default::default()
        };
        let emb = self.trunk.embed(&tokens, opts)?;
        let pool = Tensor::from_vec(pool, &[b, n, 1])?
            .to_device(device)?
            .to_dtype(dtype)?;
        let pooled = emb.mul(&pool)?.sum_keepdim(&[1])?.reshape(&[b, d])?;
        let head = self.head.to_dtype(dtype)?;
        Ok(pooled
            .matmul(&head.t()?)?
            .reshape(&[b])?
            .to_dtype(DType::F32)?)
    }

    /// Move every tensor to `device` (parameters stay parameters; a frozen trunk stays frozen).
    pub fn move_to(&mut self, device: Device) -> Result<()> {
        let frozen = self.lora.is_some();
        self.trunk = self.trunk.to_device(device)?;
        if frozen {
            self.freeze_trunk();
        }
        if let Some(l) = self.lora.as_mut() {
            l.move_to(device)?;
        }
        for t in [
            &mut self.prompt_embed,
            &mut self.response_embed,
            &mut self.head,
        ] {
            *t = t.to_device(device)?.as_var();
        }
        Ok(())
    }

    /// Scores of `responses` to `prompt` (through the trunk's tokenizer), one batch, no
    /// gradients.
    pub fn score_texts(&self, prompt: &str, responses: &[&str]) -> Result<Vec<f32>> {
        let p = self.trunk.tokenizer.encode(prompt)?;
        let rs = self.trunk.tokenizer.encode_all(responses)?;
        let batch: Vec<Scored> = rs
            .iter()
            .map(|r| Scored {
                prompt: &p,
                response: r,
            })
            .collect();
        palm_engine::cpu::on_workers(|| {
            let _g = no_grad();
            self.scores(&batch)?.to_vec::<f32>().map_err(Error::from)
        })
    }

    /// Freeze the trunk and add fresh adapters of scope `reward` (rank `r`, alpha = r as the
    /// seed). B = 0, so scores do not change until the adapters train.
    pub fn add_lora(&mut self, r: usize, rng: &mut Rng) -> Result<()> {
        self.lora = Some(LoraScope::new(
            &self.trunk.config,
            LORA_SCOPE,
            r,
            None,
            rng,
        )?);
        self.freeze_trunk();
        Ok(())
    }

    /// Cut the trunk out of the gradient graph, so backward computes no gradient for it.
    fn freeze_trunk(&mut self) {
        for t in self.trunk.tensors_mut() {
            *t = t.detach();
        }
    }

    /// Save atomically as one self-contained file: the trunk under the seed's names (so `palm
    /// info`/`sample` read it as a model), adapters `finetune_modules.reward.*`, and
    /// `prompt_embed`, `response_embed`, `to_pred.weight`; pooling in the metadata.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.save_with(path, &[])
    }

    /// [`RewardModel::save`] with `extra` metadata entries (a run's checkpoint step).
    pub fn save_with(&self, path: &Path, extra: &[(String, String)]) -> Result<()> {
        let loras: Vec<&LoraScope> = self.lora.iter().collect();
        let mut tensors = model_tensors(&self.trunk, &loras)?;
        tensors.push(("prompt_embed".into(), self.prompt_embed.clone()));
        tensors.push(("response_embed".into(), self.response_embed.clone()));
        tensors.push(("to_pred.weight".into(), self.head.clone()));
        let mut meta = model_metadata(&self.trunk.config, &self.trunk.tokenizer, &loras)?;
        meta.insert("format".into(), FORMAT.into());
        let settings = RewardSettings {
            pooling: self.pooling,
        };
        let json = serde_json::to_string(&settings)
            .map_err(|e| Error::Invalid(format!("reward settings to JSON: {e}")))?;
        meta.insert("reward".into(), json);
        meta.extend(extra.iter().cloned());
        palm_engine::save_safetensors(path, &tensors, meta)?;
        Ok(())
    }

    /// Load a file written by `save`; anything else (a plain model, a wrong shape) is an error
    /// naming the file and, where one is at fault, the tensor.
    pub fn load(path: &Path) -> Result<Self> {
        let file = SafeFile::open(path)?;
        let bad = |msg: String| Error::data(path, None, msg);
        match file.metadata().get("format").map(String::as_str) {
            Some(FORMAT) => {}
            Some(other) => {
                return Err(bad(format!(
                    "not a reward model (format '{other}', expected '{FORMAT}'); make one with \
                     `palm reward train`"
                )));
            }
            None => {
                return Err(bad(format!(
                    "not a reward model (no 'format' in the metadata, expected '{FORMAT}')"
                )));
            }
        }
        let settings: RewardSettings = file
            .metadata()
            .get("reward")
            .ok_or_else(|| bad("no 'reward' settings in the metadata".into()))
            .and_then(|j| {
                serde_json::from_str(j)
                    .map_err(|e| bad(format!("bad 'reward' settings in the metadata: {e}")))
            })?;
        let trunk = params_of(&file)?;
        let d = trunk.config.dim;
        let lora = load_lora(&file, &trunk.config, LORA_SCOPE)?;
        let get = |name: &str, shape: &[usize]| -> Result<Tensor> {
            Ok(get_checked(&file, name, shape)?.as_var())
        };
        let mut rm = RewardModel {
            prompt_embed: get("prompt_embed", &[d])?,
            response_embed: get("response_embed", &[d])?,
            head: get("to_pred.weight", &[1, d])?,
            trunk,
            lora,
            pooling: settings.pooling,
        };
        if rm.lora.is_some() {
            rm.freeze_trunk();
        }
        Ok(rm)
    }
}

/// A reward model's own settings, saved as JSON under `reward` in the metadata.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RewardSettings {
    pooling: Pooling,
}

/// The ranking loss of one prompt's K responses scored best to worst: the mean over all
/// C(K,2) pairs (i better than j) of −log σ(r_i − r_j − margin). Each response is scored once.
pub fn ranking_loss(scores: &Tensor, margin: f32) -> Result<Tensor> {
    let k = scores.elem_count();
    if k < 2 {
        return Err(Error::Invalid(format!(
            "a ranking needs at least 2 responses, got {k}"
        )));
    }
    // Every difference r_i − r_j − margin by broadcasting (exact in f32 on any device); the
    // pairs i < j are kept by a mask that also takes the mean.
    let device = scores.device();
    let col = scores.to_dtype(DType::F32)?.reshape(&[k, 1])?;
    let diff = col
        .sub(&col.reshape(&[1, k])?)?
        .affine(1.0, -margin)?
        .reshape(&[k * k, 1])?;
    // −log σ(x) = −log_softmax([x, 0])[0]: the engine's stable log-softmax does the work.
    let zeros = Tensor::zeros(&[k * k, 1], DType::F32, device)?;
    let nll = Tensor::cat(&[&diff, &zeros], 1)?
        .log_softmax()?
        .narrow(1, 0, 1)?
        .neg()?;
    let pairs = k * (k - 1) / 2;
    let mask: Vec<f32> = (0..k * k)
        .map(|ij| {
            if ij / k < ij % k {
                1.0 / pairs as f32
            } else {
                0.0
            }
        })
        .collect();
    let mask = Tensor::from_vec(mask, &[k * k, 1])?.to_device(device)?;
    Ok(nll.mul(&mask)?.sum_all()?)
}

/// What trains: the adapters if there are any (the trunk is frozen), else the trunk; then the
/// segment embeddings and the head. A fixed order, for the optimiser's moments.
impl Trainable for RewardModel {
    fn trained(&self) -> Vec<(String, Tensor)> {
        let mut out = match &self.lora {
            Some(l) => l.trained(),
            None => self.trunk.trained(),
        };
        out.push(("prompt_embed".into(), self.prompt_embed.clone()));
        out.push(("response_embed".into(), self.response_embed.clone()));
        out.push(("to_pred.weight".into(), self.head.clone()));
        out
    }

    fn trained_mut(&mut self) -> Vec<&mut Tensor> {
        let mut out = match &mut self.lora {
            Some(l) => l.tensors_mut(),
            None => self.trunk.tensors_mut(),
        };
        out.extend([
            &mut self.prompt_embed,
            &mut self.response_embed,
            &mut self.head,
        ]);
        out
    }
}
