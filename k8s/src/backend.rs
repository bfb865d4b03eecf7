//! The cluster's [`ReplicaBackend`]: a component's replicas are the pods of the Deployment the
//! controller made for it (`desired::object_name`). Scaling goes through the Deployment's
//! `scale` subresource (so the controller, which never states `replicas`, and the autoscaler do
//! not fight); ready endpoints come from a watch on the component Service's EndpointSlices; a
//! watch on the component's pods tells starting replicas apart and finds Pending GPU pods.
//!
//! The GPU facts KServe users hit, and what this backend does about them:
//! - kserve#1247: a pod Pending while the cluster autoscaler provisions a GPU node (minutes) was
//!   scaled to zero before it was ready. Here, while a component has no ready pod, its starting
//!   pods younger than the startup deadline are kept even if the autoscaler asks for fewer.
//! - kserve#3795: that deadline is its own setting (the controller's startup probe uses the same
//!   one), not the idle windows.
//! - kserve#2882: an endpoint counts only when its EndpointSlice says ready, and a replica's
//!   readiness probe is `/v2/health/ready`, which answers 200 only once the model is loaded.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, Resource};
use parking_lot::Mutex;
use siesta_lifecycle::backend::crash_loop::CrashLoop;
use siesta_lifecycle::backend::{
    BackendError, BackendStatus, ComponentKey, Endpoint, ReplicaBackend, ReplicaTemplate,
    ReplicaTiers, control,
};
use siesta_lifecycle::manifest::TierPolicy;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::desired::{LABEL_COMPONENT, LABEL_SERVICE};
use crate::parking::{self, DELETION_COST, Parked, ParkedPod};

/// How soon a failed scale request (e.g. the Deployment is not created yet) is tried again.
const RETRY_SCALE: Duration = Duration::from_secs(2);
/// Re-plans this often without news, so that a starting pod's deadline passing is noticed.
const REPLAN_EVERY: Duration = Duration::from_secs(5);

pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// The wall clock, for [`Clock`] outside tests.
pub fn now() -> Timestamp {
    Timestamp::now()
}

/// One pod of a component, as scaling needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub name: String,
    pub created: Timestamp,
    pub ready: bool,
    /// Being deleted (it drains), or finished (`Failed`, e.g. evicted, or `Succeeded`): it no
    /// longer counts, and must not hold a component up as "starting".
    pub deleting: bool,
    /// The scheduler's reason while it has no node (`0/3 nodes are available: ...`).
    pub unschedulable: Option<String>,
    /// A container the kubelet is backing off from restarting (`CrashLoopBackOff`) or cannot
    /// start at all (its image cannot be pulled, its config is wrong).
    pub failing: Option<PodFailure>,
}

/// Why a pod's container does not run, as the kubelet reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFailure {
    pub restarts: u32,
    /// The waiting reason and what the last run ended with, e.g. `CrashLoopBackOff: exit code
    /// 1 (Error): model 'm' failed to load: ...`.
    pub error: String,
}

/// Waiting reasons that mean a container will not run without a change or a backoff passing.
const FAILING_REASONS: [&str; 5] = [
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "CreateContainerConfigError",
    "InvalidImageName",
];

fn pod_failure(p: &Pod) -> Option<PodFailure> {
    let statuses = p.status.as_ref()?.container_statuses.as_deref()?;
    statuses.iter().find_map(|c| {
        let waiting = c.state.as_ref()?.waiting.as_ref()?;
        let reason = waiting.reason.as_deref()?;
        if !FAILING_REASONS.contains(&reason) {
            return None;
        }
        let last = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
        let ended = match last {
            Some(t) => {
                let mut e = format!("exit code {}", t.exit_code);
                if let Some(r) = &t.reason {
                    e.push_str(&format!(" ({r})"));
                }
                if let Some(m) = t
                    .message
                    .as_deref()
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                {
                    e.push_str(&format!(": {m}"));
                }
                e
            }
            None => waiting.message.clone().unwrap_or_default(),
        };
        Some(PodFailure {
            restarts: u32::try_from(c.restart_count).unwrap_or(0),
            error: siesta_http_server::redact::credentials(&format!("{reason}: {ended}")),
        })
    })
}

