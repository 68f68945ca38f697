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
}

pub fn run(args: InfoArgs) -> Result<()> {
    let file = SafeFile::open(&args.checkpoint)?;
    let params = params_of(&file)?;
    let c = &params.config;
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
    let mut meta: Vec<_> = file
        .metadata()
        .iter()
        .filter(|(k, _)| k.as_str() != "config")
        .collect();
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
