//! Helpers for the bad-checkpoint tests: scratch folders, hand-built safetensors bytes, valid
//! models to corrupt, and assertions on error messages.

use palm_engine::{Rng, SafeFile};
use palm_model::checkpoint::{load_model, save_model};
use palm_model::{PalmConfig, PalmParams};
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

// ---- temp folders ------------------------------------------------------------------------------

/// A fresh folder under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
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
    pub fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.file(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
    /// Names of everything in the folder, sorted.
    pub fn listing(&self) -> Vec<String> {
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
pub fn frame(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

pub fn frame_json(header: &Value, data: &[u8]) -> Vec<u8> {
    frame(&header.to_string(), data)
}

#[derive(Clone)]
pub struct RawTensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// A safetensors file taken apart by hand (tensors in file order).
#[derive(Clone)]
pub struct RawFile {
    pub tensors: Vec<RawTensor>,
    pub metadata: Option<Map<String, Value>>,
}

impl RawFile {
    pub fn parse(bytes: &[u8]) -> Self {
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

    pub fn read(path: &Path) -> Self {
        Self::parse(&std::fs::read(path).unwrap())
    }

    /// Serialize with consecutive offsets (a valid layout for whatever the entries claim).
    pub fn bytes(&self) -> Vec<u8> {
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

    pub fn write(&self, path: &Path) {
        std::fs::write(path, self.bytes()).unwrap();
    }

    pub fn get_mut(&mut self, name: &str) -> &mut RawTensor {
        self.tensors
            .iter_mut()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no tensor {name} in the raw file"))
    }

    pub fn remove(&mut self, name: &str) {
        let before = self.tensors.len();
        self.tensors.retain(|t| t.name != name);
        assert_eq!(self.tensors.len(), before - 1, "{name} not in the raw file");
    }

    pub fn f32s(&self, name: &str) -> Vec<f32> {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .unwrap()
            .data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    pub fn set_f32s(&mut self, name: &str, values: &[f32]) {
        let t = self.get_mut(name);
        t.dtype = "F32".into();
        t.data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    }

    pub fn set_config(&mut self, config: Option<&str>) {
        let m = self.metadata.get_or_insert_with(Map::new);
        match config {
            Some(c) => m.insert("config".into(), Value::String(c.into())),
            None => m.remove("config"),
        };
    }
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

// ---- error helpers -----------------------------------------------------------------------------

pub fn open_err(path: &Path) -> String {
    match SafeFile::open(path) {
        Ok(_) => panic!("{} opened, but it is corrupt", path.display()),
        Err(e) => e.to_string(),
    }
}

pub fn load_err(path: &Path) -> String {
    match load_model(path) {
        Ok(_) => panic!("{} loaded as a model, but it is bad", path.display()),
        Err(e) => e.to_string(),
    }
}

#[track_caller]
pub fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "error {msg:?} does not mention {p:?}");
    }
}

/// The error names the file and says the file is not valid safetensors.
#[track_caller]
pub fn assert_format_err(path: &Path, extra: &[&str]) {
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
pub fn small_config() -> PalmConfig {
    PalmConfig::new(16, 8, 2, 2, 4)
}

pub fn small_params(seed: u64) -> PalmParams {
    PalmParams::init(&small_config(), &mut Rng::new(seed)).unwrap()
}

/// A valid model file `model.safetensors` in `dir`.
pub fn valid_model(dir: &TempDir) -> (PathBuf, PalmParams) {
    let path = dir.file("model.safetensors");
    let params = small_params(7);
    save_model(&path, &params, &[]).unwrap();
    (path, params)
}

/// Two f32 tensors, a (2,) and b (3,), hand-built.
pub fn two_tensor_header(a: [usize; 2], b: [usize; 2]) -> Value {
    json!({
        "a": {"dtype": "F32", "shape": [2], "data_offsets": a},
        "b": {"dtype": "F32", "shape": [3], "data_offsets": b},
    })
}
