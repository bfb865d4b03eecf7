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
        // The first sample after a whole second: one taken at start would be a report over no
        // time, read as "no demand" although nothing was measured yet.
        let mut every_second = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_secs(1),
            Duration::from_secs(1),
        );
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
            if decision.is_none() && ready > 0 {
                // No demand data yet, but replicas already serve: a gateway restarted in a
                // cluster adopts them as they are instead of falling back to the initial scale
                // (which would cut a busy Deployment down to one replica).
                continue;
            }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use futures::FutureExt;
    use parking_lot::Mutex;
    use tokio::sync::watch;

    use super::LiveAutoscaler;
    use crate::backend::{
        BackendError, BackendStatus, ComponentKey, Endpoint, ReplicaBackend, ReplicaTemplate,
    };
    use crate::gateway::pool::Pool;
    use crate::manifest::{ClusterDefaults, parse};

    /// Records what the autoscaler asks for.
    #[derive(Default)]
    struct Recorder {
        asked: Mutex<Vec<u32>>,
    }

    impl ReplicaBackend for Recorder {
        fn register(&self, _: &ComponentKey, _: ReplicaTemplate) {}
        fn scale(&self, _: &ComponentKey, replicas: u32) -> Result<(), BackendError> {
            self.asked.lock().push(replicas);
            Ok(())
        }
        fn endpoints(
            &self,
            key: &ComponentKey,
        ) -> Result<watch::Receiver<Vec<Endpoint>>, BackendError> {
            Err(BackendError::Unknown(key.to_string()))
        }
        fn status(&self, _: &ComponentKey) -> Result<BackendStatus, BackendError> {
            Ok(BackendStatus::default())
        }
        fn shutdown(&self) -> futures::future::BoxFuture<'static, ()> {
            async {}.boxed()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_restarted_autoscaler_leaves_serving_replicas_alone_until_it_has_data() {
        let isvc = parse(
            "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata: {name: m}\n\
             spec:\n  predictor:\n    minReplicas: 0\n    maxReplicas: 5\n    scaleTarget: 1\n    \
             model: {modelFormat: {name: siesta}, storageUri: siesta://mnist}\n",
            &ClusterDefaults::default(),
        )
        .unwrap()
        .remove(0);
        let serving: Vec<Endpoint> = (1..=3)
            .map(|i| Endpoint {
                replica: format!("m-{i}"),
                addr: format!("10.0.0.{i}:8080").parse().unwrap(),
                grpc: None,
                gpu: None,
                pid: None,
            })
            .collect();
        let (_tx, rx) = watch::channel(serving);
        let key = ComponentKey {
            service: "m".into(),
            kind: isvc.predictor.kind,
        };
        let pool = Pool::new(key, 0, 100, rx);
        let backend = Arc::new(Recorder::default());
        let task = tokio::spawn(
            LiveAutoscaler {
                pool,
                backend: backend.clone(),
                scaling: isvc.predictor.scaling.clone(),
                enable_scale_to_zero: true,
            }
            .run(),
        );
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(
            backend.asked.lock().is_empty(),
            "no data yet: the three serving replicas are not cut to the initial scale of one"
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        let asked = backend.asked.lock().clone();
        assert!(!asked.is_empty(), "with data it decides");
        task.abort();
    }
}
