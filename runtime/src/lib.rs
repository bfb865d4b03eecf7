//! Siesta's inference server (`siesta serve`).
//!
//! Owns: KServe V1 and Open Inference Protocol V2 (REST and gRPC), Triton's model configuration
//! and classification extension, the model registry, dynamic batching on a per-model worker
//! thread, idle tiers that give device memory back and exit, Prometheus metrics, shutdown on
//! signals, and the image transformer (`transformer`).
//!
//! Must not depend on: the lifecycle manager or Kubernetes (`siesta-lifecycle`, `siesta-k8s`):
//! a replica knows nothing of the gateway or the autoscaler that start it.

pub mod batcher;
pub mod error;
pub mod grpc;
pub mod handle;
pub mod http;
pub mod idle;
pub mod infer;
pub mod metrics;
pub mod protocol;
pub mod registry;
pub mod server;
pub mod signals;
pub mod status;
pub mod transformer;
pub mod worker;

pub use error::ServeError;
pub use server::{RunError, ServeConfig, StopReason, run};
