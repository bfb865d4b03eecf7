//! The Knative Pod Autoscaler, exactly: target resolution, the per-tick decision, the
//! scale-down-delay window.

pub(crate) mod component;
pub(crate) mod decider;
pub mod duration;
pub mod live;
pub(crate) mod max_window;
pub(crate) mod reconciler;
pub mod spec;
pub(crate) mod window;

pub use component::{Autoscaler, Step};
pub use decider::{Decider, Decision, Observation};
pub use reconciler::{Condition, Mode, Outcome, Reconciler, ReconcilerSpec};
pub use spec::{DeciderSpec, SpecError};
pub use window::WindowAverage;
