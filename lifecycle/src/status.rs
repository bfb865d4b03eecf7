//! The `/siesta/status` document: per component what the autoscaler sees and decided, what the
//! backend has, and (one host) the GPUs. Written by the gateway of `siesta up` and of the cluster,
//! read by `siesta status` and the dashboard: one type, serialised and parsed by serde.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::backend::crash_loop::CrashLoop;
use crate::backend::gpu::{GpuInfo, GpuInventory};
use crate::backend::{Endpoint, ReplicaBackend};
use crate::gateway::pool::{ColdStarts, Observed, Pool};
use crate::manifest::{Component, ComponentKind, ScaleMetric};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusDocument {
    pub components: Vec<ComponentStatus>,
    pub gpus: Vec<GpuInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComponentStatus {
    /// `{service}-{kind}`.
    pub component: String,
    pub service: String,
    pub kind: ComponentKind,
    /// Replicas the backend was asked for, is starting, has ready.
    pub desired: u32,
    pub starting: u32,
    pub ready: u32,
    /// Replicas parked (device memory given back, process kept).
    #[serde(default)]
    pub parked: u32,
    /// Device memory its hot replicas use on GPUs.
    #[serde(default)]
    pub device_memory_bytes: u64,
    /// Requests counted from arrival at the gateway (held ones included).
    pub in_flight: u32,
    pub autoscaler: Observed,
    /// Requests held for a replica or a free slot.
    pub waiting: usize,
    pub metric: ScaleMetric,
    pub target: f64,
    pub min_replicas: u32,
    /// 0 = unbounded.
    pub max_replicas: u32,
    pub container_concurrency: u32,
    pub endpoints: Vec<EndpointStatus>,
    /// Why a wanted replica is not starting.
    pub pending: Option<String>,
    /// Replicas keep failing: how often, the last error, when the next start is allowed.
    #[serde(default)]
    pub crash_loop: Option<CrashLoop>,
    /// Requests at zero served by a resumed or a new replica, since the gateway started.
    #[serde(default)]
    pub cold_starts: ColdStarts,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointStatus {
    pub replica: String,
    pub addr: String,
    pub gpu: Option<u32>,
    pub pid: Option<u32>,
}

impl From<&Endpoint> for EndpointStatus {
    fn from(e: &Endpoint) -> Self {
        EndpointStatus {
            replica: e.replica.clone(),
            addr: e.addr.to_string(),
            gpu: e.gpu,
            pid: e.pid,
        }
    }
}

/// A component's scaling settings, as the status shows them.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingView {
    min: u32,
    max: u32,
    target: f64,
    metric: ScaleMetric,
    container_concurrency: u32,
}

impl ScalingView {
    pub fn of(c: &Component) -> Self {
        ScalingView {
            min: c.scaling.min_scale,
            max: c.scaling.max_scale,
            target: c.scaling.decider.target,
            metric: c.scaling.metric,
            container_concurrency: c.container_concurrency,
        }
    }
}

/// One served component, as the status reads it.
pub type Watched = (Arc<Pool>, ScalingView);

impl ComponentStatus {
    pub fn read(pool: &Pool, view: &ScalingView, backend: &dyn ReplicaBackend) -> Self {
        let st = backend.status(&pool.key).unwrap_or_default();
        let endpoints = backend
            .endpoints(&pool.key)
            .map(|rx| rx.borrow().iter().map(EndpointStatus::from).collect())
            .unwrap_or_default();
        ComponentStatus {
            component: pool.name.clone(),
            service: pool.key.service.clone(),
            kind: pool.key.kind,
            desired: st.desired,
            starting: st.starting,
            ready: st.ready,
            parked: st.parked,
            device_memory_bytes: st.device_memory_bytes,
            in_flight: pool.in_flight(),
            autoscaler: *pool.observed.lock(),
            waiting: pool.waiting(),
            metric: view.metric,
            target: view.target,
            min_replicas: view.min,
            max_replicas: view.max,
            container_concurrency: view.container_concurrency,
            endpoints,
            pending: st.pending,
            crash_loop: st.crash_loop,
            cold_starts: pool.cold_starts(),
        }
    }
}

impl StatusDocument {
    pub fn read(
        components: &[Watched],
        backend: &dyn ReplicaBackend,
        gpus: Option<&dyn GpuInventory>,
    ) -> Self {
        StatusDocument {
            components: components
                .iter()
                .map(|(pool, view)| ComponentStatus::read(pool, view, backend))
                .collect(),
            gpus: gpus.map(|g| g.gpus()).unwrap_or_default(),
        }
    }
}
