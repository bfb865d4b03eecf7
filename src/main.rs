//! The `siesta` binary.

mod decide;
#[cfg(feature = "cuda")]
mod gpu_probe;
#[cfg(feature = "kubernetes")]
mod kubernetes;
mod simulate;
mod status;
mod up;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use siesta_lifecycle::autoscaler::DeciderSpec;
use siesta_lifecycle::autoscaler::duration::parse_flag_duration;
use siesta_lifecycle::autoscaler::spec::DeciderSpecFile;
use siesta_lifecycle::backend::Listening;
use siesta_models::embedded::MNIST_NAME;
use siesta_models::storage::{StorageOptions, parse_mirror};
use siesta_models::{DeviceSpec, Precision};
use siesta_runtime::idle::IdlePolicy;
use siesta_runtime::registry::ModelControl;
use siesta_runtime::registry::{ModelLocation, RegistryOptions};
use siesta_runtime::transformer::TransformerConfig;
use siesta_runtime::{ServeConfig, StopReason};

#[derive(Parser)]
#[command(
    name = "siesta",
    version,
    about = "GPU-aware inference runtime with scale to zero"
)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "SIESTA_LOG_FORMAT", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a model over KServe V1, V2 REST and V2 gRPC.
    Serve(Box<ServeArgs>),
    /// Autoscaler tools.
    #[command(subcommand)]
    Scale(ScaleCommand),
    /// Run InferenceService manifests on this host: a gateway on --port, local replicas, and the
    /// Knative autoscaler per component.
    Up(Box<UpArgs>),
    /// Show the components of a running `siesta up`: replicas, demand, held requests.
    Status {
        /// The gateway's port.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        #[arg(long, default_value = "127.0.0.1")]
        host: IpAddr,
        /// Print the raw JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Print the InferenceService CustomResourceDefinition (YAML).
    #[cfg(feature = "kubernetes")]
    Crd(kubernetes::CrdArgs),
    /// Reconcile InferenceServices into Deployments and Services (runs in the cluster).
    #[cfg(feature = "kubernetes")]
    Controller(Box<kubernetes::ControllerArgs>),
    /// The gateway and autoscalers in a cluster: routes to the InferenceServices' pods and scales
    /// their Deployments (runs in the cluster).
    #[cfg(feature = "kubernetes")]
    Gateway(Box<kubernetes::GatewayArgs>),
    /// Print the Deployments and Services `siesta controller` makes for InferenceService
    /// manifests (YAML), without a cluster.
    #[cfg(feature = "kubernetes")]
    Render(kubernetes::RenderArgs),
}

/// Knative's config-autoscaler, as flags (`siesta up` and the cluster gateway).
#[derive(clap::Args)]
struct ScalingArgs {
    /// Knative's stable window.
    #[arg(long, default_value = "60s", value_parser = parse_flag_duration)]
    stable_window: Duration,
    /// Knative's panic window, as a percentage of the stable window.
    #[arg(long, default_value_t = 10.0)]
    panic_window_percentage: f64,
    /// How long a component stays in the gateway's path before its last replica goes.
    #[arg(long, default_value = "30s", value_parser = parse_flag_duration)]
    scale_to_zero_grace: Duration,
    /// Decision tick (down to 100ms).
    #[arg(long, default_value = "2s", value_parser = parse_flag_duration)]
    tick: Duration,
    /// Knative's target-burst-capacity (0: gateway only at zero; -1: always).
    #[arg(long, default_value_t = 211.0, allow_hyphen_values = true)]
    target_burst_capacity: f64,
    /// Never scale to zero.
    #[arg(long)]
    no_scale_to_zero: bool,
    /// Knative's allow-zero-initial-scale: `autoscaling.knative.dev/initial-scale: "0"` is
    /// accepted, so a new service starts no replica until its first request.
    #[arg(long)]
    allow_zero_initial_scale: bool,
    /// Requests held per component while it has no ready replica.
    #[arg(long, default_value_t = 1000)]
    hold_queue: usize,
    /// Request-body bytes the gateway holds in memory at once, all requests together (each
    /// proxied request reads up to 64 KiB ahead to be able to retry); past it, bodies stream to
    /// the replica without a retry.
    #[arg(long, default_value_t = siesta_lifecycle::gateway::DEFAULT_BODY_BUDGET)]
    max_buffered_body_bytes: usize,
    /// How long a client has to send the start of its body (what the gateway reads ahead)
    /// once a replica slot is its request's; then 408.
    #[arg(long, default_value = "30s", value_parser = parse_flag_duration)]
    body_timeout: Duration,
}

