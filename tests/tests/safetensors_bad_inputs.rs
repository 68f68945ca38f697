//! Bad checkpoints: every corrupt or mismatched file gives one clear `Err` — naming the file
//! and, where there is one, the tensor — and never a panic. Valid files are written with
//! `save_model` into a temp folder, then corrupted by hand (format: 8-byte little-endian header
//! length, JSON header `{name: {dtype, shape, data_offsets}, "__metadata__": {...}}`, data).
//! Also: saves are atomic (no temp file left behind) and replace an existing file fully.

use palm_engine::{Rng, SafeFile, Tensor, save_safetensors};
use palm_model::checkpoint::{load_model, model_metadata, model_tensors, save_model};
use palm_model::{PalmConfig, PalmParams};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

// ---- temp folders ------------------------------------------------------------------------------

/// A fresh folder under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!(
            "palm-safetensors-bad-{}-{tag}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.file(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
    /// Names of everything in the folder, sorted.
    fn listing(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---- the raw format ----------------------------------------------------------------------------

/// A file from a header (any JSON text) and data bytes.
fn frame(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn frame_json(header: &Value, data: &[u8]) -> Vec<u8> {
    frame(&header.to_string(), data)
}

#[derive(Clone)]
struct RawTensor {
    name: String,
    dtype: String,
    shape: Vec<usize>,
    data: Vec<u8>,
}

/// A safetensors file taken apart by hand (tensors in file order).
#[derive(Clone)]
struct RawFile {
    tensors: Vec<RawTensor>,
    metadata: Option<Map<String, Value>>,
}

impl RawFile {
    fn parse(bytes: &[u8]) -> Self {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: Map<String, Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        let data = &bytes[8 + n..];
        let mut metadata = None;
        let mut tensors = Vec::new();
        for (name, info) in header {
            if name == "__metadata__" {
                metadata = Some(info.as_object().unwrap().clone());
                continue;
            }
            let off = info["data_offsets"].as_array().unwrap();
            let (s, e) = (
                off[0].as_u64().unwrap() as usize,
                off[1].as_u64().unwrap() as usize,
            );
            tensors.push((
                s,
                RawTensor {
                    name,
                    dtype: info["dtype"].as_str().unwrap().to_string(),
                    shape: info["shape"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_u64().unwrap() as usize)
                        .collect(),
                    data: data[s..e].to_vec(),
                },
            ));
        }
        tensors.sort_by_key(|(s, _)| *s);
        RawFile {
            tensors: tensors.into_iter().map(|(_, t)| t).collect(),
            metadata,
        }
    }

    fn read(path: &Path) -> Self {
        Self::parse(&std::fs::read(path).unwrap())
    }

    /// Serialize with consecutive offsets (a valid layout for whatever the entries claim).
    fn bytes(&self) -> Vec<u8> {
        let mut header = Map::new();
        if let Some(m) = &self.metadata {
            header.insert("__metadata__".into(), Value::Object(m.clone()));
        }
        let mut data = Vec::new();
        for t in &self.tensors {
            let s = data.len();
            data.extend_from_slice(&t.data);
            header.insert(
                t.name.clone(),
                json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [s, data.len()]}),
            );
        }
        frame_json(&Value::Object(header), &data)
    }

    fn write(&self, path: &Path) {
        std::fs::write(path, self.bytes()).unwrap();
    }

    fn get_mut(&mut self, name: &str) -> &mut RawTensor {
        self.tensors
            .iter_mut()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no tensor {name} in the raw file"))
    }

    fn remove(&mut self, name: &str) {
        let before = self.tensors.len();
        self.tensors.retain(|t| t.name != name);
        assert_eq!(self.tensors.len(), before - 1, "{name} not in the raw file");
    }

    fn f32s(&self, name: &str) -> Vec<f32> {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .unwrap()
            .data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    fn set_f32s(&mut self, name: &str, values: &[f32]) {
        let t = self.get_mut(name);
        t.dtype = "F32".into();
        t.data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    }

    fn set_config(&mut self, config: Option<&str>) {
        let m = self.metadata.get_or_insert_with(Map::new);
        match config {
            Some(c) => m.insert("config".into(), Value::String(c.into())),
            None => m.remove("config"),
        };
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

// ---- error helpers -----------------------------------------------------------------------------

fn open_err(path: &Path) -> String {
    match SafeFile::open(path) {
        Ok(_) => panic!("{} opened, but it is corrupt", path.display()),
        Err(e) => e.to_string(),
    }
}

fn load_err(path: &Path) -> String {
    match load_model(path) {
        Ok(_) => panic!("{} loaded as a model, but it is bad", path.display()),
        Err(e) => e.to_string(),
    }
}

#[track_caller]
fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "error {msg:?} does not mention {p:?}");
    }
}

