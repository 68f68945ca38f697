//! palm-engine: tensors, autograd, the CPU reference backend and (next) the CUDA backend,
//! optimizers and safetensors I/O. The only crate of the workspace with `unsafe`.

pub mod autograd;
pub mod backend;
pub mod cpu;
pub mod cuda;
pub mod device;
pub mod dtype;
pub mod error;
pub mod layout;
pub mod ops;
pub mod optim;
pub mod rng;
pub mod safetensors_io;
pub mod storage;
pub mod tensor;

pub use autograd::{Grads, NoGradGuard, no_grad};
pub use backend::RopeTables;
pub use device::{Device, DeviceRequest};
pub use dtype::{DType, Element};
pub use error::{Error, Result};
pub use ops::attention::attention;
pub use ops::cross_entropy::cross_entropy;
pub use ops::embedding::embedding;
pub use ops::layernorm::layer_norm;
pub use ops::logprob::{entropy, logprob};
pub use ops::rope::rope;
pub use ops::swiglu::swiglu;
pub use optim::{AdamW, AdamWConfig, clip_grad_norm, lr_at};
pub use rng::Rng;
pub use safetensors_io::{SafeFile, save as save_safetensors, write_atomic};
pub use tensor::{Tensor, TensorId};

/// The token id that marks padding: never a target of the loss.
pub const IGNORE_ID: u32 = 0;
