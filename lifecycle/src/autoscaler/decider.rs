//! One KPA decision (Knative's `autoscaler.Scale(now)`, pkg/autoscaler/scaling/autoscaler.go):
//! desired replicas, excess burst capacity and panic mode from the averaged metric. Time is an
//! argument, so every rule is a deterministic test.

use super::max_window::MaxTimeWindow;
use super::spec::DeciderSpec;

/// What one tick sees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// Milliseconds on a fixed clock (the live autoscaler uses time since start; the decide
    /// tool uses whatever the input says).
    pub now_ms: u64,
    /// Ready replicas.
    pub ready: u32,
    /// Stable-window average of the metric, summed over replicas.
    pub stable: f64,
    /// Panic-window average.
    pub panic: f64,
    /// Whether the component is reachable (has traffic routed); unreachable ones never hold
    /// capacity back.
    pub reachable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    pub desired: i32,
    pub excess_burst_capacity: i32,
    pub panicking: bool,
}

#[derive(Debug, Clone)]
pub struct Decider {
    spec: DeciderSpec,
    /// When panic was last entered or extended.
    panic_since: Option<u64>,
    max_panic_pods: i32,
    delay_window: Option<MaxTimeWindow>,
}

impl Decider {
    /// A new decider. One that starts with more than one ready replica starts in panic holding
    /// that count, so a restart (which loses the metric history) cannot scale anything down.
    pub fn new(spec: DeciderSpec, now_ms: u64, ready_at_start: u32) -> Self {
        let delay_window = (!spec.scale_down_delay.is_zero())
            .then(|| MaxTimeWindow::new(spec.scale_down_delay, spec.tick));
        Decider {
            panic_since: (ready_at_start > 1).then_some(now_ms),
            max_panic_pods: ready_at_start as i32,
            delay_window,
            spec,
        }
    }

    pub fn is_panicking(&self) -> bool {
        self.panic_since.is_some()
    }

    pub fn scale(&mut self, obs: Observation) -> Decision {
        let spec = &self.spec;
        let ready = f64::from(obs.ready.max(1));
        let max_up = (spec.max_scale_up_rate * ready).ceil();
        let max_down = if obs.reachable {
            (ready / spec.max_scale_down_rate).floor()
        } else {
            0.0
        };

        let wanted_stable = (obs.stable / spec.target).ceil();
        let wanted_panic = (obs.panic / spec.target).ceil();
        let mut stable = wanted_stable.max(max_down).min(max_up) as i32;
        let mut panic = wanted_panic.max(max_down).min(max_up) as i32;
        // Activation scale lifts any non-zero want to its minimum, after the rate limits.
        let activation = spec.activation_scale as i32;
        if activation > 1 {
            if wanted_stable > 0.0 && stable < activation {
                stable = activation;
            }
            if wanted_panic > 0.0 && panic < activation {
                panic = activation;
            }
        }

        // The threshold looks at the unclamped panic want.
        let over_threshold = wanted_panic / ready >= spec.panic_threshold;
        if over_threshold {
            self.panic_since = Some(obs.now_ms);
        } else if let Some(since) = self.panic_since
            && since + (spec.stable_window.as_millis() as u64) < obs.now_ms
        {
            self.panic_since = None;
            self.max_panic_pods = 0;
        }

        let mut desired = stable;
        if self.panic_since.is_some() {
            // Never scale down while panicking.
            self.max_panic_pods = self.max_panic_pods.max(stable.max(panic));
            desired = self.max_panic_pods;
        }
        if obs.reachable
            && let Some(window) = &mut self.delay_window
        {
            window.record(obs.now_ms, desired);
            desired = window.current();
        }

        let tbc = spec.target_burst_capacity;
        let excess_burst_capacity = if tbc == 0.0 {
            0
        } else if tbc < 0.0 {
            -1
        } else {
            (f64::from(obs.ready) * spec.total_target - tbc - obs.panic).floor() as i32
        };
        Decision {
            desired,
            excess_burst_capacity,
            panicking: self.panic_since.is_some(),
        }
    }
}
