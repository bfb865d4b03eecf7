//! `siesta scale simulate` answers with the live autoscaler's code: one request trace replayed
//! through the live driver (the gateway's pool and `LiveAutoscaler` on tokio's paused clock,
//! requests as tasks that arrive, acquire a replica and hold it) and through the simulator's
//! millisecond loop asks the backend for the same replica counts at the same milliseconds.
//!
//! The backend here is a stand-in that behaves as the simulator's replica model does (a replica is
//! ready a fixed cold start after it was asked for; scaling down removes the newest first), since
//! the test compares the two drivers of the autoscaler, not two backends. Trace times are chosen
//! so that no two events of different kinds fall on the same millisecond (arrivals at 3 mod 10,
//! completions at 4, 6 or 9 mod 10, readiness at 5 or 8 mod 10, reports and ticks at 0): the
//! order of simultaneous tasks is the one thing tokio does not fix.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use parking_lot::Mutex;
use siesta_lifecycle::autoscaler::live::LiveAutoscaler;
use siesta_lifecycle::backend::{
    BackendError, BackendStatus, ComponentKey, Endpoint, ReplicaBackend, ReplicaTemplate,
};
use siesta_lifecycle::gateway::pool::Pool;
use siesta_lifecycle::manifest::{ClusterDefaults, parse};
use siesta_lifecycle::simulate::{ScaleRequest, TraceRequest, simulate};
use tokio::sync::watch;
use tokio::time::Instant;

const COLD_START_MS: u64 = 255;

/// The simulator's replica model, as a backend for the live autoscaler.
struct ModelBackend {
    started: Instant,
    /// When each replica is (or was) ready, in start order.
    replicas: Mutex<Vec<(u64, u32)>>,
    next_id: Mutex<u32>,
    endpoints: watch::Sender<Vec<Endpoint>>,
    asked: Mutex<Vec<ScaleRequest>>,
}

impl ModelBackend {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn publish(&self) {
        let now = self.now_ms();
        let ready: Vec<Endpoint> = self
            .replicas
            .lock()
            .iter()
            .filter(|(ready_at, _)| *ready_at <= now)
            .map(|(_, id)| Endpoint {
                replica: format!("r{id}"),
                addr: ([127, 0, 0, 1], 20_000 + (*id % 40_000) as u16).into(),
                grpc: None,
                gpu: None,
                pid: None,
                cold_start: None,
            })
            .collect();
        self.endpoints.send_if_modified(|e| {
            let changed = *e != ready;
            *e = ready;
            changed
        });
    }
}

struct Shared(Arc<ModelBackend>);

impl ReplicaBackend for Shared {
    fn register(&self, _: &ComponentKey, _: ReplicaTemplate) {}

    fn scale(&self, _: &ComponentKey, replicas: u32) -> Result<(), BackendError> {
        let b = &self.0;
        let now = b.now_ms();
        b.asked.lock().push(ScaleRequest {
            t_ms: now,
            replicas,
        });
        let mut list = b.replicas.lock();
        while (list.len() as u32) < replicas {
            let id = {
                let mut n = b.next_id.lock();
                *n += 1;
                *n
            };
            list.push((now + COLD_START_MS, id));
            let b = b.clone();
            let at = b.started + Duration::from_millis(now + COLD_START_MS);
            tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                b.publish();
            });
        }
        while (list.len() as u32) > replicas {
            let newest = (0..list.len())
                .max_by_key(|&i| (list[i].0, i))
                .expect("more replicas than asked for");
            list.remove(newest);
        }
        drop(list);
        b.publish();
        Ok(())
    }

    fn endpoints(&self, _: &ComponentKey) -> Result<watch::Receiver<Vec<Endpoint>>, BackendError> {
        Ok(self.0.endpoints.subscribe())
    }

    fn status(&self, _: &ComponentKey) -> Result<BackendStatus, BackendError> {
        Ok(BackendStatus::default())
    }

    fn shutdown(&self) -> futures::future::BoxFuture<'static, ()> {
        async {}.boxed()
    }
}

