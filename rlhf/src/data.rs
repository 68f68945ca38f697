//! RLHF data files (docs/rlhf.md): JSONL, one record a line, plain or gzip (`.gz`, by extension).
//! Readers validate every record and name the file and 1-based line of any fault; writers
//! refuse records that could not be read back.

use crate::{Error, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Pretraining text: `{"text"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextRecord {
    pub text: String,
}

/// Supervised fine-tuning: `{"prompt","completion"}`; the loss is on completion tokens only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftRecord {
    pub prompt: String,
    pub completion: String,
}

/// One preference: `{"prompt","chosen","rejected"[,"margin"]}`, `chosen` better than `rejected`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairRecord {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    /// How much better `chosen` is (finite, ≥ 0); the loss is −log σ(r_c − r_r − margin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margin: Option<f32>,
}

/// A ranking of K ≥ 2 distinct responses: `{"prompt","responses":[best … worst]}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RankingRecord {
    pub prompt: String,
    pub responses: Vec<String>,
}

/// A prompt to sample responses for (`palm label`): `{"prompt"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptRecord {
    pub prompt: String,
}

/// A reward-model training record: a ranking, or a pair (a ranking of 2 with an optional
/// margin). Told apart per line by its fields, so one file may mix both.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(try_from = "PreferenceFields")]
pub enum PreferenceRecord {
    Ranking(RankingRecord),
    Pair(PairRecord),
}

/// Every field either kind may have; `TryFrom` decides which kind a line is.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PreferenceFields {
    prompt: String,
    responses: Option<Vec<String>>,
    chosen: Option<String>,
    rejected: Option<String>,
    margin: Option<f32>,
}

impl TryFrom<PreferenceFields> for PreferenceRecord {
    type Error = String;
    fn try_from(f: PreferenceFields) -> std::result::Result<Self, String> {
        match (f.responses, f.chosen, f.rejected) {
            (Some(responses), None, None) if f.margin.is_none() => {
                Ok(PreferenceRecord::Ranking(RankingRecord {
                    prompt: f.prompt,
                    responses,
                }))
            }
            (Some(_), None, None) => Err("\"margin\" belongs to pairs; a ranking has none".into()),
            (None, Some(chosen), Some(rejected)) => Ok(PreferenceRecord::Pair(PairRecord {
                prompt: f.prompt,
                chosen,
                rejected,
                margin: f.margin,
            })),
            (None, None, None) => Err("expected \"responses\" (a ranking) or \"chosen\" and \
                                       \"rejected\" (a pair)"
                .into()),
            (Some(_), _, _) => Err("a record is a ranking (\"responses\") or a pair \
                                    (\"chosen\", \"rejected\"), not both"
                .into()),
            (None, _, _) => Err("a pair needs both \"chosen\" and \"rejected\"".into()),
        }
    }
}

impl PreferenceRecord {
    /// The prompt, the responses best to worst, and the margin (0 unless a pair gives one).
    pub fn ranking(&self) -> (&str, Vec<&str>, f32) {
        match self {
            PreferenceRecord::Ranking(r) => (
                &r.prompt,
                r.responses.iter().map(String::as_str).collect(),
                0.0,
            ),
            PreferenceRecord::Pair(p) => (
                &p.prompt,
                vec![p.chosen.as_str(), p.rejected.as_str()],
                p.margin.unwrap_or(0.0),
            ),
        }
    }
}

/// Checks a record beyond its JSON shape; `Err` holds the message (the caller adds file and line).
pub trait Validate {
    fn validate(&self) -> std::result::Result<(), String>;
}

/// The rules for text fields: a prompt, a text and an SFT completion (the only tokens SFT learns
/// from) must not be empty or only whitespace; a response to rank may be empty (a model may stop
/// at once, and the labelers keep such samples). No field may hold a NUL byte: byte 0 is the
/// padding id, which the losses ignore.
fn non_empty(field: &str, s: &str) -> std::result::Result<(), String> {
    if s.trim().is_empty() {
        return Err(format!("empty {field}"));
    }
    no_nul(field, s)
}

fn no_nul(field: &str, s: &str) -> std::result::Result<(), String> {
    if let Some(i) = s.bytes().position(|b| b == 0) {
        return Err(format!(
            "{field} contains a NUL byte at byte {i} (byte 0 is the padding id, ignored by the losses)"
        ));
    }
    Ok(())
}

impl Validate for TextRecord {
    fn validate(&self) -> std::result::Result<(), String> {
        non_empty("text", &self.text)
    }
}

impl Validate for SftRecord {
    fn validate(&self) -> std::result::Result<(), String> {
        non_empty("prompt", &self.prompt)?;
        non_empty("completion", &self.completion)
    }
}

