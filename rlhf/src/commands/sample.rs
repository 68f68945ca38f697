//! `palm sample`: continue a prompt from a checkpoint.

use crate::Result;
use clap::Args;
use palm_engine::Rng;
use palm_model::checkpoint::{load_language_model, load_lora};
use palm_model::{SampleSettings, generate, tokenizer};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct SampleArgs {
    /// Model checkpoint.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Text to continue.
    #[arg(long, default_value = "The ")]
    pub prompt: String,
    /// New tokens (bytes) per sample.
    #[arg(long, default_value_t = 200)]
    pub max_tokens: usize,
    /// Softmax temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Keep the k most likely tokens.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Keep the most likely tokens up to this probability mass.
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Seeds the draws (the same seed gives the same samples on the same device).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Number of samples (decoded together as one batch).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub num: u64,
    /// Apply this LoRA scope from the checkpoint (e.g. actor).
    #[arg(long)]
    pub lora: Option<String>,
    /// One JSON line per sample: prompt, completion, tokens, finish_reason, seed, sample.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub device: super::DeviceArg,
}

pub fn run(args: SampleArgs) -> Result<()> {
    let device = args.device.resolve()?;
    let (params, file) = load_language_model(&args.checkpoint)?;
    let params = params.to_device(device)?;
    let mut lora = match &args.lora {
        Some(name) => Some(load_lora(&file, &params.config, name)?.ok_or_else(|| {
            crate::Error::Invalid(format!(
                "{} has no LoRA scope '{name}'",
                args.checkpoint.display()
            ))
        })?),
        None => None,
    };
    if let Some(l) = lora.as_mut() {
        l.move_to(device)?;
    }
    let prompt = tokenizer::encode(&args.prompt);
    if prompt.is_empty() {
        return Err(crate::Error::Invalid("--prompt must not be empty".into()));
    }
    let settings = SampleSettings {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        max_tokens: args.max_tokens,
        eos: None,
    };
    // Before the rows are built (a billion copies of the prompt are memory too).
    let rows = usize::try_from(args.num).unwrap_or(usize::MAX);
    palm_model::budget::check(
        &format!("--num {} × --max-tokens {}", args.num, args.max_tokens),
        palm_model::budget::decoding(&params.config, rows, prompt.len(), args.max_tokens),
        device,
    )?;
    let mut rng = Rng::new(args.seed);
    let prompts = vec![prompt; rows];
    let out = generate(&params, &prompts, &settings, lora.as_ref(), &mut rng)?;
    for (i, toks) in out.iter().enumerate() {
        let completion = tokenizer::decode(toks);
        if args.json {
            // No end-of-sequence token here: a sample ends at --max-tokens.
            super::emit(serde_json::json!({
                "prompt": args.prompt,
                "completion": completion,
                "tokens": toks.len(),
                "finish_reason": "length",
                "seed": args.seed,
                "sample": i + 1,
            }));
            continue;
        }
        if args.num > 1 {
            super::emit(format!("--- sample {}", i + 1));
        }
        super::emit(format!("{}{completion}", args.prompt));
    }
    Ok(())
}
