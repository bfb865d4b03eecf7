//! `siesta crd` and `siesta controller` (the `kubernetes` feature).

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use siesta_k8s::crd::{self, SIESTA_GROUP};
use siesta_k8s::desired::Settings;
use siesta_lifecycle::backend::Listening;

#[derive(Parser)]
pub struct CrdArgs {
    /// API group: Siesta's, or serving.kserve.io for clusters without KServe.
    #[arg(long, default_value = SIESTA_GROUP)]
    group: String,
}

#[derive(Parser)]
pub struct ControllerArgs {
    /// The image the replicas run (`siesta serve`).
    #[arg(long, env = "SIESTA_SERVING_IMAGE")]
    serving_image: String,
    /// Watch InferenceServices of this group (serving.kserve.io: KServe's manifests unchanged).
    #[arg(long, default_value = SIESTA_GROUP)]
    api_group: String,
    /// The gateway Service that transformers call their predictor through.
    #[arg(long, default_value = "siesta-gateway.siesta-system.svc")]
    gateway: String,
    /// How long a replica may take to load its model (a startup probe, separate from idle).
    #[arg(long, default_value_t = 600)]
    startup_deadline_secs: i32,
    /// How long a stopping replica may drain.
    #[arg(long, default_value_t = 30)]
    drain_secs: i64,
    /// Status URLs are http://NAME.NAMESPACE.DOMAIN.
    #[arg(long, default_value = "example.com")]
    domain: String,
    /// The node directory model replicas share as their model cache (hostPath, created if
    /// missing; it must be writable by the replicas' user). "" turns the shared cache off.
    #[arg(long, default_value = siesta_k8s::desired::MODEL_CACHE_DIR)]
    model_cache_host_path: String,
}

#[derive(Parser)]
pub struct GatewayArgs {
    /// Serve InferenceServices of this group (serving.kserve.io: KServe's manifests unchanged).
    #[arg(long, default_value = SIESTA_GROUP)]
    api_group: String,
    /// Serve only this namespace's InferenceServices (default: every namespace).
    #[arg(long)]
    namespace: Option<String>,
    #[arg(long, default_value = "0.0.0.0")]
    host: IpAddr,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// How long a replica may take to become ready; until one is, starting replicas are not
    /// scaled away (a GPU node may still be provisioning). Match the controller's.
    #[arg(long, default_value_t = 600)]
    startup_deadline_secs: u64,
    #[command(flatten)]
    scaling: crate::ScalingArgs,
    #[command(flatten)]
    connections: crate::ConnectionArgs,
}

#[derive(Parser)]
pub struct RenderArgs {
    /// InferenceService manifests.
    #[arg(required = true)]
    files: Vec<std::path::PathBuf>,
    /// The image the replicas run.
    #[arg(long, default_value = "ghcr.io/siesta-serving/siesta:0.1.0")]
    serving_image: String,
    #[arg(long, default_value = SIESTA_GROUP)]
    api_group: String,
}

/// Prints the Deployments and Services `siesta controller` would apply for the manifests.
pub fn render(a: RenderArgs) -> Result<()> {
    let settings = Settings {
        image: a.serving_image,
        api_group: a.api_group,
        ..Settings::default()
    };
    let mut out = std::io::stdout().lock();
    for file in &a.files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let yaml = siesta_k8s::desired::render(&text, &settings)
            .with_context(|| format!("in {}", file.display()))?;
        out.write_all(yaml.as_bytes())?;
    }
    Ok(())
}

pub fn print_crd(a: CrdArgs) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(crd::crd_yaml(&a.group).as_bytes()) {
        // `siesta crd | head` is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// The replicas' control token, shared by the controller and the gateway through the
/// `siesta-control` Secret (deploy/base): from the environment, never a flag.
fn control_token() -> Option<String> {
    std::env::var(siesta_http_server::replica_control::TOKEN_ENV)
        .ok()
        .filter(|t| !t.is_empty())
}

pub async fn run_controller(a: ControllerArgs) -> Result<()> {
    let client = siesta_k8s::kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster or KUBECONFIG)")?;
    tracing::info!(group = %a.api_group, image = %a.serving_image, "siesta controller starting");
    siesta_k8s::controller::run(
        client,
        Settings {
            image: a.serving_image,
            gateway: a.gateway,
            startup_deadline_secs: a.startup_deadline_secs,
            drain_secs: a.drain_secs,
            domain: a.domain,
            api_group: a.api_group,
            model_cache_host_path: Some(a.model_cache_host_path).filter(|p| !p.is_empty()),
            control_token: control_token(),
        },
    )
    .await;
    Ok(())
}

pub async fn run_gateway(a: GatewayArgs) -> Result<()> {
    let client = siesta_k8s::kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster or KUBECONFIG)")?;
    let defaults = a.scaling.defaults()?;
    let handle = siesta_runtime::metrics::install();
    let cfg = siesta_k8s::gateway::GatewayConfig {
        api_group: a.api_group,
        namespace: a.namespace,
        addr: SocketAddr::new(a.host, a.port),
        startup_deadline: std::time::Duration::from_secs(a.startup_deadline_secs),
        hold_limit: a.scaling.hold_queue,
        body_budget: a.scaling.max_buffered_body_bytes,
        body_timeout: a.scaling.body_timeout,
        defaults,
        metrics: Arc::new(move || handle.render()),
        clock: Arc::new(siesta_k8s::backend::now),
        connections: a.connections.limits(),
        control_token: control_token(),
    };
    siesta_k8s::gateway::run(
        client,
        cfg,
        // gRPC (h2c) shares the gateway's port.
        |addr| {
            Listening {
                http: addr,
                grpc: Some(addr),
            }
            .announce()
        },
        crate::up::shutdown_signal(),
    )
    .await?;
    Ok(())
}
