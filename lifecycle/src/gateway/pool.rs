//! One component's replicas as the gateway sees them: which are ready, how many requests each
//! has in flight, the hard `containerConcurrency` limit, and the bounded wait for a free slot or
//! for the first replica (the activator's buffer). Balancing follows Knative's activator: power
//! of two choices when CC = 0, first free slot when CC <= 3, round robin skipping full replicas
//! above.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::stats::{DemandReport, DemandStats};
use crate::backend::activity::Activity;
use crate::backend::crash_loop::CrashLoop;
use crate::backend::{ColdStart, ColdStartKind, ComponentKey, Endpoint};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcquireError {
    #[error("{component}: {waiting} requests already waiting for a replica (limit {limit})")]
    QueueFull {
        component: String,
        waiting: usize,
        limit: usize,
    },
    #[error("{component}: no replica became available within {waited_ms} ms")]
    Timeout { component: String, waited_ms: u64 },
    #[error("{component}: the gateway is shutting down")]
    ShuttingDown { component: String },
    #[error(
        "{component}: replicas keep failing ({failures} in a row; next start in {retry_in_ms} ms): {last_error}"
    )]
    CrashLoop {
        component: String,
        failures: u32,
        retry_in_ms: u64,
        last_error: String,
    },
}

struct Tracker {
    endpoint: Endpoint,
    in_flight: u32,
}

struct State {
    trackers: Vec<Tracker>,
    waiting: usize,
    cursor: usize,
    rng: u64,
    stats: DemandStats,
}

pub struct Pool {
    pub key: ComponentKey,
    /// `key` rendered once: it labels metrics and traces on every request.
    pub name: String,
    /// Changes with the spec (`set_container_concurrency`) while requests are held.
    container_concurrency: AtomicU32,
    hold_limit: usize,
    endpoints: watch::Receiver<Vec<Endpoint>>,
    crash_loop: watch::Receiver<Option<CrashLoop>>,
    state: Mutex<State>,
    freed: Notify,
    /// Wakes the autoscaler when a request arrives and no replica is ready.
    pub demand: Notify,
    /// What the autoscaler last saw and decided, for status and the dashboard.
    pub observed: Mutex<Observed>,
    started: Instant,
    /// Set when the gateway shuts down: held requests are answered, not dropped with it.
    closed: AtomicBool,
    /// Shared with the backend: what it parks and makes room by.
    activity: Arc<Activity>,
    /// Requests at zero served by a resumed / a new replica.
    cold_resume: std::sync::atomic::AtomicU64,
    cold_spawn: std::sync::atomic::AtomicU64,
}

/// Requests at zero, by how their replica became ready, since the gateway started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ColdStarts {
    pub resume: u64,
    pub spawn: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Observed {
    pub stable: f64,
    pub panic: f64,
    pub desired: i32,
    pub panicking: bool,
    pub excess_burst_capacity: i32,
}

/// A slot on one replica; dropping it frees the slot.
pub struct Lease {
    pool: Arc<Pool>,
    pub replica: String,
    pub addr: SocketAddr,
    pub grpc: Option<SocketAddr>,
    /// Set when the request found no replica and waited for this one to start or resume.
    pub cold_start: Option<ColdStart>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.activity.end(&self.replica, Instant::now());
        {
            let mut st = self.pool.state.lock();
            if let Some(t) = st
                .trackers
                .iter_mut()
                .find(|t| t.endpoint.replica == self.replica)
            {
                t.in_flight = t.in_flight.saturating_sub(1);
            }
        }
        self.pool.freed.notify_waiters();
    }
}

/// Counts one request as demand from arrival until dropped.
pub struct DemandGuard(Arc<Pool>);

impl Drop for DemandGuard {
    fn drop(&mut self) {
        let now = self.0.now_ms();
        self.0.state.lock().stats.end(now);
    }
}

struct WaitingGuard<'a>(&'a Pool);

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.0.state.lock();
        st.waiting -= 1;
        self.0.activity.set_waiting(st.waiting);
    }
}