/// The component's crash loop: no pod is ready and one is failing (the one restarted most).
/// Held requests are answered with it; the kubelet's backoff is the wait, so there is no
/// time until the next start to report.
pub fn crash_loop(pods: &[PodView]) -> Option<CrashLoop> {
    let live = pods.iter().filter(|p| !p.deleting);
    if live.clone().any(|p| p.ready) {
        return None;
    }
    let worst = live
        .filter_map(|p| p.failing.as_ref())
        .max_by_key(|f| f.restarts)?;
    Some(CrashLoop {
        failures: worst.restarts,
        last_error: worst.error.clone(),
        retry_in_ms: 0,
    })
}

impl PodView {
    pub fn from_pod(p: &Pod) -> Self {
        let conditions = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_deref())
            .unwrap_or_default();
        let condition = |t: &str| conditions.iter().find(|c| c.type_ == t);
        PodView {
            name: p.metadata.name.clone().unwrap_or_default(),
            created: p
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(Timestamp::UNIX_EPOCH, |t| t.0),
            ready: condition("Ready").is_some_and(|c| c.status == "True"),
            deleting: p.metadata.deletion_timestamp.is_some()
                || matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Failed" | "Succeeded")
                ),
            failing: pod_failure(p),
            unschedulable: condition("PodScheduled")
                .filter(|c| c.status == "False")
                .map(|c| {
                    c.message
                        .clone()
                        .or_else(|| c.reason.clone())
                        .unwrap_or_else(|| "unschedulable".into())
                }),
        }
    }
}

/// What to set the Deployment's replicas to, and what to say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalePlan {
    pub replicas: u32,
    pub starting: u32,
    pub ready: u32,
    pub pending: Option<String>,
}

/// The replica count for the autoscaler's `asked`, given the component's pods at `now`.
pub fn plan(asked: u32, pods: &[PodView], now: Timestamp, startup_deadline: Duration) -> ScalePlan {
    let live: Vec<&PodView> = pods.iter().filter(|p| !p.deleting).collect();
    let ready = live.iter().filter(|p| p.ready).count() as u32;
    let age =
        |p: &PodView| Duration::try_from(now.duration_since(p.created)).unwrap_or(Duration::ZERO);
    let (young, overdue): (Vec<&PodView>, Vec<&PodView>) = live
        .iter()
        .filter(|p| !p.ready)
        .partition(|p| age(p) < startup_deadline);
    // kserve#1247: until one replica has come up, scaling down would only kill the start.
    let floor = if ready == 0 { young.len() as u32 } else { 0 };
    let replicas = asked.max(floor);
    let why = |p: &PodView| match &p.unschedulable {
        Some(reason) => format!(
            "pod {} unschedulable for {} s: {reason}",
            p.name,
            age(p).as_secs()
        ),
        None => format!("pod {} starting for {} s", p.name, age(p).as_secs()),
    };
    let pending = if let Some(p) = overdue.first() {
        Some(format!(
            "pod {} not ready {} s after creation (startup deadline {} s){}",
            p.name,
            age(p).as_secs(),
            startup_deadline.as_secs(),
            p.unschedulable
                .as_ref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ))
    } else if replicas > asked {
        Some(format!(
            "kept {} starting replica(s) although {asked} were asked for, until one is ready or \
             {} s pass: {}",
            replicas,
            startup_deadline.as_secs(),
            why(young[0])
        ))
    } else {
        young
            .iter()
            .find(|p| p.unschedulable.is_some())
            .map(|p| why(p))
    };
    ScalePlan {
        replicas,
        starting: young.len() as u32 + overdue.len() as u32,
        ready,
        pending,
    }
}

