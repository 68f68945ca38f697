//! The CUDA backend. Not implemented yet (issue 3): every CUDA path returns a clear error, so
//! the device-agnostic API already has its CUDA arm and model code will not change when it lands.

use crate::{Error, Result};

/// Device memory of one tensor. Uninhabited until the CUDA backend exists.
#[derive(Debug)]
pub enum CudaStorage {}

pub(crate) fn not_yet(op: &str) -> Error {
    Error::NoCuda(format!(
        "{op} is not implemented on CUDA yet (the CUDA backend is issue 3)"
    ))
}

pub fn check_available() -> Result<()> {
    Err(not_yet("the engine"))
}
