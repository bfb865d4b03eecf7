//! `siesta up`: the manifests' components as local replicas behind one gateway, each with its
//! own live autoscaler.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::autoscaler::live::LiveAutoscaler;
use crate::backend::gpu::GpuInventory;
use crate::backend::local::LocalBackend;
use crate::backend::{ComponentKey, ReplicaBackend, ReplicaTemplate};
use crate::gateway::pool::Pool;
use crate::gateway::trace::TraceRecorder;
use crate::gateway::{Gateway, MetricsRender, Route};
use crate::manifest::{Component, ComponentKind, InferenceService, Workload};

/// How long the gateway waits for open client connections once shutdown begins.
const GATEWAY_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Clone)]
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
    pub enable_scale_to_zero: bool,
    pub metrics: MetricsRender,
    /// Where to record every answered request (`siesta scale simulate` reads it).
    pub record_trace: Option<PathBuf>,
    /// NVML, or a simulated inventory; `None`: replicas run on CPU.
    pub gpus: Option<Arc<dyn GpuInventory>>,
    pub gpu_memory: GpuMemoryEstimate,
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
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// KServe's image transformer, which Siesta's own (`siesta serve --transformer image`) replaces
/// on one host, where there is no container runtime.
fn is_image_transformer(image: &str) -> bool {
    let name = image.rsplit('/').next().unwrap_or(image);
    name.split([':', '@']).next() == Some("image-transformer")
}

/// `--model_name X` or `--model_name=X` among a container's args (KServe's model server flag).
fn container_model_name(args: &[String]) -> Option<String> {
    args.iter().enumerate().find_map(|(i, a)| {
        let a = a.trim_start_matches('-');
        if let Some(v) = a
            .strip_prefix("model_name=")
            .or_else(|| a.strip_prefix("model-name="))
        {
            return Some(v.to_string());
        }
        (a == "model_name" || a == "model-name")
            .then(|| args.get(i + 1).cloned())
            .flatten()
    })
}

