//! The Knative Pod Autoscaler, exactly: target resolution, the per-tick decision, the
//! scale-down-delay window.

pub mod component;
pub mod decider;
pub mod duration;
pub mod live;
pub mod max_window;
pub mod reconciler;
pub mod spec;
pub mod window;

pub use component::{Autoscaler, Step};
pub use decider::{Decider, Decision, Observation};
pub use reconciler::{Condition, Mode, Outcome, Reconciler, ReconcilerSpec};
pub use spec::{DeciderSpec, SpecError};
pub use window::WindowAverage;
