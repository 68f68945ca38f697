//! Text corpora for byte-level language modelling: the shipped State of the Union corpus (embedded
//! in the binary, so `palm train` works anywhere) or a user file, plain or gzip.

use crate::{Error, Result};
use palm_engine::Rng;
use std::io::Read;
use std::path::Path;

/// The default corpus: 233 State of the Union addresses, 1790–2018 (public domain).
const SOTU_GZ: &[u8] = include_bytes!("../../data/sotu.txt.gz");

pub struct Corpus {
    /// Where it came from, for messages.
    pub name: String,
    pub train: Vec<u8>,
    pub val: Vec<u8>,
}

fn gunzip(bytes: &[u8], name: &Path) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|e| Error::data(name, None, format!("not a valid gzip file: {e}")))?;
    Ok(out)
}

/// Read a corpus file (`.gz` is decompressed), or the shipped one when `path` is `None`.
pub fn read_bytes(path: Option<&Path>) -> Result<(String, Vec<u8>)> {
    let (name, bytes) = match path {
        None => (
            "shipped corpus data/sotu.txt.gz".to_string(),
            gunzip(SOTU_GZ, Path::new("data/sotu.txt.gz"))?,
        ),
        Some(p) => {
            let raw = std::fs::read(p).map_err(|e| Error::io(p, e))?;
            let bytes = if p.extension().is_some_and(|e| e == "gz") {
                gunzip(&raw, p)?
            } else {
                raw
            };
            (p.display().to_string(), bytes)
        }
    };
    if bytes.is_empty() {
        return Err(Error::data(&name, None, "the corpus is empty"));
    }
    Ok((name, bytes))
}

impl Corpus {
    /// Load and hold out the last `val_fraction` for validation. Both parts must fit at least
    /// one window of `seq_len + 1` bytes.
    pub fn load(path: Option<&Path>, val_fraction: f64, seq_len: usize) -> Result<Self> {
        let (name, bytes) = read_bytes(path)?;
        let split = ((bytes.len() as f64) * (1.0 - val_fraction)) as usize;
        let (train, val) = (bytes[..split].to_vec(), bytes[split..].to_vec());
        for (part, data) in [("training", &train), ("validation", &val)] {
            if data.len() < seq_len + 1 {
                return Err(Error::data(
                    &name,
                    None,
                    format!(
                        "the {part} part has {} bytes, fewer than one window of {} (seq-len + 1); use a larger file or a smaller --seq-len",
                        data.len(),
                        seq_len + 1
                    ),
                ));
            }
        }
        Ok(Corpus { name, train, val })
    }
}

/// `batch` random windows of `len` bytes from `data`, as token ids (b × len, row-major).
pub fn random_windows(data: &[u8], batch: usize, len: usize, rng: &mut Rng) -> Vec<u32> {
    let mut out = Vec::with_capacity(batch * len);
    for _ in 0..batch {
        let start = rng.below(data.len() - len + 1);
        out.extend(data[start..start + len].iter().map(|&b| u32::from(b)));
    }
    out
}

/// Up to `count` windows of `len` bytes, evenly spaced over `data` (a fixed validation set).
pub fn spaced_windows(data: &[u8], count: usize, len: usize) -> Vec<Vec<u32>> {
    let room = data.len().saturating_sub(len);
    let count = count.min(room / len.max(1) + 1).max(1);
    (0..count)
        .map(|i| {
            let start = if count == 1 {
                0
            } else {
                i * room / (count - 1)
            };
            data[start..start + len]
                .iter()
                .map(|&b| u32::from(b))
                .collect()
        })
        .collect()
}

/// Consecutive windows of `n + 1` bytes at stride `n` from the start, the last partial window
/// dropped: the `palm eval` protocol.
pub fn strided_windows(data: &[u8], n: usize) -> Vec<Vec<u32>> {
    if n == 0 || data.len() < n + 1 {
        return Vec::new();
    }
    (0..(data.len() - 1) / n)
        .map(|i| {
            data[i * n..i * n + n + 1]
                .iter()
                .map(|&b| u32::from(b))
                .collect()
        })
        .collect()
}
