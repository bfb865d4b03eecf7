//! Siesta's inference server (`siesta serve`).
//!
//! Owns: KServe V1 and Open Inference Protocol V2 (REST and gRPC), Triton's model configuration
//! and classification extension, the model registry, dynamic batching on a per-model worker
//! thread, idle tiers that give device memory back and exit, Prometheus metrics, shutdown on
//! signals, and the image transformer (`transformer`).
//!
//! Must not depend on: the lifecycle manager or Kubernetes (`siesta-lifecycle`, `siesta-k8s`):
//! a replica knows nothing of the gateway or the autoscaler that start it.

mod batcher;
mod error;
pub mod grpc;
mod handle;
mod http;
pub mod idle;
mod infer;
pub mod metrics;
pub mod protocol;
pub mod registry;
mod server;
pub mod signals;
mod status;
pub mod transformer;
mod worker;

#[cfg(test)]
mod fuzz;

pub use error::ServeError;
pub use server::{RunError, ServeConfig, StopReason, run};
