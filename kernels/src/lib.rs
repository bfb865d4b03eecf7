//! Fused pre- and post-processing kernels for image classifiers.
//!
//! Owns: uint8 images -> resized, cropped, normalised network input in one pass, and softmax +
//! top-k, each as a CPU reference and (feature `cuda`) a CUDA version checked against it.
//! Each kernel does its whole job in one pass over the output (no intermediate resized image,
//! no full sort of the scores).
//!
//! Must not depend on: any other Siesta crate (models, the server and the transformer build on
//! it), nor on a CUDA library at link time (the driver is opened at run time).

#[cfg(feature = "cuda")]
pub mod cuda;
mod error;
mod precision;
mod preprocess;
mod topk;

pub use error::KernelError;
pub use precision::Precision;
pub use preprocess::{ImageTransform, ImageU8, Layout};
pub use topk::{Scored, softmax_in_place, softmax_top_k, top_k};
