//! What PPO and GRPO share around their losses: sampling episodes from the actor through the KV
//! cache, padding them into one batch with the mask of counted response tokens, per-token
//! log-probs and entropies of that batch, and scoring responses with a reward model or a rule.

use crate::labelers::Labeler;
use crate::reward::{self, RewardModel};
use crate::rl_math::response_mask;
use crate::{Error, Result};
use palm_engine::{Rng, Tensor, no_grad};
use palm_model::{Forward, LoraScope, PalmParams, SampleSettings, Tokenizer, generate};
use std::path::Path;

/// One sampled episode: a prompt and the actor's response to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Episode {
    pub prompt: Vec<u32>,
    /// The sampled tokens, ending with the EOS token when the actor chose to stop (the EOS is
    /// an action too, so it is trained on).
    pub response: Vec<u32>,
    /// Whether the response ended with EOS (rather than at the token limit).
    pub ended: bool,
}

impl Episode {
    /// The response without its EOS, as the reward sees it.
    pub fn text(&self) -> &[u32] {
        let n = self.response.len() - usize::from(self.ended);
        &self.response[..n]
    }
}

/// How rollouts are sampled: plain temperature sampling, at most `max_new` tokens, stopping at
/// `eos` (if any).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    pub temperature: f32,
    pub max_new: usize,
    pub eos: Option<u32>,
}

/// Sample one response per prompt. `generate` decodes prompts of one length together through
/// the KV cache (it has no attention mask for left padding), so rows are grouped by prompt
/// length, groups in order of first appearance; results come back in the prompts' order.
pub fn sample_episodes(
    params: &PalmParams,
    lora: Option<&LoraScope>,
    prompts: &[Vec<u32>],
    s: &Sampling,
    rng: &mut Rng,
) -> Result<Vec<Episode>> {
    if s.max_new == 0 || !(s.temperature > 0.0 && s.temperature.is_finite()) {
        return Err(Error::Invalid(format!(
            "rollouts need max_new ≥ 1 and a temperature > 0, got {} and {}",
            s.max_new, s.temperature
        )));
    }
    let settings = SampleSettings {
        temperature: s.temperature,
        top_k: None,
        top_p: None,
        max_tokens: s.max_new,
        eos: s.eos,
    };
    let mut lengths: Vec<usize> = Vec::new();
    for p in prompts {
        if !lengths.contains(&p.len()) {
            lengths.push(p.len());
        }
    }
    let mut out: Vec<Option<Episode>> = vec![None; prompts.len()];
    for len in lengths {
        let rows: Vec<usize> = (0..prompts.len())
            .filter(|&i| prompts[i].len() == len)
            .collect();
        let group: Vec<Vec<u32>> = rows.iter().map(|&i| prompts[i].clone()).collect();
        let responses = generate(params, &group, &settings, lora, rng)?;
        for (&i, mut response) in rows.iter().zip(responses) {
            // `generate` drops the EOS; a row shorter than the limit stopped there.
            let ended = response.len() < s.max_new && s.eos.is_some();
            if let (true, Some(eos)) = (ended, s.eos) {
                response.push(eos);
            }
            out[i] = Some(Episode {
                prompt: prompts[i].clone(),
                response,
                ended,
            });
        }
    }
    out.into_iter()
        .map(|e| e.ok_or_else(|| Error::Invalid("a prompt got no rollout".into())))
        .collect()
}

/// Episodes as one right-padded batch: inputs (b, n), next-token targets (b, n) and the mask
/// of counted targets (response tokens up to and including the first EOS; not the prompt, not
/// padding), all row-major on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct Padded {
    pub b: usize,
    pub n: usize,
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    pub mask: Vec<f32>,
}

impl Padded {
    pub fn new(episodes: &[Episode], eos: Option<u32>) -> Result<Self> {
        let longest = episodes
            .iter()
            .map(|e| e.prompt.len() + e.response.len())
            .max();
        let n = match longest {
            Some(l) if l >= 2 => l - 1,
            _ => {
                return Err(Error::Invalid(
                    "a rollout batch needs a sequence of 2 tokens or more".into(),
                ));
            }
        };
        let (mut inputs, mut targets, mut mask) = (Vec::new(), Vec::new(), Vec::new());
        for e in episodes {
            if e.prompt.is_empty() {
                return Err(Error::Invalid("an episode with an empty prompt".into()));
            }
            let tokens: Vec<u32> = e.prompt.iter().chain(&e.response).copied().collect();
            let padded = |from: usize| {
                tokens
                    .iter()
                    .skip(from)
                    .copied()
                    .chain(std::iter::repeat(palm_engine::IGNORE_ID))
                    .take(n)
            };
            inputs.extend(padded(0));
            targets.extend(padded(1));
            mask.extend(response_mask(&tokens, e.prompt.len(), eos, n));
        }
        Ok(Padded {
            b: episodes.len(),
            n,
            inputs,
            targets,
            mask,
        })
    }

    /// The rows `idx`, in that order, at the same width.
    pub fn rows(&self, idx: &[usize]) -> Padded {
        Padded {
            b: idx.len(),
            n: self.n,
            inputs: gather(&self.inputs, self.n, idx),
            targets: gather(&self.targets, self.n, idx),
            mask: gather(&self.mask, self.n, idx),
        }
    }

    pub fn input_tensor(&self) -> Result<Tensor> {
        Ok(Tensor::from_vec(self.inputs.clone(), &[self.b, self.n])?)
    }

