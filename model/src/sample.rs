//! Sampling: temperature (0 = greedy), top-k, top-p (nucleus), a seeded RNG, per-row EOS, and
//! batched generation through the KV cache.

use crate::{Error, Forward, KvCache, LoraScope, PalmParams, Result};
use palm_engine::cuda::ops::sampling::{self, Sampling};
use palm_engine::{DType, Device, Rng, Tensor, no_grad};

#[derive(Debug, Clone, PartialEq)]
pub struct SampleSettings {
    /// 0 picks the most likely token.
    pub temperature: f32,
    /// Keep only the k most likely tokens.
    pub top_k: Option<usize>,
    /// Nucleus filter, the seed's rule: in order of likelihood, keep a token while the mass of
    /// the tokens before it is ≤ p (so the first is always kept). The CUDA kernel does the same.
    pub top_p: Option<f32>,
    pub max_tokens: usize,
    /// A row stops after producing this token (which is not included in its output).
    pub eos: Option<u32>,
}

impl Default for SampleSettings {
    fn default() -> Self {
        SampleSettings {
            temperature: 1.0,
            top_k: None,
            top_p: None,
            max_tokens: 128,
            eos: None,
        }
    }
}

impl SampleSettings {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::Invalid(format!(
                "temperature must be ≥ 0, got {}",
                self.temperature
            )));
        }
        if self.top_k == Some(0) {
            return Err(Error::Invalid("top-k must be ≥ 1".into()));
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(Error::Invalid(format!("top-p must be in (0, 1], got {p}")));
        }
        Ok(())
    }

    /// The seed's `filter_thres` as top-k and top-p: k = ceil((1 − thres)·V), p = 1 − thres.
    pub fn from_filter_thres(thres: f32, vocab: usize) -> (usize, f32) {
        let k = ((1.0 - thres) * vocab as f32).ceil().max(1.0) as usize;
        (k, 1.0 - thres)
    }
}

/// Pick the next token from one row of logits.
pub fn sample_next(logits: &[f32], s: &SampleSettings, rng: &mut Rng) -> u32 {
    let argmax = || {
        let mut best = 0;
        for (i, &v) in logits.iter().enumerate() {
            if v > logits[best] {
                best = i;
            }
        }
        best as u32
    };
    if s.temperature == 0.0 {
        return argmax();
    }
    // Candidates sorted by logit, most likely first (stable: ties keep the lower id first).
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if let Some(k) = s.top_k {
        idx.truncate(k.max(1));
    }
    let m = logits[idx[0]];
    let mut probs: Vec<f64> = idx
        .iter()
        .map(|&i| (((logits[i] - m) / s.temperature) as f64).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if let Some(p) = s.top_p {
        let (mut before, mut keep) = (0.0, 0);
        for q in &probs {
            if before > p as f64 {
                break;
            }
            before += q;
            keep += 1;
        }
        idx.truncate(keep);
        probs.truncate(keep);
    }
    let total: f64 = probs.iter().sum();
    let mut u = rng.uniform() as f64 * total;
    for (i, p) in idx.iter().zip(&probs) {
        if u < *p {
            return *i as u32;
        }
        u -= p;
    }
    idx[idx.len() - 1] as u32
}

/// Continue each prompt (all the same length ≥ 1) by up to `max_tokens`, decoding through the
/// KV cache. Returns the new tokens of every row (without the prompt, without the EOS).
pub fn generate(
    params: &PalmParams,
    prompts: &[Vec<u32>],
    s: &SampleSettings,
    lora: Option<&LoraScope>,
    rng: &mut Rng,
) -> Result<Vec<Vec<u32>>> {
    palm_engine::cpu::on_workers(|| generate_inner(params, prompts, s, lora, rng))
}

fn generate_inner(
    params: &PalmParams,
    prompts: &[Vec<u32>],
    s: &SampleSettings,
    lora: Option<&LoraScope>,
    rng: &mut Rng,
) -> Result<Vec<Vec<u32>>> {
    s.validate()?;
    let _g = no_grad();
    let n = prompts.first().map_or(0, |p| p.len());
    if n == 0 || prompts.iter().any(|p| p.len() != n) {
        return Err(Error::Invalid(
            "prompts must be non-empty and of equal length".into(),
        ));
    }
    let b = prompts.len();
    crate::budget::check(
        &format!("sampling {b} row(s) of {n} + {} tokens", s.max_tokens),
        crate::budget::decoding(&params.config, b, n, s.max_tokens),
        params.device(),
    )?;
    let v = params.config.num_tokens;
    let on_gpu = params.device() != Device::Cpu;
    // On a GPU: bf16 weights once (not a cast per token) and sampling on the device, with a
    // Philox stream keyed by one draw from `rng` and the token index.
    let gpu_params;
    let params = if on_gpu {
        gpu_params = params.to_dtype(DType::BF16)?;
        &gpu_params
    } else {
        params
    };
    let seed = if on_gpu { rng.next_u64() } else { 0 };
    let mut cache = KvCache::new(params.config.depth);
    let flat: Vec<u32> = prompts.concat();
    let mut input = Tensor::from_vec(flat, &[b, n])?;
    let mut out = vec![Vec::new(); b];
    let mut done = vec![false; b];
    for step in 0..s.max_tokens {
        let logits = params.logits(
            &input,
            &mut Forward {
                lora,
                cache: Some(&mut cache),
                ..Default::default()
            },
        )?;
        let last = logits.narrow(1, logits.dims()[1] - 1, 1)?;
        let (last, drawn) = if on_gpu {
            let rule = Sampling {
                temperature: s.temperature,
                top_k: s.top_k.unwrap_or(0),
                top_p: s.top_p.unwrap_or(1.0),
                seed,
                step: step as u64,
            };
            let ids = sampling::sample(&last.reshape(&[b, v])?, &rule)?;
            (Vec::new(), ids.to_vec::<u32>()?)
        } else {
            let host = last.to_vec::<f32>()?;
            if let Some(i) = host.iter().position(|x| !x.is_finite()) {
                return Err(Error::Invalid(format!(
                    "the model's logits are {} (row {}, token id {}) after {step} generated \
                     tokens: its weights overflow",
                    host[i],
                    i / v,
                    i % v
                )));
            }
            (host, Vec::new())
        };
        let mut next = vec![0u32; b];
        for r in 0..b {
            if done[r] {
                continue;
            }
            let t = if on_gpu {
                drawn[r]
            } else {
                sample_next(&last[r * v..(r + 1) * v], s, rng)
            };
            if Some(t) == s.eos {
                done[r] = true;
            } else {
                out[r].push(t);
                next[r] = t;
            }
        }
        if done.iter().all(|&d| d) {
            break;
        }
        input = Tensor::from_vec(next, &[b, 1])?;
    }
    Ok(out)
}
