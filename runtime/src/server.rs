//! `siesta serve`: binds the HTTP and gRPC ports, loads the models, runs until SIGTERM or idle
//! exit, and drains within a bound.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::http::{self, AppState};
use crate::idle::{IdlePolicy, ServerLifecycle, run_idle_watch};
use crate::infer::InferService;
use crate::registry::{ModelLocation, ModelRegistry, RegistryOptions};
use crate::{grpc, metrics};

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub models: Vec<(String, ModelLocation)>,
    pub registry: RegistryOptions,
    pub http_addr: SocketAddr,
    /// `None` disables gRPC.
    pub grpc_addr: Option<SocketAddr>,
    pub max_body_bytes: usize,
    pub body_timeout: Duration,
    /// Request-body bytes held at once, all requests together.
    pub body_memory_bytes: usize,
    /// Header read timeout and HTTP/2 limits of the HTTP port.
    pub connections: siesta_http_server::ConnectionLimits,
    pub request_timeout: Duration,
    /// The longest SIGTERM waits for in-flight requests.
    pub drain_timeout: Duration,
    pub idle: IdlePolicy,
    /// Names this replica in logs and spans.
    pub replica_id: String,
    /// Turns on replica control (park, resume) for callers that present it.
    pub control_token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("model '{model}' failed to load: {reason}")]
    Load { model: String, reason: String },
    #[error("server failed: {0}")]
    Serve(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    Signal,
    Idle,
    /// A model failed while serving (its worker panicked): the process should exit non-zero so
    /// that whatever runs it starts a new one.
    ModelFailed(String),
}

/// Runs the server; `on_listening` gets the bound addresses (ports may be 0 in the config).
pub async fn run(
    cfg: ServeConfig,
    on_listening: impl FnOnce(SocketAddr, Option<SocketAddr>),
) -> Result<StopReason, RunError> {
    let prometheus = metrics::install();
    let lifecycle = Arc::new(ServerLifecycle::default());
    spawn_signal_handler(lifecycle.clone())?;
    metrics::server_draining(false);
    let registry = ModelRegistry::new(cfg.registry.clone());
    for (name, location) in &cfg.models {
        registry.register(name, location.clone());
    }
    let service = InferService {
        registry: registry.clone(),
        lifecycle: lifecycle.clone(),
        request_timeout: cfg.request_timeout,
        replica: cfg.replica_id.as_str().into(),
    };

    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| RunError::Bind { addr, source })
    };
    let http_listener = bind(cfg.http_addr).await?;
    let http_addr = http_listener
        .local_addr()
        .map_err(|e| RunError::Serve(e.to_string()))?;
    let grpc_listener = match cfg.grpc_addr {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let grpc_addr = grpc_listener.as_ref().and_then(|l| l.local_addr().ok());
    on_listening(http_addr, grpc_addr);

    let app = http::router(AppState {
        service: service.clone(),
        prometheus,
        max_body_bytes: cfg.max_body_bytes,
        body_timeout: cfg.body_timeout,
        body_memory: crate::http::BodyMemory::new(cfg.body_memory_bytes),
        control_token: cfg.control_token.as_deref().map(Into::into),
    });
    let http_lifecycle = lifecycle.clone();
    let http_server = tokio::spawn(async move {
        siesta_http_server::serve(http_listener, app, cfg.connections, async move {
            http_lifecycle.drained().await
        })
        .await
    });
    let grpc_server = grpc_listener.map(|listener| {
        let svc = grpc::service(service.clone(), cfg.max_body_bytes);
        let grpc_lifecycle = lifecycle.clone();
        let limits = cfg.connections;
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .max_concurrent_streams(limits.http2_max_concurrent_streams)
                .http2_keepalive_interval(Some(limits.http2_keep_alive_interval))
                .http2_keepalive_timeout(Some(limits.http2_keep_alive_timeout))
                .initial_stream_window_size(limits.http2_stream_window)
                .initial_connection_window_size(limits.http2_connection_window)
                .add_service(svc)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                    grpc_lifecycle.drained().await
                })
                .await
        })
    });

    // Load after binding: liveness answers at once, readiness only once every model is warm.
    // A signal during the load (a download that hangs, a scale-down) stops it: the loader's
    // blocking thread is abandoned, not waited for.
    let load_all = async {
        for (name, _) in &cfg.models {
            if let Err(e) = registry.load(name).await {
                return Err(RunError::Load {
                    model: name.clone(),
                    reason: e.to_string(),
                });
            }
        }
        Ok(())
    };
    tokio::select! {
        loaded = load_all => if let Err(e) = loaded {
            lifecycle.begin_drain("startup failed");
            return Err(e);
        },
        () = lifecycle.drained() => {
            tracing::info!("stopped while loading");
            return Ok(StopReason::Signal);
        }
    }
    let idle_exit = tokio::spawn(run_idle_watch(
        registry.clone(),
        lifecycle.clone(),
        cfg.idle,
    ));

    let failure = tokio::spawn(watch_for_failure(registry.clone(), lifecycle.clone()));

    lifecycle.drained().await;
    let reason = if let Some(model) = failure.is_finished().then(|| registry.failed()).flatten() {
        StopReason::ModelFailed(model)
    } else if idle_exit.is_finished() && cfg.idle.exit_after.is_some() {
        StopReason::Idle
    } else {
        StopReason::Signal
    };
    failure.abort();
    let finish = async {
        let _ = http_server.await;
        if let Some(g) = grpc_server {
            let _ = g.await;
        }
    };
    if tokio::time::timeout(cfg.drain_timeout, finish)
        .await
        .is_err()
    {
        tracing::warn!(
            timeout_s = cfg.drain_timeout.as_secs_f64(),
            "drain timed out; exiting with requests in flight"
        );
    }
    tracing::info!(?reason, "server stopped");
    Ok(reason)
}

/// Registers the handlers before returning, so a SIGTERM right after start-up is not missed.
fn spawn_signal_handler(lifecycle: Arc<ServerLifecycle>) -> Result<(), RunError> {
    let signal = crate::signals::ShutdownSignal::register()
        .map_err(|e| RunError::Serve(format!("cannot listen for signals: {e}")))?;
    tokio::spawn(async move { lifecycle.begin_drain(signal.recv().await) });
    Ok(())
}

/// Drains the server once a model has failed while serving: its requests would only get errors.
async fn watch_for_failure(registry: Arc<ModelRegistry>, lifecycle: Arc<ServerLifecycle>) {
    let mut every = tokio::time::interval(Duration::from_millis(250));
    loop {
        every.tick().await;
        if let Some(model) = registry.failed() {
            tracing::error!(model = %model, "a model failed while serving; draining to exit");
            lifecycle.begin_drain("model failed");
            return;
        }
    }
}
