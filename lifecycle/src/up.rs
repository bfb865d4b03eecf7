//! `siesta up`: the manifests' components as local replicas behind one gateway, each with its
//! own live autoscaler.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::backend::gpu::GpuInventory;
use crate::backend::local::LocalBackend;
use crate::backend::{ReplicaBackend, ReplicaTemplate, ReplicaTiers};
use crate::gateway::install::{InstallSettings, InstalledService, install_service};
use crate::gateway::trace::TraceRecorder;
use crate::gateway::{self, BindError, Gateway, MetricsRender, Routes};
use crate::manifest::{self, Component, InferenceService};
use crate::replica::{self, Replica, Role, Site};
use crate::status::{StatusDocument, Watched};

/// How long the gateway waits for open client connections once shutdown begins.
const GATEWAY_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

pub struct UpConfig {
    pub services: Vec<InferenceService>,
    pub addr: SocketAddr,
    /// The `siesta` binary replicas run (`siesta serve`).
    pub siesta_bin: PathBuf,
    pub log_dir: PathBuf,
    /// Passed to every replica (`--storage-mirror`, `--device`, ...).
    pub replica_args: Vec<String>,
    /// Requests held per component while it has no ready replica.
    pub hold_limit: usize,
    /// Request-body bytes the gateway holds in memory at once.
    pub body_budget: usize,
    /// How long a client has to send the start of its body once a replica slot is its.
    pub body_timeout: std::time::Duration,
    pub enable_scale_to_zero: bool,
    pub metrics: MetricsRender,
    /// Where to record every answered request (`siesta scale simulate` reads it).
    pub record_trace: Option<PathBuf>,
    /// NVML, or a simulated inventory; `None`: replicas run on CPU.
    pub gpus: Option<Arc<dyn GpuInventory>>,
    pub gpu_memory: GpuMemoryEstimate,
    /// Header read timeout and HTTP/2 limits of the gateway's port.
    pub connections: siesta_http_server::ConnectionLimits,
    /// The files `services` came from, followed for changes; `None`: served as given.
    pub watch: Option<manifest::files::Watch>,
}

