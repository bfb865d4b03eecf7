//! The gateway's errors, and the one place where they become HTTP statuses (REST) and gRPC
//! statuses (trailers-only responses a gRPC client can read).

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::pool::AcquireError;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("no InferenceService serves {0}")]
    NoRoute(String),
    #[error("request body: {0}")]
    Body(String),
    #[error("the client did not send the request body within {0} s")]
    ClientTimeout(u64),
    #[error("the request body is larger than the gateway's limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error(
        "the gateway holds as many request bodies in memory as it may (--max-buffered-body-bytes); retry later"
    )]
    BodyBudget,
    #[error(transparent)]
    Unavailable(#[from] AcquireError),
    #[error("replica {replica} failed: {reason}")]
    Upstream { replica: String, reason: String },
    #[error("no response within the component's timeout of {0} s")]
    Timeout(u64),
    #[error("{0} does not serve gRPC")]
    NoGrpc(String),
    #[error(
        "{0} is replica control (model load/unload, shared memory, trace and log settings): the gateway forwards the inference protocol only; call the replica itself"
    )]
    Control(String),
    #[error(
        "{0} is not a route of the inference protocols (KServe V1, Open Inference Protocol V2)"
    )]
    NotInference(String),
}

/// gRPC status codes the gateway answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum GrpcCode {
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Unavailable = 14,
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::NoRoute(_) | GatewayError::NotInference(_) => StatusCode::NOT_FOUND,
            GatewayError::Control(_) => StatusCode::FORBIDDEN,
            GatewayError::Body(_) => StatusCode::BAD_REQUEST,
            GatewayError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::Unavailable(_) | GatewayError::BodyBudget => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            GatewayError::Upstream { .. } | GatewayError::NoGrpc(_) => StatusCode::BAD_GATEWAY,
            GatewayError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::ClientTimeout(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }

    pub fn grpc_code(&self) -> GrpcCode {
        match self {
            GatewayError::NoRoute(_) => GrpcCode::NotFound,
            GatewayError::Control(_) => GrpcCode::PermissionDenied,
            GatewayError::NotInference(_) => GrpcCode::Unimplemented,
            GatewayError::Body(_) => GrpcCode::InvalidArgument,
            GatewayError::TooLarge { .. } | GatewayError::BodyBudget => GrpcCode::ResourceExhausted,
            GatewayError::Unavailable(AcquireError::Timeout { .. })
            | GatewayError::Timeout(_)
            | GatewayError::ClientTimeout(_) => GrpcCode::DeadlineExceeded,
            GatewayError::Unavailable(_)
            | GatewayError::Upstream { .. }
            | GatewayError::NoGrpc(_) => GrpcCode::Unavailable,
        }
    }

    /// A trailers-only gRPC response: HTTP 200 with `grpc-status` and `grpc-message` headers.
    pub fn into_grpc_response(self) -> Response {
        let mut resp = Response::new(Body::empty());
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from(self.grpc_code() as u16));
        h.insert(
            "grpc-message",
            HeaderValue::from_str(&percent_encode(&self.to_string()))
                .expect("percent-encoded is ascii"),
        );
        resp
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut resp = (
            status,
            axum::Json(serde_json::json!({"error": self.to_string()})),
        )
            .into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

/// gRPC's `grpc-message` encoding: printable ASCII except `%` as is, every other byte as %XX.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(percent_encode("50% é"), "50%25 %C3%A9");
    }

    #[test]
    fn one_error_maps_to_both_protocols() {
        let t = GatewayError::Unavailable(AcquireError::Timeout {
            component: "c".into(),
            waited_ms: 5,
        });
        assert_eq!(t.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(t.grpc_code(), GrpcCode::DeadlineExceeded);
        let r = GatewayError::NoRoute("x".into()).into_grpc_response();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "5");
    }
}
