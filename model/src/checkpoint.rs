//! Model checkpoints: safetensors with the seed's state-dict names and the config as JSON in
//! the metadata. We also write the seed's buffers and `to_logits.weight` so the seed can load
//! our files; on load those are checked against what they must be, not trusted.

use crate::{Error, LoraScope, PalmConfig, PalmParams, Result, Tokenizer};
use palm_engine::{DType, Device, SafeFile, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// Buffers the seed registers, with the values they must hold.
fn buffers(config: &PalmConfig) -> Result<Vec<(String, Tensor)>> {
    let (d, dh) = (config.dim, config.dim_head);
    let inv_freq: Vec<f32> = (0..dh / 2)
        .map(|j| (1.0 / 10000f64.powf(2.0 * j as f64 / dh as f64)) as f32)
        .collect();
    let scale: Vec<f32> = (0..dh / 2)
        .map(|j| ((2.0 * j as f64 + 0.4 * dh as f64) / (1.4 * dh as f64)) as f32)
        .collect();
    let mut out = Vec::new();
    for i in 0..config.depth {
        out.push((
            format!("layers.{i}.fn.norm.beta"),
            Tensor::zeros(&[d], DType::F32, Device::Cpu)?,
        ));
        out.push((
            format!("layers.{i}.fn.rotary_emb.inv_freq"),
            Tensor::from_vec(inv_freq.clone(), &[dh / 2])?,
        ));
        out.push((
            format!("layers.{i}.fn.rotary_emb.scale"),
            Tensor::from_vec(scale.clone(), &[dh / 2])?,
        ));
    }
    out.push((
        "norm.beta".into(),
        Tensor::zeros(&[d], DType::F32, Device::Cpu)?,
    ));
    Ok(out)
}

/// Everything a model file holds: base weights, buffers, tied logits, adapters.
pub fn model_tensors(params: &PalmParams, loras: &[&LoraScope]) -> Result<Vec<(String, Tensor)>> {
    let mut out: Vec<(String, Tensor)> = params
        .named()
        .into_iter()
        .map(|(n, t)| (n, t.clone()))
        .collect();
    out.extend(buffers(&params.config)?);
    out.push(("to_logits.weight".into(), params.token_emb.clone()));
    for l in loras {
        out.extend(l.named().into_iter().map(|(n, t)| (n, t.clone())));
    }
    Ok(out)
}

/// The metadata key holding a BPE tokenizer's JSON (absent for bytes).
pub const TOKENIZER_KEY: &str = "tokenizer";

pub fn model_metadata(
    config: &PalmConfig,
    tokenizer: &Tokenizer,
    loras: &[&LoraScope],
) -> Result<HashMap<String, String>> {
    let mut meta = HashMap::new();
    let json = serde_json::to_string(config)
        .map_err(|e| Error::Invalid(format!("config to JSON: {e}")))?;
    meta.insert("config".into(), json);
    if let Some(t) = tokenizer.json() {
        meta.insert(TOKENIZER_KEY.into(), t.to_string());
    }
    meta.insert("format".into(), "palm".into());
    for l in loras {
        meta.insert(
            format!("lora.{}", l.name),
            format!("{{\"r\": {}, \"alpha\": {}}}", l.r, l.alpha),
        );
    }
    Ok(meta)
}

/// Save a model (and adapters) atomically.
pub fn save_model(path: &Path, params: &PalmParams, loras: &[&LoraScope]) -> Result<()> {
    save_model_with(path, params, loras, &[])
}

/// [`save_model`] with `extra` metadata entries (a run's checkpoint step).
pub fn save_model_with(
    path: &Path,
    params: &PalmParams,
    loras: &[&LoraScope],
    extra: &[(String, String)],
) -> Result<()> {
    let tensors = model_tensors(params, loras)?;
    let mut meta = model_metadata(&params.config, &params.tokenizer, loras)?;
    meta.extend(extra.iter().cloned());
    Ok(palm_engine::save_safetensors(path, &tensors, meta)?)
}

/// The config stored in a checkpoint's metadata.
pub fn config_of(file: &SafeFile) -> Result<PalmConfig> {
    let p = file.path().display();
    let json = file.metadata().get("config").ok_or_else(|| {
        Error::Checkpoint(format!(
            "{p}: no 'config' in the safetensors metadata; not a palm or seed checkpoint"
        ))
    })?;
    let config: PalmConfig = serde_json::from_str(json)
        .map_err(|e| Error::Checkpoint(format!("{p}: bad config JSON in metadata: {e}")))?;
    config
        .validate()
        .map_err(|e| Error::Checkpoint(format!("{p}: {e}")))?;
    Ok(config)
}

/// The tokenizer a checkpoint was trained with: its metadata's BPE, else bytes. Its ids must
/// fit the checkpoint's vocabulary.
pub fn tokenizer_of(file: &SafeFile, config: &PalmConfig) -> Result<Tokenizer> {
    let p = file.path().display();
    let tokenizer = match file.metadata().get(TOKENIZER_KEY) {
        Some(json) => Tokenizer::from_json(json, &format!("{p}: its tokenizer"))?,
        None => Tokenizer::bytes(),
    };
    tokenizer
        .check_fits(config.num_tokens, &format!("{p}"))
        .map_err(|e| Error::Checkpoint(e.to_string()))?;
    Ok(tokenizer)
}

/// A tensor of a file with its expected shape, or an error naming both.
pub fn get_checked(file: &SafeFile, name: &str, shape: &[usize]) -> Result<Tensor> {
    let t = file.get(name)?;
    if t.dims() != shape {
        return Err(Error::Checkpoint(format!(
            "{}: tensor '{name}' has shape {:?}, expected {shape:?} for this config",
            file.path().display(),
            t.dims()
        )));
    }
    let t = match t.dtype() {
        DType::F32 => t,
        DType::BF16 => t.to_dtype(DType::F32)?,
        other => {
            return Err(Error::Checkpoint(format!(
                "{}: tensor '{name}' has dtype {other}, expected a float type (f32, bf16, f16, f64)",
                file.path().display()
            )));
        }
    };
    // A NaN or infinite weight would only surface later as a NaN loss or garbage samples.
    if let Some((i, v)) = t
        .to_vec::<f32>()?
        .iter()
        .enumerate()
        .find(|(_, v)| !v.is_finite())
    {
        return Err(Error::Checkpoint(format!(
            "{}: tensor '{name}' holds {v} at element {i}: the checkpoint is corrupt (or its \
             training diverged)",
            file.path().display()
        )));
    }
    Ok(t)
}

/// The `format` of a reward model's file (its trunk loads as a model too).
pub const REWARD_FORMAT: &str = "palm-reward";

/// File formats whose tensors hold a model under the seed's names: ours, the seed's, and a reward
/// model (its trunk).
const MODEL_FORMATS: [&str; 3] = ["palm", "palm-seed-state-dict", REWARD_FORMAT];

/// Load a model checkpoint (ours or the seed's). Buffers and `to_logits.weight`, when present,
/// must hold what they must (zeros, the rotary tables, the embedding).
pub fn load_model(path: &Path) -> Result<(PalmParams, SafeFile)> {
    let file = SafeFile::open(path)?;
    let params = params_of(&file)?;
    Ok((params, file))
}

/// [`load_model`] for commands that use a checkpoint as a language model (sample, eval, SFT,
/// labelling): a reward model's trunk is refused, since its head would be silently dropped.
pub fn load_language_model(path: &Path) -> Result<(PalmParams, SafeFile)> {
    let (params, file) = load_model(path)?;
    if file.metadata().get("format").map(String::as_str) == Some(REWARD_FORMAT) {
        return Err(Error::Checkpoint(format!(
            "{}: a reward model, not a language model: score with `palm reward score`, or give \
             it to ppo/grpo as --reward",
            path.display()
        )));
    }
    Ok((params, file))
}

/// An error if `file` holds fewer values than `config` has parameters: checked before
/// anything is allocated for them, so a config that claims a billion layers fails here.
pub fn check_holds(file: &SafeFile, config: &PalmConfig) -> Result<()> {
    let path = file.path();
    let held: u128 = file
        .names()
        .filter_map(|n| file.info(n))
        .map(|(shape, _)| shape.iter().map(|&x| x as u128).product::<u128>())
        .sum();
    let wanted = crate::budget::params(config);
    if wanted > held {
        // Name the first tensor at fault, as loading would, when one is within reach: it lies
        // within the file's layers plus one (a probe that allocates no more than the file).
        let layers = file.names().filter(|n| n.starts_with("layers.")).count();
        let probe = PalmConfig {
            depth: config.depth.min(layers + 1),
            ..config.clone()
        };
        for (name, shape) in PalmParams::expected_shapes(&probe) {
            get_checked(file, &name, &shape)?;
        }
        return Err(Error::Checkpoint(format!(
            "{}: its config (dim {}, depth {}, heads {}, dim_head {}, ff_mult {}) has {wanted} parameters, but the file holds only {held} values",
            path.display(),
            config.dim,
            config.depth,
            config.heads,
            config.dim_head,
            config.ff_mult
        )));
    }
    Ok(())
}

/// The model held by an opened file.
pub fn params_of(file: &SafeFile) -> Result<PalmParams> {
    let path = file.path();
    if let Some(f) = file.metadata().get("format")
        && !MODEL_FORMATS.contains(&f.as_str())
    {
        return Err(Error::Checkpoint(format!(
            "{}: format '{f}' does not hold a model (this reads {}){}",
            path.display(),
            MODEL_FORMATS.join(", "),
            if f == "palm-train-state" {
                "; load the run's model.safetensors"
            } else {
                ""
            }
        )));
    }
    let config = config_of(file)?;
    let tokenizer = tokenizer_of(file, &config)?;
    check_holds(file, &config)?;
    // Layers past the config's depth would be dropped silently.
    if let Some(extra) = file.names().find(|n| {
        n.strip_prefix("layers.")
            .and_then(|r| r.split('.').next())
            .and_then(|i| i.parse::<usize>().ok())
            .is_some_and(|i| i >= config.depth)
    }) {
        return Err(Error::Checkpoint(format!(
            "{}: tensor '{extra}' belongs to a layer past the config's depth {}",
            path.display(),
            config.depth
        )));
    }
    let params = PalmParams::from_named(&config, |n, s| get_checked(file, n, s))?
        .with_tokenizer(tokenizer)?;
    let mut expected = buffers(&config)?;
    expected.push(("to_logits.weight".into(), params.token_emb.clone()));
    for (name, want) in expected {
        if !file.contains(&name) {
            continue;
        }
        let got = get_checked(file, &name, want.dims())?.to_vec::<f32>()?;
        let want = want.to_vec::<f32>()?;
        // `all` of a positive comparison, so NaN counts as a mismatch.
        let good = got
            .iter()
            .zip(&want)
            .all(|(a, b)| (a - b).abs() <= 1e-5 * (1.0 + b.abs()));
        if !good {
            return Err(Error::Checkpoint(format!(
                "{}: buffer '{name}' does not hold the values this model uses",
                path.display()
            )));
        }
    }
    Ok(params)
}

/// Adapters of scope `name` from a loaded file, if it has them (rank from the first A;
/// alpha from the metadata, else r as the seed).
pub fn load_lora(file: &SafeFile, config: &PalmConfig, name: &str) -> Result<Option<LoraScope>> {
    let first = format!("finetune_modules.{name}.0.0.A");
    let Some((shape, _)) = file.info(&first) else {
        return Ok(None);
    };
    let r = shape.get(1).copied().unwrap_or(0);
    let alpha = file
        .metadata()
        .get(&format!("lora.{name}"))
        .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
        .and_then(|v| v.get("alpha").and_then(|a| a.as_f64()))
        .map(|a| a as f32);
    Ok(Some(LoraScope::from_named(
        config,
        name,
        r,
        alpha,
        |n, s| get_checked(file, n, s),
    )?))
}
