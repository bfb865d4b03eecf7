//! Liveness, readiness, server metadata and the Prometheus endpoint.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use crate::error::ServeError;

pub async fn root() -> Json<serde_json::Value> {
    Json(json!({"status": "alive"}))
}

/// Live unless a model is gone for good (its worker panicked, or it failed to load with model
/// control off): then a restart is the only cure, and liveness is what triggers one.
pub async fn live(State(state): State<AppState>) -> Response {
    let live = state.service.registry.live();
    let status = if live {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"live": live}))).into_response()
}

/// Ready only when every model is loaded and warmed up, and not while draining.
pub async fn ready(State(state): State<AppState>) -> Response {
    let svc = &state.service;
    let ready = !svc.lifecycle.is_draining() && svc.registry.all_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"ready": ready}))).into_response()
}

pub async fn server_metadata() -> Json<serde_json::Value> {
    Json(json!({
        "name": "siesta",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data", "model_repository", "model_configuration"]
    }))
}

pub async fn prometheus(State(state): State<AppState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.prometheus.render(),
    )
}

pub async fn not_found(uri: Uri) -> ServeError {
    ServeError::NoRoute(uri.path().to_string())
}
