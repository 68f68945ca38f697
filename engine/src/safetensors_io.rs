//! safetensors files: opened by memory map (tensors borrow the mapping when dtype and alignment
//! allow, so loading copies nothing), saved atomically (temp file, fsync, rename).

use crate::storage::{Backing, Buf, CpuElement, CpuStorage};
use crate::{DType, Error, Result, Tensor};
use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::tensor::{Dtype as StDtype, SafeTensors, View};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

struct Entry {
    dtype: StDtype,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: usize,
    end: usize,
}

/// An opened safetensors file.
pub struct SafeFile {
    path: PathBuf,
    map: Backing,
    entries: BTreeMap<String, Entry>,
    metadata: HashMap<String, String>,
}

impl SafeFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: the mapping is read-only; like every mmap-based loader we assume the file is
        // not truncated or rewritten by another process while mapped (our own saves replace
        // files by rename, which leaves existing mappings intact).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        Self::parse(path, Arc::new(map))
    }

    /// Parse bytes already in memory (`name` is used in error messages), e.g. embedded test data.
    pub fn from_static(name: impl Into<PathBuf>, bytes: &'static [u8]) -> Result<Self> {
        Self::parse(name.into(), Arc::new(bytes))
    }

    fn parse(path: PathBuf, map: Backing) -> Result<Self> {
        let bytes: &[u8] = (*map).as_ref();
        // Full validation (header, dtypes, offsets in range and non-overlapping, sizes).
        SafeTensors::deserialize(bytes)
            .map_err(|e| Error::format(&path, format!("not a valid safetensors file: {e}")))?;
        let (header_len, meta) = SafeTensors::read_metadata(bytes)
            .map_err(|e| Error::format(&path, format!("not a valid safetensors file: {e}")))?;
        let base = 8 + header_len;
        let mut entries = BTreeMap::new();
        for (name, info) in meta.tensors() {
            let (s, e) = info.data_offsets;
            entries.insert(
                name,
                Entry {
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    start: base + s,
                    end: base + e,
                },
            );
        }
        let metadata = meta.metadata().clone().unwrap_or_default();
        Ok(SafeFile {
            path,
            map,
            entries,
            metadata,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(|s| s.as_str())
    }
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }
    /// Shape and dtype name of a tensor, without loading it.
    pub fn info(&self, name: &str) -> Option<(Vec<usize>, String)> {
        self.entries
            .get(name)
            .map(|e| (e.shape.clone(), format!("{:?}", e.dtype)))
    }

    /// Load one tensor. f32, bf16, u32, i64 and u8 map without copying when aligned; f64 and
    /// f16 convert to f32; bool becomes u8.
    pub fn get(&self, name: &str) -> Result<Tensor> {
        let e = self.entries.get(name).ok_or_else(|| Error::Missing {
            what: format!("tensor '{name}' in {}", self.path.display()),
        })?;
        let bytes = &(*self.map).as_ref()[e.start..e.end];
        let n = e.end - e.start;
        let storage = match e.dtype {
            StDtype::F32 => self.mapped::<f32>(e.start, n / 4),
            StDtype::BF16 => self.mapped::<bf16>(e.start, n / 2),
            StDtype::U32 => self.mapped::<u32>(e.start, n / 4),
            StDtype::I64 => self.mapped::<i64>(e.start, n / 8),
            StDtype::U8 | StDtype::BOOL => self.mapped::<u8>(e.start, n),
            StDtype::F64 => CpuStorage::F32(Buf::Owned(
                bytes
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32)
                    .collect(),
            )),
            StDtype::F16 => CpuStorage::F32(Buf::Owned(
                bytes
                    .chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            )),
            other => {
                return Err(Error::format(
                    &self.path,
                    format!("tensor '{name}' has unsupported dtype {other:?}"),
                ));
            }
        };
        Ok(Tensor::from_cpu(storage, &e.shape))
    }

    /// A mapped buffer, or an aligned copy when the file offset is misaligned for `T`.
    fn mapped<T: CpuElement>(&self, start: usize, len: usize) -> CpuStorage {
        match Buf::<T>::mapped(self.map.clone(), start, len) {
            Some(b) => T::wrap(b),
            None => {
                let bytes = &(*self.map).as_ref()[start..start + len * std::mem::size_of::<T>()];
                T::wrap(Buf::Owned(bytemuck::pod_collect_to_vec(bytes)))
            }
        }
    }
}

