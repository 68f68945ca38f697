//! The rlhf crate's error type: data files (named with the line at fault), checkpoints and
//! everything below.

use std::path::PathBuf;

#[derive(Debug)]
pub enum Error {
    Model(palm_model::Error),
    Engine(palm_engine::Error),
    /// A bad data file; `line` is 1-based when the fault is on one line.
    Data {
        path: PathBuf,
        line: Option<usize>,
        msg: String,
    },
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Model(e) => write!(f, "{e}"),
            Error::Engine(e) => write!(f, "{e}"),
            Error::Data {
                path,
                line: Some(l),
                msg,
            } => write!(f, "{}:{l}: {msg}", path.display()),
            Error::Data {
                path,
                line: None,
                msg,
            } => write!(f, "{}: {msg}", path.display()),
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Invalid(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

impl From<palm_model::Error> for Error {
    fn from(e: palm_model::Error) -> Self {
        match e {
            palm_model::Error::Engine(e) => Error::Engine(e),
            e => Error::Model(e),
        }
    }
}

impl From<palm_engine::Error> for Error {
    fn from(e: palm_engine::Error) -> Self {
        Error::Engine(e)
    }
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub fn data(path: impl Into<PathBuf>, line: Option<usize>, msg: impl Into<String>) -> Self {
        Error::Data {
            path: path.into(),
            line,
            msg: msg.into(),
        }
    }
}
