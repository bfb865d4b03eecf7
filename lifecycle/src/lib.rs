//! Siesta's lifecycle manager. This crate starts with the part every other piece depends on: the
//! Knative-exact autoscaler, driven with explicit time.

pub mod autoscaler;
