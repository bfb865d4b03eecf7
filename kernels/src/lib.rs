//! Fused pre- and post-processing kernels for image classifiers.
//!
//! Each kernel does its whole job in one pass over the output (no intermediate resized image,
//! no full sort of the scores), which is the shape its CUDA version will have; these CPU
//! versions are the reference the GPU ones are checked against, and what the image transformer
//! and CPU replicas run.

#[cfg(feature = "cuda")]
pub mod cuda;
pub mod error;
pub mod preprocess;
pub mod topk;

pub use error::KernelError;
pub use preprocess::{ImageTransform, ImageU8, Layout};
pub use topk::{Scored, softmax_in_place, softmax_top_k, top_k};