impl ScalingArgs {
    fn defaults(&self) -> Result<siesta_lifecycle::manifest::ClusterDefaults> {
        anyhow::ensure!(
            self.tick.as_millis() >= 100,
            "--tick must be at least 100ms"
        );
        Ok(siesta_lifecycle::manifest::ClusterDefaults {
            stable_window: self.stable_window,
            panic_window_percentage: self.panic_window_percentage,
            scale_to_zero_grace: self.scale_to_zero_grace,
            tick: self.tick,
            target_burst_capacity: self.target_burst_capacity,
            enable_scale_to_zero: !self.no_scale_to_zero,
            allow_zero_initial_scale: self.allow_zero_initial_scale,
            ..Default::default()
        })
    }
}

/// What a client connection may take: the same flags on every server (replica, transformer,
/// gateways).
#[derive(Parser, Clone, Copy)]
struct ConnectionArgs {
    /// How long a client may take to send a request's head; then its connection is closed.
    #[arg(long, default_value = "10s", value_parser = parse_flag_duration)]
    header_read_timeout: Duration,
    /// Concurrent streams one HTTP/2 (and gRPC) connection may open.
    #[arg(long, default_value_t = 256)]
    http2_max_streams: u32,
    /// Client connections open at once; past it the next wait in the kernel's backlog.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
}

impl ConnectionArgs {
    fn limits(self) -> siesta_http_server::ConnectionLimits {
        siesta_http_server::ConnectionLimits {
            header_read_timeout: self.header_read_timeout,
            http2_max_concurrent_streams: self.http2_max_streams,
            max_connections: self.max_connections,
            ..Default::default()
        }
    }
}

#[derive(Parser)]
struct UpArgs {
    /// InferenceService manifests (YAML, several documents per file allowed).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Gateway address.
    #[arg(long, default_value = "0.0.0.0")]
    host: IpAddr,
    /// Gateway port (0 = any free port; printed on stdout).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    #[command(flatten)]
    scaling: ScalingArgs,
    #[command(flatten)]
    connections: ConnectionArgs,
    /// Record every answered request to this file (JSON lines for `siesta scale simulate`).
    #[arg(long)]
    record_trace: Option<PathBuf>,
    /// Where replica logs go.
    #[arg(long, default_value = "siesta-logs")]
    log_dir: PathBuf,
    /// Device for replicas.
    #[arg(long, default_value = "auto")]
    device: DeviceSpec,
    /// PREFIX=TARGET storage mirrors, passed to every replica (repeatable).
    #[arg(long, value_parser = parse_mirror)]
    storage_mirror: Vec<(String, String)>,
    /// The model cache all replicas share (default: a replica's, ~/.cache/siesta/models).
    #[arg(long, env = "SIESTA_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Device memory a replica needs beyond its weights (CUDA context, activations), in MiB.
    #[arg(long, default_value_t = 512)]
    gpu_memory_overhead_mib: u64,
    /// Place replicas as if these GPUs were present (free MiB each, comma-separated), for
    /// planning and tests on machines without one; replicas still run on CPU here.
    #[arg(long, value_delimiter = ',', hide = true)]
    simulate_gpus: Vec<u64>,
}

