//! The running autoscaler of one component: `component::Autoscaler` on tokio's clock, fed by the
//! gateway's pool (demand reports, ready replicas, the wake-up when a request finds none) and
//! applied to the backend, the pool's status and the Prometheus gauges.

use std::sync::Arc;

use metrics::gauge;

use super::component::{Autoscaler, Step};
use crate::backend::ReplicaBackend;
use crate::gateway::pool::{Observed, Pool};
use crate::manifest::ComponentScaling;

pub struct LiveAutoscaler {
    pub pool: Arc<Pool>,
    pub backend: Arc<dyn ReplicaBackend>,
    pub scaling: ComponentScaling,
    pub enable_scale_to_zero: bool,
}

impl LiveAutoscaler {
    pub async fn run(self) {
        let pool = &self.pool;
        let mut autoscaler =
            Autoscaler::new(&self.scaling, self.enable_scale_to_zero, pool.now_ms());
        loop {
            let due = pool.instant_at(autoscaler.next_due_ms());
            // Biased: when a timer and a wake-up are both ready, the schedule goes first, as
            // the simulator orders them.
            let step = tokio::select! {
                biased;
                _ = tokio::time::sleep_until(due) => {
                    autoscaler.on_time(pool.now_ms(), pool.ready() as u32, || pool.report())
                }
                _ = pool.demand.notified() => {
                    autoscaler.on_wake(pool.now_ms(), pool.ready() as u32, pool.in_flight())
                }
            };
            if let Some(step) = step {
                self.apply(step);
            }
        }
    }

    fn apply(&self, step: Step) {
        let pool = &self.pool;
        let name = &pool.name;
        if let (Some(d), Some(st), Some(pa)) = (step.decision, step.stable, step.panic) {
            *pool.observed.lock() = Observed {
                stable: st,
                panic: pa,
                desired: d.desired,
                panicking: d.panicking,
                excess_burst_capacity: d.excess_burst_capacity,
            };
        }
        if let Some(d) = step.decision {
            gauge!("siesta_autoscaler_desired_replicas", "component" => name.clone())
                .set(f64::from(d.desired));
            gauge!("siesta_autoscaler_excess_burst_capacity", "component" => name.clone())
                .set(f64::from(d.excess_burst_capacity));
            gauge!("siesta_autoscaler_panic_mode", "component" => name.clone())
                .set(if d.panicking { 1.0 } else { 0.0 });
        }
        if let Some(st) = step.stable {
            gauge!("siesta_autoscaler_stable_value", "component" => name.clone()).set(st);
        }
        if let Some(pa) = step.panic {
            gauge!("siesta_autoscaler_panic_value", "component" => name.clone()).set(pa);
        }
        gauge!("siesta_gateway_ready_replicas", "component" => name.clone())
            .set(pool.ready() as f64);
        gauge!("siesta_gateway_queue_depth", "component" => name.clone())
            .set(pool.waiting() as f64);
        if let Some(n) = step.outcome.replicas {
            if let Err(e) = self.backend.scale(&pool.key, n) {
                tracing::error!(component = %name, error = %e, "scale failed");
            }
            tracing::debug!(component = %name, replicas = n, decision = ?step.decision,
                condition = ?step.outcome.condition, "scaled");
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
                cold_start: None,
            })
            .collect();
        let (_tx, rx) = watch::channel(serving);
        let key = ComponentKey {
            service: "m".into(),
            kind: isvc.predictor.kind,
        };
        let pool = Pool::new(key, 0, 100, rx, tokio::sync::watch::channel(None).1);
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
