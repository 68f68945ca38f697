//! Text corpora for language modelling: the shipped State of the Union corpus (embedded in the
//! binary, so `palm train` works anywhere) or a user file, plain or gzip, as the ids of a
//! tokenizer (bytes by default).

use crate::{Error, Result};
use palm_engine::Rng;
use palm_model::Tokenizer;
use std::io::Read;
use std::path::Path;

/// The default corpus: 233 State of the Union addresses, 1790–2018 (public domain).
const SOTU_GZ: &[u8] = include_bytes!("../../data/sotu.txt.gz");

pub struct Corpus {
    /// Where it came from, for messages.
    pub name: String,
    pub train: Ids,
    pub val: Ids,
    /// The held-out text itself.
    pub val_text: Vec<u8>,
    /// Bytes of text behind `train`.
    pub train_bytes: usize,
}

/// Token ids of a text: its bytes themselves under the byte tokenizer (no copy, a byte each),
/// else the tokenizer's ids.
pub enum Ids {
    Bytes(Vec<u8>),
    Tokens(Vec<u32>),
}

impl Ids {
    /// `text` (named `name` in errors) as `tokenizer`'s ids. A BPE reads UTF-8 text only.
    pub fn of(text: Vec<u8>, tokenizer: &Tokenizer, name: &str) -> Result<Self> {
        if tokenizer.is_bytes() {
            return Ok(Ids::Bytes(text));
        }
        let text = String::from_utf8(text).map_err(|e| {
            Error::data(
                name,
                None,
                format!(
                    "not UTF-8 text at byte {} (a BPE tokenizer reads text; bytes read anything)",
                    e.utf8_error().valid_up_to()
                ),
            )
        })?;
        Ok(Ids::Tokens(tokenizer.encode_corpus(&text)?))
    }

    pub fn len(&self) -> usize {
        match self {
            Ids::Bytes(b) => b.len(),
            Ids::Tokens(t) => t.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ids `start .. start + len` (in range: checked by the callers).
    pub fn window(&self, start: usize, len: usize) -> impl Iterator<Item = u32> + '_ {
        let (bytes, tokens): (&[u8], &[u32]) = match self {
            Ids::Bytes(b) => (&b[start..start + len], &[]),
            Ids::Tokens(t) => (&[], &t[start..start + len]),
        };
        bytes
            .iter()
            .map(|&b| u32::from(b))
            .chain(tokens.iter().copied())
    }

    fn all_padding(&self) -> bool {
        self.window(0, self.len())
            .all(|i| i == palm_model::tokenizer::PAD)
    }
}

/// Every member of a gzip file (`cat a.gz b.gz`, pigz and bgzip write several); bytes after the
/// last member that are not another member are an error, not silently dropped.
fn gunzip(bytes: &[u8], name: &Path) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes)
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
    /// Load, hold out the last `val_fraction` of the bytes for validation (split at a character
    /// boundary), and tokenize both parts. Both must fit at least one window of `seq_len + 1`
    /// tokens.
    pub fn load(
        path: Option<&Path>,
        val_fraction: f64,
        seq_len: usize,
        tokenizer: &Tokenizer,
    ) -> Result<Self> {
        let (name, mut bytes) = read_bytes(path)?;
        let mut split = ((bytes.len() as f64) * (1.0 - val_fraction)) as usize;
        // Not inside a UTF-8 sequence (continuation bytes are 0b10xxxxxx).
        while split < bytes.len() && (bytes[split] & 0xC0) == 0x80 {
            split += 1;
        }
        let val_text = bytes.split_off(split);
        let train_bytes = bytes.len();
        let train = Ids::of(bytes, tokenizer, &name)?;
        let val = Ids::of(val_text.clone(), tokenizer, &name)?;
        let unit = if tokenizer.is_bytes() {
            "bytes"
        } else {
            "tokens"
        };
        for (part, data) in [("training", &train), ("validation", &val)] {
            if data.all_padding() && !data.is_empty() {
                return Err(Error::data(
                    &name,
                    None,
                    format!(
                        "the {part} part holds only NUL bytes (byte 0 is padding, ignored by the \
                         loss): nothing to learn from or score"
                    ),
                ));
            }
            if data.len() <= seq_len {
                return Err(Error::data(
                    &name,
                    None,
                    format!(
                        "the {part} part has {} {unit}, fewer than one window of {} (seq-len + 1); use a larger file or a smaller --seq-len",
                        data.len(),
                        seq_len.saturating_add(1)
                    ),
                ));
            }
        }
        Ok(Corpus {
            name,
            train,
            val,
            val_text,
            train_bytes,
        })
    }

    /// Validation tokens per byte of held-out text: nats per token × this / ln 2 is bits per
    /// byte, comparable across tokenizers.
    pub fn val_tokens_per_byte(&self) -> f64 {
        self.val.len() as f64 / self.val_text.len().max(1) as f64
    }
}

