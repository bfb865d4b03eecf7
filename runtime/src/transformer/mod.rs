//! `siesta serve --transformer image`: KServe's image transformer, run by Siesta. Takes V1
//! `{"instances": [{"image_bytes": {"b64": ...}, "key": ...}]}`, decodes JPEG/PNG, resizes,
//! crops and normalises as the predictor's metadata says, calls the predictor over V2 with a
//! binary tensor (through the gateway, so both components are counted and scaled), and answers
//! with labels and scores.

pub(crate) mod instances;
mod pipeline;
mod predictor;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::sync::OnceCell;
use tokio::time::Instant;
use tracing::Instrument;

pub use self::instances::ImageLimits;
pub use self::predictor::{PredictorClient, PredictorSpec};

use crate::error::{Result, ServeError};
use crate::server::RunError;

#[derive(Debug, Clone)]
pub struct TransformerConfig {
    /// The name clients call (`/v1/models/{name}:predict`).
    pub model_name: String,
    /// Where the predictor is reached: the gateway, or a replica.
    pub predictor_url: String,
    /// `Host` header that routes to the predictor there (e.g. `{isvc}-predictor.default`).
    pub predictor_host: Option<String>,
    /// The predictor's model name.
    pub predictor_model: String,
    pub http_addr: SocketAddr,
    pub max_body_bytes: usize,
    pub body_timeout: Duration,
    /// Request-body bytes held at once, all requests together.
    pub body_memory_bytes: usize,
    /// Header read timeout and HTTP/2 limits of the HTTP port.
    pub connections: siesta_http_server::ConnectionLimits,
    pub request_timeout: Duration,
    pub drain_timeout: Duration,
    /// Classes listed per prediction.
    pub top_k: usize,
    /// Instances per request and pixels per image.
    pub image_limits: instances::ImageLimits,
    pub replica_id: String,
}

struct Transformer {
    cfg: TransformerConfig,
    client: PredictorClient,
    /// Learned from the predictor on the first request (not at start: the predictor may be at
    /// zero replicas, and the transformer should be ready without it, as KServe's is).
    spec: OnceCell<Arc<PredictorSpec>>,
    prometheus: PrometheusHandle,
    body_memory: crate::http::BodyMemory,
}

type Shared = Arc<Transformer>;

pub async fn run(
    cfg: TransformerConfig,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), RunError> {
    let prometheus = crate::metrics::install();
    let client = PredictorClient::new(
        &cfg.predictor_url,
        cfg.predictor_host.clone(),
        cfg.predictor_model.clone(),
        cfg.request_timeout,
    )
    .map_err(RunError::Serve)?;
    let listener = tokio::net::TcpListener::bind(cfg.http_addr)
        .await
        .map_err(|source| RunError::Bind {
            addr: cfg.http_addr,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|e| RunError::Serve(e.to_string()))?;
    let drain_timeout = cfg.drain_timeout;
    let connections = cfg.connections;
    let state: Shared = Arc::new(Transformer {
        body_memory: crate::http::BodyMemory::new(cfg.body_memory_bytes),
        cfg,
        client,
        spec: OnceCell::new(),
        prometheus,
    });
    on_listening(addr);
    let app = axum::Router::new()
        .route("/", get(|| async { Json(json!({"status": "alive"})) }))
        .route(
            "/v2/health/live",
            get(|| async { Json(json!({"live": true})) }),
        )
        .route(
            "/v2/health/ready",
            get(|| async { Json(json!({"ready": true})) }),
        )
        .route("/metrics", get(render_metrics))
        .route("/v1/models", get(list))
        .route("/v1/models/{target}", get(model_ready).post(predict))
        .fallback(|uri: axum::http::Uri| async move { ServeError::NoRoute(uri.path().into()) })
        .with_state(state);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        siesta_http_server::serve(listener, app, connections, async move {
            let _ = stop_rx.await;
        })
        .await
    });
    let signal = crate::signals::ShutdownSignal::register()
        .map_err(|e| RunError::Serve(format!("cannot listen for signals: {e}")))?;
    signal.recv().await;
    tracing::info!("draining");
    let _ = stop_tx.send(());
    // In-flight requests finish; the bound keeps a stuck predictor from holding the exit.
    let _ = tokio::time::timeout(drain_timeout, server).await;
    Ok(())
}

async fn render_metrics(State(t): State<Shared>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        t.prometheus.render(),
    )
}

async fn list(State(t): State<Shared>) -> Json<serde_json::Value> {
    Json(json!({"models": [t.cfg.model_name]}))
}

