//! Helpers that Siesta's tests share across crates, as one dev-dependency (no `#[path]`
//! includes): test images every machine generates alike ([`pixels`]), and (feature `kube`) a
//! fake Kubernetes API server ([`fake_kube`]) for the controller, the Kubernetes backend and the
//! cluster gateway.
//!
//! Owns nothing a Siesta binary runs; must not be a normal dependency of any crate.

#[cfg(feature = "kube")]
pub mod fake_kube;
pub mod pixels;
