//! Text ↔ token ids. Bytes by default (id = byte value, 256 ids), or a byte-level BPE in Hugging
//! Face's `tokenizer.json` format (trained by `palm tokenizer train`, or any GPT-2-style file).
//!
//! Id 0 is padding and never a training target. The byte tokenizer gives it the NUL byte (as the
//! seed's enwik8 setup does); a BPE trained here reserves it for its `<pad>` special token. A
//! file whose id 0 is an ordinary token (GPT-2's is `!`) is shifted up by one, so the model's
//! id is the file's id + 1 and id 0 stays free. A model's vocabulary must cover every id.
//!
//! A BPE tokenizer travels in every checkpoint made with it (its JSON in the safetensors
//! metadata), so a checkpoint always decodes with the tokenizer it was trained with.

use crate::{Error, Result};
use std::path::Path;
use std::sync::Arc;

/// Ids of the byte tokenizer.
pub const VOCAB: usize = 256;

/// The padding id (never a training target).
pub const PAD: u32 = 0;

/// The special token a trained BPE reserves at id 0.
pub const PAD_TOKEN: &str = "<pad>";

/// Largest tokenizer file read (GPT-2's is 1.4 MB).
const MAX_FILE_BYTES: u64 = 256 << 20;

/// Largest vocabulary `train_bpe` builds.
pub const MAX_VOCAB: usize = 1 << 20;

#[derive(Clone, Default)]
pub struct Tokenizer(Kind);

#[derive(Clone, Default)]
enum Kind {
    #[default]
    Bytes,
    Bpe(Arc<Bpe>),
}

struct Bpe {
    inner: tokenizers::Tokenizer,
    /// The file's JSON as it travels in checkpoints (compact, canonical).
    json: String,
    /// Added to the file's ids (1 when its id 0 is an ordinary token).
    shift: u32,
    /// The file's ids (added tokens included).
    file_ids: usize,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl PartialEq for Tokenizer {
    fn eq(&self, other: &Self) -> bool {
        self.json() == other.json()
    }
}

fn tk_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{what}: {e}"))
}

impl Tokenizer {
    /// The byte tokenizer.
    pub fn bytes() -> Self {
        Tokenizer(Kind::Bytes)
    }

    pub fn is_bytes(&self) -> bool {
        matches!(self.0, Kind::Bytes)
    }

