//! Siesta on Kubernetes.
//!
//! Owns: the `InferenceService` custom resource ([`crd`]: KServe's v1beta1 spec, its schema
//! generated from these types, and its conversion into the lifecycle's manifest as written, so
//! one checker reads files and cluster objects alike), the Deployment and Service each component needs ([`desired`],
//! whose `siesta serve` arguments come from the lifecycle's shared replica template), the
//! controller that applies them with kube-rs and writes status ([`controller`]), the replica
//! backend on Deployments and EndpointSlices ([`backend`]), and `siesta gateway` in a cluster
//! ([`gateway`]).
//!
//! Must not depend on: the inference server or the models (`siesta-runtime`, `siesta-models`);
//! the autoscaling rules, manifest checks and templates are `siesta-lifecycle`'s, used, not copied.

mod as_written;
pub mod backend;
pub mod controller;
pub mod crd;
pub mod credentials;
pub mod desired;
mod error;
pub mod gateway;
pub mod parking;

pub use crd::{ComponentSpec, InferenceService, InferenceServiceSpec, InferenceServiceStatus};
pub use error::ControllerError;
/// The kube-rs the controller is built with, for callers that make its client.
pub use kube;