impl Validate for PairRecord {
    /// Prompt non-empty; chosen ≠ rejected; margin, when given, finite and ≥ 0.
    fn validate(&self) -> std::result::Result<(), String> {
        non_empty("prompt", &self.prompt)?;
        no_nul("chosen", &self.chosen)?;
        no_nul("rejected", &self.rejected)?;
        if self.chosen == self.rejected {
            let msg = "chosen and rejected are identical; a preference between the same response \
                       is meaningless";
            return Err(msg.into());
        }
        match self.margin {
            Some(m) if !m.is_finite() => Err(format!("margin must be finite, got {m}")),
            Some(m) if m < 0.0 => Err(format!("margin must be ≥ 0, got {m}")),
            _ => Ok(()),
        }
    }
}

impl Validate for RankingRecord {
    /// Prompt non-empty; K ≥ 2 responses, all distinct.
    fn validate(&self) -> std::result::Result<(), String> {
        non_empty("prompt", &self.prompt)?;
        let k = self.responses.len();
        if k < 2 {
            return Err(format!("a ranking needs at least 2 responses, got {k}"));
        }
        for (i, r) in self.responses.iter().enumerate() {
            no_nul(&format!("response {}", i + 1), r)?;
        }
        for i in 0..k {
            for j in i + 1..k {
                if self.responses[i] == self.responses[j] {
                    return Err(format!(
                        "responses {} and {} are identical; ranking identical responses is \
                         meaningless",
                        i + 1,
                        j + 1
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Validate for PromptRecord {
    fn validate(&self) -> std::result::Result<(), String> {
        non_empty("prompt", &self.prompt)
    }
}

impl Validate for PreferenceRecord {
    fn validate(&self) -> std::result::Result<(), String> {
        match self {
            PreferenceRecord::Ranking(r) => r.validate(),
            PreferenceRecord::Pair(p) => p.validate(),
        }
    }
}

impl RankingRecord {
    /// The C(K,2) (better, worse) pairs, in order i < j: `responses[i]` chosen over
    /// `responses[j]` — (0,1), (0,2), …, (1,2), …. Margins are `None`. The reward-model loss
    /// scores each response once and averages −log σ(r_i − r_j) over these pairs (docs/rlhf.md).
    pub fn pairs(&self) -> Vec<PairRecord> {
        let r = &self.responses;
        let mut out = Vec::with_capacity(r.len() * r.len().saturating_sub(1) / 2);
        for i in 0..r.len() {
            for j in i + 1..r.len() {
                out.push(PairRecord {
                    prompt: self.prompt.clone(),
                    chosen: r[i].clone(),
                    rejected: r[j].clone(),
                    margin: None,
                });
            }
        }
        out
    }
}

impl PairRecord {
    /// The ranking `[chosen, rejected]` (K = 2); the margin is dropped.
    pub fn into_ranking(self) -> RankingRecord {
        RankingRecord {
            prompt: self.prompt,
            responses: vec![self.chosen, self.rejected],
        }
    }
}

fn is_gz(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "gz")
}

/// serde_json's message without its " at line 1 column N" (we give our own line), plus the column
/// where serde_json knows one (not for a record rejected as a whole, where it says 0).
fn json_error(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let msg = full
        .rfind(" at line ")
        .map_or(full.as_str(), |i| &full[..i]);
    let kind = match e.classify() {
        serde_json::error::Category::Data => "bad record",
        _ => "malformed JSON",
    };
    match e.column() {
        0 => format!("{kind}: {msg}"),
        c => format!("{kind}: {msg} (column {c})"),
    }
}

/// Read and validate every record of a JSONL file (`.gz`: gzip). Blank lines are skipped; a
/// UTF-8 BOM on the first line and `\r\n` endings are accepted. A file without records is an error.
pub fn read_jsonl<T: DeserializeOwned + Validate>(path: &Path) -> Result<Vec<T>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let gz = is_gz(path);
    let mut reader: Box<dyn BufRead> = if gz {
        // Every member: `cat a.gz b.gz`, pigz and bgzip write several.
        Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(file)))
    } else {
        Box::new(BufReader::new(file))
    };
    let mut records = Vec::new();
    let mut buf = Vec::new();
    let mut line_no = 0;
    loop {
        buf.clear();
        line_no += 1;
        let n = reader.read_until(b'\n', &mut buf).map_err(|e| {
            if gz {
                Error::data(path, Some(line_no), format!("not a valid gzip file: {e}"))
            } else {
                Error::io(path, e)
            }
        })?;
        if n == 0 {
            break;
        }
        let bad = |msg: String| Error::data(path, Some(line_no), msg);
        let mut line = std::str::from_utf8(&buf)
            .map_err(|e| bad(format!("not valid UTF-8: {e}")))?
            .trim_end_matches('\n')
            .trim_end_matches('\r');
        if line_no == 1 {
            line = line.strip_prefix('\u{feff}').unwrap_or(line);
        }
        if line.trim().is_empty() {
            continue;
        }
        if line.trim_start().starts_with('[') {
            // serde would take a struct's fields by position from an array; the format is objects.
            return Err(bad(
                "bad record: expected a JSON object, found an array".into()
            ));
        }
        let record: T = match serde_json::from_str(line) {
            Ok(r) => r,
            // No newline at the end and not JSON: a write that did not finish (a kill or a
            // full disk mid-append). It never was a record; say so and read without it.
            Err(e) if !buf.ends_with(b"\n") && e.is_eof() => {
                crate::output::warn(format!(
                    "warning: {}:{line_no}: the last line is cut off (a write that did not finish); reading the file without it",
                    path.display()
                ));
                break;
            }
            Err(e) => return Err(bad(json_error(&e))),
        };
        record.validate().map_err(bad)?;
        records.push(record);
    }
    if records.is_empty() {
        return Err(Error::data(path, None, "no records"));
    }
    Ok(records)
}

fn create_parent(path: &Path) -> Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e)),
        None => Ok(()),
    }
}