/// The ready endpoints in a Service's EndpointSlices: the address of each endpoint whose
/// condition is ready (not merely serving: a terminating pod takes no new requests), with the
/// slice's `http` and `grpc` ports.
pub fn ready_endpoints<'a>(slices: impl IntoIterator<Item = &'a EndpointSlice>) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for slice in slices {
        let port = |name: &str| {
            slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))
                .and_then(|p| u16::try_from(p.port?).ok())
        };
        let Some(http) = port("http") else {
            continue;
        };
        let grpc = port("grpc");
        for e in slice.endpoints.iter().flatten() {
            let conditions = e.conditions.as_ref();
            // A missing `ready` means unknown, which the API says to read as ready.
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true)
                && !conditions.and_then(|c| c.terminating).unwrap_or(false);
            let Some(ip) = e.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else {
                continue;
            };
            if !ready {
                continue;
            }
            out.push(Endpoint {
                replica: e
                    .target_ref
                    .as_ref()
                    .and_then(|r| r.name.clone())
                    .unwrap_or_else(|| ip.to_string()),
                addr: SocketAddr::new(ip, http),
                grpc: grpc.map(|g| SocketAddr::new(ip, g)),
                gpu: None,
                pid: None,
                cold_start: None,
            });
        }
    }
    out.sort_by(|a, b| a.replica.cmp(&b.replica));
    out.dedup_by(|a, b| a.replica == b.replica);
    out
}

#[derive(Clone)]
pub struct KubeBackend {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    namespace: String,
    startup_deadline: Duration,
    clock: Clock,
    components: Mutex<HashMap<ComponentKey, Arc<Component>>>,
    /// The replicas' control token (the controller puts the same one into their pods):
    /// without it nothing is parked.
    control_token: Option<String>,
}

struct Component {
    /// `None` until the autoscaler first decides: a restarted gateway leaves the running
    /// replicas alone until then.
    asked: watch::Sender<Option<u32>>,
    endpoints: watch::Sender<Vec<Endpoint>>,
    /// Written by the scale loop.
    status: Arc<Mutex<BackendStatus>>,
    /// From the pods, as the kubelet reports them.
    crash_loop: watch::Sender<Option<CrashLoop>>,
    tasks: Vec<JoinHandle<()>>,
}

impl KubeBackend {
    /// `namespace` is where [`ReplicaBackend::register`] puts components; `startup_deadline`
    /// is how long a replica may take to become ready (the controller's startup probe's too).
    pub fn new(client: Client, namespace: &str, startup_deadline: Duration, clock: Clock) -> Self {
        KubeBackend {
            inner: Arc::new(Inner {
                client,
                namespace: namespace.to_string(),
                startup_deadline,
                clock,
                components: Mutex::new(HashMap::new()),
                control_token: None,
            }),
        }
    }

