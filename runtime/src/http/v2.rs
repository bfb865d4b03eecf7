//! Open Inference Protocol (V2) REST: model metadata, readiness, Triton's model configuration,
//! and inference with JSON or binary tensors.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use siesta_models::ModelConfig;
use tokio::time::Instant;
use tracing::Instrument;

use super::{AppState, observe, read_body, timing_headers};

use crate::error::{Result, ServeError};
use crate::handle::ModelHandle;
use crate::infer::SERVED_VERSION;
use crate::protocol::v2::{
    HEADER_CONTENT_LENGTH, build_infer_response, parse_infer_request, split_body,
};

pub const PLATFORM: &str = "siesta_candle";

pub fn metadata_json(handle: &ModelHandle) -> Value {
    let cfg = &handle.config;
    let tensors = |specs: &[siesta_models::TensorSpec]| -> Vec<Value> {
        specs
            .iter()
            .map(|s| json!({"name": s.name, "datatype": s.datatype.as_str(), "shape": cfg.published_shape(s)}))
            .collect()
    };
    let mut params = serde_json::Map::new();
    params.insert("state".into(), json!(handle.status.state().as_str()));
    params.insert(
        "device_memory_bytes".into(),
        json!(handle.status.device_bytes()),
    );
    params.insert("max_batch_size".into(), json!(cfg.max_batch_size));
    if !cfg.labels.is_empty() {
        params.insert("labels".into(), json!(cfg.labels));
    }
    if let Some(image) = &cfg.image {
        params.insert("image".into(), json!(image));
    }
    for (k, v) in &cfg.info {
        params.insert(k.clone(), v.clone());
    }
    json!({
        "name": cfg.name,
        "versions": [SERVED_VERSION],
        "platform": PLATFORM,
        "inputs": tensors(&cfg.inputs),
        "outputs": tensors(&cfg.outputs),
        "parameters": params,
    })
}

/// Triton's model configuration, which perf_analyzer and tritonclient read before inferring.
pub fn triton_config_json(cfg: &ModelConfig) -> Value {
    let tensors =
        |specs: &[siesta_models::TensorSpec]| -> Vec<Value> {
            specs
            .iter()
            .map(|s| {
                // Triton writes a per-row scalar as dims [1].
                let dims = if s.shape.is_empty() { vec![1] } else { s.shape.clone() };
                json!({"name": s.name, "data_type": s.datatype.triton_config_name(), "dims": dims})
            })
            .collect()
        };
    let mut v = json!({
        "name": cfg.name,
        "platform": PLATFORM,
        "backend": "siesta",
        "max_batch_size": cfg.max_batch_size,
        "input": tensors(&cfg.inputs),
        "output": tensors(&cfg.outputs),
    });
    if cfg.max_batch_size > 0 {
        v["dynamic_batching"] = json!({"max_queue_delay_microseconds": cfg.max_queue_delay_us});
    }
    v
}

pub async fn metadata(State(s): State<AppState>, Path(model): Path<String>) -> Result<Json<Value>> {
    Ok(Json(metadata_json(&*s.service.model(&model, None)?)))
}

pub async fn metadata_versioned(
    State(s): State<AppState>,
    Path((model, v)): Path<(String, String)>,
) -> Result<Json<Value>> {
    Ok(Json(metadata_json(&*s.service.model(&model, Some(&v))?)))
}

fn ready_response(s: &AppState, model: &str, version: Option<&str>) -> Result<Response> {
    let handle = s.service.model(model, version)?;
    let ready = handle.status.state().serves() && !s.service.lifecycle.is_draining();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((code, Json(json!({"name": model, "ready": ready}))).into_response())
}

pub async fn ready(State(s): State<AppState>, Path(model): Path<String>) -> Result<Response> {
    ready_response(&s, &model, None)
}

pub async fn ready_versioned(
    State(s): State<AppState>,
    Path((model, v)): Path<(String, String)>,
) -> Result<Response> {
    ready_response(&s, &model, Some(&v))
}

pub async fn config(State(s): State<AppState>, Path(model): Path<String>) -> Result<Json<Value>> {
    Ok(Json(triton_config_json(
        &s.service.model(&model, None)?.config,
    )))
}

pub async fn config_versioned(
    State(s): State<AppState>,
    Path((model, v)): Path<(String, String)>,
) -> Result<Json<Value>> {
    Ok(Json(triton_config_json(
        &s.service.model(&model, Some(&v))?.config,
    )))
}

pub async fn infer(
    State(s): State<AppState>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    infer_observed(s, model, None, headers, body).await
}

pub async fn infer_versioned(
    State(s): State<AppState>,
    Path((model, v)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    infer_observed(s, model, Some(v), headers, body).await
}

async fn infer_observed(
    s: AppState,
    model: String,
    version: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let span =
        tracing::info_span!("infer", model = %model, replica = %s.service.replica, protocol = "v2");
    let resp = infer_inner(&s, &model, version.as_deref(), &headers, body, started)
        .instrument(span)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    observe(&s, &model, "v2", &resp, started);
    resp
}

async fn infer_inner(
    s: &AppState,
    model: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: Body,
    started: Instant,
) -> Result<Response> {
    let admitted = s.service.admit(model, version)?;
    let (bytes, _held) = read_body(s, headers, body).await?;
    let header_len = headers
        .get(HEADER_CONTENT_LENGTH)
        .map(|v| {
            v.to_str().map_err(|_| {
                ServeError::InvalidInput("Inference-Header-Content-Length is not ASCII".into())
            })
        })
        .transpose()?;
    let (json_part, binary_part) = split_body(&bytes, header_len)?;
    let (resp, timing) = admitted
        .infer(|_| parse_infer_request(json_part, binary_part))
        .await?;
    let (body, json_len) = build_infer_response(&resp)?;
    let mut response = Response::new(Body::from(body));
    let h = response.headers_mut();
    match json_len {
        Some(n) => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            h.insert(
                HeaderName::from_static(HEADER_CONTENT_LENGTH),
                HeaderValue::from(n),
            );
        }
        None => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
    }
    timing_headers(&mut response, &timing, started);
    Ok(response)
}
