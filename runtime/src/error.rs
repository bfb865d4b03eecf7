//! The server's error type, and the one place where errors become HTTP and gRPC statuses
//! (KServe's mapping: 400 invalid input, 404 unknown model, 413 body too large, 429 overloaded,
//! 503 not ready, 500 inference error).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use siesta_models::{ModelError, StorageError, TensorError};

#[derive(Debug, Clone, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    InvalidInput(String),
    #[error("model '{0}' not found")]
    ModelNotFound(String),
    #[error("no route for {0}")]
    NoRoute(String),
    #[error("model '{name}' has no version '{version}' (served version: 1)")]
    VersionNotFound { name: String, version: String },
    #[error("model '{0}' is not ready")]
    ModelNotReady(String),
    #[error(
        "model {0} is off on this server (--model-control-mode none, the default); start it with --model-control-mode explicit"
    )]
    ModelControlOff(&'static str),
    #[error(
        "replica control (park, resume) needs the token its lifecycle manager gave it (x-siesta-control-token)"
    )]
    ControlDenied,
    #[error("request body of {got} bytes exceeds the limit of {limit} bytes")]
    BodyTooLarge { got: usize, limit: usize },
    /// A request within the body limit that asks for more work or memory than a limit allows.
    #[error("{what}: the limit is {limit} ({flag})")]
    LimitExceeded {
        what: String,
        limit: u64,
        flag: &'static str,
    },
    #[error("model '{model}' is overloaded: {queued} requests queued (limit {limit}); retry later")]
    Overloaded {
        model: String,
        queued: usize,
        limit: usize,
    },
    #[error(
        "the server holds as many request bodies as it may ({limit} bytes, --max-buffered-body-bytes); retry later"
    )]
    BodyMemory { limit: usize },
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("model load failed: {0}")]
    Load(String),
    #[error("the model worker for '{0}' stopped")]
    WorkerGone(String),
    #[error("request timed out after {0} ms")]
    Timeout(u64),
    #[error("the client did not send the request body within {0} ms")]
    ClientTimeout(u64),
    /// A transformer's call to its predictor failed; `status` is what the predictor answered
    /// (0 when it could not be reached).
    #[error("predictor: {message}")]
    Predictor { status: u16, message: String },
}

pub type Result<T, E = ServeError> = std::result::Result<T, E>;

impl ServeError {
    pub fn status(&self) -> StatusCode {
        match self {
            ServeError::InvalidInput(_) => StatusCode::BAD_REQUEST,
            ServeError::ModelNotFound(_)
            | ServeError::VersionNotFound { .. }
            | ServeError::NoRoute(_) => StatusCode::NOT_FOUND,
            ServeError::ModelNotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            ServeError::ModelControlOff(_) | ServeError::ControlDenied => StatusCode::FORBIDDEN,
            ServeError::BodyTooLarge { .. } | ServeError::LimitExceeded { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ServeError::Overloaded { .. } | ServeError::BodyMemory { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ServeError::Inference(_) | ServeError::Load(_) | ServeError::WorkerGone(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ServeError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ServeError::ClientTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            // Overload, unavailability and timeouts pass through so clients back off the same
            // way; anything else the predictor did wrong is the gateway's 502.
            ServeError::Predictor { status, .. } => match *status {
                429 | 503 | 504 => StatusCode::from_u16(*status).expect("valid status"),
                _ => StatusCode::BAD_GATEWAY,
            },
        }
    }

    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ServeError::InvalidInput(_) => "invalid_input",
            ServeError::ModelNotFound(_)
            | ServeError::VersionNotFound { .. }
            | ServeError::NoRoute(_) => "not_found",
            ServeError::ModelNotReady(_) => "not_ready",
            ServeError::ModelControlOff(_) | ServeError::ControlDenied => "forbidden",
            ServeError::BodyTooLarge { .. } | ServeError::LimitExceeded { .. } => "too_large",
            ServeError::Overloaded { .. } | ServeError::BodyMemory { .. } => "overloaded",
            ServeError::Inference(_) | ServeError::Load(_) | ServeError::WorkerGone(_) => {
                "internal"
            }
            ServeError::Timeout(_) | ServeError::ClientTimeout(_) => "timeout",
            ServeError::Predictor { .. } => "predictor",
        }
    }

    /// The message a client gets: a load error without credentials or the host's directories.
    fn client_message(&self) -> String {
        match self {
            ServeError::Load(_) => siesta_http_server::redact::for_client(&self.to_string()),
            _ => self.to_string(),
        }
    }

    pub fn to_grpc(&self) -> tonic::Status {
        let msg = self.client_message();
        match self {
            ServeError::InvalidInput(_) | ServeError::BodyTooLarge { .. } => {
                tonic::Status::invalid_argument(msg)
            }
            ServeError::LimitExceeded { .. } => tonic::Status::resource_exhausted(msg),
            ServeError::ModelNotFound(_)
            | ServeError::VersionNotFound { .. }
            | ServeError::NoRoute(_) => tonic::Status::not_found(msg),
            ServeError::ModelNotReady(_) => tonic::Status::unavailable(msg),
            ServeError::ModelControlOff(_) | ServeError::ControlDenied => {
                tonic::Status::permission_denied(msg)
            }
            ServeError::Overloaded { .. } | ServeError::BodyMemory { .. } => {
                tonic::Status::resource_exhausted(msg)
            }
            ServeError::Timeout(_) | ServeError::ClientTimeout(_) => {
                tonic::Status::deadline_exceeded(msg)
            }
            ServeError::Inference(_) | ServeError::Load(_) | ServeError::WorkerGone(_) => {
                tonic::Status::internal(msg)
            }
            ServeError::Predictor { .. } => tonic::Status::unavailable(msg),
        }
    }
}

impl IntoResponse for ServeError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut resp = (
            status,
            Json(serde_json::json!({ "error": self.client_message() })),
        )
            .into_response();
        if matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if matches!(
            self,
            ServeError::BodyTooLarge { .. } | ServeError::ClientTimeout(_)
        ) {
            // The rest of the body was never read, so this connection cannot carry another request.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

impl From<TensorError> for ServeError {
    fn from(e: TensorError) -> Self {
        ServeError::InvalidInput(e.to_string())
    }
}

impl From<ModelError> for ServeError {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::Input(m) => ServeError::InvalidInput(m),
            ModelError::Tensor(t) => ServeError::InvalidInput(t.to_string()),
            ModelError::Inference(m) => ServeError::Inference(m),
            other => ServeError::Load(other.to_string()),
        }
    }
}

impl From<StorageError> for ServeError {
    fn from(e: StorageError) -> Self {
        ServeError::Load(e.to_string())
    }
}
