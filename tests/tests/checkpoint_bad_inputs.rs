//! Checkpoints that parse but do not describe the model: missing tensors, wrong shapes, bad
//! configs, buffers holding wrong values. Each gives one error naming the file and tensor.

use palm_engine::SafeFile;
use palm_model::checkpoint::load_model;
use palm_tests::badfiles::*;
use serde_json::json;
use std::path::Path;

// ---- load_model: content that does not describe the model --------------------------------------

#[test]
fn valid_model_loads_and_round_trips() {
    let dir = TempDir::new("valid");
    let (path, params) = valid_model(&dir);
    let (loaded, file) = load_model(&path).unwrap();
    assert_eq!(loaded.config, params.config);
    for ((n1, a), (n2, b)) in params.named().into_iter().zip(loaded.named()) {
        assert_eq!(n1, n2);
        assert_eq!(
            a.to_vec::<f32>().unwrap(),
            b.to_vec::<f32>().unwrap(),
            "{n1}"
        );
    }
    assert!(file.contains("to_logits.weight"));
    assert!(file.contains("layers.1.fn.rotary_emb.inv_freq"));
    // The hand rewriter keeps a file valid (positive control for the tests below).
    let raw = RawFile::read(&path);
    let p2 = dir.file("rewritten.safetensors");
    raw.write(&p2);
    load_model(&p2).unwrap();
    // Without the optional buffers and tied logits it still loads.
    let mut raw = RawFile::read(&path);
    raw.tensors.retain(|t| {
        !t.name.contains("beta") && !t.name.contains("rotary") && t.name != "to_logits.weight"
    });
    raw.write(&p2);
    load_model(&p2).unwrap();
}

#[test]
fn missing_required_tensor_names_tensor_and_file() {
    let dir = TempDir::new("missingtensor");
    let (path, _) = valid_model(&dir);
    for name in [
        "token_emb.weight",
        "layers.1.fn.attn_out.weight",
        "layers.0.fn.norm.gamma",
        "norm.gamma",
    ] {
        let mut raw = RawFile::read(&path);
        raw.remove(name);
        let p = dir.file("missing.safetensors");
        raw.write(&p);
        SafeFile::open(&p).unwrap(); // a valid safetensors file…
        let msg = load_err(&p); // …that is not a model
        assert_mentions(&msg, &[name, "missing.safetensors"]);
    }
}

#[test]
fn wrong_shape_names_tensor_shape_and_expected() {
    let dir = TempDir::new("wrongshape");
    let (path, _) = valid_model(&dir);
    // attn_out is (D, H·Dh) = (8, 8); store it as (8, 4).
    let mut raw = RawFile::read(&path);
    let t = raw.get_mut("layers.0.fn.attn_out.weight");
    t.shape = vec![8, 4];
    t.data.truncate(8 * 4 * 4);
    let p = dir.file("shape.safetensors");
    raw.write(&p);
    let msg = load_err(&p);
    assert_mentions(
        &msg,
        &[
            "layers.0.fn.attn_out.weight",
            "[8, 4]",
            "[8, 8]",
            "shape.safetensors",
        ],
    );
    // The same bytes, transposed shape (a classic export mistake): (80, 8) stored as (8, 80).
    let mut raw = RawFile::read(&path);
    raw.get_mut("layers.1.fn.fused_attn_ff_proj.weight").shape = vec![8, 80];
    raw.write(&p);
    assert_mentions(
        &load_err(&p),
        &[
            "layers.1.fn.fused_attn_ff_proj.weight",
            "[8, 80]",
            "[80, 8]",
        ],
    );
    // A buffer with the wrong shape.
    let mut raw = RawFile::read(&path);
    let t = raw.get_mut("layers.0.fn.rotary_emb.inv_freq");
    t.shape = vec![1];
    t.data.truncate(4);
    raw.write(&p);
    assert_mentions(
        &load_err(&p),
        &["layers.0.fn.rotary_emb.inv_freq", "[1]", "[2]"],
    );
}