/// A tensor's bytes for serialization.
struct Bytes {
    dtype: StDtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Bytes {
    fn dtype(&self) -> StDtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn to_bytes(t: &Tensor) -> Result<Bytes> {
    let (dtype, data) = match t.dtype() {
        DType::F32 => (
            StDtype::F32,
            bytemuck::cast_slice(&t.to_vec::<f32>()?).to_vec(),
        ),
        DType::BF16 => (
            StDtype::BF16,
            bytemuck::cast_slice(&t.to_vec::<bf16>()?).to_vec(),
        ),
        DType::U32 => (
            StDtype::U32,
            bytemuck::cast_slice(&t.to_vec::<u32>()?).to_vec(),
        ),
        DType::I64 => (
            StDtype::I64,
            bytemuck::cast_slice(&t.to_vec::<i64>()?).to_vec(),
        ),
        DType::U8 => (StDtype::U8, t.to_vec::<u8>()?),
    };
    Ok(Bytes {
        dtype,
        shape: t.dims().to_vec(),
        data,
    })
}

/// Write `tensors` and `metadata` to `path` atomically: a crash leaves either the old file or
/// the new one, never a torn mix.
pub fn save(
    path: impl AsRef<Path>,
    tensors: &[(String, Tensor)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    let bytes: Vec<(String, Bytes)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), to_bytes(t)?)))
        .collect::<Result<_>>()?;
    let views = bytes.iter().map(|(n, b)| (n.as_str(), b));
    let buf = safetensors::serialize(views, Some(metadata))
        .map_err(|e| Error::format(path, format!("cannot serialize: {e}")))?;
    write_atomic(path, &sorted_header(&buf).unwrap_or(buf))
}

/// The same file with its JSON header's keys sorted (so saving the same tensors twice gives
/// the same bytes; the metadata arrives as a HashMap in random order). Padding keeps the data
/// 8-byte aligned. `None` if the bytes are not what `serialize` writes.
fn sorted_header(buf: &[u8]) -> Option<Vec<u8>> {
    let n = u64::from_le_bytes(buf.get(..8)?.try_into().ok()?) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(buf.get(8..8 + n)?).ok()?;
    // serde_json's Map is a BTreeMap (sorted) without the preserve_order feature.
    let mut text = serde_json::to_vec(&header).ok()?;
    while text.len() % 8 != 0 {
        text.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + text.len() + buf.len() - 8 - n);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    out.extend_from_slice(&buf[8 + n..]);
    Some(out)
}

/// Write a whole file atomically (temp file in the same folder, fsync, rename, fsync folder).
///
/// A symlink is written through (its target is replaced, the link stays), and a path that is
/// not a regular file (`/dev/null`, `/dev/stdout`, a FIFO) is written to directly: replacing
/// such a path by renaming over it would put a regular file where a device was (as root, for
/// the whole machine).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    if let Ok(meta) = std::fs::metadata(path)
        && !meta.is_file()
        && !meta.is_dir()
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        return f.write_all(data).map_err(|e| Error::io(path, e));
    }
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        let target = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
        return write_atomic(&target, data);
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Unique per process and call, so concurrent saves of one path cannot collide.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(data).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    if let Ok(d) = std::fs::File::open(dir) {
        // Persist the rename itself; not every filesystem supports fsync on a directory.
        let _ = d.sync_all();
    }
    Ok(())
}
