//! One host, nvidia-docker style: each replica is a `siesta serve` child process on a free
//! loopback port. A supervisor per component converges on the wanted count: starts replicas,
//! publishes them once `/v2/health/ready` answers, stops extra ones with SIGTERM (they drain), and
//! replaces replicas that crashed, spacing the restarts of each replica slot as kubelet does a
//! pod's (`crash_loop`). Scaling down parks surplus replicas and scaling up resumes them first,
//! and GPU memory is placed as the scarce resource (`tiers`). Replica logs go to `LOG_DIR/<component>-<slot>.log`: one file per
//! replica slot, each start appended, so a crash loop does not make a file per attempt.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::Instant;

use super::activity::Activity;
use super::cold_start::{ColdStart, ColdStartKind};
use super::control;
use super::crash_loop::{CrashLoop, Slots};
use super::gpu::GpuInventory;
use super::rollout::{self, Seen};
use super::tiers::{self, GpuRoom, HotSeen, ParkedSeen, Placement};
use super::{
    BackendError, BackendStatus, ComponentKey, Endpoint, Listening, ReplicaBackend, ReplicaTemplate,
};

/// How long a replica may take from spawn to ready (model download and load included).
const STARTUP_DEADLINE: Duration = Duration::from_secs(600);
const SUPERVISE_EVERY: Duration = Duration::from_millis(100);

#[derive(Clone)]
pub struct LocalBackend {
    inner: Arc<Inner>,
}

struct Inner {
    siesta_bin: PathBuf,
    log_dir: PathBuf,
    components: Mutex<HashMap<ComponentKey, Arc<Component>>>,
    next_replica: AtomicU64,
    stopping: watch::Sender<bool>,
    /// NVML (or a simulated inventory); `None`: no GPU, every replica on CPU.
    gpus: Option<Arc<dyn GpuInventory>>,
    /// Given to every replica (`SIESTA_CONTROL_TOKEN`): only this backend parks and resumes them.
    control_token: String,
    /// Held from a placement decision until the replica holds its promise (starting or
    /// resuming): components' supervisors run at once and must not place into the same room.
    placing: Mutex<()>,
}

struct Component {
    key: ComponentKey,
    /// The current spec's template and its generation; replicas of older ones are rolled.
    template: Mutex<(u64, ReplicaTemplate)>,
    desired: watch::Sender<u32>,
    endpoints: watch::Sender<Vec<Endpoint>>,
    replicas: Mutex<Vec<Replica>>,
    pending: Mutex<Option<String>>,
    /// Per replica slot, as kubelet backs off per pod.
    backoff: Mutex<Slots>,
    crash_loop: watch::Sender<Option<CrashLoop>>,
    /// The gateway's view of its traffic: waiting requests, per replica use.
    activity: Arc<Activity>,
    /// Device memory a replica of this component was measured to use once hot (the most any
    /// reported); placement uses it instead of the template's estimate.
    measured_bytes: Mutex<Option<u64>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Starting,
    Ready(SocketAddr, Option<SocketAddr>),
    /// Taken out of the endpoints; the park call is in flight.
    Parking(SocketAddr, Option<SocketAddr>),
    Parked {
        addr: SocketAddr,
        grpc: Option<SocketAddr>,
        since: Instant,
    },
    /// The resume call is in flight.
    Resuming(SocketAddr, Option<SocketAddr>),
    Stopping,
}

impl Phase {
    fn is_parked(self) -> bool {
        matches!(self, Phase::Parking(..) | Phase::Parked { .. })
    }

    fn tier(self) -> &'static str {
        match self {
            Phase::Starting | Phase::Resuming(..) => "starting",
            Phase::Ready(..) => "hot",
            Phase::Parking(..) | Phase::Parked { .. } => "parked",
            Phase::Stopping => "stopping",
        }
    }
}

struct Replica {
    id: String,
    /// The template generation it was started from.
    generation: u64,
    /// Its log file's number: the lowest free among the component's live replicas.
    slot: usize,
    log: PathBuf,
    child: Child,
    phase: Phase,
    gpu: Option<u32>,
    /// Device memory promised to this replica while it starts (NVML does not see it yet),
    /// then what it reported using once hot.
    gpu_bytes: u64,
    /// How it last became ready.
    cold_start: Option<ColdStart>,
    /// When it became hot (ready or resumed): its last use until the gateway sends it one.
    hot_since: Instant,
    /// Parked to make room for another component (`tiers::may_grow`).
    evicted: bool,
}

enum StartError {
    /// Nothing to start it on yet; retried on the next round.
    Pending(String),
    Io(std::io::Error),
}

