//! The running autoscaler of one component: every second it moves the gateway's demand report
//! into the stable and panic windows; every tick (and at once when a request arrives with no
//! replica ready) it decides, reconciles and asks the backend for the result.

use std::sync::Arc;
use std::time::Duration;

use metrics::gauge;

use super::{Decider, Observation, Reconciler, ReconcilerSpec, WindowAverage};
use crate::backend::ReplicaBackend;
use crate::gateway::pool::Pool;
use crate::manifest::{ComponentScaling, ScaleMetric};

pub struct LiveAutoscaler {
    pub pool: Arc<Pool>,
    pub backend: Arc<dyn ReplicaBackend>,
    pub scaling: ComponentScaling,
    pub enable_scale_to_zero: bool,
}

impl LiveAutoscaler {
    pub async fn run(self) {
        let key = self.pool.key.clone();
        let name = key.to_string();
        let s = &self.scaling;
        let mut stable = WindowAverage::new(s.decider.stable_window.as_millis() as u64, 1000);
        let mut panic = WindowAverage::new(s.panic_window.as_millis() as u64, 1000);
        let now = self.pool.now_ms();
        let mut decider = Decider::new(s.decider.clone(), now, 0);
        let mut reconciler = Reconciler::new(
            ReconcilerSpec {
                min_scale: s.min_scale,
                max_scale: s.max_scale,
                initial_scale: s.initial_scale,
                enable_scale_to_zero: self.enable_scale_to_zero,
                stable_window: s.decider.stable_window,
                scale_to_zero_grace: s.scale_to_zero_grace,
                scale_to_zero_pod_retention: s.scale_to_zero_pod_retention,
                ..ReconcilerSpec::default()
            },
            now,
        );
        let mut every_second = tokio::time::interval(Duration::from_secs(1));
        let mut tick = tokio::time::interval(s.decider.tick);
        let mut requeue: Option<tokio::time::Instant> = None;
        // Demand already recorded when a request woke a component at zero; the next periodic
        // report covers the same requests, so it is taken off there (Knative's activator
        // subtracts its first-request report the same way; counting both doubled the replicas
        // started from zero).
        let mut pre_reported = 0.0f64;
        loop {
            let mut poked = false;
            tokio::select! {
                _ = every_second.tick() => {
                    let r = self.pool.report();
                    let v = match s.metric { ScaleMetric::Concurrency => r.concurrency, ScaleMetric::Rps => r.rps };
                    let v = (v - std::mem::take(&mut pre_reported)).max(0.0);
                    let now = self.pool.now_ms();
                    stable.record(now, v);
                    panic.record(now, v);
                    continue;
                }
                _ = tick.tick() => {}
                _ = async { match requeue { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {}
                _ = self.pool.demand.notified() => { poked = true; }
            }
            let now = self.pool.now_ms();
            let ready = self.pool.ready() as u32;
            if poked {
                if ready > 0 {
                    continue;
                }
                // Scale from zero now, not at the next tick: record the held demand at once,
                // as the activator pushes its first stat.
                let v = f64::from(self.pool.in_flight().max(1));
                stable.record(now, v);
                panic.record(now, v);
                pre_reported += v;
            }
            let decision = match (stable.average(now), panic.average(now)) {
                (Some(st), Some(pa)) => Some(decider.scale(Observation {
                    now_ms: now,
                    ready,
                    stable: st,
                    panic: pa,
                    reachable: true,
                })),
                _ => None,
            };
            let outcome = reconciler.reconcile(now, decision, ready);
            requeue = outcome
                .requeue_after
                .map(|d| tokio::time::Instant::now() + d);
            if let (Some(d), Some(st), Some(pa)) =
                (decision, stable.average(now), panic.average(now))
            {
                *self.pool.observed.lock() = crate::gateway::pool::Observed {
                    stable: st,
                    panic: pa,
                    desired: d.desired,
                    panicking: d.panicking,
                    excess_burst_capacity: d.excess_burst_capacity,
                };
            }
            if let Some(d) = decision {
                gauge!("siesta_autoscaler_desired_replicas", "component" => name.clone())
                    .set(f64::from(d.desired));
                gauge!("siesta_autoscaler_excess_burst_capacity", "component" => name.clone())
                    .set(f64::from(d.excess_burst_capacity));
                gauge!("siesta_autoscaler_panic_mode", "component" => name.clone())
                    .set(if d.panicking { 1.0 } else { 0.0 });
            }
            if let Some(st) = stable.average(now) {
                gauge!("siesta_autoscaler_stable_value", "component" => name.clone()).set(st);
            }
            if let Some(pa) = panic.average(now) {
                gauge!("siesta_autoscaler_panic_value", "component" => name.clone()).set(pa);
            }
            gauge!("siesta_gateway_ready_replicas", "component" => name.clone())
                .set(f64::from(ready));
            gauge!("siesta_gateway_queue_depth", "component" => name.clone())
                .set(self.pool.waiting() as f64);
            if let Some(n) = outcome.replicas {
                if let Err(e) = self.backend.scale(&key, n) {
                    tracing::error!(component = %name, error = %e, "scale failed");
                }
                tracing::debug!(component = %name, replicas = n, ?decision, condition = ?outcome.condition, "scaled");
            }
        }
    }
}