fn template(
    isvc: &InferenceService,
    c: &Component,
    extra: &[String],
    gpu_memory: &GpuMemoryEstimate,
    gateway: SocketAddr,
) -> Result<ReplicaTemplate, UpError> {
    match &c.workload {
        Workload::Model(m) => {
            let mut args = vec!["--model-name".to_string(), isvc.name.clone()];
            if let Some(uri) = &m.storage_uri {
                args.extend(["--storage-uri".to_string(), uri.clone()]);
            }
            args.extend(["--model-format".to_string(), m.format.clone()]);
            if let Some(runtime) = &m.runtime {
                args.extend(["--runtime".to_string(), runtime.clone()]);
            }
            if c.container_concurrency > 0 {
                // queue-proxy's admission (CC running + 10 x CC queued), for clients that reach the
                // replica without the gateway.
                args.extend([
                    "--queue-limit".to_string(),
                    (c.container_concurrency * 11).to_string(),
                ]);
            }
            args.extend(extra.iter().cloned());
            Ok(ReplicaTemplate {
                args,
                // The manifest's model env reaches the replica (e.g. OMP_NUM_THREADS).
                env: m.env.clone(),
                gpu_memory_bytes: gpu_memory(m.storage_uri.as_deref()),
            })
        }
        Workload::Containers(containers)
            if c.kind == ComponentKind::Transformer
                && containers.len() == 1
                && is_image_transformer(&containers[0].image) =>
        {
            let container = &containers[0];
            tracing::info!(service = %isvc.name, image = %container.image,
                "on one host Siesta's image transformer runs in place of this container");
            let model = container_model_name(&container.args).unwrap_or_else(|| isvc.name.clone());
            let mut args = vec![
                "--transformer".to_string(),
                "image".to_string(),
                "--model-name".to_string(),
                model,
                // Back through the gateway, so the predictor's demand is counted and scaled.
                "--predictor-url".to_string(),
                format!("http://{gateway}"),
                "--predictor-host".to_string(),
                format!("{}-predictor", isvc.name),
                "--predictor-model".to_string(),
                isvc.name.clone(),
            ];
            args.extend(extra.iter().cloned());
            Ok(ReplicaTemplate {
                args,
                env: container.env.clone(),
                // Decoding and resizing run on CPU.
                gpu_memory_bytes: None,
            })
        }
        Workload::Containers(containers) => Err(UpError::Unsupported {
            service: isvc.name.clone(),
            reason: format!(
                "the {} runs `containers:` ({}), which need a container runtime; on one host Siesta \
                 runs models, and its own image transformer in place of kserve/image-transformer",
                c.kind.as_str(),
                containers
                    .iter()
                    .map(|c| c.image.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// Starts replicas, autoscalers and the gateway; returns when `shutdown` resolves, after every
/// replica has drained.
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
    let listener = tokio::net::TcpListener::bind(cfg.addr)
        .await
        .map_err(|source| UpError::Bind {
            addr: cfg.addr,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| UpError::Bind {
        addr: cfg.addr,
        source,
    })?;
    let mut routes = HashMap::new();
    let mut all_pools: Vec<(Arc<Pool>, ComponentScalingView)> = Vec::new();
    let mut scalers = Vec::new();
    for isvc in &cfg.services {
        if routes.contains_key(&isvc.name) {
            return Err(UpError::Duplicate(isvc.name.clone()));
        }
        let mut pools = Vec::new();
        for c in std::iter::once(&isvc.predictor).chain(isvc.transformer.as_ref()) {
            let key = ComponentKey {
                service: isvc.name.clone(),
                kind: c.kind,
            };
            backend.register(
                &key,
                template(isvc, c, &cfg.replica_args, &cfg.gpu_memory, addr)?,
            );
            let endpoints = backend.endpoints(&key).expect("registered above");
            let pool = Pool::new(key, c.container_concurrency, cfg.hold_limit, endpoints);
            scalers.push(LiveAutoscaler {
                pool: pool.clone(),
                backend: backend.clone() as Arc<dyn ReplicaBackend>,
                scaling: c.scaling.clone(),
                enable_scale_to_zero: cfg.enable_scale_to_zero,
            });
            all_pools.push((pool.clone(), ComponentScalingView::of(c)));
            pools.push((pool, c.timeout));
        }
        let (predictor, timeout) = pools[0].clone();
        let entry = pools
            .last()
            .map(|(p, _)| p.clone())
            .unwrap_or_else(|| predictor.clone());
        routes.insert(
            isvc.name.clone(),
            Route {
                entry,
                predictor,
                timeout,
            },
        );
    }
    let tasks: Vec<_> = scalers.into_iter().map(|s| tokio::spawn(s.run())).collect();
    on_listening(addr);
    let status_backend = backend.clone();
    let status_gpus = cfg.gpus.clone();
    let status =
        Arc::new(move || status_json(&all_pools, status_backend.as_ref(), status_gpus.as_deref()));
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
    let app = Gateway::new(routes, cfg.metrics.clone(), status, recorder).router();
    let (stopping_tx, mut stopping) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = stopping_tx.send(true);
    });
    // Graceful shutdown waits for every client connection to close, and a gRPC client may keep
    // an idle HTTP/2 connection open for ever: in-flight requests get a bound, then we go on.
    let drain_bound = async move {
        let _ = stopping.wait_for(|s| *s).await;
        tokio::time::sleep(GATEWAY_DRAIN).await;
    };
    tokio::select! {
        served = server.into_future() => if let Err(e) = served {
            tracing::error!(error = %e, "gateway stopped");
        },
        _ = drain_bound => tracing::warn!(
            "client connections still open {} s after shutdown began; closing them",
            GATEWAY_DRAIN.as_secs()
        ),
    }
    for t in tasks {
        t.abort();
    }
    backend.shutdown().await;
    Ok(())
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

/// A component's scaling settings, as `/siesta/status` shows them.
pub struct ComponentScalingView {
    min: u32,
    max: u32,
    target: f64,
    metric: &'static str,
    container_concurrency: u32,
}

impl ComponentScalingView {
    pub fn of(c: &Component) -> Self {
        ComponentScalingView {
            min: c.scaling.min_scale,
            max: c.scaling.max_scale,
            target: c.scaling.decider.target,
            metric: match c.scaling.metric {
                crate::manifest::ScaleMetric::Concurrency => "concurrency",
                crate::manifest::ScaleMetric::Rps => "rps",
            },
            container_concurrency: c.container_concurrency,
        }
    }
}

/// The `/siesta/status` document: per component what the autoscaler sees and decided, what the
/// backend has, and (one host) the GPUs.
pub fn status_json(
    pools: &[(Arc<Pool>, ComponentScalingView)],
    backend: &dyn ReplicaBackend,
    gpus: Option<&dyn GpuInventory>,
) -> serde_json::Value {
    let components: Vec<serde_json::Value> = pools
        .iter()
        .map(|(pool, view)| {
            let st = backend.status(&pool.key).unwrap_or_default();
            let endpoints: Vec<serde_json::Value> = backend
                .endpoints(&pool.key)
                .map(|rx| {
                    rx.borrow()
                        .iter()
                        .map(|e| serde_json::json!({"replica": e.replica, "addr": e.addr.to_string(), "gpu": e.gpu, "pid": e.pid}))
                        .collect()
                })
                .unwrap_or_default();
            serde_json::json!({
                "component": pool.name,
                "service": pool.key.service,
                "kind": pool.key.kind.as_str(),
                "desired": st.desired,
                "starting": st.starting,
                "ready": st.ready,
                "in_flight": pool.in_flight(),
                "autoscaler": *pool.observed.lock(),
                "waiting": pool.waiting(),
                "metric": view.metric,
                "target": view.target,
                "min_replicas": view.min,
                "max_replicas": view.max,
                "container_concurrency": view.container_concurrency,
                "endpoints": endpoints,
                "pending": st.pending,
            })
        })
        .collect();
    let gpus = gpus.map(|g| g.gpus()).unwrap_or_default();
    serde_json::json!({ "components": components, "gpus": gpus })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{ClusterDefaults, parse};

    #[test]
    fn replicas_get_the_model_uri_env_and_concurrency_admission() {
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
        assert_eq!(
            t.args,
            [
                "--model-name",
                "m",
                "--storage-uri",
                "siesta://mnist",
                "--model-format",
                "siesta",
                "--queue-limit",
                "22",
                "--device",
                "cpu"
            ]
        );
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
    fn kserves_image_transformer_becomes_siestas_calling_back_through_the_gateway() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/examples/autoscale-adv.yaml"
        ))
        .unwrap();
        let isvc = parse(&text, &ClusterDefaults::default()).unwrap().remove(0);
        let gw: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let on_gpu: GpuMemoryEstimate = Arc::new(|_| Some(1));
        let t = template(&isvc, isvc.transformer.as_ref().unwrap(), &[], &on_gpu, gw).unwrap();
        assert_eq!(t.gpu_memory_bytes, None, "the transformer runs on CPU");
        assert_eq!(
            t.args,
            [
                "--transformer",
                "image",
                "--model-name",
                "mnist",
                "--predictor-url",
                "http://127.0.0.1:8080",
                "--predictor-host",
                "torch-transformer-predictor",
                "--predictor-model",
                "torch-transformer"
            ]
        );
        assert!(is_image_transformer(
            "docker.io/kserve/image-transformer:v0.11"
        ));
        assert!(!is_image_transformer("kserve/image-transformer-v2"));
        assert_eq!(
            container_model_name(&["--model_name=x".into()]),
            Some("x".into())
        );
        assert_eq!(container_model_name(&["--model_name".into()]), None);
    }
}
