//! One component's autoscaler: the stable and panic windows, the decider and the reconciler, and
//! the schedule that drives them (a demand report every second, a decision every tick or when
//! the reconciler asks to be requeued, and at once when a request arrives with no replica ready).
//!
//! Time and demand come in as arguments, so the same code runs behind the gateway
//! (`live.rs`, tokio's clock) and in `siesta scale simulate` (`simulate.rs`, a millisecond loop):
//! a what-if answer is the live autoscaler's answer.

use std::time::Duration;

use super::{Decider, Decision, Observation, Outcome, Reconciler, ReconcilerSpec, WindowAverage};
use crate::gateway::stats::DemandReport;
use crate::manifest::{ComponentScaling, ScaleMetric};

/// The per-second demand reports (Knative's scrape interval and bucket granularity).
const REPORT_EVERY_MS: u64 = 1000;

/// What one decision round produced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// `None` while the windows hold no data yet.
    pub decision: Option<Decision>,
    pub outcome: Outcome,
    /// The window averages the decision saw.
    pub stable: Option<f64>,
    pub panic: Option<f64>,
}

pub struct Autoscaler {
    metric: ScaleMetric,
    stable: WindowAverage,
    panic: WindowAverage,
    decider: Decider,
    reconciler: Reconciler,
    tick_ms: u64,
    next_report_ms: u64,
    next_tick_ms: u64,
    requeue_at_ms: Option<u64>,
    /// Demand already recorded when a request woke the component at zero; the next periodic
    /// report covers the same requests, so it is taken off there (Knative's activator subtracts
    /// its first-request report the same way; counting both doubled the replicas started from
    /// zero).
    pre_reported: f64,
}

impl Autoscaler {
    pub fn new(scaling: &ComponentScaling, enable_scale_to_zero: bool, now_ms: u64) -> Self {
        Autoscaler {
            metric: scaling.metric,
            stable: WindowAverage::new(
                scaling.decider.stable_window.as_millis() as u64,
                REPORT_EVERY_MS,
            ),
            panic: WindowAverage::new(scaling.panic_window.as_millis() as u64, REPORT_EVERY_MS),
            decider: Decider::new(scaling.decider.clone(), now_ms, 0),
            reconciler: Reconciler::new(
                ReconcilerSpec {
                    min_scale: scaling.min_scale,
                    max_scale: scaling.max_scale,
                    initial_scale: scaling.initial_scale,
                    enable_scale_to_zero,
                    stable_window: scaling.decider.stable_window,
                    scale_to_zero_grace: scaling.scale_to_zero_grace,
                    scale_to_zero_pod_retention: scaling.scale_to_zero_pod_retention,
                    ..ReconcilerSpec::default()
                },
                now_ms,
            ),
            tick_ms: (scaling.decider.tick.as_millis() as u64).max(1),
            // The first report after a whole second: one taken at start would be a report over
            // no time, read as "no demand" although nothing was measured yet.
            next_report_ms: now_ms + REPORT_EVERY_MS,
            // The first decision at once (the initial scale).
            next_tick_ms: now_ms,
            requeue_at_ms: None,
            pre_reported: 0.0,
        }
    }

    /// When `on_time` wants to run next.
    pub fn next_due_ms(&self) -> u64 {
        let due = self.next_report_ms.min(self.next_tick_ms);
        self.requeue_at_ms.map_or(due, |r| due.min(r))
    }

    /// Runs what is due at `now_ms`: the demand report (`report` is asked only then), then a
    /// decision if a tick or a requeue is due. `None`: nothing to decide this time.
    pub fn on_time(
        &mut self,
        now_ms: u64,
        ready: u32,
        report: impl FnOnce() -> DemandReport,
    ) -> Option<Step> {
        if now_ms >= self.next_report_ms {
            let r = report();
            let v = match self.metric {
                ScaleMetric::Concurrency => r.concurrency,
                ScaleMetric::Rps => r.rps,
            };
            let v = (v - std::mem::take(&mut self.pre_reported)).max(0.0);
            self.stable.record(now_ms, v);
            self.panic.record(now_ms, v);
            self.next_report_ms = next_after(self.next_report_ms, REPORT_EVERY_MS, now_ms);
        }
        let tick_due = now_ms >= self.next_tick_ms;
        let requeue_due = self.requeue_at_ms.is_some_and(|r| now_ms >= r);
        if !tick_due && !requeue_due {
            return None;
        }
        if tick_due {
            self.next_tick_ms = next_after(self.next_tick_ms, self.tick_ms, now_ms);
        }
        self.decide(now_ms, ready)
    }