    /// The token to park and resume replicas with (`siesta gateway` reads it from
    /// `SIESTA_CONTROL_TOKEN`, as the controller does). Before the backend is shared.
    pub fn with_control_token(mut self, token: Option<String>) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("with_control_token before the backend is cloned")
            .control_token = token;
        self
    }

    /// Makes a component of `namespace` known: its Deployment and Service are
    /// `{service}-{kind}` there. Its replicas are parked on scale-down only with `tiers`
    /// saying the GPUs are shared (`parking`), and a control token.
    pub fn register_in(&self, namespace: &str, key: &ComponentKey, tiers: Option<ReplicaTiers>) {
        let name = key.to_string();
        let (asked, _) = watch::channel(None);
        let (endpoints, _) = watch::channel(Vec::new());
        let (pods_tx, pods_rx) = watch::channel(Vec::new());
        let (crash_tx, _) = watch::channel(None);
        let crash_loop_tx = crash_tx.clone();
        let (current_tx, current_rx) = watch::channel(None);
        let selector = format!(
            "{LABEL_SERVICE}={},{LABEL_COMPONENT}={}",
            key.service,
            key.kind.as_str()
        );
        let status = Arc::new(Mutex::new(BackendStatus::default()));
        let client = self.inner.client.clone();
        let slices = Api::<EndpointSlice>::namespaced(client.clone(), namespace);
        let pods = Api::<Pod>::namespaced(client.clone(), namespace);
        let deployments = Api::<Deployment>::namespaced(client, namespace);
        let (raw_tx, raw_rx) = watch::channel(Vec::new());
        let parked: Arc<Mutex<Parked>> = Arc::default();
        let parking = tiers
            .map(|t| t.policy)
            .filter(|p| p.gpu_sharing && p.parked_replicas > 0);
        let parking = match (parking, &self.inner.control_token) {
            (Some(p), Some(token)) => Some((p, token.clone())),
            (Some(_), None) => {
                tracing::warn!(component = %name, "siesta.dev/gpu-sharing is set but the gateway has no SIESTA_CONTROL_TOKEN: its pods are deleted on scale-down, not parked");
                None
            }
            _ => None,
        };
        let endpoints_tx = endpoints.clone();
        let parked_for_slices = parked.clone();
        let span = tracing::info_span!("component", component = %name, namespace);
        let tasks = vec![
            tokio::spawn(follow(
                slices,
                format!("kubernetes.io/service-name={name}"),
                move |slices| {
                    let ready = ready_endpoints(slices.iter().map(|s| s.as_ref()));
                    publish(&ready, &parked_for_slices.lock(), &endpoints_tx);
                    raw_tx.send_replace(ready);
                },
                span.clone(),
            )),
            tokio::spawn(follow(
                deployments.clone(),
                selector.clone(),
                {
                    let name = name.clone();
                    move |deployments| {
                        let replicas = deployments
                            .iter()
                            .find(|d| d.metadata.name.as_deref() == Some(name.as_str()))
                            .and_then(|d| d.spec.replicas)
                            .and_then(|r| u32::try_from(r).ok());
                        current_tx.send_if_modified(|c| {
                            let changed = *c != replicas;
                            *c = replicas;
                            changed
                        });
                    }
                },
                span.clone(),
            )),
            tokio::spawn(follow(
                pods.clone(),
                selector,
                move |pods| {
                    let views: Vec<PodView> = pods.iter().map(|p| PodView::from_pod(p)).collect();
                    let failing = crash_loop(&views);
                    crash_loop_tx.send_if_modified(|c| {
                        let changed = *c != failing;
                        *c = failing;
                        changed
                    });
                    pods_tx.send_replace(views);
                },
                span.clone(),
            )),
            tokio::spawn(scale_loop(ScaleLoop {
                inner: self.inner.clone(),
                deployments,
                name,
                asked: asked.subscribe(),
                pods: pods_rx,
                current: current_rx,
                status: status.clone(),
                span,
                parking,
                pods_api: pods,
                ready: raw_rx,
                endpoints: endpoints.clone(),
                parked,
            })),
        ];
        let component = Arc::new(Component {
            asked,
            endpoints,
            status,
            crash_loop: crash_tx,
            tasks,
        });
        if let Some(old) = self.inner.components.lock().insert(key.clone(), component) {
            for t in &old.tasks {
                t.abort();
            }
        }
    }

    /// Stops watching and scaling a component (its InferenceService is gone); its Deployment
    /// is the controller's (and the garbage collector's) to delete.
    pub fn forget(&self, key: &ComponentKey) {
        if let Some(c) = self.inner.components.lock().remove(key) {
            for t in &c.tasks {
                t.abort();
            }
        }
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

impl ReplicaBackend for KubeBackend {
    /// The template is the controller's business in a cluster (it is the Deployment's pod
    /// template); the gateway only scales and routes.
    fn register(&self, key: &ComponentKey, template: ReplicaTemplate) {
        let namespace = self.inner.namespace.clone();
        self.register_in(&namespace, key, template.tiers);
    }

    fn scale(&self, key: &ComponentKey, replicas: u32) -> Result<(), BackendError> {
        let c = self.component(key)?;
        c.asked.send_if_modified(|a| {
            let changed = *a != Some(replicas);
            *a = Some(replicas);
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
        let mut status = c.status.lock().clone();
        status.crash_loop = c.crash_loop.borrow().clone();
        Ok(status)
    }

    fn crash_loop(
        &self,
        key: &ComponentKey,
    ) -> Result<watch::Receiver<Option<CrashLoop>>, BackendError> {
        Ok(self.component(key)?.crash_loop.subscribe())
    }

    /// Stops watching, and leaves the Deployments as they are: a gateway that restarts (a
    /// rollout, a node drain) must not take the replicas down with it; the next one's
    /// autoscaler takes over their count.
    fn shutdown(&self) -> BoxFuture<'static, ()> {
        let components: Vec<Arc<Component>> = self
            .inner
            .components
            .lock()
            .drain()
            .map(|(_, c)| c)
            .collect();
        for c in &components {
            for t in &c.tasks {
                t.abort();
            }
        }
        Box::pin(async {})
    }
}

/// Keeps a cache of the objects `labels` selects (list, then watch; re-lists with backoff after
/// errors) and hands the whole set to `on_change` after every change.
async fn follow<K>(
    api: Api<K>,
    labels: String,
    on_change: impl Fn(Vec<Arc<K>>) + Send + 'static,
    span: tracing::Span,
) where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let stream = reflector(
        writer,
        watcher(api, watcher::Config::default().labels(&labels)),
    )
    .default_backoff();
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
            Ok(_) => on_change(reader.state()),
            Err(e) => {
                let _g = span.enter();
                tracing::warn!(error = %e, %labels, "watch failed; retrying");
            }
        }
    }
}