impl Pool {
    pub fn new(
        key: ComponentKey,
        container_concurrency: u32,
        hold_limit: usize,
        endpoints: watch::Receiver<Vec<Endpoint>>,
        crash_loop: watch::Receiver<Option<CrashLoop>>,
    ) -> Arc<Self> {
        Self::with_activity(
            key,
            container_concurrency,
            hold_limit,
            endpoints,
            crash_loop,
            Arc::default(),
        )
    }

    /// A pool whose traffic its backend reads (`ReplicaBackend::activity`).
    pub fn with_activity(
        key: ComponentKey,
        container_concurrency: u32,
        hold_limit: usize,
        endpoints: watch::Receiver<Vec<Endpoint>>,
        crash_loop: watch::Receiver<Option<CrashLoop>>,
        activity: Arc<Activity>,
    ) -> Arc<Self> {
        let seed = key
            .to_string()
            .bytes()
            .fold(0x9E37_79B9_7F4A_7C15u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
            });
        Arc::new(Pool {
            name: key.to_string(),
            key,
            container_concurrency: AtomicU32::new(container_concurrency),
            hold_limit,
            endpoints,
            crash_loop,
            state: Mutex::new(State {
                trackers: Vec::new(),
                waiting: 0,
                cursor: 0,
                rng: seed | 1,
                stats: DemandStats::new(0),
            }),
            freed: Notify::new(),
            demand: Notify::new(),
            observed: Mutex::new(Observed::default()),
            started: Instant::now(),
            closed: AtomicBool::new(false),
            activity,
            cold_resume: Default::default(),
            cold_spawn: Default::default(),
        })
    }

    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The instant of `now_ms() == ms`, for timers on the same clock.
    pub fn instant_at(&self, ms: u64) -> Instant {
        self.started + std::time::Duration::from_millis(ms)
    }

    /// Answers every request waiting for a replica with `ShuttingDown`, and every later one.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.freed.notify_waiters();
    }

    /// A new spec's limit: the next slot handed out obeys it, held requests stay held.
    pub fn set_container_concurrency(&self, limit: u32) {
        self.container_concurrency.store(limit, Ordering::Release);
        self.freed.notify_waiters();
    }

    pub fn ready(&self) -> usize {
        self.endpoints.borrow().len()
    }

    pub fn waiting(&self) -> usize {
        self.state.lock().waiting
    }

    pub fn count_cold_start(&self, kind: ColdStartKind) {
        match kind {
            ColdStartKind::Resume => &self.cold_resume,
            ColdStartKind::Spawn => &self.cold_spawn,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    pub fn cold_starts(&self) -> ColdStarts {
        ColdStarts {
            resume: self.cold_resume.load(Ordering::Relaxed),
            spawn: self.cold_spawn.load(Ordering::Relaxed),
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.state.lock().stats.in_flight()
    }

    pub fn arrive(self: &Arc<Self>) -> DemandGuard {
        let now = self.now_ms();
        self.state.lock().stats.start(now);
        DemandGuard(self.clone())
    }

    pub fn report(&self) -> DemandReport {
        let now = self.now_ms();
        self.state.lock().stats.report(now)
    }

    /// A slot on a ready replica, waiting up to `deadline`; replicas in `exclude` are skipped
    /// (a retry after a connection failure).
    pub async fn acquire(
        self: &Arc<Self>,
        deadline: Instant,
        exclude: &[String],
    ) -> Result<Lease, AcquireError> {
        let mut endpoints = self.endpoints.clone();
        let mut crash_loop = self.crash_loop.clone();
        let started = Instant::now();
        let mut waiting: Option<WaitingGuard<'_>> = None;
        let mut held_at_zero = false;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.closed.load(Ordering::Acquire) {
                return Err(AcquireError::ShuttingDown {
                    component: self.name.clone(),
                });
            }
            {
                let current = endpoints.borrow_and_update().clone();
                let mut st = self.state.lock();
                sync(&mut st.trackers, &current);
                let container_concurrency = self.container_concurrency.load(Ordering::Acquire);
                if let Some(i) = pick(&mut st, container_concurrency, exclude) {
                    st.trackers[i].in_flight += 1;
                    let e = st.trackers[i].endpoint.clone();
                    drop(st);
                    drop(waiting);
                    self.activity.begin(&e.replica, Instant::now());
                    return Ok(Lease {
                        pool: self.clone(),
                        replica: e.replica,
                        addr: e.addr,
                        grpc: e.grpc,
                        cold_start: e.cold_start.filter(|_| held_at_zero),
                    });
                }
                if st.trackers.is_empty() {
                    held_at_zero = true;
                    // No replica, and none is coming soon: say why now instead of at the deadline.
                    if let Some(c) = crash_loop.borrow_and_update().as_ref() {
                        return Err(AcquireError::CrashLoop {
                            component: self.name.clone(),
                            failures: c.failures,
                            retry_in_ms: c.retry_in_ms,
                            last_error: siesta_http_server::redact::for_client(&c.last_error),
                        });
                    }
                    self.demand.notify_one();
                }
                if waiting.is_none() {
                    let limit = if container_concurrency > 0 && !st.trackers.is_empty() {
                        10 * container_concurrency as usize * st.trackers.len()
                    } else {
                        self.hold_limit
                    };
                    if st.waiting >= limit {
                        return Err(AcquireError::QueueFull {
                            component: self.name.clone(),
                            waiting: st.waiting,
                            limit,
                        });
                    }
                    st.waiting += 1;
                    self.activity.set_waiting(st.waiting);
                    drop(st);
                    waiting = Some(WaitingGuard(self));
                }
            }
            tokio::select! {
                _ = &mut freed => {}
                r = endpoints.changed() => {
                    if r.is_err() {
                        tokio::time::sleep_until(deadline).await;
                    }
                }
                _ = async {
                    // A backend that reports no crash loops closes the channel: never wake on it.
                    if crash_loop.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                } => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(AcquireError::Timeout {
                        component: self.name.clone(),
                        waited_ms: started.elapsed().as_millis() as u64,
                    });
                }
            }
        }
    }
}