#[derive(Subcommand)]
enum ScaleCommand {
    /// Replays observations through the KPA decider: JSON lines
    /// {"now_ms", "ready", "stable", "panic", "reachable"?} on stdin, one
    /// {"desired", "excess_burst_capacity", "panicking"} line out per line in.
    Decide {
        /// Decider spec (YAML): target, total_target, target_burst_capacity, panic_threshold,
        /// max_scale_up_rate, max_scale_down_rate, stable_window, scale_down_delay, activation_scale.
        #[arg(long)]
        config: PathBuf,
    },
    /// What-if: replays a request trace (JSON lines {"t_ms", "duration_ms"}) against an
    /// InferenceService's predictor with the live autoscaler's code on a simulated clock, and
    /// prints replicas, queueing and cold starts per second.
    Simulate {
        /// The InferenceService manifest.
        #[arg(long)]
        config: PathBuf,
        /// The request trace.
        #[arg(long)]
        trace: PathBuf,
        /// Time from asking for a replica to its readiness.
        #[arg(long, default_value = "30ms", value_parser = parse_flag_duration)]
        cold_start: Duration,
        /// Time from asking a parked replica back to its readiness (the manifest's
        /// `siesta.dev/parked-replicas` and `park-timeout` decide when there is one).
        #[arg(long, default_value = "2ms", value_parser = parse_flag_duration)]
        resume: Duration,
        /// Device memory of one hot replica, MiB (for device-memory GB x s).
        #[arg(long, default_value_t = 1024)]
        device_memory_mib: u64,
        /// Print the timeline and summary as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Parser)]
struct ServeArgs {
    /// Name the model is served under. With no --storage-uri, `mnist` serves the embedded model.
    #[arg(long, default_value = MNIST_NAME, env = "SIESTA_MODEL_NAME")]
    model_name: String,
    /// Where the model lives: a local path, file://, http(s)://, gs://, s3://, az://,
    /// https://ACCOUNT.blob.core.windows.net/, hf://ORG/REPO[:REVISION], pvc:// (README "Storage URIs").
    #[arg(long, alias = "model-uri", env = "STORAGE_URI")]
    storage_uri: Option<String>,
    /// A directory of model directories that the repository API can load by name.
    #[arg(long)]
    model_repository: Option<PathBuf>,
    /// Whether clients may load and unload models through the repository API: `none` (refused,
    /// 403) or `explicit`. As Triton's flag of the same name.
    #[arg(long, default_value = "none")]
    model_control_mode: ModelControl,
    /// Address to bind.
    #[arg(long, default_value = "0.0.0.0")]
    host: IpAddr,
    /// HTTP port (0 = any free port; the bound ports are printed on stdout).
    #[arg(long, default_value_t = 8080)]
    http_port: u16,
    /// gRPC port (0 = any free port).
    #[arg(long, default_value_t = 8081)]
    grpc_port: u16,
    /// Do not serve gRPC.
    #[arg(long)]
    no_grpc: bool,
    /// Compute device: cpu, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: DeviceSpec,
    /// What the model computes in: f32, or f16 (torchvision classifiers and TorchScript models;
    /// half the weights' device memory, tensor cores on a GPU). Requests keep the config's types.
    #[arg(long, env = "SIESTA_PRECISION", default_value = "f32")]
    precision: Precision,
    /// KServe's modelFormat.name (pytorch, tensorflow, onnx): checked against the model.
    #[arg(long, env = "SIESTA_MODEL_FORMAT")]
    model_format: Option<String>,
    /// Force an engine: candle, torch, onnx (or KServe's kserve-torchserve, kserve-tensorflow-serving).
    #[arg(long, env = "SIESTA_RUNTIME")]
    runtime: Option<siesta_models::Engine>,
    /// Rows per batch (overrides the model config).
    #[arg(long)]
    max_batch_size: Option<usize>,
    /// How long a batch waits to fill, e.g. 2ms (overrides the model config).
    #[arg(long, value_parser = parse_flag_duration)]
    max_queue_delay: Option<Duration>,
    /// Requests queued or running per model before new ones get 429.
    #[arg(long, default_value_t = 256)]
    queue_limit: usize,
    /// Largest request body (and gRPC message) accepted.
    #[arg(long, default_value_t = 64 << 20)]
    max_body_bytes: usize,
    /// How long a client may take to send its request body.
    #[arg(long, default_value = "30s", value_parser = parse_flag_duration)]
    body_timeout: Duration,
    /// Request-body bytes held in memory at once, all requests together; past it, 429.
    #[arg(long, default_value_t = 1 << 30)]
    max_buffered_body_bytes: usize,
    #[command(flatten)]
    connections: ConnectionArgs,
    /// How long a request may wait for its result.
    #[arg(long, default_value = "60s", value_parser = parse_flag_duration)]
    request_timeout: Duration,
    /// How long SIGTERM waits for in-flight requests.
    #[arg(long, default_value = "30s", value_parser = parse_flag_duration)]
    drain_timeout: Duration,
    /// Give the model's device memory back after this long without requests (weights stay in host memory).
    #[arg(long, value_parser = parse_flag_duration)]
    idle_release_after: Option<Duration>,
    /// Drain and exit 0 after this long without requests.
    #[arg(long, value_parser = parse_flag_duration)]
    idle_exit_after: Option<Duration>,
    /// Local paths must stay under this directory.
    #[arg(long)]
    model_root: Option<PathBuf>,
    /// The model cache every replica on this host shares (downloads of every remote scheme).
    #[arg(long, env = "SIESTA_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Past this many bytes, least recently used cached models not being loaded are removed.
    #[arg(long, env = "SIESTA_CACHE_MAX_BYTES")]
    cache_max_bytes: Option<u64>,
    /// `check`: list the store and download only what changed; `trust`: use the newest cached
    /// copy without contacting the store.
    #[arg(long, default_value = "check", env = "SIESTA_CACHE_FRESHNESS")]
    cache_freshness: siesta_models::storage::Freshness,
    /// Objects of one model downloaded at once.
    #[arg(long, default_value_t = 8)]
    download_concurrency: usize,
    /// Names this replica in logs and spans (the lifecycle manager sets it).
    #[arg(long, env = "SIESTA_REPLICA_ID")]
    replica_id: Option<String>,
    /// PREFIX=TARGET, e.g. gs://kfserving-examples/models/=file:///srv/models/ (repeatable).
    #[arg(long, value_parser = parse_mirror)]
    storage_mirror: Vec<(String, String)>,
    /// Serve a transformer instead of a model: `image` decodes, resizes and normalises images
    /// for the predictor at --predictor-url and turns its scores into labels.
    #[arg(long)]
    transformer: Option<TransformerKind>,
    /// The predictor a transformer calls (e.g. the gateway of `siesta up`).
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "PREDICTOR_URL")]
    predictor_url: String,
    /// `Host` header for the predictor calls (KServe's `--predictor_host`).
    #[arg(long, env = "PREDICTOR_HOST")]
    predictor_host: Option<String>,
    /// The predictor's model name (default: --model-name).
    #[arg(long)]
    predictor_model: Option<String>,
    /// Classes listed per prediction by a transformer.
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// Instances one transformer request may carry (each becomes a decoded image and a tensor).
    #[arg(long, default_value_t = 64)]
    max_instances: usize,
    /// Pixels (width x height) of one image a transformer decodes; larger ones are refused from
    /// their header, before any pixel is allocated.
    #[arg(long, default_value_t = 25_000_000)]
    max_image_pixels: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum TransformerKind {
    Image,
}

/// `storageUri: siesta://mnist` names the model compiled into the binary.
const EMBEDDED_URI: &str = "siesta://mnist";

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // ONNX Runtime logs each session's set-up at info: kept to its warnings.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,ort=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().with_current_span(true).init(),
    }
}