/// Converges the Deployment's replicas on [`plan`]'s count whenever the autoscaler asks, the
/// pods change or the Deployment's count changes, and keeps the component's status.
struct ScaleLoop {
    inner: Arc<Inner>,
    deployments: Api<Deployment>,
    name: String,
    asked: watch::Receiver<Option<u32>>,
    pods: watch::Receiver<Vec<PodView>>,
    /// The Deployment's `spec.replicas`.
    current: watch::Receiver<Option<u32>>,
    status: Arc<Mutex<BackendStatus>>,
    span: tracing::Span,
    /// The tier policy and control token, where pods are parked (GPUs shared).
    parking: Option<(TierPolicy, String)>,
    pods_api: Api<Pod>,
    /// Ready endpoints as the EndpointSlices say, parked ones included.
    ready: watch::Receiver<Vec<Endpoint>>,
    /// What the gateway routes to: the ready ones that are not parked.
    endpoints: watch::Sender<Vec<Endpoint>>,
    parked: Arc<Mutex<Parked>>,
}

/// The ready endpoints less the parked pods.
fn publish(ready: &[Endpoint], parked: &Parked, tx: &watch::Sender<Vec<Endpoint>>) {
    let routed: Vec<Endpoint> = ready
        .iter()
        .filter(|e| !parked.contains_key(&e.replica))
        .cloned()
        .collect();
    tx.send_if_modified(|e| {
        let changed = *e != routed;
        *e = routed;
        changed
    });
}

