//! palm-model: the PaLM of PaLM-rlhf-pytorch 0.7.5 (the seed) on the palm engine — config,
//! parameters under the seed's names, forward, LoRA, KV cache, sampling, tokenizers (bytes or
//! BPE) and checkpoints.

pub mod budget;
pub mod cache;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod forward;
pub mod lora;
pub mod params;
pub mod sample;
pub mod tokenizer;
pub mod trainable;

pub use cache::KvCache;
pub use config::{PRESETS, PalmConfig};
pub use error::{Error, Result};
pub use forward::Forward;
pub use lora::{Lora, LoraScope};
pub use params::{LayerParams, PalmParams};
pub use sample::{Decoder, SampleSettings, check_decode_len, generate, sample_next};
pub use tokenizer::Tokenizer;
pub use trainable::Trainable;