/// Where replicas cache models unless told otherwise; the same for every replica of a user.
pub(crate) fn default_cache_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/siesta/models"))
        .unwrap_or_else(|| std::env::temp_dir().join("siesta-models"))
}

fn serve_config(a: ServeArgs) -> Result<ServeConfig> {
    let location = match a.storage_uri {
        Some(uri) if uri == EMBEDDED_URI => ModelLocation::Embedded,
        Some(uri) => ModelLocation::Uri(uri),
        None if a.model_name == MNIST_NAME => ModelLocation::Embedded,
        None => bail!(
            "model '{}' needs --storage-uri (only '{MNIST_NAME}' is embedded)",
            a.model_name
        ),
    };
    let cache_dir = a.cache_dir.unwrap_or_else(default_cache_dir);
    Ok(ServeConfig {
        models: vec![(a.model_name, location)],
        registry: RegistryOptions {
            device: a.device,
            precision: a.precision,
            queue_limit: a.queue_limit.max(1),
            max_batch_size: a.max_batch_size,
            max_queue_delay_us: a.max_queue_delay.map(|d| d.as_micros() as u64),
            model_format: a.model_format,
            engine: a.runtime,
            storage: StorageOptions {
                model_root: a.model_root,
                cache_dir,
                cache_max_bytes: a.cache_max_bytes,
                freshness: a.cache_freshness,
                download_concurrency: a.download_concurrency.max(1),
                mirrors: a.storage_mirror,
                env: None,
            },
            repository: a.model_repository,
            control: a.model_control_mode,
        },
        http_addr: SocketAddr::new(a.host, a.http_port),
        grpc_addr: (!a.no_grpc).then_some(SocketAddr::new(a.host, a.grpc_port)),
        max_body_bytes: a.max_body_bytes,
        body_timeout: a.body_timeout,
        body_memory_bytes: a.max_buffered_body_bytes,
        connections: a.connections.limits(),
        request_timeout: a.request_timeout,
        drain_timeout: a.drain_timeout,
        idle: IdlePolicy {
            release_after: a.idle_release_after,
            exit_after: a.idle_exit_after,
        },
        replica_id: a
            .replica_id
            .unwrap_or_else(|| format!("pid-{}", std::process::id())),
        // From the environment, not a flag: arguments are visible to every user of the host.
        control_token: std::env::var(siesta_http_server::replica_control::TOKEN_ENV)
            .ok()
            .filter(|t| !t.is_empty()),
    })
}

