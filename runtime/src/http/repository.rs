//! Model repository extension: index, load, unload.

use axum::Json;
use axum::extract::{Path, State};
use serde_json::json;

use super::AppState;
use crate::error::Result;
use crate::registry::IndexEntry;

pub async fn index(State(state): State<AppState>) -> Json<Vec<IndexEntry>> {
    Json(state.service.registry.index())
}

pub async fn load(
    State(state): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<serde_json::Value>> {
    state.service.registry.request_load(&model).await?;
    Ok(Json(json!({"name": model, "load": true})))
}

pub async fn unload(
    State(state): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<serde_json::Value>> {
    state.service.registry.request_unload(&model)?;
    Ok(Json(json!({"name": model, "unload": true})))
}
