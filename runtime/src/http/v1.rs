//! KServe V1 REST: list, model status, `:predict`.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::time::Instant;
use tracing::Instrument;

use super::{AppState, observe, read_body, timing_headers};

use crate::error::{Result, ServeError};
use crate::protocol::v1::{build_predictions, parse_predict};

pub async fn metadata(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>> {
    let handle = state.service.registry.get(&name)?;
    Ok(Json(
        json!({"name": handle.name(), "ready": handle.status.state().serves()}),
    ))
}

/// `POST /v1/models/{name}:predict`; the router matches the whole segment, the verb is split here.
pub async fn predict(
    State(state): State<AppState>,
    Path(target): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let (name, verb) = target.rsplit_once(':').unwrap_or((target.as_str(), ""));
    let resp = match verb {
        "predict" => predict_inner(&state, name, &headers, body, started)
            .instrument(tracing::info_span!("predict", model = %name, replica = %state.service.replica, protocol = "v1"))
            .await
            .unwrap_or_else(IntoResponse::into_response),
        "explain" => {
            ServeError::InvalidInput(format!("model '{name}' has no explainer")).into_response()
        }
        _ => ServeError::NoRoute(format!("/v1/models/{target}")).into_response(),
    };
    observe(&state, name, "v1", &resp, started);
    resp
}

async fn predict_inner(
    state: &AppState,
    name: &str,
    headers: &HeaderMap,
    body: Body,
    started: Instant,
) -> Result<Response> {
    let admitted = state.service.admit(name, None)?;
    let (bytes, _held) = read_body(state, headers, body).await?;
    let (resp, timing) = admitted
        .infer(|config| parse_predict(config, &bytes))
        .await?;
    let outputs: Vec<_> = resp.outputs.into_iter().map(|(t, _)| t).collect();
    let body = build_predictions(&resp.config, &outputs)?;
    let mut response = Json(body).into_response();
    timing_headers(&mut response, &timing, started);
    Ok(response)
}
