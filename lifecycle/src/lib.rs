//! Siesta's lifecycle manager. So far: InferenceService manifests with Knative's target
//! resolution, and the Knative-exact autoscaler decider, driven with explicit time.

pub mod autoscaler;
pub mod backend;
pub mod gateway;
pub mod manifest;
pub mod simulate;
pub mod up;
