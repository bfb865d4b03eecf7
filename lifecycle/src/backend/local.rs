//! One host, nvidia-docker style: each replica is a `siesta serve` child process on a free
//! loopback port. A supervisor per component converges on the wanted count: starts replicas,
//! publishes them once `/v2/health/ready` answers, stops extra ones with SIGTERM (they drain), and
//! replaces replicas that crashed, spacing the restarts of each replica slot as kubelet does a
//! pod's (`crash_loop`). Replica logs go to `LOG_DIR/<component>-<slot>.log`: one file per
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

use super::crash_loop::{CrashLoop, Slots};
use super::gpu::{GpuInventory, place};
use super::rollout::{self, Seen};
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Starting,
    Ready(SocketAddr, Option<SocketAddr>),
    Stopping,
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
    /// Device memory promised to this replica while it starts (NVML does not see it yet).
    gpu_bytes: u64,
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
                .filter(|r| r.phase == Phase::Starting)
                .count() as u32,
            ready: replicas
                .iter()
                .filter(|r| matches!(r.phase, Phase::Ready(..)))
                .count() as u32,
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
            }),
            _ => None,
        })
        .collect();
    c.endpoints.send_if_modified(|e| {
        let changed = *e != ready;
        *e = ready;
        changed
    });
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
        let generation = c.template.lock().0;
        let (live, seen): (Vec<usize>, Vec<Seen>) = {
            let replicas = c.replicas.lock();
            (0..replicas.len())
                .filter(|&i| replicas[i].phase != Phase::Stopping)
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
        stop(&c, plan.stop.iter().map(|&i| live[i]));
        // Every replica keeps its slot until it exits (a stopping one too); new ones take the
        // lowest free slots that are not backing off, never past the count this round needs
        // (so a failing slot is waited for, not replaced by a fresh one).
        let mut taken: Vec<usize> = c.replicas.lock().iter().map(|r| r.slot).collect();
        let limit = taken.len() + plan.start;
        publish_crash_loop(&c, now, !ready_slots.is_empty(), limit, &taken);
        if plan.start > 0 {
            for _ in 0..plan.start {
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
                        let mut pending = c.pending.lock();
                        if pending.as_deref() != Some(reason.as_str()) {
                            tracing::warn!(component = %c.key, %reason, "replica pending");
                            *pending = Some(reason);
                        }
                        break;
                    }
                    Err(StartError::Io(e)) => {
                        tracing::error!(component = %c.key, error = %e, "cannot start a replica");
                    }
                }
            }
        } else {
            *c.pending.lock() = None;
        }
        publish(&c);
        if *stopping.borrow() && want == 0 && c.replicas.lock().is_empty() {
            return;
        }
        tokio::select! {
            _ = desired.changed() => {}
            _ = stopping.changed() => {}
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
        // SIGTERM: the replica fails readiness, finishes in-flight requests and exits.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

/// The GPU for a new replica of `c`, if it wants one and this host has any.
fn choose_gpu(inner: &Inner, template: &ReplicaTemplate) -> Result<Option<(u32, u64)>, StartError> {
    let (Some(need), Some(inventory)) = (template.gpu_memory_bytes, &inner.gpus) else {
        return Ok(None);
    };
    let gpus = inventory.gpus();
    if gpus.is_empty() {
        return Ok(None);
    }
    // Every component's starting replicas hold a promise on their GPU.
    let mut promised = HashMap::new();
    for other in inner.components.lock().values() {
        for r in other.replicas.lock().iter() {
            if let (Some(g), Phase::Starting) = (r.gpu, r.phase) {
                *promised.entry(g).or_insert(0) += r.gpu_bytes;
            }
        }
    }
    place(&gpus, &promised, need)
        .map(|g| Some((g, need)))
        .map_err(StartError::Pending)
}

fn start_replica(inner: &Arc<Inner>, c: &Arc<Component>, slot: usize) -> Result<(), StartError> {
    let (generation, template) = c.template.lock().clone();
    let gpu = choose_gpu(inner, &template)?;
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
    });
    tracing::info!(component = %c.key, replica = %id, gpu = ?gpu.map(|(g, _)| g), "starting replica");
    let c = c.clone();
    tokio::spawn(async move {
        match tokio::time::timeout(STARTUP_DEADLINE, wait_ready(stdout)).await {
            Ok(Some((addr, grpc))) => {
                let mut published = false;
                if let Some(r) = c.replicas.lock().iter_mut().find(|r| r.id == id)
                    && r.phase == Phase::Starting
                {
                    r.phase = Phase::Ready(addr, grpc);
                    published = true;
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
