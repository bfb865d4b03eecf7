//! Errors of the models crate. The runtime maps them to protocol status codes in one place.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TensorError {
    #[error("unknown datatype '{0}'")]
    UnknownDatatype(String),
    #[error("tensor '{name}': expected {expected} bytes for its shape, got {got}")]
    SizeMismatch {
        name: String,
        expected: usize,
        got: usize,
    },
    #[error("tensor '{name}': expected {expected} BYTES elements for its shape, got {got}")]
    ElementCountMismatch {
        name: String,
        expected: usize,
        got: usize,
    },
    #[error("BYTES data is truncated: an element's length prefix runs past the end")]
    TruncatedBytes,
    #[error("tensor shape is too large")]
    TooLarge,
    #[error("tensor '{0}' is BYTES, not numeric")]
    NotNumeric(String),
    #[error("no tensors to batch")]
    Empty,
    #[error("tensor '{0}': parts differ in datatype or non-batch dimensions")]
    NotBatchable(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model config {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("model file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error(
        "unknown architecture '{0}' (known: mnist_cnn, resnet18/34/50/101/152, mobilenet_v2, inception_v3, onnx, torchscript, identity)"
    )]
    UnknownArchitecture(String),
    #[error("device '{0}' is not available: {1}")]
    Device(String, String),
    #[error("invalid input: {0}")]
    Input(String),
    #[error("inference failed: {0}")]
    Inference(String),
    #[error(transparent)]
    Tensor(#[from] TensorError),
}

impl From<candle_core::Error> for ModelError {
    fn from(e: candle_core::Error) -> Self {
        ModelError::Inference(e.to_string())
    }
}

/// Why an object store refused or failed a model's download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteCause {
    NotFound,
    Forbidden,
    /// The object changed between listing and download.
    Changed,
    Network,
    Other,
}

impl std::fmt::Display for RemoteCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NotFound => "not found",
            Self::Forbidden => "forbidden (check the credentials)",
            Self::Changed => "changed during the download",
            Self::Network => "network error",
            Self::Other => "store error",
        })
    }
}

impl RemoteCause {
    fn hint(&self) -> &'static str {
        match self {
            Self::Network => {
                "; if this host cannot reach the store, serve a local copy with --storage-mirror PREFIX=file:///DIR/"
            }
            _ => "",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage URI '{uri}': {reason}")]
    Invalid { uri: String, reason: String },
    #[error("storage URI '{uri}' resolves to {path}, outside the model root {root}")]
    EscapesRoot {
        uri: String,
        path: PathBuf,
        root: PathBuf,
    },
    #[error("storage URI '{uri}': no such path {path}")]
    NotFound { uri: String, path: PathBuf },
    #[error("download of {url} failed: {reason}")]
    Download { url: String, reason: String },
    #[error("download of {url}: size {got} bytes, expected {expected}")]
    SizeMismatch {
        url: String,
        expected: u64,
        got: u64,
    },
    #[error("download of {url}: sha256 {got}, expected {expected}")]
    ChecksumMismatch {
        url: String,
        expected: String,
        got: String,
    },
    #[error("storage URI '{uri}': {object}: {cause}: {detail}{hint}", hint = cause.hint())]
    Remote {
        uri: String,
        object: String,
        cause: RemoteCause,
        detail: String,
    },
    #[error(
        "storage URI '{uri}': pvc:// names a PersistentVolumeClaim, which only a cluster mounts; on one host use the claim's files (a local path or file://)"
    )]
    PvcOutsideCluster { uri: String },
    #[error("cache {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl StorageError {
    /// Worth another attempt from where the download stopped.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            Self::Remote {
                cause: RemoteCause::Network,
                ..
            }
        )
    }
}
