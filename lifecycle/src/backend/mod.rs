//! Where replicas come from. The autoscaler and gateway only see [`ReplicaBackend`]: ask for a
//! replica count, watch the ready endpoints. One host: [`local::LocalBackend`] (child processes);
//! a cluster: Deployments (the Kubernetes issue).

pub mod local;

use std::fmt;
use std::net::SocketAddr;

use tokio::sync::watch;

use crate::manifest::ComponentKind;

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
}

/// How to start one replica of a component.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaTemplate {
    /// Arguments after `siesta serve` (local backend) or the container args (Kubernetes).
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendStatus {
    pub desired: u32,
    pub starting: u32,
    pub ready: u32,
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
    /// Stops every replica (SIGTERM and drain) and waits for them.
    fn shutdown(&self) -> futures::future::BoxFuture<'static, ()>;
}
