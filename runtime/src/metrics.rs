//! Prometheus metrics (prefix `siesta_`): names, labels and buckets live here and nowhere else.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::status::ModelState;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once; later calls return the same handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let latency = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ];
            let batch = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full("siesta_batch_size".into()), &batch)
                })
                .expect("static bucket lists are not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Tests start several servers in one process; only the first install wins, which is fine.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// The `model` label of a request: a model this server has, or one shared label for every name
/// it does not. Clients can invent any number of names, and every label value is a series the
/// exporter keeps forever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelLabel(String);

impl ModelLabel {
    /// What requests for names no model has are counted under.
    pub const UNKNOWN: &'static str = "_unknown";

    pub fn served(name: &str) -> Self {
        ModelLabel(name.to_string())
    }

    pub fn unknown() -> Self {
        ModelLabel(Self::UNKNOWN.to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

pub fn request(model: ModelLabel, protocol: &'static str, status: u16, total: Duration) {
    counter!("siesta_requests_total", "model" => model.0.clone(), "protocol" => protocol, "status" => status.to_string())
        .increment(1);
    histogram!("siesta_request_duration_seconds", "model" => model.0, "protocol" => protocol)
        .record(total.as_secs_f64());
}

pub fn batch(model: &str, size: usize, compute: Duration) {
    histogram!("siesta_batch_size", "model" => model.to_string()).record(size as f64);
    histogram!("siesta_compute_duration_seconds", "model" => model.to_string())
        .record(compute.as_secs_f64());
}

pub fn queued(model: &str, wait: Duration) {
    histogram!("siesta_queue_duration_seconds", "model" => model.to_string())
        .record(wait.as_secs_f64());
}

pub fn dropped(model: &str, reason: &'static str) {
    counter!("siesta_dropped_requests_total", "model" => model.to_string(), "reason" => reason)
        .increment(1);
}

pub fn in_flight(model: &str, n: usize, peak: usize) {
    gauge!("siesta_in_flight_requests", "model" => model.to_string()).set(n as f64);
    gauge!("siesta_in_flight_requests_peak", "model" => model.to_string()).set(peak as f64);
}

pub fn queue_depth(model: &str, n: usize) {
    gauge!("siesta_queue_depth", "model" => model.to_string()).set(n as f64);
}

pub fn model_state(model: &str, state: ModelState) {
    for s in ModelState::ALL {
        gauge!("siesta_model_state", "model" => model.to_string(), "state" => s.as_str())
            .set(if s == state { 1.0 } else { 0.0 });
    }
}

pub fn device_memory(model: &str, device: &str, bytes: u64) {
    gauge!("siesta_device_memory_bytes", "model" => model.to_string(), "device" => device.to_string())
        .set(bytes as f64);
}

pub fn restored(model: &str, took: Duration) {
    histogram!("siesta_device_restore_seconds", "model" => model.to_string())
        .record(took.as_secs_f64());
}

pub fn server_draining(draining: bool) {
    gauge!("siesta_server_draining").set(if draining { 1.0 } else { 0.0 });
}

/// How the model's files were obtained at its last load, and what a download cost: the five
/// replicas of a cold start show one `downloaded` and four `cached`.
pub fn model_fetched(model: &str, fetched: &siesta_models::storage::Fetched) {
    counter!("siesta_model_fetches_total", "model" => model.to_string(), "source" => fetched.label())
        .increment(1);
    if let siesta_models::storage::Fetched::Downloaded { bytes, seconds } = fetched {
        counter!("siesta_model_download_bytes_total", "model" => model.to_string())
            .increment(*bytes);
        gauge!("siesta_model_download_seconds", "model" => model.to_string()).set(*seconds);
    }
}

pub fn load_phases(model: &str, load: Duration, warm_up: Duration) {
    gauge!("siesta_model_load_seconds", "model" => model.to_string()).set(load.as_secs_f64());
    gauge!("siesta_model_warm_up_seconds", "model" => model.to_string()).set(warm_up.as_secs_f64());
}
