//! Memory estimates from sizes alone, checked before anything is allocated, so that a size from
//! a flag or a file (`--batch 1e9`, `depth: 1000000000`, `--max-tokens 1e9`) is a clear error
//! saying how much it would need instead of an allocation failure, a "capacity overflow" panic or
//! a run that grows until the machine gives out.
//!
//! The estimates count f32 values (4 bytes) in u128, so no size can overflow them. They are
//! deliberately on the high side (every activation a step keeps for backward, twice, plus a full
//! attention score matrix), not a measurement: the `tiny` preset's default run is estimated at
//! 0.34 GB and peaks at 0.38 GB of resident memory.

use crate::{Error, PalmConfig, Result};
use palm_engine::Device;

const F32: u128 = 4;
/// Past this nothing is attempted whatever a machine reports (1 PiB).
const ABSURD: u128 = 1 << 50;

/// Values a model holds.
pub fn params(c: &PalmConfig) -> u128 {
    let (d, depth) = (c.dim as u128, c.depth as u128);
    let per_layer =
        d * c.fused_width() as u128 + c.attn_inner() as u128 * d + c.ff_inner() as u128 * d + d;
    depth * per_layer + c.num_tokens as u128 * d + d
}

/// Values of one LoRA scope of rank `r` (the four adapted projections of every layer).
pub fn lora(c: &PalmConfig, r: usize) -> u128 {
    let io: u128 = crate::LoraScope::io(c)
        .iter()
        .map(|&(i, o)| i as u128 + o as u128)
        .sum();
    c.depth as u128 * r as u128 * io
}

/// Activation values one token keeps in one layer for backward (inputs of every op).
fn per_token_layer(c: &PalmConfig, seq: u128) -> u128 {
    let d = c.dim as u128;
    5 * d
        + 2 * c.fused_width() as u128
        + 2 * c.attn_inner() as u128
        + c.ff_inner() as u128
        + c.heads as u128 * seq
}

/// Bytes to train all of `c` on `rows` sequences of `seq` tokens: weights, gradients, two AdamW
/// moments, and activations (kept for backward and their gradients) with the logits.
pub fn training(c: &PalmConfig, rows: usize, seq: usize) -> u128 {
    4 * params(c) * F32 + activations(c, rows, seq)
}

/// Bytes to train only `trainable` values (adapters, heads) on a frozen `c`.
pub fn adapter_training(c: &PalmConfig, trainable: u128, rows: usize, seq: usize) -> u128 {
    params(c) * F32 + 4 * trainable * F32 + activations(c, rows, seq)
}

fn activations(c: &PalmConfig, rows: usize, seq: usize) -> u128 {
    let (tokens, seq) = (rows as u128 * seq as u128, seq as u128);
    let per_token = 2 * c.depth as u128 * per_token_layer(c, seq) + 3 * c.num_tokens as u128;
    tokens * per_token * F32
}

/// Bytes to sample `new` tokens after a `prompt`-token prompt for each of `rows` rows: the
/// weights, the KV cache (one key and one value head per layer: multi-query attention), one
/// layer's activations of the prompt and the logits.
pub fn decoding(c: &PalmConfig, rows: usize, prompt: usize, new: usize) -> u128 {
    let (rows, prompt) = (rows as u128, prompt.max(1) as u128);
    let len = prompt + new as u128;
    let cache = rows * len * c.depth as u128 * 2 * c.dim_head as u128;
    let prefill = rows * prompt * (per_token_layer(c, prompt) + c.num_tokens as u128);
    (params(c) + cache + prefill) * F32
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
