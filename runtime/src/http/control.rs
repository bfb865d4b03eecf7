//! Replica control for the lifecycle manager: park (device memory given back, weights kept in
//! host memory, process kept), resume (weights uploaded again), and the tier report it places
//! replicas by. Only with a token (`SIESTA_CONTROL_TOKEN`, which `siesta up` and the controller
//! give each replica): without one these routes do not exist, and the gateway never forwards
//! them (`lifecycle/src/gateway/forwarded.rs`), so a client cannot park a model for everyone.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::AppState;
use crate::error::{Result, ServeError};
use crate::status::ModelState;

use siesta_http_server::replica_control::{PARK_PATH, REPORT_PATH, RESUME_PATH, TOKEN_HEADER};

/// How long a park waits for requests already on the replica before releasing anyway (those
/// still queued then restore the weights on demand: slower, never lost).
const PARK_WAIT: Duration = Duration::from_secs(30);

fn authorise(state: &AppState, headers: &HeaderMap, path: &str) -> Result<()> {
    let Some(expected) = state.control_token.as_deref() else {
        return Err(ServeError::NoRoute(path.to_string()));
    };
    let given = headers
        .get(TOKEN_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    // Compared in time independent of where they differ.
    let same = given.len() == expected.len()
        && given
            .iter()
            .zip(expected.as_bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err(ServeError::ControlDenied)
    }
}

/// The replica's tier, as the lifecycle manager reads it: `loading` until every model is
/// ready, `parked` when every model's device memory is given back, else `hot`.
fn report(state: &AppState) -> Value {
    let registry = &state.service.registry;
    let handles = registry.handles();
    let now = Instant::now();
    let states: Vec<ModelState> = handles.iter().map(|h| h.status.state()).collect();
    let tier = if !registry.all_ready() {
        "loading"
    } else if !states.is_empty() && states.iter().all(|s| *s == ModelState::Released) {
        "parked"
    } else {
        "hot"
    };
    let models: Vec<Value> = handles
        .iter()
        .map(|h| {
            let s = &h.status;
            json!({
                "name": h.name(),
                "state": s.state().as_str(),
                "device_memory_bytes": s.device_bytes(),
                "in_flight": s.in_flight(),
                "idle_ms": now.saturating_duration_since(s.last_activity()).as_millis() as u64,
                "load": s.load_phases(),
            })
        })
        .collect();
    json!({
        "replica": &*state.service.replica,
        "tier": tier,
        "device_memory_bytes": handles.iter().map(|h| h.status.device_bytes()).sum::<u64>(),
        "host_memory_bytes": resident_bytes(),
        "models": models,
    })
}

/// This process's resident set (Linux `/proc/self/statm`), 0 where it cannot be read.
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

pub async fn tier(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Value>> {
    authorise(&state, &headers, REPORT_PATH)?;
    Ok(Json(report(&state)))
}

pub async fn park(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Value>> {
    authorise(&state, &headers, PARK_PATH)?;
    let started = Instant::now();
    let handles = state.service.registry.handles();
    // The gateway stopped routing here before asking; let what it already sent finish.
    while handles.iter().any(|h| h.status.in_flight() > 0) && started.elapsed() < PARK_WAIT {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for h in &handles {
        if h.status.state() == ModelState::Ready {
            h.release_device_memory().await;
        }
    }
    let took = started.elapsed();
    tracing::info!(ms = took.as_secs_f64() * 1e3, "replica parked");
    let mut out = report(&state);
    out["took_ms"] = json!(took.as_secs_f64() * 1e3);
    Ok(Json(out))
}

pub async fn resume(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Value>> {
    authorise(&state, &headers, RESUME_PATH)?;
    let started = Instant::now();
    let mut upload = Duration::ZERO;
    for h in state.service.registry.handles() {
        upload += h.restore_device_memory().await?;
        // Resumed for traffic: the idle tiers count from now, not from before the park.
        h.status.touch();
    }
    let took = started.elapsed();
    tracing::info!(
        ms = took.as_secs_f64() * 1e3,
        upload_ms = upload.as_secs_f64() * 1e3,
        "replica resumed"
    );
    let mut out = report(&state);
    out["took_ms"] = json!(took.as_secs_f64() * 1e3);
    out["upload_ms"] = json!(upload.as_secs_f64() * 1e3);
    Ok(Json(out))
}
