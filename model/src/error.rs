//! The model crate's error type: engine errors plus model-level problems (bad checkpoint
//! contents, bad configs, bad sampling settings).

use palm_engine::Error as EngineError;

#[derive(Debug)]
pub enum Error {
    Engine(EngineError),
    /// A checkpoint that does not describe this model (names the file and the tensor).
    Checkpoint(String),
    Config(String),
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Engine(e) => write!(f, "{e}"),
            Error::Checkpoint(m) | Error::Config(m) | Error::Invalid(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Engine(e) => Some(e),
            _ => None,
        }
    }
}

impl From<EngineError> for Error {
    fn from(e: EngineError) -> Self {
        Error::Engine(e)
    }
}
