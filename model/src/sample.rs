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

/// The error for logits that are not finite (`what`: the value and where) after `step` drawn
/// tokens.
fn overflowed(what: &str, step: u64) -> Error {
    Error::Invalid(format!(
        "the model's logits are {what} after {step} generated tokens: its weights overflow"
    ))
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
    let n = prompts.first().map_or(0, |p| p.len());
    if n == 0 || prompts.iter().any(|p| p.len() != n) {
        return Err(Error::Invalid(
            "prompts must be non-empty and of equal length".into(),
        ));
    }
    let b = prompts.len();
    let what = format!("a prompt of {n} tokens and {} new ones", s.max_tokens);
    check_decode_len(&params.config, n.saturating_add(s.max_tokens), &what)?;
    crate::budget::check(
        &format!("sampling {b} row(s) of {n} + {} tokens", s.max_tokens),
        crate::budget::decoding(&params.config, b, n, s.max_tokens),
        params.device(),
    )?;
    let mut dec = Decoder::new(params, lora, b, rng)?;
    dec.feed(&prompts.concat())?;
    let mut out = vec![Vec::new(); b];
    let mut done = vec![false; b];
    for _ in 0..s.max_tokens {
        let drawn = dec.draw(s, rng)?;
        let mut next = vec![0u32; b];
        for r in 0..b {
            if done[r] {
                continue;
            }
            if Some(drawn[r]) == s.eos {
                done[r] = true;
            } else {
                out[r].push(drawn[r]);
                next[r] = drawn[r];
            }
        }
        if done.iter().all(|&d| d) {
            break;
        }
        dec.feed(&next)?;
    }
    Ok(out)
}

/// An error unless a decode may reach `len` positions (xPos's reach, see `max_decode_len`);
/// `what` says where the length comes from.
pub fn check_decode_len(c: &crate::PalmConfig, len: usize, what: &str) -> Result<()> {
    let max = c.max_decode_len();
    if len > max {
        return Err(Error::Invalid(format!(
            "{what} makes {len} positions, more than the {max} this model can decode: xPos's \
             position scales (scale base {}) overflow beyond that",
            c.xpos_scale_base
        )));
    }
    Ok(())
}

/// Incremental decoding of `rows` sequences through one KV cache: feed tokens, draw the next
/// ones, feed those, … (`generate` for a batch, `palm chat` turn after turn). On a GPU the
/// weights are cast to bf16 once and the draws happen on the device (Philox keyed by one draw
/// of the caller's `Rng` and a counter); only the drawn ids come back.
pub struct Decoder<'a> {
    params: std::borrow::Cow<'a, PalmParams>,
    lora: Option<&'a LoraScope>,
    rows: usize,
    cache: KvCache,
    /// The last position's logits of every row (rows, V), after the latest `feed`.
    last: Option<Tensor>,
    seed: u64,
    draws: u64,
}

impl<'a> Decoder<'a> {
    pub fn new(
        params: &'a PalmParams,
        lora: Option<&'a LoraScope>,
        rows: usize,
        rng: &mut Rng,
    ) -> Result<Self> {
        let on_gpu = params.device() != Device::Cpu;
        let depth = params.config.depth;
        let params = if on_gpu {
            std::borrow::Cow::Owned(params.to_dtype(DType::BF16)?)
        } else {
            std::borrow::Cow::Borrowed(params)
        };
        Ok(Decoder {
            seed: if on_gpu { rng.next_u64() } else { 0 },
            params,
            lora,
            rows,
            cache: KvCache::new(depth),
            last: None,
            draws: 0,
        })
    }

    /// Forget every position.
    pub fn clear(&mut self) {
        self.cache = KvCache::new(self.params.config.depth);
        self.last = None;
    }

    /// Positions cached so far (per row).
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    /// Run `tokens` (rows × n, row-major, n ≥ 1) through the model after what is cached.
    pub fn feed(&mut self, tokens: &[u32]) -> Result<()> {
        let n = tokens.len() / self.rows.max(1);
        if n == 0 || n * self.rows != tokens.len() {
            return Err(Error::Invalid(format!(
                "{} tokens do not make {} equal non-empty rows",
                tokens.len(),
                self.rows
            )));
        }
        let len = self.cache.len() + n;
        check_decode_len(&self.params.config, len, "the decoder's cache")?;
        let _g = no_grad();
        let input = Tensor::from_vec(tokens.to_vec(), &[self.rows, n])?;
        let input = input.to_device(self.params.device())?;
        let logits = self.params.logits(
            &input,
            &mut Forward {
                lora: self.lora,
                cache: Some(&mut self.cache),
                ..Default::default()
            },
        )?;
        let v = self.params.config.num_tokens;
        self.last = Some(logits.narrow(1, n - 1, 1)?.reshape(&[self.rows, v])?);
        Ok(())
    }

    /// The next token of every row under `s`, from the logits of the last `feed`.
    pub fn draw(&mut self, s: &SampleSettings, rng: &mut Rng) -> Result<Vec<u32>> {
        let last = self
            .last
            .as_ref()
            .ok_or_else(|| Error::Invalid("nothing fed to draw from".into()))?;
        let v = self.params.config.num_tokens;
        let step = self.draws;
        self.draws += 1;
        if self.params.device() != Device::Cpu {
            // The device draws without looking at the logits as a whole; their sum (one
            // reduction and one scalar read a token) is NaN or infinite when any of them is.
            let total = last.to_dtype(DType::F32)?.sum_all()?.to_scalar()?;
            if !total.is_finite() {
                return Err(overflowed(
                    &format!("{total} summed over the vocabulary"),
                    step,
                ));
            }
            let rule = Sampling {
                temperature: s.temperature,
                top_k: s.top_k.unwrap_or(0),
                top_p: s.top_p.unwrap_or(1.0),
                seed: self.seed,
                step,
            };
            return Ok(sampling::sample(last, &rule)?.to_vec::<u32>()?);
        }
        let host = last.to_vec::<f32>()?;
        if let Some(i) = host.iter().position(|x| !x.is_finite()) {
            let at = format!("{} (row {}, token id {})", host[i], i / v, i % v);
            return Err(overflowed(&at, step));
        }
        Ok((0..self.rows)
            .map(|r| sample_next(&host[r * v..(r + 1) * v], s, rng))
            .collect())
    }
}
