//! Siesta's lifecycle manager: the layer between clients and replicas.
//!
//! Owns: InferenceService manifests and their checked form (`manifest`), the Knative-exact
//! autoscaler and the one loop that drives it live or simulated (`autoscaler`, `simulate`), the
//! gateway (activator + queue-proxy: routing, holding, `containerConcurrency`), the replica
//! template (`replica`) and the backend contract with the local process backend (`backend`),
//! the status document (`status`) and `siesta up` (`up`).
//!
//! Must not depend on: the inference server or the models (`siesta-runtime`, `siesta-models`:
//! a replica is a process it starts and talks to over HTTP, never a library it links), nor on
//! Kubernetes (`siesta-k8s` builds on this crate, not the other way round).

pub mod autoscaler;
pub mod backend;
pub mod gateway;
pub mod manifest;
pub mod replica;
pub mod simulate;
pub mod status;
pub mod up;

#[cfg(test)]
mod fuzz;