#[test]
fn config_that_disagrees_with_the_tensors() {
    let dir = TempDir::new("configmismatch");
    let (path, _) = valid_model(&dir);
    let mut raw = RawFile::read(&path);
    let mut c = small_config();
    c.dim = 16;
    raw.set_config(Some(&serde_json::to_string(&c).unwrap()));
    let p = dir.file("mismatch.safetensors");
    raw.write(&p);
    assert_mentions(
        &load_err(&p),
        &[
            "token_emb.weight",
            "[16, 8]",
            "[16, 16]",
            "mismatch.safetensors",
        ],
    );
    // One layer more than stored.
    let mut c = small_config();
    c.depth = 3;
    raw.set_config(Some(&serde_json::to_string(&c).unwrap()));
    raw.write(&p);
    assert_mentions(&load_err(&p), &["layers.2.", "mismatch.safetensors"]);
}

#[test]
fn metadata_config_missing() {
    let dir = TempDir::new("noconfig");
    let (path, _) = valid_model(&dir);
    // No __metadata__ at all.
    let mut raw = RawFile::read(&path);
    raw.metadata = None;
    let p = dir.file("nometa.safetensors");
    raw.write(&p);
    SafeFile::open(&p).unwrap();
    assert_mentions(&load_err(&p), &["config", "nometa.safetensors"]);
    // Metadata without the config key.
    let mut raw = RawFile::read(&path);
    raw.set_config(None);
    let p = dir.file("nokey.safetensors");
    raw.write(&p);
    assert_mentions(&load_err(&p), &["config", "nokey.safetensors"]);
}

#[test]
fn metadata_config_not_json_or_wrong_form() {
    let dir = TempDir::new("badconfig");
    let (path, _) = valid_model(&dir);
    let p = dir.file("badconfig.safetensors");
    for config in [
        "not json",
        "{\"num_tokens\": 16,",
        // (serde would accept a full positional array for the struct; a short one is wrong.)
        "[16, 8]",
        "null",
        r#"{"num_tokens": 16, "depth": 2, "heads": 2}"#,
        r#"{"num_tokens": 16, "dim": "eight", "depth": 2, "heads": 2}"#,
        r#"{"num_tokens": 16, "dim": -8, "depth": 2, "heads": 2}"#,
        r#"{"num_tokens": 16, "dim": 8.5, "depth": 2, "heads": 2}"#,
    ] {
        let mut raw = RawFile::read(&path);
        raw.set_config(Some(config));
        raw.write(&p);
        let msg = load_err(&p);
        assert_mentions(&msg, &["config", "badconfig.safetensors"]);
    }
}

#[test]
fn metadata_config_invalid_values() {
    let dir = TempDir::new("invalidconfig");
    let (path, _) = valid_model(&dir);
    let p = dir.file("invalid.safetensors");
    for (field, value, says) in [
        ("dim", 0, "dim"),
        ("dim_head", 3, "dim_head"),
        ("dim_head", 0, "dim_head"),
        ("heads", 0, "heads"),
        ("depth", 0, "depth"),
        ("num_tokens", 0, "num_tokens"),
        ("ff_mult", 0, "ff_mult"),
        ("xpos_scale_base", 0, "xpos_scale_base"),
    ] {
        let mut c = serde_json::to_value(small_config()).unwrap();
        c[field] = json!(value);
        let mut raw = RawFile::read(&path);
        raw.set_config(Some(&c.to_string()));
        raw.write(&p);
        let msg = load_err(&p);
        assert_mentions(&msg, &["invalid model config", says, "invalid.safetensors"]);
    }
}

#[test]
fn metadata_config_with_overflowing_sizes() {
    let dir = TempDir::new("overflowconfig");
    let (path, _) = valid_model(&dir);
    let p = dir.file("overflow.safetensors");
    let mut bad = Vec::new();
    for (field, value) in [
        ("heads", 1u64 << 62),
        ("dim", 1u64 << 62),
        ("num_tokens", u64::MAX),
        ("ff_mult", 1u64 << 62),
    ] {
        let mut c = serde_json::to_value(small_config()).unwrap();
        c[field] = json!(value);
        let mut raw = RawFile::read(&path);
        raw.set_config(Some(&c.to_string()));
        raw.write(&p);
        let r = std::panic::catch_unwind(|| load_model(&p).err().map(|e| e.to_string()));
        match r {
            Err(_) => bad.push(format!("panicked with {field} = {value}")),
            Ok(None) => bad.push(format!("accepted {field} = {value}")),
            Ok(Some(msg)) => assert_mentions(&msg, &["overflow.safetensors"]),
        }
    }
    assert!(bad.is_empty(), "load_model {bad:?}");
}