    /// A tokenizer from `tokenizer.json` text; `origin` names where it came from in errors.
    pub fn from_json(json: &str, origin: &str) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(json.as_bytes())
            .map_err(|e| tk_error(&format!("{origin}: not a usable tokenizer.json"), e))?;
        let file_ids = inner.get_vocab_size(true);
        if file_ids == 0 {
            return Err(Error::Invalid(format!(
                "{origin}: the tokenizer has no tokens"
            )));
        }
        let pad_at_zero = inner
            .get_added_tokens_decoder()
            .get(&0)
            .is_some_and(|t| t.special);
        let json = inner
            .to_string(false)
            .map_err(|e| tk_error(&format!("{origin}: cannot re-serialise the tokenizer"), e))?;
        Ok(Tokenizer(Kind::Bpe(Arc::new(Bpe {
            inner,
            json,
            shift: u32::from(!pad_at_zero),
            file_ids,
        }))))
    }

    /// A tokenizer from a `tokenizer.json` file.
    pub fn load(path: &Path) -> Result<Self> {
        let shown = path.display();
        let len = std::fs::metadata(path)
            .map_err(|e| Error::Invalid(format!("{shown}: {e}")))?
            .len();
        if len > MAX_FILE_BYTES {
            return Err(Error::Invalid(format!(
                "{shown}: {len} bytes is larger than any tokenizer.json ({MAX_FILE_BYTES} at most)"
            )));
        }
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::Invalid(format!("{shown}: {e}")))?;
        Self::from_json(&text, &shown.to_string())
    }

    /// Train a byte-level BPE of `vocab` ids (`<pad>` at 0, the 256 byte symbols, merges) on
    /// `text`, split into lines (each keeps its newline).
    pub fn train_bpe(text: &str, vocab: usize) -> Result<Self> {
        use tokenizers::models::TrainerWrapper;
        use tokenizers::models::bpe::{BPE, BpeTrainer};
        use tokenizers::pre_tokenizers::byte_level::ByteLevel;
        let alphabet = ByteLevel::alphabet().len();
        if !(alphabet + 1..=MAX_VOCAB).contains(&vocab) {
            return Err(Error::Invalid(format!(
                "--vocab {vocab}: a byte-level BPE needs {} to {MAX_VOCAB} ids (<pad> and the \
                 {alphabet} byte symbols come first)",
                alphabet + 1
            )));
        }
        if text.is_empty() {
            return Err(Error::Invalid("no text to train a tokenizer on".into()));
        }
        let byte_level = ByteLevel::new(false, true, true);
        let mut tk = tokenizers::Tokenizer::new(BPE::default());
        tk.with_pre_tokenizer(Some(byte_level))
            .with_decoder(Some(byte_level))
            .with_post_processor(Some(byte_level));
        let trainer = BpeTrainer::builder()
            .vocab_size(vocab)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(vec![tokenizers::AddedToken::from(PAD_TOKEN, true)])
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let mut trainer = TrainerWrapper::BpeTrainer(trainer);
        tk.train(&mut trainer, text.split_inclusive('\n'))
            .map_err(|e| tk_error("training the tokenizer", e))?;
        let json = tk
            .to_string(false)
            .map_err(|e| tk_error("serialising the tokenizer", e))?;
        Self::from_json(&json, "the trained tokenizer")
    }

    /// The JSON that travels in checkpoints (`None` for bytes).
    pub fn json(&self) -> Option<&str> {
        match &self.0 {
            Kind::Bytes => None,
            Kind::Bpe(b) => Some(&b.json),
        }
    }

    /// The vocabulary a model needs: one more than the largest id this tokenizer produces.
    pub fn ids(&self) -> usize {
        match &self.0 {
            Kind::Bytes => VOCAB,
            Kind::Bpe(b) => b.file_ids + b.shift as usize,
        }
    }

    /// "bytes" or "BPE of N ids", for messages.
    pub fn describe(&self) -> String {
        match &self.0 {
            Kind::Bytes => "bytes".into(),
            Kind::Bpe(b) => format!(
                "byte-level BPE of {} ids{}",
                self.ids(),
                if b.shift == 1 {
                    ", shifted by one for padding"
                } else {
                    ""
                }
            ),
        }
    }

    /// An error unless a model of `num_tokens` covers every id of this BPE; `model` names it.
    /// Bytes always fit: a byte model may have fewer ids (the tests' small vocabularies), and
    /// a byte past its vocabulary is refused by the embedding when it is met.
    pub fn check_fits(&self, num_tokens: usize, model: &str) -> Result<()> {
        if !self.is_bytes() && self.ids() > num_tokens {
            return Err(Error::Invalid(format!(
                "vocabulary size mismatch: the tokenizer ({}) produces ids up to {}, but {model} \
                 has {num_tokens} tokens",
                self.describe(),
                self.ids() - 1
            )));
        }
        Ok(())
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match &self.0 {
            Kind::Bytes => Ok(text.bytes().map(u32::from).collect()),
            Kind::Bpe(b) => {
                let enc = b
                    .inner
                    .encode(text, false)
                    .map_err(|e| tk_error("encoding text", e))?;
                Ok(enc.get_ids().iter().map(|&i| i + b.shift).collect())
            }
        }
    }

    /// Each of `texts` encoded.
    pub fn encode_all(&self, texts: &[impl AsRef<str>]) -> Result<Vec<Vec<u32>>> {
        texts.iter().map(|t| self.encode(t.as_ref())).collect()
    }

    /// Encode a long text (a corpus) in line-aligned chunks, in parallel.
    pub fn encode_corpus(&self, text: &str) -> Result<Vec<u32>> {
        const CHUNK: usize = 1 << 16;
        if self.is_bytes() || text.len() <= CHUNK {
            return self.encode(text);
        }
        let mut chunks = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let mut end = CHUNK.min(rest.len());
            while !rest.is_char_boundary(end) {
                end += 1;
            }
            // Break after a newline when there is one in the chunk.
            if end < rest.len()
                && let Some(nl) = rest[..end].rfind('\n')
            {
                end = nl + 1;
            }
            chunks.push(&rest[..end]);
            rest = &rest[end..];
        }
        use rayon::prelude::*;
        let parts: Vec<Vec<u32>> = chunks
            .par_iter()
            .map(|c| self.encode(c))
            .collect::<Result<_>>()?;
        Ok(parts.concat())
    }

    /// Ids back to text. Padding and ids outside the tokenizer are dropped; bytes that are not
    /// valid UTF-8 (a sample cut mid-character) show as U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        match &self.0 {
            Kind::Bytes => {
                let bytes: Vec<u8> = ids
                    .iter()
                    .filter(|&&i| i > 0 && i < 256)
                    .map(|&i| i as u8)
                    .collect();
                String::from_utf8_lossy(&bytes).into_owned()
            }
            Kind::Bpe(b) => {
                let file: Vec<u32> = ids
                    .iter()
                    .filter(|&&i| i >= b.shift && i != PAD && (i as usize) < self.ids())
                    .map(|&i| i - b.shift)
                    .collect();
                // Decoding known ids with the file's own decoder does not fail; if it ever
                // does, show the ids rather than nothing.
                b.inner
                    .decode(&file, true)
                    .unwrap_or_else(|e| format!("<undecodable {file:?}: {e}>"))
            }
        }
    }
}

/// Text of a growing id sequence as it is drawn: each push returns what is new and complete
/// (held back while the ids so far end inside a multi-byte character). Only the ids since the
/// last complete piece are decoded again, so a long reply costs linear time.
pub struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    /// Ids before this were shown and never decoded again.
    prefix: usize,
    /// Ids before this are shown (`prefix..read` decoded is already out).
    read: usize,
}

impl<'a> TextStream<'a> {
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        TextStream {
            tokenizer,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
        }
    }

    pub fn push(&mut self, id: u32) -> String {
        self.ids.push(id);
        let shown = self.tokenizer.decode(&self.ids[self.prefix..self.read]);
        let now = self.tokenizer.decode(&self.ids[self.prefix..]);
        if now.ends_with('\u{FFFD}') || now.len() <= shown.len() {
            return String::new();
        }
        let new = now.get(shown.len()..).unwrap_or_default().to_string();
        (self.prefix, self.read) = (self.read, self.ids.len());
        new
    }

    /// Whatever is still held back (an incomplete character, shown as U+FFFD).
    pub fn finish(&mut self) -> String {
        let shown = self.tokenizer.decode(&self.ids[self.prefix..self.read]);
        let now = self.tokenizer.decode(&self.ids[self.prefix..]);
        (self.prefix, self.read) = (self.ids.len(), self.ids.len());
        now.get(shown.len()..).unwrap_or_default().to_string()
    }
}