/// The error names the file and says the file is not valid safetensors.
#[track_caller]
fn assert_format_err(path: &Path, extra: &[&str]) {
    let msg = open_err(path);
    let p = path.display().to_string();
    assert_mentions(&msg, &[&p, "not a valid safetensors file"]);
    assert_mentions(&msg, extra);
    // The model loader reports the same failure.
    let msg2 = load_err(path);
    assert_mentions(&msg2, &[&p]);
}

// ---- valid files -------------------------------------------------------------------------------

/// A two-layer model small enough to write in microseconds.
fn small_config() -> PalmConfig {
    PalmConfig::new(16, 8, 2, 2, 4)
}

fn small_params(seed: u64) -> PalmParams {
    PalmParams::init(&small_config(), &mut Rng::new(seed)).unwrap()
}

/// A valid model file `model.safetensors` in `dir`.
fn valid_model(dir: &TempDir) -> (PathBuf, PalmParams) {
    let path = dir.file("model.safetensors");
    let params = small_params(7);
    save_model(&path, &params, &[]).unwrap();
    (path, params)
}

/// Two f32 tensors, a (2,) and b (3,), hand-built.
fn two_tensor_header(a: [usize; 2], b: [usize; 2]) -> Value {
    json!({
        "a": {"dtype": "F32", "shape": [2], "data_offsets": a},
        "b": {"dtype": "F32", "shape": [3], "data_offsets": b},
    })
}

#[test]
fn hand_built_file_is_valid_even_misaligned() {
    // Positive control for the builder: 5 floats at an odd header length (data misaligned for
    // f32, so the loader must copy instead of mapping).
    let dir = TempDir::new("control");
    let vals = [1.5f32, -2.0, 3.25, 4.0, -0.5];
    for pad in 0..4 {
        let header = format!("{}{}", two_tensor_header([0, 8], [8, 20]), " ".repeat(pad));
        let p = dir.write("ok.safetensors", &frame(&header, &f32_bytes(&vals)));
        let f = SafeFile::open(&p).unwrap();
        assert_eq!(f.get("a").unwrap().to_vec::<f32>().unwrap(), &vals[..2]);
        assert_eq!(f.get("b").unwrap().to_vec::<f32>().unwrap(), &vals[2..]);
    }
}

// ---- SafeFile::open on corrupt bytes -----------------------------------------------------------

#[test]
fn missing_file_and_directory() {
    let dir = TempDir::new("missing");
    let p = dir.file("does-not-exist.safetensors");
    let msg = open_err(&p);
    assert_mentions(&msg, &["does-not-exist.safetensors"]);
    assert_mentions(&load_err(&p), &["does-not-exist.safetensors"]);
    // A folder where a file is expected.
    let sub = dir.file("a-folder.safetensors");
    std::fs::create_dir(&sub).unwrap();
    assert_mentions(&open_err(&sub), &["a-folder.safetensors"]);
}

#[test]
fn empty_file() {
    let dir = TempDir::new("empty");
    let p = dir.write("empty.safetensors", &[]);
    assert_format_err(&p, &["header too small"]);
}

#[test]
fn shorter_than_eight_bytes() {
    let dir = TempDir::new("short");
    for n in 1..8 {
        let p = dir.write("short.safetensors", &vec![2u8; n]);
        assert_format_err(&p, &["header too small"]);
    }
}