/// Rewrite `name` with `f(values)` and check the loader rejects it, naming buffer and file.
#[track_caller]
fn assert_buffer_rejected(dir: &TempDir, path: &Path, name: &str, f: impl Fn(&mut Vec<f32>)) {
    let mut raw = RawFile::read(path);
    let mut v = raw.f32s(name);
    f(&mut v);
    raw.set_f32s(name, &v);
    let p = dir.file("buffer.safetensors");
    raw.write(&p);
    assert_mentions(&load_err(&p), &[name, "buffer.safetensors"]);
}

#[test]
fn buffers_with_wrong_values() {
    let dir = TempDir::new("buffers");
    let (path, _) = valid_model(&dir);
    assert_buffer_rejected(&dir, &path, "layers.0.fn.rotary_emb.inv_freq", |v| {
        v.iter_mut().for_each(|x| *x *= 2.0)
    });
    assert_buffer_rejected(&dir, &path, "layers.1.fn.rotary_emb.inv_freq", |v| {
        v.reverse()
    });
    assert_buffer_rejected(&dir, &path, "layers.1.fn.rotary_emb.scale", |v| {
        v[1] += 0.01
    });
    assert_buffer_rejected(&dir, &path, "layers.0.fn.norm.beta", |v| v[3] = 0.5);
    assert_buffer_rejected(&dir, &path, "norm.beta", |v| v[0] = -1e-3);
}

#[test]
fn buffers_holding_nan_are_rejected() {
    let dir = TempDir::new("nanbuffers");
    let (path, _) = valid_model(&dir);
    let mut accepted = Vec::new();
    for (name, at) in [
        ("layers.0.fn.rotary_emb.inv_freq", 0),
        ("layers.1.fn.rotary_emb.scale", 1),
        ("layers.0.fn.norm.beta", 1),
        ("norm.beta", 2),
        ("to_logits.weight", 5),
    ] {
        let mut raw = RawFile::read(&path);
        let mut v = raw.f32s(name);
        v[at] = f32::NAN;
        raw.set_f32s(name, &v);
        let p = dir.file("nan.safetensors");
        raw.write(&p);
        match load_model(&p) {
            Ok(_) => accepted.push(name),
            Err(e) => assert_mentions(&e.to_string(), &[name, "nan.safetensors"]),
        }
    }
    assert!(accepted.is_empty(), "NaN accepted in {accepted:?}");
}

#[test]
fn to_logits_differs_from_token_emb() {
    let dir = TempDir::new("tied");
    let (path, _) = valid_model(&dir);
    assert_buffer_rejected(&dir, &path, "to_logits.weight", |v| v[17] += 0.1);
    // A completely different (e.g. untied) matrix.
    assert_buffer_rejected(&dir, &path, "to_logits.weight", |v| {
        v.iter_mut().for_each(|x| *x = -*x)
    });
    // Wrong shape.
    let mut raw = RawFile::read(&path);
    let t = raw.get_mut("to_logits.weight");
    t.shape = vec![8, 16];
    let p = dir.file("tiedshape.safetensors");
    raw.write(&p);
    assert_mentions(&load_err(&p), &["to_logits.weight", "[8, 16]", "[16, 8]"]);
}

#[test]
fn weight_with_non_float_dtype_names_tensor_and_file() {
    let dir = TempDir::new("weightdtype");
    let (path, _) = valid_model(&dir);
    let mut raw = RawFile::read(&path);
    let t = raw.get_mut("layers.0.fn.norm.gamma");
    t.dtype = "I64".into();
    t.data = vec![0u8; 8 * 8];
    let p = dir.file("i64.safetensors");
    raw.write(&p);
    assert_mentions(
        &load_err(&p),
        &["layers.0.fn.norm.gamma", "i64.safetensors"],
    );
}

#[test]
fn bf16_weights_load_as_f32() {
    // A valid variant (the seed's bf16 exports): converted, not rejected.
    let dir = TempDir::new("bf16");
    let (path, params) = valid_model(&dir);
    let mut raw = RawFile::read(&path);
    let t = raw.get_mut("layers.0.fn.attn_out.weight");
    let vals: Vec<f32> = t
        .data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    t.dtype = "BF16".into();
    t.data = vals
        .iter()
        .flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes())
        .collect();
    let p = dir.file("bf16.safetensors");
    raw.write(&p);
    let (loaded, _) = load_model(&p).unwrap();
    let got = loaded.layers[0].attn_out.to_vec::<f32>().unwrap();
    let want = params.layers[0].attn_out.to_vec::<f32>().unwrap();
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= 1e-2 * w.abs() + 1e-6, "{g} vs {w}");
    }
}