    /// A request arrived while no replica was ready: its demand (`in_flight` requests counted
    /// from arrival, at least one) is recorded at once and decided on, as the activator pushes
    /// its first stat, so a component at zero scales up now and not at the next tick.
    pub fn on_wake(&mut self, now_ms: u64, ready: u32, in_flight: u32) -> Option<Step> {
        if ready > 0 {
            return None;
        }
        let v = f64::from(in_flight.max(1));
        self.stable.record(now_ms, v);
        self.panic.record(now_ms, v);
        self.pre_reported += v;
        self.decide(now_ms, ready)
    }

    fn decide(&mut self, now_ms: u64, ready: u32) -> Option<Step> {
        let (stable, panic) = (self.stable.average(now_ms), self.panic.average(now_ms));
        let decision = match (stable, panic) {
            (Some(st), Some(pa)) => Some(self.decider.scale(Observation {
                now_ms,
                ready,
                stable: st,
                panic: pa,
                reachable: true,
            })),
            _ => None,
        };
        if decision.is_none() && ready > 0 {
            // No demand data yet, but replicas already serve: a gateway restarted in a cluster
            // adopts them as they are instead of falling back to the initial scale (which would
            // cut a busy Deployment down to one replica).
            return None;
        }
        let outcome = self.reconciler.reconcile(now_ms, decision, ready);
        self.requeue_at_ms = outcome
            .requeue_after
            .map(|d: Duration| now_ms + d.as_millis() as u64);
        Some(Step {
            decision,
            outcome,
            stable,
            panic,
        })
    }
}

/// The first time of the schedule `start + k * every` that is later than `now`.
fn next_after(due: u64, every: u64, now: u64) -> u64 {
    if due > now {
        return due;
    }
    due + ((now - due) / every + 1) * every
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{ClusterDefaults, parse};

    fn scaling(spec: &str) -> ComponentScaling {
        let text = format!(
            "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata: {{name: s}}\nspec:\n  predictor:\n{spec}    model: {{modelFormat: {{name: x}}}}\n"
        );
        parse(&text, &ClusterDefaults::default())
            .unwrap()
            .remove(0)
            .predictor
            .scaling
    }

    fn busy(c: f64) -> impl FnOnce() -> DemandReport {
        move || DemandReport {
            concurrency: c,
            rps: 0.0,
        }
    }

    #[test]
    fn reports_every_second_and_decides_every_tick_on_one_schedule() {
        let mut a = Autoscaler::new(&scaling("    scaleTarget: 1\n"), true, 0);
        assert_eq!(a.next_due_ms(), 0, "the initial decision is due at once");
        let first = a.on_time(0, 0, || panic!("no report before a second passed"));
        assert_eq!(first.unwrap().outcome.replicas, Some(1), "initial scale");
        assert_eq!(a.next_due_ms(), 1000);
        assert_eq!(a.on_time(1000, 1, busy(3.5)), None, "1 s: report only");
        assert_eq!(a.next_due_ms(), 2000);
        let step = a.on_time(2000, 1, busy(3.5)).unwrap();
        assert_eq!(step.stable, Some(3.5));
        assert_eq!(
            step.decision.unwrap().desired,
            5,
            "ceil(3.5 / (1 x 70 %)) replicas"
        );
        // A late call catches up with the schedule instead of firing once per missed slot.
        assert!(a.on_time(7300, 5, busy(3.5)).is_some());
        assert_eq!(a.next_due_ms(), 8000);
    }

    #[test]
    fn a_wake_at_zero_decides_at_once_and_is_not_counted_twice() {
        let mut a = Autoscaler::new(
            &scaling("    minReplicas: 0\n    scaleTarget: 1\n"),
            true,
            0,
        );
        a.on_time(0, 0, busy(0.0));
        assert_eq!(a.on_wake(500, 1, 3), None, "a ready replica takes it");
        let step = a.on_wake(500, 0, 3).unwrap();
        assert_eq!(step.outcome.replicas, Some(5), "ceil(3 / 0.7)");
        // The next report covers the same three requests: only what exceeds them is new.
        a.on_time(1000, 0, busy(3.0));
        let step = a.on_time(2000, 5, busy(3.0)).unwrap();
        assert_eq!(
            step.stable,
            Some(2.0),
            "(3 at the wake + 3 - 3 + 3) over the three seconds since the first write"
        );
    }
}
