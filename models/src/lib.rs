//! Models for Siesta.
//!
//! Owns: the tensor form every protocol decodes into, the [`Model`] interface engines implement
//! (candle, libtorch with `torch`, ONNX), the built-in architectures and the shipped model,
//! model directories and their `config.json`, `storageUri` resolution, devices and precision.
//!
//! Must not depend on: the server or the lifecycle (`siesta-runtime`, `siesta-lifecycle`): no
//! HTTP, no protocol JSON; a model is loaded and run the same whoever calls it.

pub mod architecture;
pub mod config;
mod device;
pub mod digits;
pub mod embedded;
pub mod encoded_images;
mod engine;
mod error;
mod identity;
pub mod image_decode;
mod labels;
mod loader;
mod mar;
pub mod mnist;
mod model;
mod onnx;
mod precision;
pub mod resident;
mod state_dict;
pub mod storage;
pub mod tensor;
#[cfg(feature = "torch")]
pub mod torch_cuda_cache;
#[cfg(feature = "torch")]
mod torchscript;
mod vision;

pub use config::{ImagePreprocessing, ModelConfig, ScoreKind, TensorSpec};
pub use device::DeviceSpec;
pub use engine::Engine;
pub use error::{ModelError, RemoteCause, StorageError, TensorError};
pub use loader::{LoadOptions, ModelSource, load_model};
pub use model::Model;
pub use precision::Precision;
pub use tensor::{DataType, Tensor};
