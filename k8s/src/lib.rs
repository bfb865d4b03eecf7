//! Siesta on Kubernetes. [`crd`] is the `InferenceService` custom resource (KServe's v1beta1
//! spec; its schema is generated from these types); [`desired`] turns one into the Deployment
//! and Service each component needs; [`controller`] applies them with kube-rs and writes status.

pub mod backend;
pub mod controller;
pub mod crd;
pub mod desired;
pub mod error;
pub mod gateway;

pub use crd::{ComponentSpec, InferenceService, InferenceServiceSpec, InferenceServiceStatus};
pub use error::ControllerError;
/// The kube-rs the controller is built with, for callers that make its client.
pub use kube;
