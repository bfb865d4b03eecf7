//! Where replicas come from. The autoscaler and gateway only see [`ReplicaBackend`]: ask for a
//! replica count, watch the ready endpoints. One host: [`local::LocalBackend`] (child processes);
//! a cluster: Deployments (the Kubernetes issue).

pub mod activity;
pub mod cold_start;
pub mod control;
pub mod crash_loop;
pub mod gpu;
pub(crate) mod listening;
pub(crate) mod local;
mod rollout;
pub mod tiers;

pub use listening::Listening;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

use crate::manifest::{ComponentKind, TierPolicy};
use activity::Activity;
pub use cold_start::{ColdStart, ColdStartKind};
use crash_loop::CrashLoop;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ComponentKey {
    pub service: String,
    pub kind: ComponentKind,
}

impl fmt::Display for ComponentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.service, self.kind.as_str())
    }
}

/// A ready replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub replica: String,
    pub addr: SocketAddr,
    /// The replica's gRPC port, when it serves one (transformers do not).
    pub grpc: Option<SocketAddr>,
    /// The GPU the replica was placed on (`None`: CPU).
    pub gpu: Option<u32>,
    /// The replica's process id, where the backend knows it (one host).
    pub pid: Option<u32>,
    /// How it last became ready (started or resumed), where the backend knows.
    pub cold_start: Option<ColdStart>,
}

/// How to start one replica of a component.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaTemplate {
    /// Arguments after `siesta serve` (local backend) or the container args (Kubernetes).
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Device memory one replica needs on a GPU; `None` for components that run on CPU.
    pub gpu_memory_bytes: Option<u64>,
    /// How its replicas use the idle tiers; `None`: they only start and exit (a transformer
    /// holds no device memory to give back).
    pub tiers: Option<ReplicaTiers>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplicaTiers {
    pub policy: TierPolicy,
    /// Memory pressure parks a component's replicas down to this, never below.
    pub min_replicas: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendStatus {
    pub desired: u32,
    pub starting: u32,
    pub ready: u32,
    /// Replicas parked: device memory given back, process and weights in host memory kept.
    pub parked: u32,
    /// Device memory of its hot replicas on GPUs (measured once they reported).
    pub device_memory_bytes: u64,
    /// Why a wanted replica is not starting (e.g. no GPU has room for the model).
    pub pending: Option<String>,
    /// Replicas keep failing: how often, the last error, when the next start is allowed.
    pub crash_loop: Option<CrashLoop>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("component {0} is not registered")]
    Unknown(String),
}

pub trait ReplicaBackend: Send + Sync + 'static {
    /// Makes a component known; its replica count starts at 0.
    fn register(&self, key: &ComponentKey, template: ReplicaTemplate);
    /// Asks for `replicas` replicas; the backend converges in the background.
    fn scale(&self, key: &ComponentKey, replicas: u32) -> Result<(), BackendError>;
    /// The ready endpoints, updated as replicas become ready or go away.
    fn endpoints(&self, key: &ComponentKey)
    -> Result<watch::Receiver<Vec<Endpoint>>, BackendError>;
    fn status(&self, key: &ComponentKey) -> Result<BackendStatus, BackendError>;
    /// Whether the component is in a crash loop and waiting out its backoff; held requests are
    /// answered with it rather than held to their deadline. A backend that cannot tell never
    /// reports one.
    fn crash_loop(
        &self,
        key: &ComponentKey,
    ) -> Result<watch::Receiver<Option<CrashLoop>>, BackendError> {
        self.status(key)?;
        Ok(watch::channel(None).1)
    }
    /// What the gateway tells the backend about the component's traffic; a backend that does
    /// not place by it gets a fresh one nobody reads.
    fn activity(&self, key: &ComponentKey) -> Result<Arc<Activity>, BackendError> {
        self.status(key)?;
        Ok(Arc::default())
    }
    /// Stops every replica (SIGTERM and drain) and waits for them.
    fn shutdown(&self) -> futures::future::BoxFuture<'static, ()>;
}
