//! Shared, lock-light state of one served model: lifecycle state, device memory, activity.

use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::metrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ModelState {
    Loading = 0,
    Ready = 1,
    /// Device memory given back; the next request restores it.
    Released = 2,
    Unloaded = 3,
    Failed = 4,
}

impl ModelState {
    pub const ALL: [ModelState; 5] = [
        ModelState::Loading,
        ModelState::Ready,
        ModelState::Released,
        ModelState::Unloaded,
        ModelState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ModelState::Loading => "loading",
            ModelState::Ready => "ready",
            ModelState::Released => "released",
            ModelState::Unloaded => "unloaded",
            ModelState::Failed => "failed",
        }
    }

    fn from_u8(v: u8) -> Self {
        ModelState::ALL[usize::from(v).min(4)]
    }

    /// Whether requests are accepted (a released model is restored on demand).
    pub fn serves(self) -> bool {
        matches!(self, ModelState::Ready | ModelState::Released)
    }
}

/// How long a model took to become ready, phase by phase: what a cold start is made of.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct LoadPhases {
    /// Resolving the storage URI: the cache, or a download.
    #[serde(serialize_with = "millis")]
    pub fetch: std::time::Duration,
    /// Reading the weights and putting them on the device.
    #[serde(serialize_with = "millis")]
    pub load: std::time::Duration,
    /// The one inference before readiness.
    #[serde(serialize_with = "millis")]
    pub warm_up: std::time::Duration,
}

fn millis<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e3)
}

pub struct ModelStatus {
    pub name: String,
    state: AtomicU8,
    device_bytes: AtomicU64,
    /// The device label of the last memory report, so that zeroing it on unload hits the same series.
    device: Mutex<String>,
    in_flight: AtomicUsize,
    /// The most requests ever in flight at once: lets a test check a hard concurrency limit
    /// from the replica's own side.
    peak_in_flight: AtomicUsize,
    last_activity: Mutex<Instant>,
    load_phases: Mutex<LoadPhases>,
}

impl ModelStatus {
    pub fn new(name: &str) -> Self {
        let s = ModelStatus {
            name: name.to_string(),
            state: AtomicU8::new(ModelState::Loading as u8),
            device_bytes: AtomicU64::new(0),
            device: Mutex::new(String::new()),
            in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
            last_activity: Mutex::new(Instant::now()),
            load_phases: Mutex::new(LoadPhases::default()),
        };
        metrics::model_state(name, ModelState::Loading);
        s
    }

    pub fn state(&self) -> ModelState {
        ModelState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub fn set_state(&self, state: ModelState) {
        self.state.store(state as u8, Ordering::Release);
        metrics::model_state(&self.name, state);
    }

    pub fn device_bytes(&self) -> u64 {
        self.device_bytes.load(Ordering::Relaxed)
    }

    pub fn set_device_bytes(&self, device: &str, bytes: u64) {
        self.device_bytes.store(bytes, Ordering::Relaxed);
        device.clone_into(&mut self.device.lock());
        metrics::device_memory(&self.name, device, bytes);
    }

    /// Reports the model's device memory as freed (it is unloaded).
    pub fn clear_device_bytes(&self) {
        let device = self.device.lock().clone();
        self.device_bytes.store(0, Ordering::Relaxed);
        metrics::device_memory(&self.name, &device, 0);
    }

    /// Counts as activity for the idle tiers.
    pub fn touch(&self) {
        *self.last_activity.lock() = Instant::now();
    }

    pub fn load_phases(&self) -> LoadPhases {
        *self.load_phases.lock()
    }

    pub fn set_load_phases(&self, phases: LoadPhases) {
        *self.load_phases.lock() = phases;
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    pub fn last_activity(&self) -> Instant {
        *self.last_activity.lock()
    }

    /// Marks a request as started; the guard marks it finished when dropped.
    pub fn begin_request(self: &std::sync::Arc<Self>) -> InFlightGuard {
        let now_in_flight = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        let peak = self
            .peak_in_flight
            .fetch_max(now_in_flight, Ordering::AcqRel)
            .max(now_in_flight);
        *self.last_activity.lock() = Instant::now();
        metrics::in_flight(&self.name, now_in_flight, peak);
        InFlightGuard(self.clone())
    }
}

pub struct InFlightGuard(std::sync::Arc<ModelStatus>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        *self.0.last_activity.lock() = Instant::now();
        metrics::in_flight(
            &self.0.name,
            self.0.in_flight(),
            self.0.peak_in_flight.load(Ordering::Acquire),
        );
    }
}