/// Parks, resumes and retires pods as [`parking::plan`] says; returns the Deployment's count.
async fn park_round(
    l: &ScaleLoop,
    policy: TierPolicy,
    token: &str,
    want: u32,
    views: &[PodView],
) -> u32 {
    let now = tokio::time::Instant::now();
    let ready = l.ready.borrow().clone();
    let live: Vec<&PodView> = views.iter().filter(|v| !v.deleting).collect();
    // Pods that are gone are forgotten.
    l.parked
        .lock()
        .retain(|name, _| live.iter().any(|v| &v.name == name));
    let (hot_ready, starting) = {
        let parked = l.parked.lock();
        let mut hot: Vec<&PodView> = live
            .iter()
            .copied()
            .filter(|v| v.ready && !parked.contains_key(&v.name))
            .filter(|v| ready.iter().any(|e| e.replica == v.name))
            .collect();
        hot.sort_by_key(|v| std::cmp::Reverse(v.created));
        let starting = live
            .iter()
            .filter(|v| !v.ready && !parked.contains_key(&v.name))
            .count() as u32;
        (
            hot.into_iter().map(|v| v.name.clone()).collect::<Vec<_>>(),
            starting,
        )
    };
    let plan = parking::plan(want, &hot_ready, starting, &l.parked.lock(), policy, now);
    for name in &plan.retire {
        retire(l, name).await;
    }
    for name in &plan.park {
        let Some(e) = ready.iter().find(|e| &e.replica == name) else {
            continue;
        };
        // Out of the endpoints before the call: the replica finishes what it has, gets nothing new.
        l.parked.lock().insert(
            name.clone(),
            ParkedPod {
                addr: e.addr,
                since: now,
                retiring: false,
            },
        );
        publish(&ready, &l.parked.lock(), &l.endpoints);
        match control::park(e.addr, token).await {
            Ok(r) => {
                tracing::info!(component = %l.name, pod = %name, ms = r.took_ms, "pod parked");
                // Kept when the count drops for a hot pod: the ReplicaSet deletes it last.
                deletion_cost(l, name, Some("1000")).await;
            }
            Err(err) => {
                tracing::warn!(component = %l.name, pod = %name, error = %err, "parking failed; deleting the pod instead");
                retire(l, name).await;
            }
        }
    }
    for name in &plan.resume {
        let Some(addr) = l.parked.lock().get(name).map(|p| p.addr) else {
            continue;
        };
        match control::resume(addr, token).await {
            Ok(r) => {
                tracing::info!(component = %l.name, pod = %name, ms = r.took_ms, "pod resumed");
                l.parked.lock().remove(name);
                deletion_cost(l, name, None).await;
                metrics::counter!("siesta_replica_starts_total", "component" => l.name.clone(), "kind" => "resume").increment(1);
            }
            Err(err) => {
                tracing::warn!(component = %l.name, pod = %name, error = %err, "resume failed; deleting the pod");
                retire(l, name).await;
            }
        }
    }
    publish(&ready, &l.parked.lock(), &l.endpoints);
    plan.replicas
}

/// Marks a parked pod as the one the ReplicaSet deletes first, and stops counting it.
async fn retire(l: &ScaleLoop, name: &str) {
    if let Some(p) = l.parked.lock().get_mut(name) {
        p.retiring = true;
    }
    deletion_cost(l, name, Some("-1000")).await;
}

/// Sets (or, with `None`, removes) a pod's `controller.kubernetes.io/pod-deletion-cost`.
async fn deletion_cost(l: &ScaleLoop, name: &str, cost: Option<&str>) {
    let patch = serde_json::json!({"metadata": {"annotations": {DELETION_COST: cost}}});
    if let Err(e) = l
        .pods_api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::warn!(component = %l.name, pod = %name, error = %e, "cannot set the pod's deletion cost");
    }
}

