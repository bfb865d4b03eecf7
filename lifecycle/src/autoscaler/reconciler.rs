//! What happens to a decision before it reaches the replicas (Knative's PA reconciler,
//! pkg/reconciler/autoscaling/kpa/{kpa,scaler}.go; autoscaling-semantics.md §1.5): scale bounds,
//! the scale-to-zero gates, whether the activator (Siesta's gateway buffer) must stay in the path,
//! and the component's condition. Pure, with time passed in.

use std::time::Duration;

use super::Decision;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// Ready replicas reach the wanted minimum.
    Active,
    /// Waiting for replicas ("Queued").
    Activating,
    /// Scaled to zero (or about to be): requests are held by the gateway.
    Inactive,
}

/// Whether requests go through the gateway's holding buffer (Knative's SKS Proxy mode) or
/// straight to replicas (Serve).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Serve,
    Proxy,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReconcilerSpec {
    pub min_scale: u32,
    /// 0 = unbounded.
    pub max_scale: u32,
    pub initial_scale: u32,
    pub enable_scale_to_zero: bool,
    pub stable_window: Duration,
    pub scale_to_zero_grace: Duration,
    pub scale_to_zero_pod_retention: Duration,
    /// Give up activating after this (Knative: progress deadline 600 s + 30 s).
    pub activation_timeout: Duration,
}

impl Default for ReconcilerSpec {
    fn default() -> Self {
        ReconcilerSpec {
            min_scale: 1,
            max_scale: 0,
            initial_scale: 1,
            enable_scale_to_zero: true,
            stable_window: Duration::from_secs(60),
            scale_to_zero_grace: Duration::from_secs(30),
            scale_to_zero_pod_retention: Duration::ZERO,
            activation_timeout: Duration::from_secs(630),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Replicas to ask the backend for; `None` leaves the current count alone this round.
    pub replicas: Option<u32>,
    pub mode: Mode,
    pub condition: Condition,
    /// Reconcile again after this, even without a new decision.
    pub requeue_after: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct Reconciler {
    spec: ReconcilerSpec,
    condition: Condition,
    condition_since_ms: u64,
    /// Reached its initial scale once.
    initialized: bool,
    proxy_since_ms: Option<u64>,
}

impl Reconciler {
    pub fn new(spec: ReconcilerSpec, now_ms: u64) -> Self {
        Reconciler {
            spec,
            condition: Condition::Activating,
            condition_since_ms: now_ms,
            initialized: false,
            proxy_since_ms: Some(now_ms),
        }
    }

    pub fn condition(&self) -> Condition {
        self.condition
    }

    /// One reconcile. `decision` is `None` while the autoscaler has no data yet (Knative's -1).
    pub fn reconcile(&mut self, now_ms: u64, decision: Option<Decision>, ready: u32) -> Outcome {
        let spec = &self.spec;
        let mut requeue_after = None;
        let since = |t: u64| Duration::from_millis(now_ms.saturating_sub(t));

        let mut want: Option<u32> = match decision {
            None if self.condition != Condition::Activating => None,
            None => Some(0),
            Some(d) => Some(d.desired.max(0) as u32),
        };
        let mut apply = want.is_some();
        if let Some(w) = want.as_mut() {
            let mut min = spec.min_scale;
            // Until it first becomes active a component is held at its initial scale (Knative
            // creates the Deployment at initial scale; here the reconciler asks for it).
            if !self.initialized && spec.initial_scale > 0 {
                min = min.max(spec.initial_scale);
            }
            *w = (*w).max(min);
            if spec.max_scale != 0 {
                *w = (*w).min(spec.max_scale);
            }
        }
        if want == Some(0) {
            // The scale-to-zero gates.
            if !spec.enable_scale_to_zero {
                want = Some(1);
            } else {
                match self.condition {
                    Condition::Activating => {
                        if since(self.condition_since_ms) < spec.activation_timeout {
                            requeue_after =
                                Some(spec.activation_timeout - since(self.condition_since_ms));
                            want = None;
                            apply = false;
                        }
                    }
                    Condition::Active => {
                        let active_for = since(self.condition_since_ms);
                        if active_for >= spec.stable_window {
                            // 0, not applied: the component turns Inactive and the gateway
                            // buffer goes into the path before any replica is removed.
                            apply = false;
                        } else {
                            requeue_after = Some(spec.stable_window - active_for);
                            want = Some(1);
                        }
                    }
                    Condition::Inactive => {
                        let inactive_for = since(self.condition_since_ms);
                        let proxy_for = self.proxy_since_ms.map_or(Duration::ZERO, since);
                        let grace = spec.scale_to_zero_grace;
                        let retention = spec.scale_to_zero_pod_retention;
                        let done = inactive_for >= grace.max(retention)
                            || (inactive_for >= retention && proxy_for >= grace);
                        if !done {
                            let left = grace.max(retention).saturating_sub(inactive_for);
                            requeue_after = Some(left.max(Duration::from_millis(1)));
                            want = None;
                            apply = false;
                        }
                    }
                }
            }
        }

        let ebc = decision.map_or(-1, |d| d.excess_burst_capacity);
        let mode = match want {
            Some(w) if w > 0 && ebc >= 0 => Mode::Serve,
            _ => Mode::Proxy,
        };
        match (mode, self.proxy_since_ms) {
            (Mode::Proxy, None) => self.proxy_since_ms = Some(now_ms),
            (Mode::Serve, Some(_)) => self.proxy_since_ms = None,
            _ => {}
        }

        let threshold = if self.initialized {
            spec.min_scale.max(1)
        } else {
            spec.min_scale.max(spec.initial_scale)
        };
        let condition = match want {
            Some(0) => Condition::Inactive,
            // No change of decision while waiting: keep the condition.
            None => self.condition,
            Some(_) if ready < threshold => Condition::Activating,
            Some(_) => Condition::Active,
        };
        if condition != self.condition {
            self.condition = condition;
            self.condition_since_ms = now_ms;
        }
        if condition == Condition::Active {
            self.initialized = true;
        }
        Outcome {
            replicas: if apply { want } else { None },
            mode,
            condition,
            requeue_after,
        }
    }
}
