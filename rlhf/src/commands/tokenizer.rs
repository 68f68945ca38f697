//! `palm tokenizer train`: a byte-level BPE trained on a corpus (the shipped one by default),
//! written as a Hugging Face `tokenizer.json` for `--tokenizer`; `palm tokenizer encode` shows
//! how a text splits into tokens under one.

use crate::corpus::read_bytes;
use crate::{Error, Result};
use clap::{Args, Subcommand};
use palm_model::Tokenizer;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct TokenizerArgs {
    #[command(subcommand)]
    pub command: TokenizerCommand,
}

#[derive(Subcommand, Debug)]
pub enum TokenizerCommand {
    /// Train a byte-level BPE (id 0 <pad>, the 256 byte symbols, then merges) on a corpus.
    Train(TrainArgs),
    /// Encode a text with a tokenizer.json and print its ids and pieces.
    Encode(EncodeArgs),
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Ids in all: <pad>, the 256 byte symbols and the merges learned.
    #[arg(long, default_value_t = 4096)]
    pub vocab: usize,
    /// Text to learn the merges from (.gz is decompressed). Default: the shipped corpus.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Where to write the tokenizer.json (replaced atomically).
    #[arg(long, default_value = "tokenizer.json")]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct EncodeArgs {
    /// The tokenizer.json.
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Text to encode.
    pub text: String,
    /// One JSON object: ids, pieces, bytes.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: TokenizerArgs) -> Result<()> {
    match args.command {
        TokenizerCommand::Train(a) => train(a),
        TokenizerCommand::Encode(a) => encode(a),
    }
}

fn train(a: TrainArgs) -> Result<()> {
    let (name, bytes) = read_bytes(a.data.as_deref())?;
    let text = String::from_utf8(bytes).map_err(|e| {
        Error::data(
            &name,
            None,
            format!("not UTF-8 text at byte {}", e.utf8_error().valid_up_to()),
        )
    })?;
    crate::output::say(format!(
        "training a byte-level BPE of {} ids on {name} ({} bytes)",
        a.vocab,
        text.len()
    ));
    let started = std::time::Instant::now();
    let tokenizer = Tokenizer::train_bpe(&text, a.vocab)?;
    let json = tokenizer.json().unwrap_or_default();
    palm_engine::write_atomic(&a.out, json.as_bytes())?;
    let ids = tokenizer.encode_corpus(&text)?;
    super::emit(format!(
        "done: {} ids, {:.2} bytes per token on {name}, {:.1}s; tokenizer in {}",
        tokenizer.ids(),
        text.len() as f64 / ids.len().max(1) as f64,
        started.elapsed().as_secs_f64(),
        a.out.display()
    ));
    Ok(())
}

fn encode(a: EncodeArgs) -> Result<()> {
    let tokenizer = Tokenizer::load(&a.tokenizer)?;
    let ids = tokenizer.encode(&a.text)?;
    let pieces: Vec<String> = ids.iter().map(|&i| tokenizer.decode(&[i])).collect();
    if a.json {
        super::emit(serde_json::json!({
            "ids": ids,
            "pieces": pieces,
            "bytes": a.text.len(),
        }));
    } else {
        super::emit(format!(
            "{} tokens for {} bytes: {}",
            ids.len(),
            a.text.len(),
            ids.iter()
                .zip(&pieces)
                .map(|(i, p)| format!("{i}:{p:?}"))
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    Ok(())
}