/// A ramp, a quiet spell long enough to reach zero, one request at zero, then a burst that panics.
fn trace() -> Vec<TraceRequest> {
    let mut seed = 0x5EED_u64;
    let mut rand = |n: u64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % n
    };
    let mut out = Vec::new();
    let mut second = |s: u64, count: u64, rand: &mut dyn FnMut(u64) -> u64| {
        // Distinct arrival slots 103, 113, ... 603 ms into the second.
        let mut slots: Vec<u64> = (10..=60).collect();
        for _ in 0..count.min(slots.len() as u64) {
            let slot = slots.remove(rand(slots.len() as u64) as usize);
            out.push(TraceRequest {
                t_ms: s * 1000 + slot * 10 + 3,
                duration_ms: 21 + 10 * rand(28),
                component: None,
            });
        }
    };
    for s in 3..30 {
        second(s, 1 + (s - 3) / 3, &mut rand);
    }
    second(130, 1, &mut rand);
    for s in 140..150 {
        second(s, 40, &mut rand);
    }
    out.sort_by_key(|r| r.t_ms);
    out
}

#[tokio::test(start_paused = true)]
async fn a_trace_gets_the_same_scale_requests_from_the_simulator_and_the_live_autoscaler() {
    let isvc = parse(
        "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata:\n  name: m\n  \
         annotations: {autoscaling.knative.dev/window: 20s}\nspec:\n  predictor:\n    \
         minReplicas: 0\n    maxReplicas: 20\n    scaleTarget: 1\n    \
         model: {modelFormat: {name: siesta}, storageUri: siesta://mnist}\n",
        &ClusterDefaults::default(),
    )
    .unwrap()
    .remove(0);
    let scaling = isvc.predictor.scaling.clone();
    let trace = trace();
    let simulated = simulate(
        &scaling,
        0,
        true,
        &trace,
        Duration::from_millis(COLD_START_MS),
        // The live side's backend below only starts and stops: parking off.
        siesta_lifecycle::simulate::SimTiers {
            policy: siesta_lifecycle::manifest::TierPolicy {
                parked_replicas: 0,
                ..Default::default()
            },
            resume: Duration::ZERO,
            device_bytes: 0,
        },
    );
    let last = trace.last().unwrap();
    let end_ms = last.t_ms
        + last.duration_ms
        + scaling.decider.stable_window.as_millis() as u64
        + scaling.scale_to_zero_grace.as_millis() as u64
        + 10_000;

    let (tx, _) = watch::channel(Vec::new());
    let model = Arc::new(ModelBackend {
        started: Instant::now(),
        replicas: Mutex::new(Vec::new()),
        next_id: Mutex::new(0),
        endpoints: tx,
        asked: Mutex::new(Vec::new()),
    });
    let backend: Arc<dyn ReplicaBackend> = Arc::new(Shared(model.clone()));
    let key = ComponentKey {
        service: "m".into(),
        kind: isvc.predictor.kind,
    };
    let pool = Pool::new(
        key.clone(),
        0,
        10_000,
        backend.endpoints(&key).unwrap(),
        backend.crash_loop(&key).unwrap(),
    );
    let autoscaler = tokio::spawn(
        LiveAutoscaler {
            pool: pool.clone(),
            backend,
            scaling,
            enable_scale_to_zero: true,
        }
        .run(),
    );
    let requests: Vec<_> = trace
        .iter()
        .map(|r| {
            let (pool, at, duration) = (
                pool.clone(),
                pool.instant_at(r.t_ms),
                Duration::from_millis(r.duration_ms),
            );
            tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                let _demand = pool.arrive();
                let lease = pool
                    .acquire(at + Duration::from_secs(60), &[])
                    .await
                    .expect("a replica within a minute");
                tokio::time::sleep(duration).await;
                drop(lease);
            })
        })
        .collect();
    for r in requests {
        r.await.unwrap();
    }
    tokio::time::sleep_until(pool.instant_at(end_ms)).await;
    autoscaler.abort();
    let live: Vec<ScaleRequest> = model
        .asked
        .lock()
        .iter()
        .copied()
        .filter(|s| s.t_ms <= end_ms)
        .collect();

    // The trace exercises what differs between the drivers: a wake-up at zero (a request off the
    // tick schedule), scale to zero, and a burst.
    let sim = &simulated.scale_requests;
    assert!(
        sim.iter().any(|s| s.t_ms % 1000 != 0 && s.replicas > 0),
        "a request at zero scales up at once: {sim:?}"
    );
    assert!(sim.iter().any(|s| s.replicas == 0), "reaches zero: {sim:?}");
    assert!(
        simulated.summary.max_replicas >= 8,
        "the burst scales out: {:?}",
        simulated.summary
    );
    assert_eq!(simulated.summary.requests, trace.len());
    let first_difference = live.iter().zip(sim).position(|(a, b)| a != b);
    assert!(
        live == *sim,
        "first difference at #{first_difference:?}\nlive ({}): {live:?}\nsimulated ({}): {sim:?}",
        live.len(),
        sim.len()
    );
}