/// Keeps in-flight counts of replicas that stay, adds new ones, drops gone ones.
fn sync(trackers: &mut Vec<Tracker>, endpoints: &[Endpoint]) {
    trackers.retain(|t| endpoints.contains(&t.endpoint));
    for e in endpoints {
        if !trackers.iter().any(|t| t.endpoint == *e) {
            trackers.push(Tracker {
                endpoint: e.clone(),
                in_flight: 0,
            });
        }
    }
}

fn pick(st: &mut State, cc: u32, exclude: &[String]) -> Option<usize> {
    let n = st.trackers.len();
    let usable =
        |t: &Tracker| !exclude.contains(&t.endpoint.replica) && (cc == 0 || t.in_flight < cc);
    match cc {
        0 => {
            let candidates: Vec<usize> = (0..n).filter(|&i| usable(&st.trackers[i])).collect();
            match candidates.len() {
                0 => None,
                1 => Some(candidates[0]),
                k => {
                    let a = candidates[(next_random(&mut st.rng) % k as u64) as usize];
                    let mut b = candidates[(next_random(&mut st.rng) % k as u64) as usize];
                    if a == b {
                        b = candidates
                            [(candidates.iter().position(|&c| c == a).unwrap_or(0) + 1) % k];
                    }
                    Some(if st.trackers[b].in_flight < st.trackers[a].in_flight {
                        b
                    } else {
                        a
                    })
                }
            }
        }
        1..=3 => (0..n).find(|&i| usable(&st.trackers[i])),
        _ => {
            let found = (0..n)
                .map(|k| (st.cursor + k) % n)
                .find(|&i| usable(&st.trackers[i]))?;
            st.cursor = (found + 1) % n.max(1);
            Some(found)
        }
    }
}