/// One model replica's GPU memory, from its `storageUri`; `None` when replicas run on CPU.
pub type GpuMemoryEstimate = Arc<dyn Fn(Option<&str>) -> Option<u64> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("{service}: {reason}")]
    Unsupported { service: String, reason: String },
    #[error("two InferenceServices are named '{0}'")]
    Duplicate(String),
    #[error("cannot write the trace {path}: {source}")]
    Trace {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Bind(#[from] BindError),
}

/// A component's replicas as local child processes: the shared template (`replica.rs`) at
/// this host's site, plus the arguments every local replica gets (`--storage-mirror`, `--device`).
fn template(
    isvc: &InferenceService,
    c: &Component,
    extra: &[String],
    gpu_memory: &GpuMemoryEstimate,
    gateway: SocketAddr,
) -> Result<ReplicaTemplate, UpError> {
    let serve = match replica::replica(isvc, c, &Site::Host { gateway }) {
        Replica::Serve(serve) => serve,
        Replica::Containers(containers) => {
            return Err(UpError::Unsupported {
                service: isvc.name.clone(),
                reason: format!(
                    "the {} runs `containers:` ({}), which need a container runtime; on one host \
                     Siesta runs models, and its own image transformer in place of \
                     kserve/image-transformer",
                    c.kind.as_str(),
                    containers
                        .iter()
                        .map(|c| c.image.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
    };
    let (gpu_memory_bytes, tiers) = match serve.role {
        Role::Model { storage_uri } => (
            gpu_memory(storage_uri),
            Some(ReplicaTiers {
                policy: c.tiers,
                min_replicas: c.scaling.min_scale,
            }),
        ),
        Role::ImageTransformer { image } => {
            tracing::info!(service = %isvc.name, %image,
                "on one host Siesta's image transformer runs in place of this container");
            (None, None)
        }
    };
    let mut args = serve.args;
    args.extend(extra.iter().cloned());
    Ok(ReplicaTemplate {
        args,
        env: serve.env.to_vec(),
        gpu_memory_bytes,
        tiers,
    })
}

/// Starts replicas, autoscalers and the gateway; returns when `shutdown` resolves, after every
/// replica has drained. While it runs, a change to the manifest files is applied in place.
pub async fn run(
    cfg: UpConfig,
    on_listening: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), UpError> {
    let backend = Arc::new(LocalBackend::new(
        cfg.siesta_bin.clone(),
        cfg.log_dir.clone(),
        cfg.gpus.clone(),
    ));
    // Bound before the replicas are described: transformers call the predictor through it.
    let (listener, addr) = gateway::bind(cfg.addr).await?;
    let served = Arc::new(Served {
        backend: backend.clone(),
        routes: Routes::default(),
        installed: Mutex::new(HashMap::new()),
        settings: InstallSettings {
            hold_limit: cfg.hold_limit,
            enable_scale_to_zero: cfg.enable_scale_to_zero,
        },
        replica_args: cfg.replica_args.clone(),
        gpu_memory: cfg.gpu_memory.clone(),
        gateway: addr,
    });
    let mut names = std::collections::HashSet::new();
    for isvc in &cfg.services {
        if !names.insert(&isvc.name) {
            return Err(UpError::Duplicate(isvc.name.clone()));
        }
    }
    for isvc in &cfg.services {
        if let Err(e) = served.install(isvc) {
            served.installed.lock().values().for_each(|(_, s)| s.stop());
            return Err(e);
        }
    }
    on_listening(addr);
    let watcher = cfg.watch.map(|w| tokio::spawn(follow(w, served.clone())));
    let status_served = served.clone();
    let status_gpus = cfg.gpus.clone();
    let status = Arc::new(move || {
        let watched = status_served.watched();
        StatusDocument::read(
            &watched,
            status_served.backend.as_ref(),
            status_gpus.as_deref(),
        )
    });
    if let Some(inventory) = cfg.gpus.clone() {
        tokio::spawn(export_gpu_metrics(inventory, backend.clone()));
    }
    let recorder = match &cfg.record_trace {
        Some(path) => Some(TraceRecorder::start(path).map_err(|source| UpError::Trace {
            path: path.clone(),
            source,
        })?),
        None => None,
    };
    let app = Gateway::with_routes(served.routes.clone(), cfg.metrics.clone(), status, recorder)
        .with_body_limits(cfg.body_budget, cfg.body_timeout)
        .router();
    let (stopping_tx, mut stopping) = tokio::sync::watch::channel(false);
    let closing = served.clone();
    let server = siesta_http_server::serve(listener, app, cfg.connections, async move {
        shutdown.await;
        if let Some(w) = &watcher {
            w.abort();
        }
        // Held requests are answered (503) rather than cut off with their connections.
        closing.watched().iter().for_each(|(p, _)| p.close());
        let _ = stopping_tx.send(true);
    });
    // Graceful shutdown waits for every client connection to close, and a gRPC client may keep
    // an idle HTTP/2 connection open for ever: in-flight requests get a bound, then we go on.
    let drain_bound = async move {
        let _ = stopping.wait_for(|s| *s).await;
        tokio::time::sleep(GATEWAY_DRAIN).await;
    };
    tokio::select! {
        () = server => {},
        _ = drain_bound => tracing::warn!(
            "client connections still open {} s after shutdown began; closing them",
            GATEWAY_DRAIN.as_secs()
        ),
    }
    served.installed.lock().values().for_each(|(_, s)| s.stop());
    backend.shutdown().await;
    Ok(())
}

/// The InferenceServices being served, as the manifest files last said.
struct Served {
    backend: Arc<LocalBackend>,
    routes: Routes,
    /// By name: the spec as installed, and what serves it.
    installed: Mutex<HashMap<String, (InferenceService, InstalledService)>>,
    settings: InstallSettings,
    replica_args: Vec<String>,
    gpu_memory: GpuMemoryEstimate,
    gateway: SocketAddr,
}

impl Served {
    fn template(&self, isvc: &InferenceService, c: &Component) -> Result<ReplicaTemplate, UpError> {
        template(isvc, c, &self.replica_args, &self.gpu_memory, self.gateway)
    }

    fn install(&self, isvc: &InferenceService) -> Result<(), UpError> {
        let backend: Arc<dyn ReplicaBackend> = self.backend.clone();
        let service = install_service(isvc, backend, self.settings, |key, c| {
            let t = self.template(isvc, c)?;
            self.backend.register(key, t);
            Ok::<_, UpError>(())
        })?;
        self.routes
            .write()
            .insert(isvc.name.clone(), service.route.clone());
        self.installed
            .lock()
            .insert(isvc.name.clone(), (isvc.clone(), service));
        Ok(())
    }

    fn watched(&self) -> Vec<Watched> {
        let installed = self.installed.lock();
        let mut services: Vec<&(InferenceService, InstalledService)> = installed.values().collect();
        services.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        services
            .iter()
            .flat_map(|(_, s)| s.watched.iter().cloned())
            .collect()
    }

    /// Makes the served services what `services` says: a changed one keeps its pools (and so
    /// its held requests) and rolls its replicas; a new one is installed; a removed one stops
    /// routing, answers what it held, and scales to zero. A service whose new spec cannot be
    /// served keeps its old one.
    fn apply(&self, services: &[InferenceService]) {
        let mut names = std::collections::HashSet::new();
        if let Some(dup) = services.iter().find(|s| !names.insert(s.name.as_str())) {
            tracing::error!(service = %dup.name, "two InferenceServices of this name; the change is not applied");
            return;
        }
        for isvc in services {
            let result = match self.installed.lock().get_mut(&isvc.name) {
                Some((old, _)) if old == isvc => continue,
                Some((old, service)) => {
                    let backend: Arc<dyn ReplicaBackend> = self.backend.clone();
                    let updated = service.update(isvc, backend, self.settings, |key, c| {
                        let t = self.template(isvc, c)?;
                        self.backend
                            .reconfigure(key, t)
                            .map_err(|e| UpError::Unsupported {
                                service: isvc.name.clone(),
                                reason: e.to_string(),
                            })
                    });
                    if let Ok(true) = updated {
                        *old = isvc.clone();
                        self.routes
                            .write()
                            .insert(isvc.name.clone(), service.route.clone());
                        tracing::info!(service = %isvc.name, "spec changed; applied in place");
                    }
                    updated
                }
                None => Ok(false),
            };
            match result {
                Ok(true) => {}
                // New, or its components changed (a transformer added or removed).
                Ok(false) => {
                    self.remove(&isvc.name);
                    match self.install(isvc) {
                        Ok(()) => tracing::info!(service = %isvc.name, "serving"),
                        Err(e) => tracing::error!(service = %isvc.name, error = %e, "not served"),
                    }
                }
                Err(e) => {
                    tracing::error!(service = %isvc.name, error = %e, "the new spec is not applied")
                }
            }
        }
        let gone: Vec<String> = self
            .installed
            .lock()
            .keys()
            .filter(|n| !names.contains(n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            self.remove(&name);
            tracing::info!(service = %name, "no longer in the manifests; scaled to zero");
        }
    }

    fn remove(&self, name: &str) {
        let Some((_, service)) = self.installed.lock().remove(name) else {
            return;
        };
        self.routes.write().remove(name);
        service.remove();
        for key in &service.keys {
            let _ = self.backend.scale(key, 0);
        }
    }
}

/// Applies every change of the manifest files until aborted.
async fn follow(mut watch: manifest::files::Watch, served: Arc<Served>) {
    loop {
        match watch.changed().await {
            Ok(services) => served.apply(&services),
            Err(e) => {
                tracing::error!(error = %e, "the manifests changed but cannot be used; serving the last good ones")
            }
        }
    }
}

/// NVML's view as Prometheus gauges every 2 s: free memory and load per GPU, and the device
/// memory each replica process holds.
async fn export_gpu_metrics(inventory: Arc<dyn GpuInventory>, backend: Arc<LocalBackend>) {
    loop {
        let gpus = tokio::task::spawn_blocking({
            let inventory = inventory.clone();
            move || inventory.gpus()
        })
        .await
        .unwrap_or_default();
        let replicas = backend.replica_pids();
        for g in &gpus {
            let gpu = g.index.to_string();
            metrics::gauge!("siesta_gpu_free_bytes", "gpu" => gpu.clone()).set(g.free_bytes as f64);
            metrics::gauge!("siesta_gpu_total_bytes", "gpu" => gpu.clone())
                .set(g.total_bytes as f64);
            if let Some(u) = g.utilization_percent {
                metrics::gauge!("siesta_gpu_utilization_percent", "gpu" => gpu.clone())
                    .set(f64::from(u));
            }
            for (pid, bytes) in &g.processes {
                if let Some(replica) = replicas.get(pid) {
                    metrics::gauge!("siesta_replica_gpu_memory_bytes", "gpu" => gpu.clone(), "replica" => replica.clone())
                        .set(*bytes as f64);
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{ClusterDefaults, parse};

    #[test]
    fn local_replicas_get_the_shared_template_the_mirror_flags_and_a_gpu_estimate() {
        let text = "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata: {name: m}\nspec:\n  predictor:\n    \
                    containerConcurrency: 2\n    model:\n      modelFormat: {name: siesta}\n      storageUri: siesta://mnist\n      \
                    env: [{name: OMP_NUM_THREADS, value: \"1\"}]\n";
        let isvc = parse(text, &ClusterDefaults::default()).unwrap().remove(0);
        let gw: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let on_gpu: GpuMemoryEstimate = Arc::new(|uri| uri.map(|u| u.len() as u64));
        let t = template(
            &isvc,
            &isvc.predictor,
            &["--device".into(), "cpu".into()],
            &on_gpu,
            gw,
        )
        .unwrap();
        assert_eq!(t.gpu_memory_bytes, Some("siesta://mnist".len() as u64));
        assert_eq!(t.args[t.args.len() - 2..], ["--device", "cpu"]);
        assert!(t.args.windows(2).any(|w| w == ["--queue-limit", "22"]));
        assert_eq!(
            t.env,
            vec![("OMP_NUM_THREADS".to_string(), "1".to_string())]
        );
        let text = text.replace("    model:\n      modelFormat: {name: siesta}\n      storageUri: siesta://mnist\n      \
                    env: [{name: OMP_NUM_THREADS, value: \"1\"}]\n", "    containers: [{image: x}]\n");
        let isvc = parse(&text, &ClusterDefaults::default()).unwrap().remove(0);
        assert!(matches!(
            template(&isvc, &isvc.predictor, &[], &on_gpu, gw),
            Err(UpError::Unsupported { .. })
        ));
    }

    #[test]
    fn the_image_transformer_needs_no_gpu() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/examples/autoscale-adv.yaml"
        ))
        .unwrap();
        let isvc = parse(&text, &ClusterDefaults::default()).unwrap().remove(0);
        let on_gpu: GpuMemoryEstimate = Arc::new(|_| Some(1));
        let gw: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let t = template(&isvc, isvc.transformer.as_ref().unwrap(), &[], &on_gpu, gw).unwrap();
        assert_eq!(t.gpu_memory_bytes, None, "the transformer runs on CPU");
        assert!(t.args.contains(&"--transformer".to_string()));
    }
}
