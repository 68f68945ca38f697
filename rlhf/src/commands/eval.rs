//! `palm eval`: loss and bits per byte of a checkpoint on a file, windows of N + 1 bytes at
//! stride N from the start (the last partial window dropped), every target ≠ 0 counted.

use crate::corpus::{read_bytes, strided_windows};
use crate::{Error, Result};
use clap::Args;
use palm_engine::{Tensor, no_grad};
use palm_model::checkpoint::load_language_model;
use palm_model::{Forward, PalmParams};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Model checkpoint (ours or the seed's safetensors).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Text file to score (.gz is decompressed); its bytes are the tokens.
    #[arg(long)]
    pub data: PathBuf,
    /// Window length N (each window scores N targets).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    pub seq_len: u64,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: u64,
    /// cpu, cuda or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// Summed loss (nats) and counted targets over windows of n + 1 tokens, `batch` at a time.
pub fn score_windows(
    params: &PalmParams,
    windows: &[Vec<u32>],
    batch: usize,
) -> Result<(f64, usize)> {
    palm_engine::cpu::on_workers(|| score(params, windows, batch))
}

fn score(params: &PalmParams, windows: &[Vec<u32>], batch: usize) -> Result<(f64, usize)> {
    let _g = no_grad();
    let mut total = 0f64;
    let mut count = 0usize;
    let batch = batch.max(1);
    let (rows, len) = (
        batch.min(windows.len()),
        windows.first().map_or(0, Vec::len),
    );
    palm_model::budget::check(
        &format!("scoring {rows} window(s) of {len} tokens at once"),
        palm_model::budget::decoding(&params.config, rows, len, 0),
        params.device(),
    )?;
    for (c, chunk) in windows.chunks(batch).enumerate() {
        let len = chunk[0].len();
        let tokens = Tensor::from_vec(chunk.concat(), &[chunk.len(), len])?;
        let (loss, n) = params.loss(&tokens, &mut Forward::default())?;
        let value = loss.to_scalar()?;
        if n > 0 && !value.is_finite() {
            return Err(Error::Invalid(format!(
                "the loss is {value} on windows {}..{}: the model's weights overflow",
                c * batch,
                c * batch + chunk.len()
            )));
        }
        total += value as f64 * n as f64;
        count += n;
    }
    Ok((total, count))
}

pub fn run(args: EvalArgs) -> Result<()> {
    let device = super::resolve_device(&args.device)?;
    let (params, _) = load_language_model(&args.checkpoint)?;
    let params = params.to_device(device)?;
    let (_, bytes) = read_bytes(Some(&args.data))?;
    let windows = strided_windows(&bytes, args.seq_len as usize);
    if windows.is_empty() {
        return Err(Error::data(
            &args.data,
            None,
            format!(
                "{} bytes: fewer than one window of seq-len + 1 = {} + 1 bytes",
                bytes.len(),
                args.seq_len
            ),
        ));
    }
    let (total, count) = score_windows(&params, &windows, args.batch as usize)?;
    if count == 0 {
        return Err(Error::data(&args.data, None, "no target ≠ 0 to score"));
    }
    let loss = total / count as f64;
    super::emit(format!(
        "{}",
        serde_json::json!({"loss": loss, "bits_per_byte": loss / std::f64::consts::LN_2, "tokens": count})
    ));
    Ok(())
}
