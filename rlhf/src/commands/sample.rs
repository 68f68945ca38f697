//! `palm sample`: continue a prompt from a checkpoint.

use crate::Result;
use clap::Args;
use palm_engine::Rng;
use palm_model::generate;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct SampleArgs {
    /// Model checkpoint.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Text to continue.
    #[arg(long, default_value = "The ")]
    pub prompt: String,
    #[command(flatten)]
    pub decoding: super::Decoding,
    /// Seeds the draws (the same seed gives the same samples on the same device).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Number of samples (decoded together as one batch).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub num: u64,
    /// Apply this LoRA scope from the checkpoint (e.g. actor).
    #[arg(long)]
    pub lora: Option<String>,
    #[command(flatten)]
    pub tokenizer: crate::flags::TokenizerArg,
    /// One JSON line per sample: prompt, completion, tokens, finish_reason, seed, sample.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub device: super::DeviceArg,
}

pub fn run(args: SampleArgs) -> Result<()> {
    let device = args.device.resolve()?;
    let (params, lora) = crate::sampling::model_with_adapters(
        &args.checkpoint,
        args.lora.as_deref(),
        &args.tokenizer,
        device,
    )?;
    let prompt = params.tokenizer.encode(&args.prompt)?;
    if prompt.is_empty() {
        return Err(crate::Error::Invalid("--prompt must not be empty".into()));
    }
    let settings = args.decoding.settings();
    // Before the rows are built (a billion copies of the prompt are memory too).
    let rows = usize::try_from(args.num).unwrap_or(usize::MAX);
    palm_model::budget::check(
        &format!(
            "--num {} × --max-tokens {}",
            args.num, args.decoding.max_tokens
        ),
        palm_model::budget::decoding(&params.config, rows, prompt.len(), args.decoding.max_tokens),
        device,
    )?;
    let mut rng = Rng::new(args.seed);
    let prompts = vec![prompt; rows];
    let out = generate(&params, &prompts, &settings, lora.as_ref(), &mut rng)?;
    for (i, toks) in out.iter().enumerate() {
        let completion = params.tokenizer.decode(toks);
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