#[test]
fn nan_or_infinite_weights_name_the_tensor() {
    let dir = TempDir::new("nanweights");
    let (path, _) = valid_model(&dir);
    for (name, bad) in [
        ("layers.0.fn.attn_out.weight", f32::NAN),
        ("norm.gamma", f32::INFINITY),
    ] {
        let mut raw = RawFile::read(&path);
        let mut v = raw.f32s(name);
        v[3] = bad;
        raw.set_f32s(name, &v);
        let p = dir.file("nan.safetensors");
        raw.write(&p);
        let msg = load_err(&p);
        assert_mentions(&msg, &[name, "nan.safetensors", "element 3"]);
    }
}

#[test]
fn weights_that_overflow_stop_eval_and_sample_with_an_error() {
    use palm_model::{Forward, SampleSettings, generate};
    let dir = TempDir::new("hugeweights");
    let (path, _) = valid_model(&dir);
    let mut raw = RawFile::read(&path);
    for name in ["token_emb.weight", "to_logits.weight"] {
        let v: Vec<f32> = raw.f32s(name).iter().map(|_| 1e38).collect();
        raw.set_f32s(name, &v);
    }
    let p = dir.file("huge.safetensors");
    raw.write(&p);
    let (params, _) = load_model(&p).unwrap();
    // The loss is not finite: what eval refuses (rlhf/src/commands/eval.rs).
    let tokens = palm_engine::Tensor::from_vec(vec![1u32, 2, 3, 4, 5, 6], &[1, 6]).unwrap();
    let (loss, _) = params.loss(&tokens, &mut Forward::default()).unwrap();
    assert!(!loss.to_scalar().unwrap().is_finite());
    // Sampling stops with an error instead of printing garbage.
    let settings = SampleSettings {
        max_tokens: 4,
        ..SampleSettings::default()
    };
    let mut rng = palm_engine::Rng::new(1);
    let e = generate(&params, &[vec![1u32, 2]], &settings, None, &mut rng)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("logits") && e.contains("overflow"), "{e}");
}

/// A file's `format` in the metadata, set by hand.
fn with_format(raw: &mut RawFile, format: &str) {
    raw.metadata
        .get_or_insert_with(Default::default)
        .insert("format".into(), json!(format));
}

#[test]
fn files_that_would_load_as_something_else_are_refused() {
    let dir = TempDir::new("otherthings");
    let (path, params) = valid_model(&dir);
    // A config of depth 1 over a file with two layers: the second would be dropped.
    let mut raw = RawFile::read(&path);
    let mut cfg = params.config.clone();
    cfg.depth = 1;
    raw.set_config(Some(&serde_json::to_string(&cfg).unwrap()));
    let p = dir.file("shallow.safetensors");
    raw.write(&p);
    assert_mentions(
        &load_err(&p),
        &["shallow.safetensors", "layers.1.", "depth 1"],
    );
    // An unknown format, and a training state, are not models.
    for (format, extra) in [
        ("palm-tokenizer", "palm-tokenizer"),
        ("palm-train-state", "model.safetensors"),
    ] {
        let mut raw = RawFile::read(&path);
        with_format(&mut raw, format);
        let p = dir.file("format.safetensors");
        raw.write(&p);
        assert_mentions(&load_err(&p), &["format.safetensors", extra]);
    }
    // A reward model loads as a trunk (PPO, DPO and reward training use it), but not as a
    // language model (sample, eval, SFT, label).
    let mut raw = RawFile::read(&path);
    with_format(&mut raw, palm_model::checkpoint::REWARD_FORMAT);
    let p = dir.file("reward.safetensors");
    raw.write(&p);
    load_model(&p).unwrap();
    let e = palm_model::checkpoint::load_language_model(&p)
        .err()
        .unwrap()
        .to_string();
    assert_mentions(&e, &["reward.safetensors", "reward model"]);
}
