//! PaLM hyperparameters, with the seed's JSON keys so its checkpoints' `config` metadata loads.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PalmConfig {
    pub num_tokens: usize,
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
    #[serde(default = "default_dim_head")]
    pub dim_head: usize,
    #[serde(default = "default_ff_mult")]
    pub ff_mult: usize,
    #[serde(default = "default_true")]
    pub use_xpos: bool,
    #[serde(default = "default_xpos_scale_base")]
    pub xpos_scale_base: usize,
}

fn default_dim_head() -> usize {
    64
}
fn default_ff_mult() -> usize {
    4
}
fn default_true() -> bool {
    true
}
fn default_xpos_scale_base() -> usize {
    512
}

/// The named sizes: `tiny` for tests and the CPU default run, `enwik8` as the original's
/// training script, `small` (GPT-2-small sized), `1b`.
pub const PRESETS: &[&str] = &["tiny", "enwik8", "small", "1b"];

impl PalmConfig {
    pub fn new(num_tokens: usize, dim: usize, depth: usize, heads: usize, dim_head: usize) -> Self {
        PalmConfig {
            num_tokens,
            dim,
            depth,
            heads,
            dim_head,
            ff_mult: 4,
            use_xpos: true,
            xpos_scale_base: 512,
        }
    }

    pub fn preset(name: &str) -> Option<Self> {
        Some(match name {
            // The torch anchor's CPU smoke size.
            "tiny" => Self::new(256, 128, 2, 4, 32),
            "enwik8" => Self::new(256, 512, 8, 8, 64),
            "small" => Self::new(50304, 768, 12, 12, 64),
            "1b" => Self::new(50304, 2048, 16, 16, 128),
            _ => return None,
        })
    }

    pub fn ff_inner(&self) -> usize {
        self.dim * self.ff_mult
    }
    /// The longest sequence a cached decode may reach (positions count from 0 with the centre
    /// at 0): xPos's scales overflow beyond it. Unbounded without xPos.
    pub fn max_decode_len(&self) -> usize {
        if self.use_xpos {
            palm_engine::RopeTables::xpos_reach(self.xpos_scale_base as f64) + 1
        } else {
            usize::MAX
        }
    }

    pub fn attn_inner(&self) -> usize {
        self.heads * self.dim_head
    }
    /// Output width of the fused projection: q (H·Dh), k (Dh), v (Dh), ff x (F), ff gate (F).
    pub fn fused_dims(&self) -> [usize; 5] {
        let f = self.ff_inner();
        [self.attn_inner(), self.dim_head, self.dim_head, f, f]
    }
    pub fn fused_width(&self) -> usize {
        self.fused_dims().iter().sum()
    }

    /// Trainable parameter count (tied embedding counted once).
    pub fn num_params(&self) -> usize {
        let d = self.dim;
        let per_layer = d * self.fused_width() + self.attn_inner() * d + self.ff_inner() * d + d;
        self.depth * per_layer + self.num_tokens * d + d
    }

    /// Forward+backward FLOPs per token: 6 per weight plus causal attention at length `seq`.
    pub fn train_flops_per_token(&self, seq: usize) -> f64 {
        let attn = 6 * self.depth * self.heads * self.dim_head * seq;
        (6 * self.num_params() + attn) as f64
    }

    pub fn validate(&self) -> Result<(), String> {
        let checks = [
            (self.num_tokens > 0, "num_tokens must be > 0"),
            (self.dim > 0, "dim must be > 0"),
            (self.depth > 0, "depth must be > 0"),
            (self.heads > 0, "heads must be > 0"),
            (
                self.dim_head > 0 && self.dim_head.is_multiple_of(2),
                "dim_head must be even and > 0",
            ),
            (self.ff_mult > 0, "ff_mult must be > 0"),
            (self.xpos_scale_base > 0, "xpos_scale_base must be > 0"),
        ];
        if let Some((_, msg)) = checks.iter().find(|(ok, _)| !ok) {
            return Err(format!("invalid model config: {msg}"));
        }
        // Every size derived from the config must fit (a hostile file could ask for 2^62 heads).
        let fits = self
            .heads
            .checked_mul(self.dim_head)
            .zip(self.dim.checked_mul(self.ff_mult))
            .and_then(|(a, f)| {
                a.checked_add(2 * self.dim_head)?
                    .checked_add(f.checked_mul(2)?)
            })
            .and_then(|w| w.checked_mul(self.dim)?.checked_mul(self.depth))
            .zip(self.num_tokens.checked_mul(self.dim))
            .is_some_and(|(w, e)| w < 1 << 40 && e < 1 << 40);
        if !fits {
            return Err("invalid model config: sizes overflow (dim, depth, heads, dim_head, ff_mult or num_tokens too large)".into());
        }
        Ok(())
    }
}
