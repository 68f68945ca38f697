//! Memory estimates from sizes alone, checked before anything is allocated, so that a size from
//! a flag or a file (`--batch 1e9`, `depth: 1000000000`, `--max-tokens 1e9`) is a clear error
//! saying how much it would need instead of an allocation failure, a "capacity overflow" panic or
//! a run that grows until the machine gives out.
//!
//! The estimates count f32 values (4 bytes) in u128, saturating, so no size can overflow them. They are
//! deliberately on the high side (every activation a step keeps for backward, twice, plus a full
//! attention score matrix), not a measurement: the `tiny` preset's default run is estimated at
//! 0.34 GB and peaks at 0.38 GB of resident memory.

use crate::{Error, PalmConfig, Result};
use palm_engine::Device;
use std::ops::{Add, Mul};

const F32: N = N(4);
/// Past this nothing is attempted whatever a machine reports (1 PiB).
const ABSURD: u128 = 1 << 50;

/// A count that saturates at `u128::MAX` instead of overflowing (three sizes near 2^64 multiply
/// past even u128); a saturated estimate is refused like any other too large.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct N(u128);

impl Add for N {
    type Output = N;
    fn add(self, o: N) -> N {
        N(self.0.saturating_add(o.0))
    }
}

impl Mul for N {
    type Output = N;
    fn mul(self, o: N) -> N {
        N(self.0.saturating_mul(o.0))
    }
}

fn n(x: usize) -> N {
    N(x as u128)
}

/// Values a model holds.
pub fn params(c: &PalmConfig) -> u128 {
    params_n(c).0
}

fn params_n(c: &PalmConfig) -> N {
    let d = n(c.dim);
    let per_layer = d * n(c.fused_width()) + n(c.attn_inner()) * d + n(c.ff_inner()) * d + d;
    n(c.depth) * per_layer + n(c.num_tokens) * d + d
}

/// Values of one LoRA scope of rank `r` (the four adapted projections of every layer).
pub fn lora(c: &PalmConfig, r: usize) -> u128 {
    let io = crate::LoraScope::io(c)
        .iter()
        .fold(N(0), |acc, &(i, o)| acc + n(i) + n(o));
    (n(c.depth) * n(r) * io).0
}

/// Activation values one token keeps in one layer for backward (inputs of every op).
fn per_token_layer(c: &PalmConfig, seq: N) -> N {
    let d = n(c.dim);
    N(5) * d
        + N(2) * n(c.fused_width())
        + N(2) * n(c.attn_inner())
        + n(c.ff_inner())
        + n(c.heads) * seq
}

/// Bytes to train all of `c` on `rows` sequences of `seq` tokens: weights, gradients, two AdamW
/// moments, and activations (kept for backward and their gradients) with the logits.
pub fn training(c: &PalmConfig, rows: usize, seq: usize) -> u128 {
    (N(4) * params_n(c) * F32 + activations(c, rows, seq)).0
}

/// Bytes to train only `trainable` values (adapters, heads) on a frozen `c`.
pub fn adapter_training(c: &PalmConfig, trainable: u128, rows: usize, seq: usize) -> u128 {
    (params_n(c) * F32 + N(4) * N(trainable) * F32 + activations(c, rows, seq)).0
}

fn activations(c: &PalmConfig, rows: usize, seq: usize) -> N {
    let per_token = N(2) * n(c.depth) * per_token_layer(c, n(seq)) + N(3) * n(c.num_tokens);
    n(rows) * n(seq) * per_token * F32
}

/// Bytes to sample `new` tokens after a `prompt`-token prompt for each of `rows` rows: the
/// weights, the KV cache (one key and one value head per layer: multi-query attention), one
/// layer's activations of the prompt and the logits.
pub fn decoding(c: &PalmConfig, rows: usize, prompt: usize, new: usize) -> u128 {
    let (rows, prompt) = (n(rows), n(prompt.max(1)));
    let len = prompt + n(new);
    let cache = rows * len * n(c.depth) * N(2) * n(c.dim_head);
    let prefill = rows * prompt * (per_token_layer(c, prompt) + n(c.num_tokens));
    ((params_n(c) + cache + prefill) * F32).0
}

/// An error if `bytes` exceed what `device` has (or anything sensible), naming `what`.
pub fn check(what: &str, bytes: u128, device: Device) -> Result<()> {
    let available = device.memory_available().map(u128::from);
    let limit = available.unwrap_or(ABSURD).min(ABSURD);
    if bytes <= limit {
        return Ok(());
    }
    let have = match available {
        Some(a) => format!("{} is available on {device}", gb(a)),
        None => format!("more than {} is never attempted", gb(ABSURD)),
    };
    Err(Error::Invalid(format!(
        "{what} would need about {} of memory, but {have}; use smaller sizes",
        gb(bytes)
    )))
}

fn gb(bytes: u128) -> String {
    let g = bytes as f64 / 1e9;
    if g < 1e6 {
        format!("{g:.2} GB")
    } else {
        format!("{g:.1e} GB")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_size_overflows_and_every_size_counts() {
        let c = PalmConfig::preset("tiny").expect("tiny");
        let big = usize::MAX;
        // Finite (u128) answers for the largest sizes a flag can give.
        assert!(training(&c, big, big) > ABSURD);
        assert!(decoding(&c, big, big, big) > ABSURD);
        assert!(adapter_training(&c, lora(&c, big), 1, 2) > ABSURD);
        // More of anything needs more.
        let base = training(&c, 16, 257);
        assert!(training(&c, 32, 257) > base && training(&c, 16, 513) > base);
        let d = decoding(&c, 1, 4, 200);
        assert!(decoding(&c, 2, 4, 200) > d && decoding(&c, 1, 4, 400) > d);
        let deeper = PalmConfig {
            depth: 4,
            ..c.clone()
        };
        assert!(training(&deeper, 16, 257) > base);
        // LoRA counts match the adapters a scope builds.
        let mut rng = palm_engine::Rng::new(0);
        let scope = crate::LoraScope::new(&c, "t", 4, None, &mut rng).expect("scope");
        let built: usize = scope
            .named()
            .iter()
            .map(|(_, t)| t.dims().iter().product::<usize>())
            .sum();
        assert_eq!(lora(&c, 4), built as u128);
        assert_eq!(params(&c), c.num_params() as u128);
        // The default `palm train` run (tiny, 16 × 257): what the module's comment quotes.
        assert_eq!(format!("{:.2}", base as f64 / 1e9), "0.34");
    }

    #[test]
    fn refusals_name_the_job_and_the_need() {
        let c = PalmConfig::preset("tiny").expect("tiny");
        let e = check("--num 9", decoding(&c, usize::MAX, 4, 4), Device::Cpu)
            .expect_err("refused")
            .to_string();
        assert!(e.starts_with("--num 9 would need about"), "{e}");
        assert!(e.contains(" GB"), "{e}");
        check("a small job", decoding(&c, 1, 4, 4), Device::Cpu).expect("fits");
    }
}
