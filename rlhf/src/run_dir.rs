//! The run folder every training loop writes (`train`, `sft`, `reward train`, `dpo`, `ppo`,
//! `grpo`): one writer at a time, a metrics file, and checkpoints that a kill or a full disk at
//! any moment cannot tear.
//!
//! - **One writer.** The folder is locked (`flock` on `.palm.lock`) for the life of the run. The
//!   kernel drops the lock when the process ends, however it ends, so a crashed run never leaves
//!   the folder stuck; a second run into a locked folder is an error naming the first one's pid.
//! - **No silent replacement.** A fresh run refuses a folder that holds another run's files
//!   unless told `--overwrite`; it checks this before it writes anything.
//! - **Whole lines.** Each metrics line is written with one `write` call, so a kill leaves at
//!   most one torn line at the end, which a resume cuts off.
//! - **One checkpoint unit.** A checkpoint writes the state file first (every tensor a resume
//!   needs, the step, and the length of `metrics.jsonl` at that moment), then the model file with
//!   the same step; each file is replaced atomically. The state file is the commit point: a resume
//!   reads it, cuts `metrics.jsonl` back to the recorded length (so no step is logged twice), and
//!   rewrites the model if a kill left it a checkpoint behind ([`RunDir::model_step`]).
//! - **No leftovers.** Temporary files of interrupted atomic writes (`.NAME.PID.N.tmp`) are
//!   removed when the folder is next opened (under the lock, so never another run's).

use crate::{Error, Result};
use palm_engine::{AdamW, AdamWConfig, Rng, SafeFile, Tensor};
use palm_model::Trainable;
use palm_model::checkpoint::get_checked;
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub const METRICS_FILE: &str = "metrics.jsonl";

/// How a training run begins: a new run with `settings` in the folder `out` (replacing one there
/// only with `overwrite`), or the run saved in a folder, continued with its own settings.
pub enum Begin<'a, S> {
    Fresh {
        settings: S,
        out: &'a Path,
        overwrite: bool,
    },
    Resume(&'a Path),
}

/// A [`Begin`] opened: a resumed run's folder (locked) and state, the run's settings (its own
/// when resumed), and where a fresh run's folder goes — created only once the run's inputs have
/// been read and checked ([`Opened::folder`]).
pub struct Opened<'a, S> {
    pub resumed: Option<(RunDir, SavedState)>,
    pub settings: S,
    fresh: Option<(&'a Path, bool)>,
}

impl<'a, S: serde::de::DeserializeOwned> Begin<'a, S> {
    /// Lock and read a resumed run's state (a [`SavedState`] of `format` in `state_file`).
    pub fn open(self, state_file: &str, format: &str) -> Result<Opened<'a, S>> {
        Ok(match self {
            Begin::Resume(dir) => {
                let (run, state) = RunDir::resume_saved(dir, state_file, format)?;
                Opened {
                    settings: state.settings_as()?,
                    resumed: Some((run, state)),
                    fresh: None,
                }
            }
            Begin::Fresh {
                settings,
                out,
                overwrite,
            } => Opened {
                resumed: None,
                settings,
                fresh: Some((out, overwrite)),
            },
        })
    }
}

impl<S> Opened<'_, S> {
    /// A fresh run's folder, created now for `files` (the state and model files it writes).
    pub fn folder(&self, files: &[&str]) -> Result<RunDir> {
        let (out, overwrite) = self
            .fresh
            .ok_or_else(|| Error::Invalid("internal: a resumed run has its folder".into()))?;
        RunDir::create(out, files, overwrite)
    }
}
pub const LOCK_FILE: &str = ".palm.lock";
/// Metadata key of the step a state or model file was saved at.
pub const STEP_KEY: &str = "checkpoint_step";
/// Metadata key (state file) of the length of `metrics.jsonl` when the checkpoint was taken.
pub const METRICS_OFFSET_KEY: &str = "metrics_offset";

/// A locked run folder with its metrics file open for appending.
pub struct RunDir {
    path: PathBuf,
    metrics: File,
    // Held, not read: the lock lives as long as this handle.
    _lock: File,
}

/// The metadata a checkpoint adds to its files: the step, and (state file only) the metrics
/// offset. Insert [`Marks::state`] into the state file's metadata and [`Marks::model`] into the
/// model file's.
pub struct Marks {
    step: u64,
    metrics_offset: u64,
}

impl Marks {
    pub fn state(&self) -> [(String, String); 2] {
        [
            (STEP_KEY.into(), self.step.to_string()),
            (METRICS_OFFSET_KEY.into(), self.metrics_offset.to_string()),
        ]
    }
    pub fn model(&self) -> [(String, String); 1] {
        [(STEP_KEY.into(), self.step.to_string())]
    }
}