#[test]
fn header_length_larger_than_file() {
    let dir = TempDir::new("hdrlen");
    let mut bytes = frame("{}", &[]);
    bytes[..8].copy_from_slice(&1000u64.to_le_bytes());
    let p = dir.write("long-header.safetensors", &bytes);
    assert_format_err(&p, &["invalid header length"]);
    // Exactly one byte too long.
    let mut bytes = frame_json(&two_tensor_header([0, 8], [8, 20]), &[1; 20]);
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    bytes[..8].copy_from_slice(&(n + 21).to_le_bytes());
    let p = dir.write("long-header2.safetensors", &bytes);
    assert_format_err(&p, &[]);
}

#[test]
fn header_length_absurd() {
    let dir = TempDir::new("absurd");
    for n in [u64::MAX, u64::MAX - 7, 1 << 40] {
        let mut bytes = frame("{}", &[0; 32]);
        bytes[..8].copy_from_slice(&n.to_le_bytes());
        let p = dir.write("absurd.safetensors", &bytes);
        assert_format_err(&p, &["header too large"]);
    }
}

#[test]
fn header_not_json() {
    let dir = TempDir::new("notjson");
    for header in ["this is not json", "{\"a\": ", "{]"] {
        let p = dir.write("notjson.safetensors", &frame(header, &[]));
        assert_format_err(&p, &["JSON"]);
    }
    // Not even UTF-8.
    let mut bytes = 4u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe, 0x80, 0x7b]);
    let p = dir.write("notutf8.safetensors", &bytes);
    assert_format_err(&p, &["UTF-8"]);
}

#[test]
fn header_json_not_an_object() {
    let dir = TempDir::new("notobj");
    for header in ["[1, 2, 3]", "\"a string\"", "null", "42", "true"] {
        let p = dir.write("notobj.safetensors", &frame(header, &[]));
        assert_format_err(&p, &["JSON"]);
    }
    // An object whose entries are not tensor descriptions.
    for header in [
        r#"{"a": 5}"#,
        r#"{"a": {"dtype": "F32"}}"#,
        r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}"#,
        r#"{"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}"#,
        r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}}"#,
        r#"{"__metadata__": {"config": 5}}"#,
        r#"{"__metadata__": [1]}"#,
    ] {
        let data: &[u8] = if header.contains("__metadata__") {
            &[]
        } else {
            &[0; 8]
        };
        let p = dir.write("badentry.safetensors", &frame(header, data));
        assert_format_err(&p, &[]);
    }
}

#[test]
fn unknown_dtype() {
    let dir = TempDir::new("dtype");
    for dtype in ["F33", "float32", "", "f32"] {
        let header = json!({"a": {"dtype": dtype, "shape": [2], "data_offsets": [0, 8]}});
        let p = dir.write("dtype.safetensors", &frame_json(&header, &[1; 8]));
        assert_format_err(&p, &["JSON"]);
    }
}

#[test]
fn dtype_known_to_safetensors_but_unsupported_errors_on_get() {
    let dir = TempDir::new("unsupported");
    let header = json!({
        "ok": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
        "weird": {"dtype": "I8", "shape": [4], "data_offsets": [4, 8]},
    });
    let p = dir.write("i8.safetensors", &frame_json(&header, &[1; 8]));
    let f = SafeFile::open(&p).unwrap();
    assert!(f.get("ok").is_ok());
    match f.get("weird") {
        Ok(_) => panic!("an I8 tensor loaded"),
        Err(e) => assert_mentions(&e.to_string(), &["weird", "i8.safetensors", "I8"]),
    }
}

#[test]
fn get_of_a_missing_name() {
    let dir = TempDir::new("getmissing");
    let p = dir.write(
        "two.safetensors",
        &frame_json(&two_tensor_header([0, 8], [8, 20]), &[1; 20]),
    );
    let f = SafeFile::open(&p).unwrap();
    match f.get("c") {
        Ok(_) => panic!("a missing tensor loaded"),
        Err(e) => assert_mentions(&e.to_string(), &["'c'", "two.safetensors"]),
    }
}