fn next_random(state: &mut u64) -> u64 {
    // xorshift64: balancing needs spread, not cryptographic randomness.
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::manifest::ComponentKind;

    fn key() -> ComponentKey {
        ComponentKey {
            service: "s".into(),
            kind: ComponentKind::Predictor,
        }
    }

    fn no_crash_loop() -> watch::Receiver<Option<CrashLoop>> {
        watch::channel(None).1
    }

    fn ep(n: u16) -> Endpoint {
        Endpoint {
            replica: format!("r{n}"),
            addr: SocketAddr::from(([127, 0, 0, 1], 10_000 + n)),
            grpc: None,
            gpu: None,
            pid: None,
            cold_start: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn containerconcurrency_is_a_hard_limit_and_excess_waits() {
        let (tx, rx) = watch::channel(vec![ep(1)]);
        let pool = Pool::new(key(), 2, 100, rx, no_crash_loop());
        let far = Instant::now() + Duration::from_secs(60);
        let a = pool.acquire(far, &[]).await.unwrap();
        let _b = pool.acquire(far, &[]).await.unwrap();
        let p = pool.clone();
        let third = tokio::spawn(async move { p.acquire(far, &[]).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(pool.waiting(), 1, "the third request waits for a slot");
        drop(a);
        let third = third.await.unwrap().unwrap();
        assert_eq!(third.replica, "r1");
        // A second replica takes new requests while the first is full.
        tx.send_replace(vec![ep(1), ep(2)]);
        let c = pool.acquire(far, &[]).await.unwrap();
        assert_eq!(c.replica, "r2");
    }

    #[tokio::test(start_paused = true)]
    async fn requests_are_held_until_the_first_replica_and_bounded() {
        let (tx, rx) = watch::channel(Vec::new());
        let pool = Pool::new(key(), 0, 2, rx, no_crash_loop());
        let far = Instant::now() + Duration::from_secs(60);
        let (p1, p2) = (pool.clone(), pool.clone());
        let h1 = tokio::spawn(async move { p1.acquire(far, &[]).await.map(|l| l.replica.clone()) });
        let h2 = tokio::spawn(async move { p2.acquire(far, &[]).await.map(|l| l.replica.clone()) });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(pool.waiting(), 2);
        let err = pool.acquire(far, &[]).await.err().unwrap();
        assert!(
            matches!(err, AcquireError::QueueFull { limit: 2, .. }),
            "{err}"
        );
        tx.send_replace(vec![ep(7)]);
        assert_eq!(h1.await.unwrap().unwrap(), "r7");
        assert_eq!(h2.await.unwrap().unwrap(), "r7");
        assert_eq!(pool.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_past_the_deadline_fails() {
        let (_tx, rx) = watch::channel(Vec::new());
        let pool = Pool::new(key(), 0, 10, rx, no_crash_loop());
        let err = pool
            .acquire(Instant::now() + Duration::from_secs(5), &[])
            .await
            .err()
            .unwrap();
        assert!(
            matches!(
                err,
                AcquireError::Timeout {
                    waited_ms: 5000,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(pool.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn balancing_policies() {
        let far = Instant::now() + Duration::from_secs(60);
        // CC <= 3: first replica with a free slot.
        let (_t, rx) = watch::channel(vec![ep(1), ep(2)]);
        let pool = Pool::new(key(), 1, 10, rx, no_crash_loop());
        let a = pool.acquire(far, &[]).await.unwrap();
        let b = pool.acquire(far, &[]).await.unwrap();
        assert_eq!((a.replica.as_str(), b.replica.as_str()), ("r1", "r2"));
        // CC > 3: round robin.
        let (_t, rx) = watch::channel(vec![ep(1), ep(2), ep(3)]);
        let pool = Pool::new(key(), 10, 10, rx, no_crash_loop());
        let mut order = Vec::new();
        for _ in 0..6 {
            order.push(pool.acquire(far, &[]).await.unwrap().replica.clone());
        }
        assert_eq!(order, ["r1", "r2", "r3", "r1", "r2", "r3"]);
        // CC = 0: power of two choices spreads held load.
        let (_t, rx) = watch::channel(vec![ep(1), ep(2)]);
        let pool = Pool::new(key(), 0, 10, rx, no_crash_loop());
        let leases: Vec<Lease> = futures::future::join_all((0..10).map(|_| pool.acquire(far, &[])))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let on_r1 = leases.iter().filter(|l| l.replica == "r1").count();
        assert!((3..=7).contains(&on_r1), "{on_r1} of 10 on r1");
        // Excluded replicas are skipped.
        assert_eq!(
            pool.acquire(far, &["r1".to_string()])
                .await
                .unwrap()
                .replica,
            "r2"
        );
    }
}