    pub fn target_tensor(&self) -> Result<Tensor> {
        Ok(Tensor::from_vec(self.targets.clone(), &[self.b, self.n])?)
    }

    /// Counted tokens per row.
    pub fn lengths(&self) -> Vec<f32> {
        self.mask.chunks(self.n).map(|m| m.iter().sum()).collect()
    }
}

/// Rows `idx` of a row-major (rows, n) host matrix.
pub fn gather<T: Copy>(x: &[T], n: usize, idx: &[usize]) -> Vec<T> {
    idx.iter()
        .flat_map(|&i| x[i * n..(i + 1) * n].iter().copied())
        .collect()
}

/// Logits (b, n, V) of a batch under the model with adapters `lora` (none: the reference).
pub fn logits(params: &PalmParams, lora: Option<&LoraScope>, batch: &Padded) -> Result<Tensor> {
    let opts = &mut Forward {
        lora,
        ..Default::default()
    };
    Ok(params.logits(&batch.input_tensor()?, opts)?)
}

/// Per-token log-probs (b, n) of the batch's targets under softmax(logits / temperature): the
/// distribution the rollout sampled from. Uncounted positions hold values the losses ignore.
pub fn token_logprobs(logits: &Tensor, batch: &Padded, temperature: f32) -> Result<Tensor> {
    let targets = batch.target_tensor()?.to_device(logits.device())?;
    Ok(palm_engine::logprob(logits, &targets, temperature)?)
}

/// Per-token entropies (b, n) of softmax(logits / temperature).
pub fn token_entropy(logits: &Tensor, temperature: f32) -> Result<Tensor> {
    Ok(palm_engine::entropy(logits, temperature)?)
}

/// Log-probs of the batch under a model, without gradients, on the host.
pub fn logprobs_host(
    params: &PalmParams,
    lora: Option<&LoraScope>,
    batch: &Padded,
    temperature: f32,
) -> Result<Vec<f32>> {
    let _g = no_grad();
    Ok(token_logprobs(&logits(params, lora, batch)?, batch, temperature)?.to_f32_vec()?)
}

/// Where the scalar score of a response comes from.
pub enum RewardSource {
    /// A reward model from `palm reward train`.
    Model(Box<RewardModel>),
    /// A scripted labeler's score of the text, decoded with the policy's tokenizer.
    Rule(Labeler, Tokenizer),
}

impl RewardSource {
    /// Exactly one of a reward-model file and a rule, for a policy reading text through
    /// `tokenizer` (a reward model must read it the same way).
    pub fn load(model: Option<&Path>, rule: Option<&str>, tokenizer: &Tokenizer) -> Result<Self> {
        match (model, rule) {
            (Some(path), None) => {
                let rm = RewardModel::load(path)?;
                if rm.trunk.tokenizer != *tokenizer {
                    return Err(Error::Invalid(format!(
                        "--reward {}: it reads text as {}, the policy as {}; a reward model \
                         must share the policy's tokenizer",
                        path.display(),
                        rm.trunk.tokenizer.describe(),
                        tokenizer.describe()
                    )));
                }
                Ok(RewardSource::Model(Box::new(rm)))
            }
            (None, Some(rule)) => rule
                .parse()
                .map(|l| RewardSource::Rule(l, tokenizer.clone()))
                .map_err(|e| Error::Invalid(format!("--rule: {e}"))),
            _ => Err(Error::Invalid(
                "give exactly one of --reward RM and --rule afinn|length:N|count:CHAR".into(),
            )),
        }
    }

    /// Put a reward model on `device` (a rule needs nothing).
    pub fn move_to(&mut self, device: palm_engine::Device) -> Result<()> {
        match self {
            RewardSource::Model(m) => m.move_to(device),
            RewardSource::Rule(..) => Ok(()),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            RewardSource::Model(m) => format!(
                "a reward model ({} pooling{})",
                m.pooling.name(),
                if m.lora.is_some() {
                    format!(", LoRA '{}'", reward::LORA_SCOPE)
                } else {
                    String::new()
                }
            ),
            RewardSource::Rule(l, _) => format!("the rule {l}"),
        }
    }

    /// One score per episode, of its response without the EOS. A reward model scores `batch`
    /// episodes per forward, without gradients.
    pub fn score(&self, episodes: &[Episode], batch: usize) -> Result<Vec<f32>> {
        match self {
            RewardSource::Rule(l, tokenizer) => Ok(episodes
                .iter()
                .map(|e| l.score(&tokenizer.decode(e.text())) as f32)
                .collect()),
            RewardSource::Model(m) => palm_engine::cpu::on_workers(|| {
                let _g = no_grad();
                let mut out = Vec::with_capacity(episodes.len());
                for chunk in episodes.chunks(batch.max(1)) {
                    let rows: Vec<reward::Scored> = chunk
                        .iter()
                        .map(|e| reward::Scored {
                            prompt: &e.prompt,
                            response: e.text(),
                        })
                        .collect();
                    out.extend(m.scores(&rows)?.to_f32_vec()?);
                }
                Ok(out)
            }),
        }
    }
}

/// Mean and (population) standard deviation.
pub fn mean_std(x: &[f32]) -> (f32, f32) {
    if x.is_empty() {
        return (0.0, 0.0);
    }
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean as f32, var.sqrt() as f32)
}
