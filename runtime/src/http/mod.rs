//! The REST surface: KServe V1, Open Inference Protocol V2, the model repository, Triton's
//! model-configuration extension, health and `/metrics`.

mod control;
mod health;
mod repository;
mod v1;
pub(crate) mod v2;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::Response;
use axum::routing::{get, post};
use http_body_util::BodyExt;
use metrics_exporter_prometheus::PrometheusHandle;
use siesta_http_server::replica_control;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::error::{Result, ServeError};
use crate::infer::InferService;
use crate::metrics;
use crate::worker::Timing;
pub use v2::PLATFORM;

#[derive(Clone)]
pub struct AppState {
    pub service: InferService,
    pub prometheus: PrometheusHandle,
    pub max_body_bytes: usize,
    /// How long a client may take to send its body (slow clients get 408, not a held slot).
    pub body_timeout: Duration,
    pub body_memory: BodyMemory,
    /// Enables `/siesta/replica` (park, resume, tier) for whoever presents it.
    pub control_token: Option<Arc<str>>,
}

/// The request-body bytes a server holds at once, all requests together
/// (`--max-buffered-body-bytes`): the queue limit bounds how many requests wait, this bounds
/// what their bodies weigh (256 queued 64 MiB bodies would be 16 GiB).
#[derive(Clone)]
pub struct BodyMemory {
    kib: Arc<Semaphore>,
    limit: usize,
}

/// What a read body holds of [`BodyMemory`] until it is dropped.
pub struct BodyLease {
    _held: Option<OwnedSemaphorePermit>,
}

impl BodyMemory {
    pub fn new(bytes: usize) -> Self {
        BodyMemory {
            kib: Arc::new(Semaphore::new(
                bytes.div_ceil(1024).min(Semaphore::MAX_PERMITS),
            )),
            limit: bytes,
        }
    }

    /// Grows `lease` to cover `bytes`, or refuses at once.
    fn cover(&self, lease: &mut BodyLease, bytes: usize) -> Result<()> {
        let have = lease._held.as_ref().map_or(0, |p| p.num_permits());
        let need = bytes.div_ceil(1024);
        if need <= have {
            return Ok(());
        }
        let more = u32::try_from(need - have)
            .ok()
            .and_then(|n| self.kib.clone().try_acquire_many_owned(n).ok())
            .ok_or(ServeError::BodyMemory { limit: self.limit })?;
        match &mut lease._held {
            Some(p) => p.merge(more),
            None => lease._held = Some(more),
        }
        Ok(())
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(health::root))
        .route("/metrics", get(health::prometheus))
        .route(replica_control::REPORT_PATH, get(control::tier))
        .route(replica_control::PARK_PATH, post(control::park))
        .route(replica_control::RESUME_PATH, post(control::resume))
        .route("/v2", get(health::server_metadata))
        .route("/v2/health/live", get(health::live))
        .route("/v2/health/ready", get(health::ready))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{target}", get(v1::metadata).post(v1::predict))
        .route("/v2/models", get(list_models))
        .route("/v2/models/{model}", get(v2::metadata))
        .route("/v2/models/{model}/ready", get(v2::ready))
        .route("/v2/models/{model}/config", get(v2::config))
        .route("/v2/models/{model}/infer", post(v2::infer))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(v2::metadata_versioned),
        )
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(v2::ready_versioned),
        )
        .route(
            "/v2/models/{model}/versions/{version}/config",
            get(v2::config_versioned),
        )
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(v2::infer_versioned),
        )
        .route("/v2/repository/index", post(repository::index))
        .route("/v2/repository/models/{model}/load", post(repository::load))
        .route(
            "/v2/repository/models/{model}/unload",
            post(repository::unload),
        )
        .fallback(health::not_found)
        .with_state(state)
}

/// `GET /v1/models` and KServe's `GET /v2/models`: the names of the ready models.
async fn list_models(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> axum::Json<serde_json::Value> {
    let names: Vec<String> = state
        .service
        .registry
        .handles()
        .iter()
        .map(|h| h.name().to_string())
        .collect();
    axum::Json(serde_json::json!({ "models": names }))
}

/// Reads the body under the size limit and the body deadline.
async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Bytes, BodyLease)> {
    read_body_within(
        headers,
        body,
        state.max_body_bytes,
        state.body_timeout,
        &state.body_memory,
    )
    .await
}

/// A body of at most `limit` bytes that arrives within `timeout` (slow clients get 408, not a
/// held slot; oversize ones 413 before their body is read), held in `memory` (a declared
/// length up front, a chunked body as it arrives; 429 when the server holds too much).
pub(crate) async fn read_body_within(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: Duration,
    memory: &BodyMemory,
) -> Result<(Bytes, BodyLease)> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(len) = declared
        && len > limit
    {
        return Err(ServeError::BodyTooLarge { got: len, limit });
    }
    let mut lease = BodyLease { _held: None };
    if let Some(len) = declared {
        memory.cover(&mut lease, len)?;
    }
    let read = async {
        let mut body = body;
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut len = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                ServeError::InvalidInput(format!("reading the request body failed: {e}"))
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            len += data.len();
            if len > limit {
                return Err(ServeError::BodyTooLarge {
                    got: limit + 1,
                    limit,
                });
            }
            memory.cover(&mut lease, len)?;
            chunks.push(data);
        }
        Ok(match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.pop().expect("one chunk"),
            _ => {
                let mut whole = Vec::with_capacity(len);
                chunks.iter().for_each(|c| whole.extend_from_slice(c));
                Bytes::from(whole)
            }
        })
    };
    let bytes = tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| ServeError::ClientTimeout(timeout.as_millis() as u64))??;
    Ok((bytes, lease))
}

/// Per-response timing headers (milliseconds).
fn timing_headers(resp: &mut Response, timing: &Timing, started: Instant) {
    let ms = |d: Duration| {
        HeaderValue::from_str(&format!("{:.3}", d.as_secs_f64() * 1e3)).expect("ascii")
    };
    let h = resp.headers_mut();
    h.insert(
        HeaderName::from_static("x-siesta-queue-ms"),
        ms(timing.queue),
    );
    h.insert(
        HeaderName::from_static("x-siesta-compute-ms"),
        ms(timing.compute),
    );
    h.insert(
        HeaderName::from_static("x-siesta-total-ms"),
        ms(started.elapsed()),
    );
    h.insert(
        HeaderName::from_static("x-siesta-batch-rows"),
        HeaderValue::from(timing.batch_rows),
    );
    if let Some(r) = timing.restored {
        h.insert(HeaderName::from_static("x-siesta-restored-ms"), ms(r));
    }
}

/// Counts the request under its model (if this server has it), protocol and status.
fn observe(
    state: &AppState,
    model: &str,
    protocol: &'static str,
    resp: &Response,
    started: Instant,
) {
    let label = state.service.registry.metric_label(model);
    metrics::request(label, protocol, resp.status().as_u16(), started.elapsed());
}