/// `batch` random windows of `len` ids from `data` (b × len, row-major).
pub fn random_windows(data: &Ids, batch: usize, len: usize, rng: &mut Rng) -> Vec<u32> {
    let mut out = Vec::with_capacity(batch * len);
    for _ in 0..batch {
        let start = rng.below(data.len() - len + 1);
        out.extend(data.window(start, len));
    }
    out
}

/// Up to `count` windows of `len` ids, evenly spaced over `data` (a fixed validation set).
pub fn spaced_windows(data: &Ids, count: usize, len: usize) -> Vec<Vec<u32>> {
    let room = data.len().saturating_sub(len);
    let count = count.min(room / len.max(1) + 1).max(1);
    (0..count)
        .map(|i| {
            let start = if count == 1 {
                0
            } else {
                i * room / (count - 1)
            };
            data.window(start, len).collect()
        })
        .collect()
}

/// Openings of the sentences of `text`, each exactly `len` bytes ending in a space after a whole
/// word: prompts that read naturally, all of one length (rollouts decode prompts of one length
/// together). A sentence starts at the text's start, after a newline, or after ". ", "! " or
/// "? ", with an ASCII capital; an opening must be printable ASCII without a sentence end of
/// its own (so "Mr. Speaker" does not count). Distinct, in order of appearance.
pub fn sentence_starts(text: &[u8], len: usize) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    if len < 2 {
        return out;
    }
    for i in 0..text.len().saturating_sub(len - 1) {
        let starts = i == 0
            || text[i - 1] == b'\n'
            || (i >= 2 && text[i - 1] == b' ' && matches!(text[i - 2], b'.' | b'!' | b'?'));
        if !starts || !text[i].is_ascii_uppercase() {
            continue;
        }
        let open = &text[i..i + len];
        let printable = open
            .iter()
            .all(|b| (b' '..=b'~').contains(b) && !matches!(b, b'.' | b'!' | b'?'));
        if printable && open[len - 1] == b' ' && open[len - 2] != b' ' && seen.insert(open) {
            // Printable ASCII, so valid UTF-8.
            out.push(String::from_utf8_lossy(open).into_owned());
        }
    }
    out
}

/// Consecutive windows of `n + 1` ids at stride `n` from the start, the last partial window
/// dropped: the `palm eval` protocol.
pub fn strided_windows(data: &Ids, n: usize) -> Vec<Vec<u32>> {
    // `len ≤ n`, not `len < n + 1`: n may be as large as a user typed.
    if n == 0 || data.len() <= n {
        return Vec::new();
    }
    (0..(data.len() - 1) / n)
        .map(|i| data.window(i * n, n + 1).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gz(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn windows_of_any_length_never_overflow() {
        let ids = |t: &[u8]| Ids::Bytes(t.to_vec());
        assert!(strided_windows(&ids(b"abc"), usize::MAX).is_empty());
        assert!(strided_windows(&ids(b"abc"), 3).is_empty());
        assert_eq!(strided_windows(&ids(b"abcd"), 3).len(), 1);
    }

    #[test]
    fn a_corpus_of_nul_bytes_is_refused() {
        let dir = std::env::temp_dir().join(format!("palm-nul-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("nul.txt");
        std::fs::write(&p, vec![0u8; 4096]).unwrap();
        let e = Corpus::load(Some(&p), 0.05, 16, &Tokenizer::bytes())
            .err()
            .unwrap()
            .to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(e.contains("nul.txt") && e.contains("NUL"), "{e}");
    }

    #[test]
    fn every_gzip_member_is_read_and_trailing_garbage_is_an_error() {
        let name = Path::new("multi.gz");
        let two = [gz(b"first member, "), gz(b"second member")].concat();
        assert_eq!(gunzip(&two, name).unwrap(), b"first member, second member");
        let mut junk = gz(b"text");
        junk.extend_from_slice(b"not gzip");
        let e = gunzip(&junk, name).unwrap_err().to_string();
        assert!(e.contains("multi.gz") && e.contains("gzip"), "{e}");
    }

    #[test]
    fn sentence_starts_are_whole_words_of_one_length() {
        let text = b"We can do it. We can win! Mr. Speaker, thank you. \
                     we lower. Thank you\nWe can go now? Our caf\xc3\xa9 is open. We can do it again.";
        let starts = sentence_starts(text, 7);
        // "We can " thrice (kept once), "Mr. Sp" has a sentence end, "we" is lowercase,
        // "Thank y" ends mid-word, "Our caf\xc3" is not ASCII.
        assert_eq!(starts, ["We can "]);
        // "Thank you\n" ends in a newline, not a space.
        assert_eq!(sentence_starts(text, 10), ["We can do ", "We can go "]);
        assert_eq!(sentence_starts(b"Ab ", 3), ["Ab "]);
        assert!(sentence_starts(b"Ab", 3).is_empty());
        assert!(sentence_starts(text, 0).is_empty());
    }
}
