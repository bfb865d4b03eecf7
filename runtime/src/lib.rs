//! Siesta's inference server: KServe V1, Open Inference Protocol V2 (REST and gRPC), Triton's
//! model configuration, dynamic batching on a per-model worker thread, Prometheus metrics, and
//! idle tiers that give device memory back and exit.

pub mod batcher;
pub mod error;
pub mod grpc;
pub mod handle;
pub mod http;
pub mod infer;
pub mod lifecycle;
pub mod metrics;
pub mod protocol;
pub mod registry;
pub mod server;
pub mod status;
pub mod transformer;
pub mod worker;

pub use error::ServeError;
pub use server::{ServeConfig, ServerError, StopReason, run};
