//! `palm eval`: loss and bits per byte of a checkpoint on a file, windows of N + 1 tokens at
//! stride N from the start (the last partial window dropped), every target ≠ 0 counted. Bits
//! per byte are the mean loss per token × the file's tokens per byte / ln 2, so models with
//! different tokenizers compare.

use crate::corpus::{Ids, read_bytes, strided_windows};
use crate::pretrain::score_windows;
use crate::{Error, Result};
use clap::Args;
use palm_model::checkpoint::load_language_model;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Model checkpoint (ours or the seed's safetensors).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Text file to score (.gz is decompressed), through the checkpoint's tokenizer.
    #[arg(long)]
    pub data: PathBuf,
    #[command(flatten)]
    pub tokenizer: crate::flags::TokenizerArg,
    /// Window length N (each window scores N targets).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    pub seq_len: u64,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: u64,
    /// One JSON line: loss, bits_per_byte, tokens (targets scored), bytes (of the file).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub device: super::DeviceArg,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let device = args.device.resolve()?;
    let (params, _) = load_language_model(&args.checkpoint)?;
    let params = args
        .tokenizer
        .apply(params, &args.checkpoint)?
        .to_device(device)?;
    let (name, bytes) = read_bytes(Some(&args.data))?;
    let byte_count = bytes.len();
    let ids = Ids::of(bytes, &params.tokenizer, &name)?;
    let windows = strided_windows(&ids, args.seq_len as usize);
    if windows.is_empty() {
        return Err(Error::data(
            &args.data,
            None,
            format!(
                "{} tokens: fewer than one window of seq-len + 1 = {} + 1 tokens",
                ids.len(),
                args.seq_len
            ),
        ));
    }
    let (total, count) = score_windows(&params, &windows, args.batch as usize)?;
    if count == 0 {
        return Err(Error::data(&args.data, None, "no target ≠ 0 to score"));
    }
    let loss = total / count as f64;
    let bits = loss * (ids.len() as f64 / byte_count as f64) / std::f64::consts::LN_2;
    if args.json {
        super::emit(serde_json::json!({
            "loss": loss,
            "bits_per_byte": bits,
            "tokens": count,
            "bytes": byte_count,
        }));
    } else {
        super::emit(format!(
            "loss {loss:.4}, {bits:.4} bits/byte over {count} tokens of {}",
            args.data.display()
        ));
    }
    Ok(())
}