impl LocalBackend {
    pub fn new(siesta_bin: PathBuf, log_dir: PathBuf, gpus: Option<Arc<dyn GpuInventory>>) -> Self {
        LocalBackend {
            inner: Arc::new(Inner {
                siesta_bin,
                log_dir,
                components: Mutex::new(HashMap::new()),
                next_replica: AtomicU64::new(1),
                stopping: watch::channel(false).0,
                gpus,
                control_token: random_token(),
                placing: Mutex::new(()),
            }),
        }
    }

    /// Every live replica's process id, for matching NVML's per-process memory.
    pub fn replica_pids(&self) -> HashMap<u32, String> {
        let components: Vec<Arc<Component>> =
            self.inner.components.lock().values().cloned().collect();
        components
            .iter()
            .flat_map(|c| {
                c.replicas
                    .lock()
                    .iter()
                    .filter_map(|r| Some((r.child.id()?, r.id.clone())))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// A component's new spec: replicas started from now on use `template`, and the running
    /// ones are replaced one at a time (`rollout`) without dropping below the wanted count.
    pub fn reconfigure(
        &self,
        key: &ComponentKey,
        template: ReplicaTemplate,
    ) -> Result<(), BackendError> {
        let c = self.component(key)?;
        let mut current = c.template.lock();
        if current.1 != template {
            *current = (current.0 + 1, template);
            tracing::info!(component = %key, generation = current.0, "new spec; rolling replicas");
        }
        Ok(())
    }

    fn component(&self, key: &ComponentKey) -> Result<Arc<Component>, BackendError> {
        self.inner
            .components
            .lock()
            .get(key)
            .cloned()
            .ok_or_else(|| BackendError::Unknown(key.to_string()))
    }
}

impl ReplicaBackend for LocalBackend {
    fn register(&self, key: &ComponentKey, template: ReplicaTemplate) {
        // Known already (a service removed from the manifests and added again): its
        // supervisor, replicas and endpoints stay; only the spec is new.
        if self.reconfigure(key, template.clone()).is_ok() {
            return;
        }
        let component = Arc::new(Component {
            key: key.clone(),
            template: Mutex::new((0, template)),
            desired: watch::channel(0).0,
            endpoints: watch::channel(Vec::new()).0,
            replicas: Mutex::new(Vec::new()),
            pending: Mutex::new(None),
            backoff: Mutex::new(Slots::default()),
            crash_loop: watch::channel(None).0,
            activity: Arc::default(),
            measured_bytes: Mutex::new(None),
        });
        self.inner
            .components
            .lock()
            .insert(key.clone(), component.clone());
        tokio::spawn(supervise(self.inner.clone(), component));
    }

    fn scale(&self, key: &ComponentKey, replicas: u32) -> Result<(), BackendError> {
        let c = self.component(key)?;
        c.desired.send_if_modified(|d| {
            let changed = *d != replicas;
            *d = replicas;
            changed
        });
        Ok(())
    }

    fn endpoints(
        &self,
        key: &ComponentKey,
    ) -> Result<watch::Receiver<Vec<Endpoint>>, BackendError> {
        Ok(self.component(key)?.endpoints.subscribe())
    }

    fn status(&self, key: &ComponentKey) -> Result<BackendStatus, BackendError> {
        let c = self.component(key)?;
        let replicas = c.replicas.lock();
        let any_ready = replicas.iter().any(|r| matches!(r.phase, Phase::Ready(..)));
        Ok(BackendStatus {
            desired: *c.desired.borrow(),
            starting: replicas
                .iter()
                .filter(|r| matches!(r.phase, Phase::Starting | Phase::Resuming(..)))
                .count() as u32,
            ready: replicas
                .iter()
                .filter(|r| matches!(r.phase, Phase::Ready(..)))
                .count() as u32,
            parked: replicas.iter().filter(|r| r.phase.is_parked()).count() as u32,
            device_memory_bytes: replicas
                .iter()
                .filter(|r| {
                    matches!(
                        r.phase,
                        Phase::Ready(..) | Phase::Parking(..) | Phase::Resuming(..)
                    )
                })
                .map(|r| r.gpu_bytes)
                .sum(),
            pending: c.pending.lock().clone(),
            crash_loop: c.backoff.lock().crash_loop(Instant::now(), any_ready),
        })
    }

    fn crash_loop(
        &self,
        key: &ComponentKey,
    ) -> Result<watch::Receiver<Option<CrashLoop>>, BackendError> {
        Ok(self.component(key)?.crash_loop.subscribe())
    }

    fn activity(&self, key: &ComponentKey) -> Result<Arc<Activity>, BackendError> {
        Ok(self.component(key)?.activity.clone())
    }

    fn shutdown(&self) -> BoxFuture<'static, ()> {
        let inner = self.inner.clone();
        async move {
            inner.stopping.send_replace(true);
            let components: Vec<Arc<Component>> =
                inner.components.lock().values().cloned().collect();
            for c in &components {
                c.desired.send_replace(0);
            }
            // The supervisors stop everything; wait until no replica is left.
            for _ in 0..600 {
                if components.iter().all(|c| c.replicas.lock().is_empty()) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tracing::warn!("replicas still running after 30 s of shutdown");
        }
        .boxed()
    }
}

fn publish(c: &Component) {
    let ready: Vec<Endpoint> = c
        .replicas
        .lock()
        .iter()
        .filter_map(|r| match r.phase {
            Phase::Ready(addr, grpc) => Some(Endpoint {
                replica: r.id.clone(),
                addr,
                grpc,
                gpu: r.gpu,
                pid: r.child.id(),
                cold_start: r.cold_start,
            }),
            _ => None,
        })
        .collect();
    c.endpoints.send_if_modified(|e| {
        let changed = *e != ready;
        *e = ready;
        changed
    });
    publish_tiers(c);
}

async fn supervise(inner: Arc<Inner>, c: Arc<Component>) {
    let mut desired = c.desired.subscribe();
    let mut stopping = inner.stopping.subscribe();
    loop {
        reap(&c);
        let now = Instant::now();
        let ready_slots: Vec<usize> = c
            .replicas
            .lock()
            .iter()
            .filter(|r| matches!(r.phase, Phase::Ready(..)))
            .map(|r| r.slot)
            .collect();
        c.backoff.lock().observe(now, |s| ready_slots.contains(&s));
        let want = *desired.borrow_and_update() as usize;
        let (generation, tier_settings) = {
            let t = c.template.lock();
            (t.0, t.1.tiers)
        };
        // Shutting down: nothing is parked, and whatever is parked goes.
        let (park_limit, park_timeout) = match tier_settings {
            Some(t) if !*stopping.borrow() => (t.policy.parked_replicas, t.policy.park_timeout),
            _ => (0, Duration::ZERO),
        };
        let parked = parked_seen(&c, generation);
        // /proc/meminfo is read only when a parked replica could be let go for it.
        let short = !parked.is_empty() && host_memory_short();
        stop_ids(
            &c,
            &tiers::expire(&parked, park_limit, park_timeout, short, now),
        );
        let (live, seen): (Vec<usize>, Vec<Seen>) = {
            let replicas = c.replicas.lock();
            (0..replicas.len())
                .filter(|&i| {
                    matches!(
                        replicas[i].phase,
                        Phase::Starting | Phase::Ready(..) | Phase::Resuming(..)
                    )
                })
                .map(|i| {
                    let r = &replicas[i];
                    let seen = Seen {
                        current: r.generation == generation,
                        ready: matches!(r.phase, Phase::Ready(..)),
                    };
                    (i, seen)
                })
                .unzip()
        };
        let plan = rollout::plan(want, &seen);
        // Surplus ready replicas of this spec are parked rather than stopped, up to the limit.
        let parked_now = c
            .replicas
            .lock()
            .iter()
            .filter(|r| r.phase.is_parked())
            .count();
        let candidates: Vec<(usize, bool)> = plan
            .stop
            .iter()
            .map(|&i| {
                (
                    i,
                    seen[i].current && seen[i].ready && tier_settings.is_some(),
                )
            })
            .collect();
        let to_park = tiers::park_instead(park_limit, parked_now, &candidates);
        park(
            &inner,
            &c,
            to_park.iter().map(|&i| live[i]).collect(),
            false,
        );
        stop(
            &c,
            plan.stop
                .iter()
                .filter(|i| !to_park.contains(i))
                .map(|&i| live[i]),
        );
        // More wanted: parked replicas come back first.
        let mut wanted = plan.start;
        let parked = parked_seen(&c, generation);
        if wanted > 0 && !tiers::may_grow(&parked, c.activity.waiting() > 0) {
            wanted = 0;
            set_pending(
                &c,
                Some("parked to make room on its GPU for another model; hot again on its next request".into()),
            );
        }
        if wanted > 0 {
            for id in tiers::resume_order(&parked, wanted) {
                match resume(&inner, &c, &id) {
                    Ok(()) => wanted -= 1,
                    Err(reason) => {
                        set_pending(&c, Some(reason));
                        break;
                    }
                }
            }
        }
        let mut taken: Vec<usize> = c.replicas.lock().iter().map(|r| r.slot).collect();
        let limit = taken.len() + wanted;
        publish_crash_loop(&c, now, !ready_slots.is_empty(), limit, &taken);
        if wanted > 0 {
            for _ in 0..wanted {
                let Some(slot) = c.backoff.lock().free(now, limit, &taken) else {
                    // Backing off: not pending on anything else.
                    *c.pending.lock() = None;
                    break;
                };
                match start_replica(&inner, &c, slot) {
                    Ok(()) => {
                        taken.push(slot);
                        *c.pending.lock() = None
                    }
                    Err(StartError::Pending(reason)) => {
                        set_pending(&c, Some(reason));
                        break;
                    }
                    Err(StartError::Io(e)) => {
                        tracing::error!(component = %c.key, error = %e, "cannot start a replica");
                    }
                }
            }
        } else if plan.start == 0 {
            *c.pending.lock() = None;
        }
        publish(&c);
        if *stopping.borrow() && want == 0 && c.replicas.lock().is_empty() {
            return;
        }
        tokio::select! {
            _ = desired.changed() => {}
            _ = stopping.changed() => {}
            // A request waiting where memory was short: make room now, not at the next round.
            _ = c.activity.demand.notified() => {}
            _ = tokio::time::sleep(SUPERVISE_EVERY) => {}
        }
    }
}

/// Forgets replicas whose process exited. One that was not being stopped either exited on idle
/// (success, after it was ready) or failed: a failure feeds the crash-loop backoff with the
/// replica's last words. The next round replaces it if it is still wanted.
fn reap(c: &Component) {
    let mut failures = Vec::new();
    c.replicas.lock().retain_mut(|r| match r.child.try_wait() {
        Ok(Some(status)) => {
            if r.phase == Phase::Stopping {
                tracing::info!(component = %c.key, replica = %r.id, %status, "replica stopped");
            } else if status.success() && r.phase != Phase::Starting {
                // (A parked replica exits 0 too when its own --idle-exit-after passes.)
                tracing::info!(component = %c.key, replica = %r.id, "replica exited on idle");
            } else {
                let error = match last_log_line(&r.log) {
                    // The status page is anyone's to read: never a credential in it.
                    Some(line) => format!(
                        "replica {} {status}: {}",
                        r.id,
                        siesta_http_server::redact::credentials(&line)
                    ),
                    None => format!("replica {} {status}", r.id),
                };
                tracing::warn!(component = %c.key, replica = %r.id, %error, "replica failed");
                failures.push((r.slot, error));
            }
            c.activity.forget(&r.id);
            false
        }
        _ => true,
    });
    let now = Instant::now();
    for (slot, error) in failures {
        c.backoff.lock().failed(slot, now, error);
    }
}

/// Tells held requests (through the pool) when the component is crash-looping and no replica
/// may start yet, and when a start is allowed again.
fn publish_crash_loop(c: &Component, now: Instant, any_ready: bool, limit: usize, taken: &[usize]) {
    let current = c.backoff.lock().refusing(now, any_ready, limit, taken);
    c.crash_loop.send_if_modified(|old| {
        let same = match (old.as_ref(), current.as_ref()) {
            (Some(a), Some(b)) => (a.failures, &a.last_error) == (b.failures, &b.last_error),
            (a, b) => a.is_none() && b.is_none(),
        };
        if !same {
            *old = current.clone();
        }
        !same
    });
}

fn set_pending(c: &Component, reason: Option<String>) {
    let mut pending = c.pending.lock();
    if pending.as_deref() != reason.as_deref() {
        if let Some(r) = &reason {
            tracing::warn!(component = %c.key, reason = %r, "replica pending");
        }
        *pending = reason;
    }
}

/// `siesta_replica_tier{component, tier}`: replicas hot, parked and starting.
fn publish_tiers(c: &Component) {
    let mut counts = [("hot", 0u32), ("parked", 0), ("starting", 0)];
    for r in c.replicas.lock().iter() {
        if let Some(n) = counts.iter_mut().find(|(t, _)| *t == r.phase.tier()) {
            n.1 += 1;
        }
    }
    for (tier, n) in counts {
        metrics::gauge!("siesta_replica_tier", "component" => c.key.to_string(), "tier" => tier)
            .set(f64::from(n));
    }
}

/// `siesta_replica_starts_total{component, kind}`: processes spawned and parked replicas resumed.
fn count_start(c: &Component, kind: ColdStartKind) {
    metrics::counter!("siesta_replica_starts_total", "component" => c.key.to_string(), "kind" => kind.as_str())
        .increment(1);
}

fn parked_seen(c: &Component, generation: u64) -> Vec<ParkedSeen> {
    c.replicas
        .lock()
        .iter()
        .filter_map(|r| match r.phase {
            Phase::Parked { since, .. } => Some(ParkedSeen {
                id: r.id.clone(),
                since,
                current: r.generation == generation,
                evicted: r.evicted,
            }),
            _ => None,
        })
        .collect()
}

/// Whether the host is short of memory (under a tenth of it available): parked replicas'
/// host copies go first.
fn host_memory_short() -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/meminfo") else {
        return false;
    };
    let field = |name: &str| {
        info.lines().find_map(|l| {
            l.strip_prefix(name)?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
    };
    matches!((field("MemAvailable:"), field("MemTotal:")), (Some(a), Some(t)) if a * 10 < t)
}

/// A token nobody else on the host can guess, for replica control.
fn random_token() -> String {
    let mut bytes = [0u8; 16];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        bytes.copy_from_slice(&(t ^ u128::from(std::process::id()) << 64).to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Takes these ready replicas out of the endpoints and parks them: the gateway sends them
/// nothing new, the replica finishes what it has, then gives its device memory back.
fn park(inner: &Arc<Inner>, c: &Arc<Component>, indices: Vec<usize>, evicted: bool) {
    let mut calls = Vec::new();
    {
        let mut replicas = c.replicas.lock();
        for i in indices {
            let r = &mut replicas[i];
            if let Phase::Ready(addr, grpc) = r.phase {
                r.phase = Phase::Parking(addr, grpc);
                r.evicted = evicted;
                calls.push((r.id.clone(), addr));
            }
        }
    }
    if calls.is_empty() {
        return;
    }
    publish(c);
    for (id, addr) in calls {
        tracing::info!(component = %c.key, replica = %id, "parking replica");
        let (c, token) = (c.clone(), inner.control_token.clone());
        tokio::spawn(async move {
            let result = control::park(addr, &token).await;
            let mut replicas = c.replicas.lock();
            let Some(r) = replicas.iter_mut().find(|r| r.id == id) else {
                return;
            };
            let Phase::Parking(addr, grpc) = r.phase else {
                return;
            };
            match result {
                Ok(report) => {
                    tracing::info!(component = %c.key, replica = %id,
                        device_bytes = report.device_memory_bytes,
                        host_bytes = report.host_memory_bytes,
                        ms = report.took_ms, "replica parked");
                    r.phase = Phase::Parked {
                        addr,
                        grpc,
                        since: Instant::now(),
                    };
                }
                Err(e) => {
                    tracing::warn!(component = %c.key, replica = %id, error = %e,
                        "parking failed; stopping the replica instead");
                    r.phase = Phase::Stopping;
                    terminate(r.child.id());
                }
            }
        });
    }
}

/// Resumes a parked replica where its GPU has room (making room by parking others if the
/// component has requests waiting); published once its weights are back.
fn resume(inner: &Arc<Inner>, c: &Arc<Component>, id: &str) -> Result<(), String> {
    let (addr, grpc, gpu, bytes) = {
        let replicas = c.replicas.lock();
        let r = replicas.iter().find(|r| r.id == id).ok_or("gone")?;
        let Phase::Parked { addr, grpc, .. } = r.phase else {
            return Err("not parked".into());
        };
        (addr, grpc, r.gpu, r.gpu_bytes)
    };
    let _placing = inner.placing.lock();
    if let (Some(g), Some(inventory)) = (gpu, &inner.gpus) {
        match placement(inner, c, inventory.as_ref(), bytes, Some(g)) {
            Placement::Fits(_) => {}
            Placement::AfterParking { park: others, .. } => {
                make_room(inner, &others);
                return Err(format!(
                    "parking {} to make room on GPU {g}",
                    others.join(", ")
                ));
            }
            Placement::Wait(reason) => return Err(reason),
        }
    }
    {
        let mut replicas = c.replicas.lock();
        let Some(r) = replicas.iter_mut().find(|r| r.id == id) else {
            return Err("gone".into());
        };
        r.phase = Phase::Resuming(addr, grpc);
    }
    tracing::info!(component = %c.key, replica = %id, "resuming replica");
    count_start(c, ColdStartKind::Resume);
    let (c, token, id) = (c.clone(), inner.control_token.clone(), id.to_string());
    tokio::spawn(async move {
        let started = Instant::now();
        let result = control::resume(addr, &token).await;
        let took = started.elapsed();
        {
            let mut replicas = c.replicas.lock();
            let Some(r) = replicas.iter_mut().find(|r| r.id == id) else {
                return;
            };
            if r.phase != Phase::Resuming(addr, grpc) {
                return;
            }
            match result {
                Ok(report) => {
                    let upload = Duration::from_secs_f64(report.upload_ms.max(0.0) / 1e3);
                    r.cold_start = Some(ColdStart {
                        kind: ColdStartKind::Resume,
                        process: took.saturating_sub(upload),
                        fetch: Duration::ZERO,
                        load: Duration::ZERO,
                        upload,
                        warm_up: Duration::ZERO,
                    });
                    if r.gpu.is_some() && report.device_memory_bytes > 0 {
                        r.gpu_bytes = report.device_memory_bytes;
                    }
                    r.hot_since = Instant::now();
                    r.evicted = false;
                    r.phase = Phase::Ready(addr, grpc);
                    tracing::info!(component = %c.key, replica = %id,
                        ms = took.as_secs_f64() * 1e3, "replica resumed");
                }
                Err(e) => {
                    tracing::warn!(component = %c.key, replica = %id, error = %e,
                        "resume failed; stopping the replica (a new one starts)");
                    r.phase = Phase::Stopping;
                    terminate(r.child.id());
                }
            }
        }
        publish(&c);
    });
    Ok(())
}

/// Parks hot replicas of other components, named by the placement, to free their GPU memory.
fn make_room(inner: &Arc<Inner>, ids: &[String]) {
    let components: Vec<Arc<Component>> = inner.components.lock().values().cloned().collect();
    for other in components {
        let indices = indices_of(&other, ids);
        if !indices.is_empty() {
            tracing::info!(component = %other.key, replicas = ?ids, "parking for GPU memory");
            park(inner, &other, indices, true);
        }
    }
}

fn stop_ids(c: &Component, ids: &[String]) {
    if !ids.is_empty() {
        stop(c, indices_of(c, ids).into_iter());
    }
}

/// Where the replicas named `ids` are in `c`'s list.
fn indices_of(c: &Component, ids: &[String]) -> Vec<usize> {
    c.replicas
        .lock()
        .iter()
        .enumerate()
        .filter(|(_, r)| ids.contains(&r.id))
        .map(|(i, _)| i)
        .collect()
}

fn terminate(pid: Option<u32>) {
    if let Some(pid) = pid {
        // SIGTERM: the replica fails readiness, finishes in-flight requests and exits.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

/// What placement sees: every GPU's room, every hot replica, each component's floor.
fn placement(
    inner: &Inner,
    c: &Component,
    inventory: &dyn GpuInventory,
    need: u64,
    only_gpu: Option<u32>,
) -> Placement {
    let gpus = inventory.gpus();
    let sees_usage = inventory.reports_usage();
    let mut used: HashMap<u32, u64> = HashMap::new();
    let mut promised: HashMap<u32, u64> = HashMap::new();
    let mut hot = Vec::new();
    let mut floor = HashMap::new();
    let components: Vec<Arc<Component>> = inner.components.lock().values().cloned().collect();
    for other in &components {
        // Parking off (`parked-replicas: "0"`) or no tiers (a transformer): never parked for
        // memory; such a component frees its GPU only by scaling down, as under Knative.
        let min = other
            .template
            .lock()
            .1
            .tiers
            .filter(|t| t.policy.parked_replicas > 0)
            .map(|t| t.min_replicas);
        let mut hot_count = 0;
        for r in other.replicas.lock().iter() {
            let Some(g) = r.gpu else { continue };
            match r.phase {
                Phase::Starting | Phase::Resuming(..) => {
                    *promised.entry(g).or_default() += r.gpu_bytes
                }
                Phase::Ready(..) => {
                    *used.entry(g).or_default() += r.gpu_bytes;
                    hot_count += 1;
                    let activity = other.activity.replica(&r.id);
                    hot.push(HotSeen {
                        id: r.id.clone(),
                        component: other.key.clone(),
                        gpu: g,
                        bytes: r.gpu_bytes,
                        in_flight: activity.map_or(0, |a| a.in_flight),
                        last_used: activity.map_or(r.hot_since, |a| a.last_used.max(r.hot_since)),
                    });
                }
                Phase::Parking(..) | Phase::Stopping => *used.entry(g).or_default() += r.gpu_bytes,
                Phase::Parked { .. } => {}
            }
        }
        floor.insert(other.key.clone(), (hot_count, min.unwrap_or(hot_count)));
    }
    let rooms: Vec<GpuRoom> = gpus
        .iter()
        .filter(|g| only_gpu.is_none_or(|o| o == g.index))
        .map(|g| {
            let promised = promised.get(&g.index).copied().unwrap_or(0);
            let free = if sees_usage {
                g.free_bytes
            } else {
                g.total_bytes
                    .saturating_sub(used.get(&g.index).copied().unwrap_or(0))
            };
            GpuRoom {
                index: g.index,
                name: g.name.clone(),
                available: free.saturating_sub(promised),
            }
        })
        .collect();
    tiers::place(
        &rooms,
        need,
        &c.key,
        c.activity.waiting() > 0,
        &hot,
        &floor,
        Instant::now(),
    )
}

/// What a failed replica last said, from the last 16 KiB of its log without terminal colours:
/// the process's final `Error: ...` line (a backtrace may follow it), else its last ERROR log
/// line, else its last line.
fn last_log_line(path: &Path) -> Option<String> {
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(16 << 10))).ok()?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    // Only this attempt's lines: the slot's file holds the earlier ones too.
    let attempt = text.rsplit("--- siesta: replica").next().unwrap_or(&text);
    let lines: Vec<String> = attempt.lines().map(strip_ansi).collect();
    let line = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("Error: "))
        .or_else(|| lines.iter().rev().find(|l| l.contains(" ERROR ")))
        .or_else(|| lines.iter().rev().find(|l| !l.trim().is_empty()))?;
    let line = line.trim();
    Some(match line.char_indices().nth(300) {
        Some((cut, _)) => format!("{}...", &line[..cut]),
        None => line.to_string(),
    })
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(ch) = chars.next() {
        if ch == '\u{1b}' {
            // CSI: ESC [ parameters final-byte (a letter).
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}

/// Stops the replicas at these indices (the rollout plan's choice). The gateway stops sending
/// them requests before they are told to drain, so that none lands on a closing connection.
fn stop(c: &Component, indices: impl Iterator<Item = usize>) {
    let mut pids = Vec::new();
    {
        let mut replicas = c.replicas.lock();
        for i in indices {
            let r = &mut replicas[i];
            r.phase = Phase::Stopping;
            pids.extend(r.child.id());
            tracing::info!(component = %c.key, replica = %r.id, "stopping replica");
        }
    }
    if pids.is_empty() {
        return;
    }
    publish(c);
    for pid in pids {
        terminate(Some(pid));
    }
}

/// The GPU for a new replica of `c`, if it wants one and this host has any: its measured
/// device memory (or the template's estimate until one replica reported) must fit.
fn choose_gpu(
    inner: &Arc<Inner>,
    c: &Component,
    template: &ReplicaTemplate,
) -> Result<Option<(u32, u64)>, StartError> {
    let (Some(estimate), Some(inventory)) = (template.gpu_memory_bytes, &inner.gpus) else {
        return Ok(None);
    };
    if inventory.gpus().is_empty() {
        return Ok(None);
    }
    let need = c.measured_bytes.lock().unwrap_or(estimate);
    match placement(inner, c, inventory.as_ref(), need, None) {
        Placement::Fits(g) => Ok(Some((g, need))),
        Placement::AfterParking { gpu, park } => {
            make_room(inner, &park);
            Err(StartError::Pending(format!(
                "parking {} to make room on GPU {gpu}",
                park.join(", ")
            )))
        }
        Placement::Wait(reason) => Err(StartError::Pending(reason)),
    }
}

fn start_replica(inner: &Arc<Inner>, c: &Arc<Component>, slot: usize) -> Result<(), StartError> {
    let (generation, template) = c.template.lock().clone();
    let placing = inner.placing.lock();
    let gpu = choose_gpu(inner, c, &template)?;
    let n = inner.next_replica.fetch_add(1, Ordering::Relaxed);
    let id = format!("{}-{n}", c.key);
    std::fs::create_dir_all(&inner.log_dir).map_err(StartError::Io)?;
    let log_path = inner.log_dir.join(format!("{}-{slot}.log", c.key));
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(StartError::Io)?;
    writeln!(log, "--- siesta: replica {id} starting").map_err(StartError::Io)?;
    let mut cmd = Command::new(&inner.siesta_bin);
    cmd.env(
        siesta_http_server::replica_control::TOKEN_ENV,
        &inner.control_token,
    )
    .env(
        siesta_http_server::replica_control::PARENT_ENV,
        std::process::id().to_string(),
    );
    if let Some((g, _)) = gpu {
        // The replica sees only its GPU, as cuda:0 (`--device auto` picks it).
        cmd.env("CUDA_VISIBLE_DEVICES", g.to_string());
    }
    let mut child = cmd
        .arg("serve")
        .args(["--replica-id", &id])
        .args(&template.args)
        .envs(template.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .map_err(StartError::Io)?;
    let stdout = child.stdout.take().expect("piped stdout");
    c.replicas.lock().push(Replica {
        id: id.clone(),
        generation,
        slot,
        log: log_path,
        child,
        phase: Phase::Starting,
        gpu: gpu.map(|(g, _)| g),
        gpu_bytes: gpu.map_or(0, |(_, b)| b),
        cold_start: None,
        hot_since: Instant::now(),
        evicted: false,
    });
    drop(placing);
    count_start(c, ColdStartKind::Spawn);
    tracing::info!(component = %c.key, replica = %id, gpu = ?gpu.map(|(g, _)| g), "starting replica");
    let c = c.clone();
    let (token, inventory) = (inner.control_token.clone(), inner.gpus.clone());
    let spawned = Instant::now();
    tokio::spawn(async move {
        match tokio::time::timeout(STARTUP_DEADLINE, wait_ready(stdout)).await {
            Ok(Some((addr, grpc))) => {
                // Its own account of the start (a transformer has none: all of it is "process").
                let report = control::report(addr, &token).await.ok();
                let total = spawned.elapsed();
                let (fetch, load, warm_up) = report
                    .as_ref()
                    .map_or(Default::default(), |r| r.load_phases());
                let cold_start = ColdStart {
                    kind: ColdStartKind::Spawn,
                    process: total.saturating_sub(fetch + load + warm_up),
                    fetch,
                    load,
                    upload: Duration::ZERO,
                    warm_up,
                };
                let mut published = false;
                let mut measured = None;
                if let Some(r) = c.replicas.lock().iter_mut().find(|r| r.id == id)
                    && r.phase == Phase::Starting
                {
                    r.phase = Phase::Ready(addr, grpc);
                    r.cold_start = Some(cold_start);
                    r.hot_since = Instant::now();
                    if let Some(g) = r.gpu {
                        let reported = report.as_ref().map_or(0, |r| r.device_memory_bytes);
                        // NVML's count for the process adds the CUDA context and allocator pools.
                        let seen = inventory
                            .as_ref()
                            .map_or(0, |inv| process_gpu_bytes(inv.as_ref(), g, r.child.id()));
                        let m = reported.max(seen);
                        if m > 0 {
                            r.gpu_bytes = m;
                            measured = Some(m);
                        }
                    }
                    published = true;
                }
                if let Some(m) = measured {
                    let mut learned = c.measured_bytes.lock();
                    *learned = Some(learned.map_or(m, |l| l.max(m)));
                }
                if published {
                    tracing::info!(component = %c.key, replica = %id, %addr, "replica ready");
                    publish(&c);
                }
            }
            Ok(None) => {
                tracing::warn!(component = %c.key, replica = %id, "replica exited before it was ready")
            }
            Err(_) => {
                tracing::error!(component = %c.key, replica = %id, "replica not ready within the startup deadline");
                if let Some(r) = c.replicas.lock().iter_mut().find(|r| r.id == id) {
                    r.phase = Phase::Stopping;
                    let _ = r.child.start_kill();
                }
                c.backoff.lock().failed(
                    slot,
                    Instant::now(),
                    format!(
                        "replica {id} was not ready within the startup deadline of {} s",
                        STARTUP_DEADLINE.as_secs()
                    ),
                );
            }
        }
    });
    Ok(())
}

/// The device memory NVML counts for a process on a GPU (0 for a simulated inventory).
fn process_gpu_bytes(inventory: &dyn GpuInventory, gpu: u32, pid: Option<u32>) -> u64 {
    let Some(pid) = pid else { return 0 };
    inventory
        .gpus()
        .iter()
        .filter(|g| g.index == gpu)
        .flat_map(|g| g.processes.iter())
        .filter(|(p, _)| *p == pid)
        .map(|(_, b)| *b)
        .sum()
}

/// Reads the replica's listening line, then polls its readiness (model loaded and warmed up).
async fn wait_ready(
    stdout: tokio::process::ChildStdout,
) -> Option<(SocketAddr, Option<SocketAddr>)> {
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).await.ok()?;
    let Listening { http: addr, grpc } = match line.parse::<Listening>() {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "replica printed no listening line");
            return None;
        }
    };
    loop {
        if probe_ready(addr).await {
            return Some((addr, grpc));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn probe_ready(addr: SocketAddr) -> bool {
    use tokio::io::AsyncWriteExt;
    let Ok(Ok(mut s)) = tokio::time::timeout(
        Duration::from_millis(300),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    else {
        return false;
    };
    let req = format!("GET /v2/health/ready HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 12];
    matches!(
        tokio::time::timeout(Duration::from_millis(300), tokio::io::AsyncReadExt::read_exact(&mut s, &mut buf)).await,
        Ok(Ok(_)) if &buf[9..12] == b"200"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_replica_is_summed_up_by_its_final_error_of_its_last_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("c-1.log");
        std::fs::write(
            &log,
            "--- siesta: replica c-1 starting\nError: old attempt\n\
             --- siesta: replica c-2 starting\n\
             \x1b[2m2026-12-03T13:17:53Z\x1b[0m \x1b[31mERROR\x1b[0m model load failed\n\
             Error: model 'm' failed to load: no such path /x\n\nStack backtrace:\n   0: _start\n",
        )
        .unwrap();
        assert_eq!(
            last_log_line(&log).as_deref(),
            Some("Error: model 'm' failed to load: no such path /x")
        );
        std::fs::write(
            &log,
            "--- siesta: replica c-3 starting\n\x1b[31mERROR\x1b[0m x\n\x1b[2mt\x1b[0m \x1b[31mERROR\x1b[0m worker panicked\n  INFO bye\n",
        )
        .unwrap();
        assert_eq!(
            last_log_line(&log).as_deref(),
            Some("t ERROR worker panicked")
        );
        assert_eq!(last_log_line(&dir.path().join("none.log")), None);
    }
}