impl RunDir {
    /// A fresh run in `path` (created if needed). `run_files` are the files this kind of run
    /// writes besides the metrics; if any of them (or the metrics) exist, the folder holds
    /// another run and is refused unless `overwrite`, in which case they are removed (state
    /// first, so a half-removed folder is never resumable).
    pub fn create(path: &Path, run_files: &[&str], overwrite: bool) -> Result<RunDir> {
        std::fs::create_dir_all(path).map_err(|e| Error::io(path, e))?;
        let lock = lock(path)?;
        remove_temporaries(path)?;
        let present: Vec<&str> = run_files
            .iter()
            .copied()
            .chain([METRICS_FILE])
            .filter(|f| path.join(f).exists())
            .collect();
        if !present.is_empty() {
            if !overwrite {
                return Err(Error::Invalid(format!(
                    "{} holds another run ({}): continue it with --resume {0}, replace it with --overwrite, or choose another --out",
                    path.display(),
                    present.join(", ")
                )));
            }
            for f in present {
                let p = path.join(f);
                std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
            }
        }
        let (metrics, _) = open_metrics(path)?;
        Ok(RunDir {
            path: path.to_path_buf(),
            metrics,
            _lock: lock,
        })
    }

    /// [`RunDir::resume`] for a run whose state file is a [`SavedState`] of `format`: the
    /// folder, locked, and its state, with a line saying where the run continues.
    pub fn resume_saved(
        path: &Path,
        state_file: &str,
        format: &str,
    ) -> Result<(RunDir, SavedState)> {
        let (run, state) = RunDir::resume(path, state_file, |d| {
            let state = SavedState::open(&d.join(state_file), format)?;
            let offset = state.metrics_offset;
            Ok((state, offset))
        })?;
        crate::output::say(format!(
            "resuming {} at step {}",
            path.display(),
            state.step
        ));
        Ok((run, state))
    }

    /// The run in `path`, to continue. `read` loads its checkpoint (under the lock) and returns
    /// it with the metrics offset it recorded; `metrics.jsonl` is cut back to that length, so the
    /// steps logged after the checkpoint are logged again, once.
    pub fn resume<T>(
        path: &Path,
        state_file: &str,
        read: impl FnOnce(&Path) -> Result<(T, u64)>,
    ) -> Result<(RunDir, T)> {
        if !path.is_dir() {
            return Err(Error::Invalid(format!(
                "--resume {}: no such run folder",
                path.display()
            )));
        }
        let lock = lock(path)?;
        remove_temporaries(path)?;
        if !path.join(state_file).exists() {
            return Err(Error::Invalid(format!(
                "--resume {}: no {state_file} there (a run that stopped before its first checkpoint has nothing to resume: start it again with --overwrite)",
                path.display()
            )));
        }
        let (loaded, offset) = read(path)?;
        let (metrics, metrics_path) = open_metrics(path)?;
        let len = metrics
            .metadata()
            .map_err(|e| Error::io(&metrics_path, e))?
            .len();
        if len < offset {
            return Err(Error::data(
                &metrics_path,
                None,
                format!(
                    "{len} bytes, but the checkpoint was taken at byte {offset}: the file was cut or replaced since (move it aside to resume with a fresh one)"
                ),
            ));
        }
        metrics
            .set_len(offset)
            .and_then(|()| metrics.sync_all())
            .map_err(|e| Error::io(&metrics_path, e))?;
        Ok((
            RunDir {
                path: path.to_path_buf(),
                metrics,
                _lock: lock,
            },
            loaded,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, file: &str) -> PathBuf {
        self.path.join(file)
    }

    /// Append one JSON object as one line (one `write`, so a kill tears at most this line).
    pub fn log(&mut self, value: &serde_json::Value) -> Result<()> {
        let line = format!("{value}\n");
        self.metrics
            .write_all(line.as_bytes())
            .map_err(|e| Error::io(self.path.join(METRICS_FILE), e))
    }

    /// Make the metrics durable and return the marks of a checkpoint at `step`; write the state
    /// file with [`Marks::state`], then the model file with [`Marks::model`].
    pub fn marks(&mut self, step: u64) -> Result<Marks> {
        let path = self.path.join(METRICS_FILE);
        self.metrics.sync_data().map_err(|e| Error::io(&path, e))?;
        let metrics_offset = self
            .metrics
            .metadata()
            .map_err(|e| Error::io(&path, e))?
            .len();
        Ok(Marks {
            step,
            metrics_offset,
        })
    }
}

/// `DIR/metrics.jsonl` opened for appending (created if missing), with its path.
fn open_metrics(dir: &Path) -> Result<(File, PathBuf)> {
    let path = dir.join(METRICS_FILE);
    let file = File::options()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    Ok((file, path))
}

/// The step and metrics offset a state file's metadata records.
pub fn read_marks(
    path: &Path,
    meta: &std::collections::HashMap<String, String>,
) -> Result<(u64, u64)> {
    let int = |k: &str| -> Result<u64> {
        let v = meta.get(k).ok_or_else(|| {
            Error::data(
                path,
                None,
                format!("no '{k}' in the metadata: not a checkpoint of this version"),
            )
        })?;
        v.parse()
            .map_err(|e| Error::data(path, None, format!("bad '{k}' in the metadata: {e}")))
    };
    Ok((int(STEP_KEY)?, int(METRICS_OFFSET_KEY)?))
}

/// The step a model file was checkpointed at (`None` if it is missing or says none), to find a
/// model a kill left behind its state.
pub fn model_step(path: &Path) -> Option<u64> {
    let file = palm_engine::SafeFile::open(path).ok()?;
    file.metadata().get(STEP_KEY)?.parse().ok()
}

/// Lock `dir` for this process, or say who holds it.
fn lock(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let mut file = File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() {
                "another process".to_string()
            } else {
                format!("another palm process (pid {holder})")
            };
            return Err(Error::Invalid(format!(
                "{} is in use by {who}: one run writes to a folder at a time (wait for it to end, or choose another --out)",
                dir.display()
            )));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
    }
    // The pid is only for the message above; the lock is what counts.
    let pid = std::process::id().to_string();
    file.set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| file.write_all(pid.as_bytes()))
        .map_err(|e| Error::io(&path, e))?;
    Ok(file)
}