fn transformer_config(a: ServeArgs) -> TransformerConfig {
    TransformerConfig {
        predictor_model: a.predictor_model.unwrap_or_else(|| a.model_name.clone()),
        model_name: a.model_name,
        predictor_url: a.predictor_url,
        predictor_host: a.predictor_host,
        http_addr: SocketAddr::new(a.host, a.http_port),
        max_body_bytes: a.max_body_bytes,
        body_timeout: a.body_timeout,
        body_memory_bytes: a.max_buffered_body_bytes,
        connections: a.connections.limits(),
        request_timeout: a.request_timeout,
        drain_timeout: a.drain_timeout,
        top_k: a.top_k,
        image_limits: siesta_runtime::transformer::ImageLimits {
            max_instances: a.max_instances,
            max_pixels: a.max_image_pixels,
        },
        replica_id: a
            .replica_id
            .unwrap_or_else(|| format!("pid-{}", std::process::id())),
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Scale(ScaleCommand::Simulate {
            config,
            trace,
            cold_start,
            resume,
            device_memory_mib,
            json,
        }) => simulate::run(
            &config,
            &trace,
            cold_start,
            resume,
            device_memory_mib << 20,
            json,
        ),
        Command::Scale(ScaleCommand::Decide { config }) => {
            let text = std::fs::read_to_string(&config)
                .with_context(|| format!("reading {}", config.display()))?;
            let file = DeciderSpecFile::parse(&text)
                .with_context(|| format!("in {}", config.display()))?;
            let initial_ready = file.initial_ready;
            let spec =
                DeciderSpec::from_file(file).with_context(|| format!("in {}", config.display()))?;
            let stdin = std::io::stdin().lock();
            let stdout = std::io::stdout().lock();
            decide::run(spec, initial_ready, stdin, stdout)
        }
        Command::Status { port, host, json } => status::print(SocketAddr::new(host, port), json),
        #[cfg(feature = "kubernetes")]
        Command::Crd(args) => kubernetes::print_crd(args),
        #[cfg(feature = "kubernetes")]
        Command::Render(args) => kubernetes::render(args),
        #[cfg(feature = "kubernetes")]
        Command::Controller(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(kubernetes::run_controller(*args))
        }
        #[cfg(feature = "kubernetes")]
        Command::Gateway(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(kubernetes::run_gateway(*args))
        }
        Command::Up(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(up::run(*args))
        }
        Command::Serve(args) if args.transformer.is_some() => {
            let cfg = transformer_config(*args);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(siesta_runtime::transformer::run(cfg, |http| {
                Listening { http, grpc: None }.announce()
            }))?;
            rt.shutdown_timeout(Duration::from_secs(1));
            Ok(())
        }
        Command::Serve(args) => {
            #[cfg(feature = "cuda")]
            gpu_probe::report(args.device);
            let cfg = serve_config(*args)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let reason = rt.block_on(siesta_runtime::run(cfg, |http, grpc| {
                // One machine-readable line on stdout, so scripts and tests learn the ports.
                Listening { http, grpc }.announce()
            }))?;
            // Do not wait for blocking tasks (e.g. a stuck download) beyond the drain bound.
            rt.shutdown_timeout(Duration::from_secs(1));
            match reason {
                StopReason::Idle => {
                    tracing::info!("exited after idle");
                    Ok(())
                }
                StopReason::Signal => Ok(()),
                StopReason::ModelFailed(model) => {
                    bail!("model '{model}' failed while serving; exiting to be replaced")
                }
            }
        }
    }
}
