//! Model definitions and loaders for Siesta: the tensor form every protocol decodes into, the
//! [`Model`] interface engines implement, built-in architectures, and `storageUri` resolution.

pub mod config;
pub mod device;
pub mod digits;
pub mod embedded;
pub mod engine;
pub mod error;
pub mod identity;
pub mod labels;
pub mod loader;
pub mod mar;
pub mod mnist;
pub mod model;
pub mod onnx;
pub mod precision;
pub mod resident;
pub mod state_dict;
pub mod storage;
pub mod tensor;
#[cfg(feature = "torch")]
pub mod torch_cuda_cache;
#[cfg(feature = "torch")]
pub mod torchscript;
pub mod vision;

pub use config::{ImagePreprocessing, ModelConfig, ScoreKind, TensorSpec};
pub use device::DeviceSpec;
pub use engine::Engine;
pub use error::{ModelError, StorageError, TensorError};
pub use loader::{LoadOptions, ModelSource, load_model};
pub use model::Model;
pub use precision::Precision;
pub use tensor::{DataType, Tensor};