/// Remove the temporary files of atomic writes that a crash interrupted (`.NAME.PID.N.tmp`).
fn remove_temporaries(dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(".tmp") && entry.path().is_file() {
            std::fs::remove_file(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
        }
    }
    Ok(())
}

// ---- the state file ---------------------------------------------------------------------------

/// What a state file records besides the trained tensors and their AdamW moments.
pub struct StateMeta {
    /// The run kind (`format` in the metadata): a state resumes only with its own command.
    pub kind: &'static str,
    /// Where the loop stands (steps or updates done); also the checkpoint's step.
    pub step: u64,
    pub rng: Rng,
    /// The command's settings, so a resume continues the same run.
    pub settings: serde_json::Value,
    /// Kind-specific metadata (the model config, LoRA scopes, PPO's prompt cursor, …).
    pub extra: HashMap<String, String>,
}

impl RunDir {
    /// Commit a checkpoint (see the module's comment): the state file `state_file` — every
    /// tensor of `trained` with its AdamW moments (`optim.m.NAME`, `optim.v.NAME`) and `meta` —
    /// then the model file `model_file`, which `model` writes to the path it is given with the
    /// metadata entries it is given.
    pub fn checkpoint(
        &mut self,
        (state_file, model_file): (&str, &str),
        trained: &dyn Trainable,
        opt: &AdamW,
        meta: StateMeta,
        model: impl FnOnce(&Path, &[(String, String)]) -> Result<()>,
    ) -> Result<()> {
        let marks = self.marks(meta.step)?;
        let named = trained.trained();
        let (optim_step, moments) = opt.state()?;
        if moments.len() != named.len() {
            return Err(Error::Invalid(format!(
                "the optimiser holds moments of {} tensors, the run trains {}",
                moments.len(),
                named.len()
            )));
        }
        let mut tensors = named.clone();
        for ((name, t), (m, v)) in named.iter().zip(moments) {
            tensors.push((format!("optim.m.{name}"), Tensor::from_vec(m, t.dims())?));
            tensors.push((format!("optim.v.{name}"), Tensor::from_vec(v, t.dims())?));
        }
        let mut md = meta.extra;
        md.insert("format".into(), meta.kind.into());
        md.insert("settings".into(), meta.settings.to_string());
        md.insert("step".into(), meta.step.to_string());
        md.insert("optim_step".into(), optim_step.to_string());
        let rng = serde_json::to_string(&meta.rng.state().to_vec())
            .map_err(|e| Error::Invalid(format!("cannot serialise the RNG state: {e}")))?;
        md.insert("rng".into(), rng);
        md.extend(marks.state());
        palm_engine::save_safetensors(self.join(state_file), &tensors, md)?;
        drop(tensors);
        model(&self.join(model_file), &marks.model())
    }
}