async fn scale_loop(mut l: ScaleLoop) {
    loop {
        let want = *l.asked.borrow_and_update();
        let views = l.pods.borrow_and_update().clone();
        // What the Deployment says now (watched): someone else's `kubectl scale` is undone too.
        let applied = *l.current.borrow_and_update();
        let mut wait = REPLAN_EVERY;
        if let Some(want) = want {
            let target = match l.parking.clone() {
                Some((policy, token)) => park_round(&l, policy, &token, want, &views).await,
                None => want,
            };
            let parked = l.parked.lock().values().filter(|p| !p.retiring).count() as u32;
            let ScaleLoop {
                inner,
                deployments,
                name,
                status,
                span,
                ..
            } = &l;
            let p = plan(target, &views, (inner.clock)(), inner.startup_deadline);
            if p.pending != status.lock().pending
                && let Some(reason) = &p.pending
            {
                let _g = span.enter();
                tracing::warn!(%reason, "replica pending");
            }
            *status.lock() = BackendStatus {
                desired: p.replicas - parked.min(p.replicas),
                starting: p.starting,
                ready: p.ready.saturating_sub(parked),
                parked,
                device_memory_bytes: 0,
                pending: p.pending.clone(),
                // Kubelet backs crash-looping pods off itself; not read from pod status yet.
                crash_loop: None,
            };
            if applied != Some(p.replicas) {
                let patch = serde_json::json!({"spec": {"replicas": p.replicas}});
                match deployments
                    .patch_scale(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => {
                        let _g = span.enter();
                        tracing::info!(replicas = p.replicas, asked = want, "scaled");
                        metrics::counter!("siesta_k8s_scale_requests_total", "component" => name.clone(), "result" => "ok").increment(1);
                    }
                    Err(e) => {
                        let _g = span.enter();
                        tracing::warn!(error = %e, replicas = p.replicas, "scale failed; retrying");
                        metrics::counter!("siesta_k8s_scale_requests_total", "component" => name.clone(), "result" => "error").increment(1);
                        wait = RETRY_SCALE;
                    }
                }
            }
        }
        if l.parking.is_some() {
            // The park timeout is counted here, not by a watch.
            wait = wait.min(Duration::from_secs(1));
        }
        tokio::select! {
            r = l.asked.changed() => if r.is_err() { return },
            r = l.pods.changed() => if r.is_err() { return },
            r = l.current.changed() => if r.is_err() { return },
            r = l.ready.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn pod(name: &str, created: i64, ready: bool, unschedulable: Option<&str>) -> PodView {
        PodView {
            name: name.into(),
            created: at(created),
            ready,
            deleting: false,
            unschedulable: unschedulable.map(Into::into),
            failing: None,
        }
    }

    #[test]
    fn a_crash_looping_pod_with_none_ready_is_the_components_crash_loop() {
        let looping: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "m-1", "creationTimestamp": "2027-01-15T08:00:00Z"},
            "status": {"phase": "Running",
                "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [{
                    "name": "replica", "image": "siesta", "imageID": "", "ready": false,
                    "restartCount": 4,
                    "state": {"waiting": {"reason": "CrashLoopBackOff",
                        "message": "back-off 40s restarting failed container"}},
                    "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                        "message": "model 'm' failed to load: https://u:tok@store/m: 403\n"}}
                }]}
        }))
        .unwrap();
        let v = PodView::from_pod(&looping);
        let c = crash_loop(std::slice::from_ref(&v)).expect("a crash loop");
        assert_eq!(c.failures, 4);
        assert_eq!(
            c.last_error,
            "CrashLoopBackOff: exit code 1 (Error): model 'm' failed to load: https://***@store/m: 403"
        );
        // One ready pod serves: not a crash loop for held requests, whatever the other does.
        assert_eq!(crash_loop(&[v.clone(), pod("m-2", 0, true, None)]), None);
        // A pod still starting, or running, is not failing.
        assert_eq!(crash_loop(&[pod("m-3", 0, false, None)]), None);
        let pulling: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "m-4"},
            "status": {"containerStatuses": [{
                "name": "replica", "image": "nope", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ImagePullBackOff",
                    "message": "Back-off pulling image \"nope\""}}}]}
        }))
        .unwrap();
        let c = crash_loop(&[PodView::from_pod(&pulling)]).unwrap();
        assert_eq!(
            c.last_error,
            "ImagePullBackOff: Back-off pulling image \"nope\""
        );
    }

    const DEADLINE: Duration = Duration::from_secs(600);

    #[test]
    fn a_gpu_pod_waiting_for_its_node_is_not_scaled_away_until_the_startup_deadline() {
        let waiting = [pod(
            "p-1",
            0,
            false,
            Some("0/3 nodes are available: 3 Insufficient nvidia.com/gpu"),
        )];
        let p = plan(0, &waiting, at(150), DEADLINE);
        assert_eq!(p.replicas, 1, "{p:?}");
        assert_eq!(p.starting, 1);
        let why = p.pending.unwrap();
        assert!(
            why.contains("unschedulable for 150 s") && why.contains("nvidia.com/gpu"),
            "{why}"
        );

        let p = plan(0, &waiting, at(600), DEADLINE);
        assert_eq!(
            p.replicas, 0,
            "past the startup deadline the autoscaler's 0 stands"
        );
        assert!(
            p.pending
                .unwrap()
                .contains("not ready 600 s after creation")
        );
    }

    #[test]
    fn with_a_ready_replica_the_autoscaler_decides_alone() {
        let pods = [pod("a", 0, true, None), pod("b", 100, false, None)];
        let p = plan(0, &pods, at(120), DEADLINE);
        assert_eq!((p.replicas, p.ready, p.starting), (0, 1, 1));
        assert_eq!(p.pending, None);
        assert_eq!(plan(3, &pods, at(120), DEADLINE).replicas, 3);
    }

    #[test]
    fn deleting_pods_do_not_count_and_loading_ones_hold_like_pending_ones() {
        let mut gone = pod("old", 0, true, None);
        gone.deleting = true;
        let loading = pod("new", 10, false, None);
        let p = plan(0, &[gone, loading], at(30), DEADLINE);
        assert_eq!((p.replicas, p.ready, p.starting), (1, 0, 1));
        assert!(p.pending.unwrap().contains("pod new starting for 20 s"));
        assert_eq!(plan(2, &[], at(0), DEADLINE).replicas, 2);
    }

    #[test]
    fn an_evicted_pod_does_not_hold_a_component_up() {
        let evicted: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "m-1", "creationTimestamp": "2027-01-15T08:00:00Z"},
            "status": {"phase": "Failed", "reason": "Evicted",
                       "conditions": [{"type": "Ready", "status": "False"}]}
        }))
        .unwrap();
        let v = PodView::from_pod(&evicted);
        assert!(v.deleting && !v.ready);
        let p = plan(0, &[v], at(60), DEADLINE);
        assert_eq!((p.replicas, p.starting), (0, 0));
    }

    fn slice(value: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn only_ready_endpoints_with_their_http_and_grpc_ports_are_published() {
        let s = slice(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "m-predictor-abc"},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}, {"name": "grpc", "port": 8081}],
            "endpoints": [
                {"addresses": ["10.0.0.2"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": "m-2"}},
                // Loading its model: readiness (/v2/health/ready) still fails (kserve#2882).
                {"addresses": ["10.0.0.3"], "conditions": {"ready": false}, "targetRef": {"kind": "Pod", "name": "m-3"}},
                {"addresses": ["10.0.0.4"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.0.0.1"], "targetRef": {"kind": "Pod", "name": "m-1"}}
            ]
        }));
        let e = ready_endpoints([&s]);
        assert_eq!(
            e.iter()
                .map(|e| (
                    e.replica.as_str(),
                    e.addr.to_string(),
                    e.grpc.map(|g| g.to_string())
                ))
                .collect::<Vec<_>>(),
            [
                (
                    "m-1",
                    "10.0.0.1:8080".to_string(),
                    Some("10.0.0.1:8081".to_string())
                ),
                (
                    "m-2",
                    "10.0.0.2:8080".to_string(),
                    Some("10.0.0.2:8081".to_string())
                ),
            ]
        );
        let no_http = slice(
            serde_json::json!({"addressType": "IPv4", "metadata": {}, "ports": [{"name": "grpc", "port": 1}],
            "endpoints": [{"addresses": ["10.0.0.9"]}]}),
        );
        assert!(ready_endpoints([&no_http]).is_empty());
    }
}