#[test]
fn data_offsets_out_of_range() {
    let dir = TempDir::new("range");
    // Second tensor runs past the end of the data.
    let p = dir.write(
        "range.safetensors",
        &frame_json(&two_tensor_header([0, 8], [8, 20]), &[1; 16]),
    );
    assert_format_err(&p, &[]);
    // Offsets far beyond the file, and end before start.
    for (a, b) in [([0, 8], [8, 1 << 40]), ([0, 8], [20, 8]), ([8, 0], [8, 20])] {
        let p = dir.write(
            "range2.safetensors",
            &frame_json(&two_tensor_header(a, b), &[1; 20]),
        );
        assert_format_err(&p, &[]);
    }
    // Data longer than the tensors claim (trailing bytes).
    let p = dir.write(
        "trailing.safetensors",
        &frame_json(&two_tensor_header([0, 8], [8, 20]), &[1; 24]),
    );
    assert_format_err(&p, &["not fully covered"]);
}

#[test]
fn overlapping_offsets() {
    let dir = TempDir::new("overlap");
    // a = bytes 0..8, b = bytes 4..16: both sizes right, but they overlap.
    let header = json!({
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [3], "data_offsets": [4, 16]},
    });
    let p = dir.write("overlap.safetensors", &frame_json(&header, &[1; 16]));
    assert_format_err(&p, &["invalid offset"]);
    // Two names for the very same bytes.
    let header = json!({
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
    });
    let p = dir.write("alias.safetensors", &frame_json(&header, &[1; 8]));
    assert_format_err(&p, &["invalid offset"]);
}

#[test]
fn offsets_with_a_gap() {
    let dir = TempDir::new("gap");
    // a = 0..8, b = 12..24: bytes 8..12 belong to nothing.
    let p = dir.write(
        "gap.safetensors",
        &frame_json(&two_tensor_header([0, 8], [12, 24]), &[1; 24]),
    );
    assert_format_err(&p, &["invalid offset"]);
    // A leading gap.
    let header = json!({"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}});
    let p = dir.write("gap2.safetensors", &frame_json(&header, &[1; 12]));
    assert_format_err(&p, &["invalid offset"]);
}

#[test]
fn shape_and_size_mismatch() {
    let dir = TempDir::new("size");
    for (dtype, shape, bytes) in [
        ("F32", json!([3]), 8usize),
        ("F32", json!([2, 2]), 12),
        ("BF16", json!([4]), 4),
        ("F64", json!([1]), 4),
        ("U8", json!([]), 2),
    ] {
        let header = json!({"a": {"dtype": dtype, "shape": shape, "data_offsets": [0, bytes]}});
        let p = dir.write("size.safetensors", &frame_json(&header, &vec![1u8; bytes]));
        assert_format_err(&p, &["invalid shape, data type, or offset"]);
    }
    // A shape whose element count overflows.
    let header = json!({"a": {"dtype": "F32", "shape": [u64::MAX / 2, 4], "data_offsets": [0, 8]}});
    let p = dir.write("overflow.safetensors", &frame_json(&header, &[1; 8]));
    assert_format_err(&p, &["overflow"]);
}

#[test]
fn truncated_and_bit_flipped_model_files() {
    let dir = TempDir::new("truncated");
    let (path, _) = valid_model(&dir);
    let bytes = std::fs::read(&path).unwrap();
    // Cut anywhere: in the length, in the header, in the data, one byte short.
    for cut in [3, 8, 20, bytes.len() / 2, bytes.len() - 1] {
        let p = dir.write("cut.safetensors", &bytes[..cut]);
        assert_format_err(&p, &[]);
    }
    // One extra byte.
    let mut longer = bytes.clone();
    longer.push(0);
    let p = dir.write("longer.safetensors", &longer);
    assert_format_err(&p, &[]);
    // Header length off by one either way.
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    for m in [n - 1, n + 1] {
        let mut b = bytes.clone();
        b[..8].copy_from_slice(&m.to_le_bytes());
        let p = dir.write("flip.safetensors", &b);
        assert_format_err(&p, &[]);
    }
}

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

// ---- saving ------------------------------------------------------------------------------------

#[test]
fn save_leaves_no_temp_file() {
    let dir = TempDir::new("atomic");
    let (path, _) = valid_model(&dir);
    assert_eq!(dir.listing(), ["model.safetensors"]);
    // Again over itself, and through the engine's writer.
    save_model(&path, &small_params(8), &[]).unwrap();
    let t = Tensor::from_vec(vec![1f32, 2.0, 3.0], &[3]).unwrap();
    save_safetensors(
        dir.file("plain.safetensors"),
        &[("t".into(), t)],
        HashMap::new(),
    )
    .unwrap();
    assert_eq!(dir.listing(), ["model.safetensors", "plain.safetensors"]);
}

#[test]
fn save_over_existing_file_replaces_it_fully() {
    let dir = TempDir::new("replace");
    let path = dir.file("model.safetensors");
    // A larger file first: garbage, then a bigger model.
    std::fs::write(&path, vec![0xAB; 1 << 20]).unwrap();
    let small = small_params(1);
    save_model(&path, &small, &[]).unwrap();
    let fresh = dir.file("fresh.safetensors");
    save_model(&fresh, &small, &[]).unwrap();
    let (a, b) = (
        std::fs::read(&path).unwrap(),
        std::fs::read(&fresh).unwrap(),
    );
    assert_eq!(a.len(), b.len(), "old bytes survived past the new end");
    let big_config = PalmConfig::new(32, 16, 3, 2, 4);
    let big = PalmParams::init(&big_config, &mut Rng::new(2)).unwrap();
    save_model(&path, &big, &[]).unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() > b.len() as u64);
    // Now the small one over the big one.
    save_model(&path, &small, &[]).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), b.len() as u64);
    let (loaded, _) = load_model(&path).unwrap();
    assert_eq!(loaded.config, small.config);
    for ((n, x), (_, y)) in small.named().into_iter().zip(loaded.named()) {
        assert_eq!(
            x.to_vec::<f32>().unwrap(),
            y.to_vec::<f32>().unwrap(),
            "{n}"
        );
    }
    // A mapping of the old file stays intact while the new one replaces it (rename, not
    // rewrite in place).
    let old = SafeFile::open(&path).unwrap();
    let before = old
        .get("token_emb.weight")
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    save_model(&path, &big, &[]).unwrap();
    assert_eq!(
        old.get("token_emb.weight")
            .unwrap()
            .to_vec::<f32>()
            .unwrap(),
        before
    );
    let (reloaded, _) = load_model(&path).unwrap();
    assert_eq!(reloaded.config, big_config);
    assert_eq!(dir.listing(), ["fresh.safetensors", "model.safetensors"]);
}