/// A state file read back (see [`RunDir::checkpoint`]).
pub struct SavedState {
    pub file: SafeFile,
    pub step: u64,
    pub rng: Rng,
    pub settings: serde_json::Value,
    /// The length of `metrics.jsonl` when the checkpoint was taken.
    pub metrics_offset: u64,
}

impl SavedState {
    /// The state file at `path`, which must be of run kind `kind`.
    pub fn open(path: &Path, kind: &str) -> Result<SavedState> {
        let file = SafeFile::open(path)?;
        let meta = |k: &str| meta_of(&file, path, k);
        let found = meta("format")?;
        if found != kind {
            return Err(Error::data(
                path,
                None,
                format!("a '{found}' state, not '{kind}': resume it with its own command"),
            ));
        }
        let bad =
            |k: &str, e: String| Error::data(path, None, format!("bad '{k}' in the metadata: {e}"));
        let settings =
            serde_json::from_str(meta("settings")?).map_err(|e| bad("settings", e.to_string()))?;
        let rng: [u64; 4] =
            serde_json::from_str(meta("rng")?).map_err(|e| bad("rng", e.to_string()))?;
        let step = int_of(&file, path, "step")?;
        let (_, metrics_offset) = read_marks(path, file.metadata())?;
        Ok(SavedState {
            step,
            rng: Rng::from_state(rng),
            settings,
            metrics_offset,
            file,
        })
    }

    /// A metadata entry, or an error naming it.
    pub fn meta(&self, key: &str) -> Result<&str> {
        meta_of(&self.file, self.file.path(), key)
    }

    /// A metadata entry that is a whole number.
    pub fn int(&self, key: &str) -> Result<u64> {
        int_of(&self.file, self.file.path(), key)
    }

    /// The run's settings as the command saved them.
    pub fn settings_as<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(self.settings.clone()).map_err(|e| {
            Error::data(
                self.file.path(),
                None,
                format!("bad 'settings' in the metadata: {e}"),
            )
        })
    }

    /// An AdamW with `cfg` over `trained`'s tensors, holding the saved moments (each checked
    /// against its tensor's shape) and step.
    pub fn optimizer(&self, cfg: AdamWConfig, trained: &dyn Trainable) -> Result<AdamW> {
        let named = trained.trained();
        let tensors: Vec<Tensor> = named.iter().map(|(_, t)| t.clone()).collect();
        let mut opt = AdamW::new(cfg, &tensors)?;
        let moments = named
            .iter()
            .map(|(n, t)| {
                let get = |k: &str| get_checked(&self.file, &format!("optim.{k}.{n}"), t.dims());
                Ok((get("m")?.to_vec::<f32>()?, get("v")?.to_vec::<f32>()?))
            })
            .collect::<Result<Vec<_>>>()?;
        opt.restore(self.int("optim_step")?, moments)?;
        Ok(opt)
    }
}

impl SavedState {
    /// Put the saved tensors into `trained` (each checked against its tensor's shape).
    pub fn restore(&self, trained: &mut dyn Trainable) -> Result<()> {
        let new = trained
            .trained()
            .iter()
            .map(|(n, t)| Ok(get_checked(&self.file, n, t.dims())?.as_var()))
            .collect::<Result<Vec<_>>>()?;
        Ok(trained.set_trained(new)?)
    }
}

impl RunDir {
    /// After a resume to `step`: rewrite the model file (with `write`, given its path and
    /// metadata entries) if a kill left it a checkpoint behind the state.
    pub fn repair_model(
        &mut self,
        model_file: &str,
        step: u64,
        write: impl FnOnce(&Path, &[(String, String)]) -> Result<()>,
    ) -> Result<()> {
        let path = self.join(model_file);
        if model_step(&path) == Some(step) {
            return Ok(());
        }
        crate::output::say(format!(
            "note: {} is behind the run's state (a run stopped mid-checkpoint); rewriting it",
            path.display()
        ));
        let marks = self.marks(step)?;
        write(&path, &marks.model())
    }
}

fn meta_of<'a>(file: &'a SafeFile, path: &Path, key: &str) -> Result<&'a str> {
    file.metadata().get(key).map(String::as_str).ok_or_else(|| {
        Error::data(
            path,
            None,
            format!("not a run state of this version: no '{key}' in the metadata"),
        )
    })
}

fn int_of(file: &SafeFile, path: &Path, key: &str) -> Result<u64> {
    meta_of(file, path, key)?
        .parse()
        .map_err(|e| Error::data(path, None, format!("bad '{key}' in the metadata: {e}")))
}
