//! Errors of the controller. They never reach an HTTP client: the error policy logs them and
//! retries the object later.

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("InferenceService {0} has no namespace")]
    NoNamespace(String),
    #[error("InferenceService {name}: {reason}")]
    Invalid { name: String, reason: String },
}