fn to_line<T: Serialize>(path: &Path, line: Option<usize>, record: &T) -> Result<String> {
    serde_json::to_string(record)
        .map_err(|e| Error::data(path, line, format!("cannot encode: {e}")))
}

/// Append one record as a line, then flush and fsync, so a finished record survives Ctrl-C.
/// Creates the file and its folder if needed. An append that fails (a full disk) is cut back to
/// the last complete record. A file that ends without a newline either ends with a complete
/// record (written by hand: a newline goes first) or with a torn one (a write that did not
/// finish: it is cut off, with a note). Plain files only; the record must pass [`Validate`].
pub fn append_jsonl<T: Serialize + Validate>(path: &Path, record: &T) -> Result<()> {
    if is_gz(path) {
        return Err(Error::data(
            path,
            None,
            "cannot append to a .gz file; use plain JSONL",
        ));
    }
    record
        .validate()
        .map_err(|m| Error::data(path, None, format!("record not appended: {m}")))?;
    let mut line = to_line(path, None, record)?;
    line.push('\n');
    create_parent(path)?;
    let existed = path.exists();
    let io = |e| Error::io(path, e);
    let mut f = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(io)?;
    let mut len = f.metadata().map_err(io)?.len();
    if let Some((start, tail)) = torn_tail(&mut f, len).map_err(io)? {
        if serde_json::from_slice::<serde_json::Value>(&tail).is_ok() {
            line.insert(0, '\n');
        } else {
            crate::output::say(format!(
                "note: {}: cut off a torn last line ({} bytes) that a write which did not finish left",
                path.display(),
                tail.len()
            ));
            f.set_len(start).map_err(io)?;
            len = start;
        }
    }
    // One write for the whole line, so concurrent appenders do not interleave within it.
    let written = f
        .write_all(line.as_bytes())
        .and_then(|()| f.flush())
        .and_then(|()| f.sync_all());
    if let Err(e) = written {
        // Leave the file as it was: whole records only, so every reader still accepts it.
        let _ = f.set_len(len).and_then(|()| f.sync_all());
        return Err(Error::data(
            path,
            None,
            format!("record not appended ({e}); the file is left as it was"),
        ));
    }
    if !existed {
        // Persist the new directory entry; not every filesystem supports fsync on a folder.
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
    }
    Ok(())
}

/// The bytes after the last newline of a file of `len` bytes and where they start, if the file
/// does not end with a newline.
fn torn_tail(f: &mut File, len: u64) -> std::io::Result<Option<(u64, Vec<u8>)>> {
    if len == 0 {
        return Ok(None);
    }
    let mut last = [0u8; 1];
    f.seek(SeekFrom::End(-1))?;
    f.read_exact(&mut last)?;
    if last[0] == b'\n' {
        return Ok(None);
    }
    // Read back in blocks until a newline (or the start of the file).
    let mut tail = Vec::new();
    let mut pos = len;
    while pos > 0 {
        let n = pos.min(4096);
        pos -= n;
        let mut block = vec![0u8; n as usize];
        f.seek(SeekFrom::Start(pos))?;
        f.read_exact(&mut block)?;
        block.extend_from_slice(&tail);
        tail = block;
        if let Some(i) = tail[..n as usize].iter().rposition(|&b| b == b'\n') {
            let start = pos + i as u64 + 1;
            return Ok(Some((start, tail.split_off(i + 1))));
        }
    }
    Ok(Some((0, tail)))
}

/// Write a whole file atomically (gzip for `.gz`), creating its folder if needed. Every record
/// must pass [`Validate`] and there must be at least one, so that the file reads back.
pub fn write_jsonl<T: Serialize + Validate>(path: &Path, records: &[T]) -> Result<()> {
    if records.is_empty() {
        return Err(Error::data(path, None, "no records to write"));
    }
    let mut text = String::new();
    for (i, r) in records.iter().enumerate() {
        r.validate()
            .map_err(|m| Error::data(path, Some(i + 1), m))?;
        text.push_str(&to_line(path, Some(i + 1), r)?);
        text.push('\n');
    }
    let bytes = if is_gz(path) {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(text.as_bytes())
            .and_then(|_| enc.finish())
            .map_err(|e| Error::io(path, e))?
    } else {
        text.into_bytes()
    };
    create_parent(path)?;
    palm_engine::write_atomic(path, &bytes)?;
    Ok(())
}
