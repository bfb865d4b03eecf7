//! What the gateway forwards: the inference protocol (health, metadata, inference), never a
//! replica's control plane. Model load/unload, shared-memory registration, trace and log
//! settings change a replica for every client of it; through the only gateway of a cluster they
//! would be one anonymous request away (Triton keeps them behind `--model-control-mode`). They
//! stay reachable on the replica itself, on loopback or the pod network.

use axum::http::Method;

/// Whether a request is forwarded, and if not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Forward,
    /// A replica control endpoint: refused, whichever service it names.
    Control,
    /// Not a route of the inference protocols.
    Unknown,
}

/// KServe V1 and Open Inference Protocol V2 (with Triton's read-only model extensions).
pub fn rest(method: &Method, path: &str) -> Verdict {
    // On every request: the segments in a fixed array, no allocation. The longest route has 7.
    let mut buf = [""; 8];
    let mut n = 0;
    for segment in path.trim_end_matches('/').split('/').skip(1) {
        let Some(slot) = buf.get_mut(n) else {
            return Verdict::Unknown;
        };
        *slot = segment;
        n += 1;
    }
    let segments = &buf[..n];
    let get = method == Method::GET;
    let post = method == Method::POST;
    match segments {
        ["v1", "models"] if get => Verdict::Forward,
        ["v1", "models", name] => match name.rsplit_once(':') {
            None if get => Verdict::Forward,
            Some((_, "predict" | "explain")) if post => Verdict::Forward,
            _ => Verdict::Unknown,
        },
        ["v2"] | ["v2", "health", "live" | "ready"] if get => Verdict::Forward,
        ["v2", "models", _, rest @ ..] => model_v2(strip_version(rest), get, post),
        ["v2", "repository", ..]
        | ["v2", "systemsharedmemory", ..]
        | ["v2", "cudasharedmemory", ..]
        | ["v2", "logging"]
        | ["v2", "trace", "setting"] => Verdict::Control,
        _ => Verdict::Unknown,
    }
}

fn strip_version<'a, 'b>(rest: &'a [&'b str]) -> &'a [&'b str] {
    match rest {
        ["versions", _, tail @ ..] => tail,
        _ => rest,
    }
}

fn model_v2(rest: &[&str], get: bool, post: bool) -> Verdict {
    match rest {
        [] | ["ready" | "config" | "stats"] if get => Verdict::Forward,
        ["infer"] if post => Verdict::Forward,
        ["trace", "setting"] => Verdict::Control,
        _ => Verdict::Unknown,
    }
}

/// The methods of KServe's `inference.GRPCInferenceService` a client may call through the gateway.
pub fn grpc(path: &str) -> Verdict {
    let Some(method) = path.strip_prefix("/inference.GRPCInferenceService/") else {
        return Verdict::Unknown;
    };
    match method {
        "ServerLive" | "ServerReady" | "ModelReady" | "ServerMetadata" | "ModelMetadata"
        | "ModelInfer" | "ModelStreamInfer" | "ModelConfig" | "ModelStatistics" => Verdict::Forward,
        _ => Verdict::Control,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inference_protocol_is_forwarded() {
        for (m, p) in [
            (Method::GET, "/v1/models"),
            (Method::GET, "/v1/models/mnist"),
            (Method::POST, "/v1/models/flowers-sample:predict"),
            (Method::POST, "/v1/models/m:explain"),
            (Method::GET, "/v2"),
            (Method::GET, "/v2/health/live"),
            (Method::GET, "/v2/health/ready"),
            (Method::GET, "/v2/models/mnist"),
            (Method::GET, "/v2/models/mnist/ready"),
            (Method::GET, "/v2/models/mnist/config"),
            (Method::GET, "/v2/models/mnist/stats"),
            (Method::POST, "/v2/models/mnist/infer"),
            (Method::GET, "/v2/models/mnist/versions/1"),
            (Method::POST, "/v2/models/mnist/versions/1/infer"),
        ] {
            assert_eq!(rest(&m, p), Verdict::Forward, "{m} {p}");
        }
        for m in ["ModelInfer", "ModelMetadata", "ServerLive", "ModelConfig"] {
            let path = format!("/inference.GRPCInferenceService/{m}");
            assert_eq!(grpc(&path), Verdict::Forward, "{m}");
        }
    }

    #[test]
    fn replica_control_is_refused() {
        for (m, p) in [
            (Method::POST, "/v2/repository/index"),
            (Method::POST, "/v2/repository/models/mnist/load"),
            (Method::POST, "/v2/repository/models/mnist/unload"),
            (Method::POST, "/v2/systemsharedmemory/region/r/register"),
            (Method::POST, "/v2/cudasharedmemory/region/r/register"),
            (Method::POST, "/v2/logging"),
            (Method::POST, "/v2/trace/setting"),
            (Method::POST, "/v2/models/mnist/trace/setting"),
        ] {
            assert_eq!(rest(&m, p), Verdict::Control, "{m} {p}");
        }
        for m in [
            "RepositoryModelLoad",
            "RepositoryModelUnload",
            "RepositoryIndex",
            "SystemSharedMemoryRegister",
            "TraceSetting",
            "LogSettings",
        ] {
            let path = format!("/inference.GRPCInferenceService/{m}");
            assert_eq!(grpc(&path), Verdict::Control, "{m}");
        }
    }

    #[test]
    fn anything_else_is_unknown() {
        for (m, p) in [
            (Method::GET, "/"),
            (Method::GET, "/metrics"),
            (Method::DELETE, "/v2/models/mnist"),
            (Method::GET, "/v2/models/mnist/infer"),
            (Method::POST, "/v1/models/m:unload"),
            (Method::GET, "/v2/models/mnist/versions/1/x"),
            (Method::GET, "/v3/everything"),
            (Method::POST, "/v2/models/m/versions/1/infer/a/b/c/d"),
        ] {
            assert_eq!(rest(&m, p), Verdict::Unknown, "{m} {p}");
        }
        assert_eq!(
            grpc("/grpc.reflection.v1.ServerReflection/x"),
            Verdict::Unknown
        );
    }
}
