//! `palm info`: what a checkpoint holds.

use crate::Result;
use clap::Args;
use palm_engine::SafeFile;
use palm_model::checkpoint::params_of;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Checkpoint to describe.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// One JSON object: checkpoint, config, parameters, tokenizer, metadata (the tokenizer's
    /// JSON left out), tensors (name, dtype, shape).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: InfoArgs) -> Result<()> {
    let file = SafeFile::open(&args.checkpoint)?;
    let params = params_of(&file)?;
    let c = &params.config;
    // The config and the tokenizer are shown on their own lines.
    let shown = |k: &str| k != "config" && k != palm_model::checkpoint::TOKENIZER_KEY;
    if args.json {
        let meta: serde_json::Map<String, serde_json::Value> = file
            .metadata()
            .iter()
            .filter(|(k, _)| shown(k))
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect();
        let tensors: Vec<serde_json::Value> = file
            .names()
            .filter_map(|name| {
                let (shape, dtype) = file.info(name)?;
                Some(serde_json::json!({"name": name, "dtype": dtype, "shape": shape}))
            })
            .collect();
        super::emit(serde_json::json!({
            "checkpoint": args.checkpoint,
            "config": c,
            "parameters": c.num_params(),
            "tokenizer": params.tokenizer.describe(),
            "metadata": meta,
            "tensors": tensors,
        }));
        return Ok(());
    }
    super::emit(format!("checkpoint: {}", args.checkpoint.display()));
    super::emit(format!(
        "config: num_tokens {} dim {} depth {} heads {} dim_head {} ff_mult {} xpos {} (scale base {})",
        c.num_tokens, c.dim, c.depth, c.heads, c.dim_head, c.ff_mult, c.use_xpos, c.xpos_scale_base
    ));
    super::emit(format!(
        "parameters: {} ({:.2}M)",
        c.num_params(),
        c.num_params() as f64 / 1e6
    ));
    super::emit(format!("tokenizer: {}", params.tokenizer.describe()));
    let mut meta: Vec<_> = file.metadata().iter().filter(|(k, _)| shown(k)).collect();
    meta.sort();
    for (k, v) in meta {
        let v = if v.len() > 120 {
            format!("{}…", &v[..v.floor_char_boundary(120)])
        } else {
            v.clone()
        };
        super::emit(format!("metadata {k}: {v}"));
    }
    super::emit("tensors:");
    for name in file.names() {
        if let Some((shape, dtype)) = file.info(name) {
            super::emit(format!("  {name:<48} {dtype:<5} {shape:?}"));
        }
    }
    Ok(())
}
