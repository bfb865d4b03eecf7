//! The decider's inputs that do not change tick to tick: Knative's `DeciderSpec`, with its defaults.

use std::time::Duration;

use serde::Deserialize;

use super::duration::parse_go_duration;

/// Knative's cluster defaults (config/core/configmaps/autoscaler.yaml).
pub mod defaults {
    use std::time::Duration;
    pub const CONTAINER_CONCURRENCY_TARGET_PERCENTAGE: f64 = 70.0;
    pub const CONTAINER_CONCURRENCY_TARGET_DEFAULT: f64 = 100.0;
    pub const RPS_TARGET_DEFAULT: f64 = 200.0;
    pub const TARGET_BURST_CAPACITY: f64 = 211.0;
    pub const STABLE_WINDOW: Duration = Duration::from_secs(60);
    pub const PANIC_WINDOW_PERCENTAGE: f64 = 10.0;
    pub const PANIC_THRESHOLD_PERCENTAGE: f64 = 200.0;
    pub const MAX_SCALE_UP_RATE: f64 = 1000.0;
    pub const MAX_SCALE_DOWN_RATE: f64 = 2.0;
    pub const SCALE_TO_ZERO_GRACE: Duration = Duration::from_secs(30);
    pub const TICK: Duration = Duration::from_secs(2);
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeciderSpec {
    /// Target value of the metric per replica (e.g. 0.7 x containerConcurrency).
    pub target: f64,
    /// Total value per replica (e.g. containerConcurrency), for excess burst capacity.
    pub total_target: f64,
    /// 0 = the activator only at zero, -1 = always in path.
    pub target_burst_capacity: f64,
    /// A ratio: 2.0 means panic when the panic-window demand is 200 % of ready capacity.
    pub panic_threshold: f64,
    pub max_scale_up_rate: f64,
    pub max_scale_down_rate: f64,
    pub stable_window: Duration,
    pub scale_down_delay: Duration,
    pub activation_scale: u32,
    /// Bucket width of the scale-down-delay window: the decision tick.
    pub tick: Duration,
}

impl Default for DeciderSpec {
    fn default() -> Self {
        let total = defaults::CONTAINER_CONCURRENCY_TARGET_DEFAULT;
        DeciderSpec {
            target: total * defaults::CONTAINER_CONCURRENCY_TARGET_PERCENTAGE / 100.0,
            total_target: total,
            target_burst_capacity: defaults::TARGET_BURST_CAPACITY,
            panic_threshold: defaults::PANIC_THRESHOLD_PERCENTAGE / 100.0,
            max_scale_up_rate: defaults::MAX_SCALE_UP_RATE,
            max_scale_down_rate: defaults::MAX_SCALE_DOWN_RATE,
            stable_window: defaults::STABLE_WINDOW,
            scale_down_delay: Duration::ZERO,
            activation_scale: 1,
            tick: defaults::TICK,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("decider spec: {0}")]
    Parse(String),
}

/// The `siesta scale decide --config` file: Knative's decider fields, every one optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeciderSpecFile {
    pub target: Option<f64>,
    pub total_target: Option<f64>,
    pub target_burst_capacity: Option<f64>,
    pub panic_threshold: Option<f64>,
    pub max_scale_up_rate: Option<f64>,
    pub max_scale_down_rate: Option<f64>,
    pub stable_window: Option<String>,
    pub scale_down_delay: Option<String>,
    pub activation_scale: Option<u32>,
    pub tick: Option<String>,
    /// Ready replicas when the decider was created (replay only; default: the first
    /// observation's). Knative's unit tests create their autoscaler with 1.
    pub initial_ready: Option<u32>,
}

impl DeciderSpecFile {
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        serde_yaml::from_str(text).map_err(|e| SpecError::Parse(e.to_string()))
    }
}

impl DeciderSpec {
    pub fn from_yaml(text: &str) -> Result<Self, SpecError> {
        Self::from_file(DeciderSpecFile::parse(text)?)
    }

    pub fn from_file(file: DeciderSpecFile) -> Result<Self, SpecError> {
        let d = DeciderSpec::default();
        let dur = |field: &'static str, v: Option<String>, default: Duration| match v {
            None => Ok(default),
            Some(s) => parse_go_duration(&s).map_err(|reason| SpecError::Invalid { field, reason }),
        };
        let spec = DeciderSpec {
            target: file.target.unwrap_or(d.target),
            total_target: file.total_target.unwrap_or(d.total_target),
            target_burst_capacity: file
                .target_burst_capacity
                .unwrap_or(d.target_burst_capacity),
            panic_threshold: file.panic_threshold.unwrap_or(d.panic_threshold),
            max_scale_up_rate: file.max_scale_up_rate.unwrap_or(d.max_scale_up_rate),
            max_scale_down_rate: file.max_scale_down_rate.unwrap_or(d.max_scale_down_rate),
            stable_window: dur("stable_window", file.stable_window, d.stable_window)?,
            scale_down_delay: dur(
                "scale_down_delay",
                file.scale_down_delay,
                d.scale_down_delay,
            )?,
            activation_scale: file.activation_scale.unwrap_or(d.activation_scale),
            tick: dur("tick", file.tick, d.tick)?,
        };
        spec.validate()?;
        Ok(spec)
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        let bad = |field, reason: &str| {
            Err(SpecError::Invalid {
                field,
                reason: reason.to_string(),
            })
        };
        if self.target.is_nan() || self.target <= 0.0 {
            return bad("target", "must be > 0");
        }
        if self.max_scale_up_rate.is_nan() || self.max_scale_up_rate <= 1.0 {
            return bad("max_scale_up_rate", "must be > 1");
        }
        if self.max_scale_down_rate.is_nan() || self.max_scale_down_rate <= 1.0 {
            return bad("max_scale_down_rate", "must be > 1");
        }
        if self.target_burst_capacity < 0.0 && self.target_burst_capacity != -1.0 {
            return bad("target_burst_capacity", "must be >= 0 or exactly -1");
        }
        if self.tick.is_zero() {
            return bad("tick", "must be > 0");
        }
        Ok(())
    }
}