#[test]
fn save_into_missing_folder_is_an_error() {
    let dir = TempDir::new("nofolder");
    let path = dir.file("no/such/folder/model.safetensors");
    match save_model(&path, &small_params(3), &[]) {
        Ok(()) => panic!("saved into a folder that does not exist"),
        Err(e) => assert_mentions(&e.to_string(), &["no/such/folder"]),
    }
}

#[test]
fn failed_save_leaves_no_temp_file() {
    let dir = TempDir::new("failedsave");
    let target = dir.file("model.safetensors");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("keep"), b"x").unwrap();
    match save_model(&target, &small_params(4), &[]) {
        Ok(()) => panic!("saved over a folder"),
        Err(e) => assert_mentions(&e.to_string(), &["model.safetensors"]),
    }
    assert_eq!(
        dir.listing(),
        ["model.safetensors"],
        "a temp file was left behind"
    );
}

#[test]
fn saving_the_same_model_twice_gives_the_same_bytes() {
    let dir = TempDir::new("deterministic");
    let params = small_params(6);
    let (a, b) = (dir.file("a.safetensors"), dir.file("b.safetensors"));
    save_model(&a, &params, &[]).unwrap();
    let first = std::fs::read(&a).unwrap();
    for _ in 0..16 {
        save_model(&b, &params, &[]).unwrap();
        assert!(
            std::fs::read(&b).unwrap() == first,
            "two saves of one model differ"
        );
    }
}

#[test]
fn model_tensors_and_metadata_round_trip_through_engine_writer() {
    // The pieces save_model is made of, written by the engine's writer, load back.
    let dir = TempDir::new("pieces");
    let params = small_params(5);
    let path = dir.file("pieces.safetensors");
    save_safetensors(
        &path,
        &model_tensors(&params, &[]).unwrap(),
        model_metadata(&params.config, &[]).unwrap(),
    )
    .unwrap();
    let (loaded, _) = load_model(&path).unwrap();
    assert_eq!(loaded.config, params.config);
}
