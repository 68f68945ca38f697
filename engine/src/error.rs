//! The engine's one error type. Every public op returns `Result<T>`; messages name the tensor,
//! file or shape at fault so a user can act on them.

use crate::{DType, Device};
use std::path::PathBuf;

#[derive(Debug)]
pub enum Error {
    /// Shapes that do not fit together, e.g. `matmul (2, 3) x (4, 5)`.
    Shape { op: &'static str, msg: String },
    /// A dtype an op does not accept.
    DType {
        op: &'static str,
        got: DType,
        want: &'static str,
    },
    /// Operands on different devices.
    DeviceMismatch {
        op: &'static str,
        lhs: Device,
        rhs: Device,
    },
    /// CUDA requested but not usable here (no driver, no device, not built yet).
    NoCuda(String),
    /// An error reported by the CUDA driver or a kernel launch.
    Driver(String),
    /// Device memory exhausted.
    OutOfMemory { requested: usize, free: usize },
    /// I/O on a named file.
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file whose content is not what it claims to be (safetensors, JSON, ...).
    Format { path: PathBuf, msg: String },
    /// A tensor missing from a checkpoint or a gradient map.
    Missing { what: String },
    /// Anything else a caller did wrong (bad argument value).
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Shape { op, msg } => write!(f, "shape error in {op}: {msg}"),
            Error::DType { op, got, want } => {
                write!(f, "dtype error in {op}: got {got:?}, expected {want}")
            }
            Error::DeviceMismatch { op, lhs, rhs } => {
                write!(f, "device mismatch in {op}: {lhs} vs {rhs}")
            }
            Error::NoCuda(msg) => write!(f, "CUDA is not available: {msg}"),
            Error::Driver(msg) => write!(f, "CUDA driver error: {msg}"),
            Error::OutOfMemory { requested, free } => write!(
                f,
                "out of GPU memory: requested {requested} bytes, {free} bytes free"
            ),
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Format { path, msg } => write!(f, "{}: {msg}", path.display()),
            Error::Missing { what } => write!(f, "missing {what}"),
            Error::Invalid(msg) => write!(f, "{msg}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl Error {
    pub(crate) fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape {
            op,
            msg: msg.into(),
        }
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }
}