async fn model_ready(State(t): State<Shared>, Path(target): Path<String>) -> Result<Response> {
    if target != t.cfg.model_name {
        return Err(ServeError::ModelNotFound(target));
    }
    Ok(Json(json!({"name": target, "ready": true})).into_response())
}

async fn predict(State(t): State<Shared>, Path(target): Path<String>, req: Request) -> Response {
    let started = Instant::now();
    let span =
        tracing::info_span!("transform", model = %t.cfg.model_name, replica = %t.cfg.replica_id);
    let resp = async {
        let Some((name, verb)) = target.rsplit_once(':') else {
            return Err(ServeError::NoRoute(format!("/v1/models/{target}")));
        };
        if name != t.cfg.model_name {
            return Err(ServeError::ModelNotFound(name.to_string()));
        }
        if verb != "predict" {
            return Err(ServeError::NoRoute(format!(
                "/v1/models/{target} (the image transformer answers :predict)"
            )));
        }
        let (parts, body) = req.into_parts();
        let body: Body = body;
        let (bytes, _held) = crate::http::read_body_within(
            &parts.headers,
            body,
            t.cfg.max_body_bytes,
            t.cfg.body_timeout,
            &t.body_memory,
        )
        .await?;
        transform(&t, bytes).await
    }
    .instrument(span)
    .await;
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(model = %t.cfg.model_name, error = %e, "request failed");
            e.into_response()
        }
    };
    crate::metrics::request(
        crate::metrics::ModelLabel::served(&t.cfg.model_name),
        "v1-transformer",
        resp.status().as_u16(),
        started.elapsed(),
    );
    resp
}

async fn transform(t: &Transformer, body: axum::body::Bytes) -> Result<Response> {
    let spec = t
        .spec
        .get_or_try_init(|| async { t.client.spec().await.map(Arc::new) })
        .await?
        .clone();
    let limits = t.cfg.image_limits;
    let batch = instances::parse(&body, &limits)?;
    let pre_started = Instant::now();
    let (batch, tensors) = {
        let spec = spec.clone();
        tokio::task::spawn_blocking(move || {
            // One call per chunk the predictor accepts (an unbatched model takes one image).
            let rows = spec.max_batch_size.max(1);
            let tensors: Result<Vec<Vec<u8>>> = batch
                .chunks(rows)
                .enumerate()
                .map(|(c, chunk)| pipeline::preprocess(&spec, chunk, c * rows, &limits))
                .collect();
            (batch, tensors)
        })
        .await
        .map_err(|e| ServeError::Inference(format!("preprocessing stopped: {e}")))?
    };
    let tensors = tensors?;
    let preprocess = pre_started.elapsed();
    let predict_started = Instant::now();
    let rows = spec.max_batch_size.max(1);
    let dims: Vec<usize> = spec_input_dims(&spec);
    let mut predictions = Vec::with_capacity(batch.len());
    for (chunk, tensor) in batch.chunks(rows).zip(tensors) {
        let shape: Vec<usize> = if spec.max_batch_size > 0 {
            std::iter::once(chunk.len())
                .chain(dims.iter().copied())
                .collect()
        } else {
            dims.clone()
        };
        let scores = t.client.infer(&spec, &shape, tensor.into()).await?;
        predictions.extend(pipeline::postprocess(&spec, chunk, scores, t.cfg.top_k)?);
    }
    let predict = predict_started.elapsed();
    metrics::histogram!("siesta_transformer_stage_seconds", "stage" => "preprocess")
        .record(preprocess.as_secs_f64());
    metrics::histogram!("siesta_transformer_stage_seconds", "stage" => "predictor")
        .record(predict.as_secs_f64());
    let mut resp = (StatusCode::OK, Json(json!({"predictions": predictions}))).into_response();
    let ms = |d: Duration| {
        HeaderValue::from_str(&format!("{:.3}", d.as_secs_f64() * 1e3)).expect("ascii")
    };
    resp.headers_mut().insert(
        HeaderName::from_static("x-siesta-preprocess-ms"),
        ms(preprocess),
    );
    resp.headers_mut().insert(
        HeaderName::from_static("x-siesta-predictor-ms"),
        ms(predict),
    );
    Ok(resp)
}

/// The per-image dimensions in the predictor's layout.
fn spec_input_dims(spec: &PredictorSpec) -> Vec<usize> {
    let t = &spec.transform;
    let (c, h, w) = (
        t.channels() as usize,
        t.crop_height as usize,
        t.crop_width as usize,
    );
    match spec.layout {
        siesta_kernels::Layout::Nchw => vec![c, h, w],
        siesta_kernels::Layout::Nhwc => vec![h, w, c],
    }
}
