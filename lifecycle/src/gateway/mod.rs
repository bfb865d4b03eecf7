//! The gateway: activator and queue-proxy in one. Routes by path (`/v1/models/{name}...`,
//! `/v2/models/{name}/...`) or `Host` (`{name}.…`, `{name}-predictor.…`), counts demand per
//! component, holds requests while a component has no ready replica, enforces
//! `containerConcurrency`, and retries on another replica only requests that never reached one.
//! It forwards the inference protocols only, never a replica's control endpoints (`forwarded`).

mod body;
mod error;
pub(crate) mod forwarded;
pub(crate) mod grpc;
pub mod history;
pub mod install;
pub mod pool;
pub(crate) mod stats;
pub(crate) mod trace;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;

use self::body::{BodyBudget, LeasedBody, Outgoing};
use self::error::GatewayError;
use self::pool::{Lease, Pool};

const MAX_BODY: usize = 64 << 20;
/// The live page: polls `/siesta/status` each second and plots replicas and demand per component.
const DASHBOARD: &str = include_str!("dashboard.html");
const ATTEMPTS: usize = 3;
const POOL_IDLE: Duration = Duration::from_secs(5);

/// The components of one InferenceService: where requests enter, and the predictor (which the
/// transformer calls back through the gateway).
#[derive(Clone)]
pub struct Route {
    /// The InferenceService's namespace: a `Host` that names another one is not this route.
    pub namespace: String,
    pub entry: Arc<Pool>,
    pub predictor: Arc<Pool>,
    pub timeout: Duration,
}

/// The gateway's listening socket could not be had.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// Binds the gateway's listener; with it, the address it got (a port 0 resolved).
pub async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), BindError> {
    let fail = |source| BindError { addr, source };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(fail)?;
    let local = listener.local_addr().map_err(fail)?;
    Ok((listener, local))
}

/// The routes by InferenceService name; in a cluster they change as InferenceServices come
/// and go.
pub type Routes = Arc<parking_lot::RwLock<HashMap<String, Route>>>;

/// Renders the process's Prometheus metrics.
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;
/// The `/siesta/status` document.
pub type StatusRender = Arc<dyn Fn() -> crate::status::StatusDocument + Send + Sync>;

#[derive(Clone)]
pub struct Gateway {
    routes: Routes,
    client: Client<HttpConnector, Body>,
    /// HTTP/2 with prior knowledge, for gRPC to the replicas' gRPC ports.
    h2: Client<HttpConnector, Body>,
    metrics: MetricsRender,
    status: StatusRender,
    recorder: Option<trace::TraceRecorder>,
    body_budget: BodyBudget,
    history: Arc<history::History>,
}

#[derive(serde::Deserialize)]
struct HistoryQuery {
    since: Option<u64>,
}

/// Request-body bytes held in memory at once by default, all requests together
/// (`--max-buffered-body-bytes`).
pub const DEFAULT_BODY_BUDGET: usize = 256 << 20;
pub use body::BODY_TIMEOUT;

impl Gateway {
    pub fn new(
        routes: HashMap<String, Route>,
        metrics: MetricsRender,
        status: StatusRender,
        recorder: Option<trace::TraceRecorder>,
    ) -> Self {
        Self::with_routes(
            Arc::new(parking_lot::RwLock::new(routes)),
            metrics,
            status,
            recorder,
        )
    }

    /// A gateway whose routes the caller keeps changing.
    pub fn with_routes(
        routes: Routes,
        metrics: MetricsRender,
        status: StatusRender,
        recorder: Option<trace::TraceRecorder>,
    ) -> Self {
        let history = Arc::new(history::History::default());
        let sampled = status.clone();
        // Ends when the last clone of the gateway (and its history) is dropped.
        history.run(move || sampled());
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.set_nodelay(true);
        Gateway {
            routes,
            // Idle pooled connections go before a replica's header read timeout (10 s by
            // default) closes them: a request never lands on a connection being closed.
            client: Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(POOL_IDLE)
                .build(connector.clone()),
            h2: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(connector),
            metrics,
            status,
            recorder,
            body_budget: BodyBudget::new(DEFAULT_BODY_BUDGET, body::BODY_TIMEOUT),
            history,
        }
    }

    /// At most `bytes` of request bodies held in memory at once (past it, bodies stream to
    /// the replica without a retry),
    /// and a client has `timeout` to send what is read ahead (else 408).
    pub fn with_body_limits(mut self, bytes: usize, timeout: Duration) -> Self {
        self.body_budget = BodyBudget::new(bytes, timeout);
        self
    }

    /// Model traffic on every path, except the gateway's own `/siesta/status` and `/siesta/metrics`.
    pub fn router(self) -> axum::Router {
        axum::Router::new()
            .route(
                "/siesta/status",
                axum::routing::get(
                    |State(gw): State<Gateway>| async move { axum::Json((gw.status)()) },
                ),
            )
            .route(
                "/siesta/history",
                axum::routing::get(
                    |State(gw): State<Gateway>,
                     axum::extract::Query(q): axum::extract::Query<HistoryQuery>| async move {
                        axum::Json(gw.history.since(q.since))
                    },
                ),
            )
            .route(
                "/dashboard",
                axum::routing::get(|| async { axum::response::Html(DASHBOARD) }),
            )
            .route(
                "/siesta/metrics",
                axum::routing::get(|State(gw): State<Gateway>| async move { (gw.metrics)() }),
            )
            .fallback(handle)
            .with_state(self)
    }

    /// By `Host` (HTTP/1) or `:authority` (HTTP/2), then by the model name in the path.
    ///
    /// A host of three or more labels is KServe's `{name}.{namespace}.{domain}`: it routes only
    /// to that namespace's service. A same-named service of another namespace is not the one the
    /// client asked for, so that is no route at all, not a fallback to the path.
    fn route(&self, uri: &Uri, headers: &HeaderMap) -> Option<(Arc<Pool>, Duration)> {
        match self.route_by_host(uri, headers) {
            HostRoute::Found(pool, timeout) => Some((pool, timeout)),
            HostRoute::OtherNamespace => None,
            HostRoute::NotByHost => self.route_model(model_in_path(uri.path())?),
        }
    }

    fn route_by_host(&self, uri: &Uri, headers: &HeaderMap) -> HostRoute {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| uri.host())
            .unwrap_or_default();
        let host = host.split(':').next().unwrap_or_default();
        let mut labels = host.split('.');
        let first = labels.next().unwrap_or_default();
        let second = labels.next();
        let namespace = second.filter(|_| labels.next().is_some());
        let in_namespace = |r: &Route| namespace.is_none_or(|ns| ns == r.namespace);
        // The whole name first: a service may itself end in "-transformer" (scenario 5's
        // `torch-transformer`).
        let routes = self.routes.read();
        let by_host = routes
            .get(first)
            .map(|r| (r, &r.entry))
            .or_else(|| {
                let r = routes.get(first.strip_suffix("-predictor")?)?;
                Some((r, &r.predictor))
            })
            .or_else(|| {
                let r = routes.get(first.strip_suffix("-transformer")?)?;
                Some((r, &r.entry))
            });
        match by_host {
            Some((r, pool)) if in_namespace(r) => HostRoute::Found(pool.clone(), r.timeout),
            Some(_) => HostRoute::OtherNamespace,
            None => HostRoute::NotByHost,
        }
    }

    fn route_model(&self, name: &str) -> Option<(Arc<Pool>, Duration)> {
        self.routes
            .read()
            .get(name)
            .map(|r| (r.entry.clone(), r.timeout))
    }
}

/// What the `Host` says about the route.
enum HostRoute {
    Found(Arc<Pool>, Duration),
    /// It names a service that is served, but from another namespace than the one it names.
    OtherNamespace,
    /// It names no served service: the request names its model instead.
    NotByHost,
}

fn model_in_path(path: &str) -> Option<&str> {
    let rest = path
        .strip_prefix("/v1/models/")
        .or_else(|| path.strip_prefix("/v2/models/"))?;
    let name = rest.split(['/', ':']).next()?;
    (!name.is_empty()).then_some(name)
}

async fn handle(State(gw): State<Gateway>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    if grpc::is_grpc(&parts.headers) {
        return grpc::forward(&gw, parts, body).await;
    }
    match forwarded::rest(&parts.method, parts.uri.path()) {
        forwarded::Verdict::Forward => {}
        forwarded::Verdict::Control => {
            return GatewayError::Control(parts.uri.path().to_string()).into_response();
        }
        forwarded::Verdict::Unknown => {
            return GatewayError::NotInference(format!("{} {}", parts.method, parts.uri.path()))
                .into_response();
        }
    }
    let Some((pool, timeout)) = gw.route(&parts.uri, &parts.headers) else {
        return GatewayError::NoRoute(parts.uri.path().to_string()).into_response();
    };
    forward_rest(&gw, &pool, timeout, parts, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn forward_rest(
    gw: &Gateway,
    pool: &Arc<Pool>,
    timeout: Duration,
    parts: axum::http::request::Parts,
    body: Body,
) -> Result<Response, GatewayError> {
    let demand = pool.arrive();
    let arrived = Instant::now();
    let deadline = arrived + timeout;
    let timed_out = || GatewayError::Timeout(timeout.as_secs());
    // The body is read only once a replica slot is ours: held requests keep their bodies in
    // the socket, so a thousand held requests cost a thousand small futures, not their bodies
    // (Knative's activator ran out of memory buffering them, serving#13583).
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    if declared.is_some_and(|n: u64| n > MAX_BODY as u64) {
        // Refused before it is held, let alone read.
        return Err(GatewayError::TooLarge { limit: MAX_BODY });
    }
    let mut outgoing = Outgoing::Unread(body);
    let mut tried: Vec<String> = Vec::new();
    for _ in 0..ATTEMPTS {
        let lease = pool.acquire(deadline, &tried).await?;
        let held = arrived.elapsed();
        let Some(upstream_body) =
            tokio::time::timeout_at(deadline, outgoing.next(declared, MAX_BODY, &gw.body_budget))
                .await
                .map_err(|_| timed_out())??
        else {
            return Err(GatewayError::Upstream {
                replica: tried.join(", "),
                reason: "connection refused, and the body had already been streamed".into(),
            });
        };
        let uri = format!(
            "http://{}{}",
            lease.addr,
            parts.uri.path_and_query().map_or("/", |p| p.as_str())
        );
        let mut upstream = hyper::Request::builder()
            .method(parts.method.clone())
            .uri(uri);
        for (k, v) in &parts.headers {
            if k != header::HOST && k != header::CONNECTION && k != header::TRANSFER_ENCODING {
                upstream = upstream.header(k, v);
            }
        }
        let upstream = upstream.body(upstream_body).expect("valid request parts");
        match tokio::time::timeout_at(deadline, gw.client.request(upstream)).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(e)) if e.is_connect() => {
                // Never reached the replica: safe to try another, if the body can be sent again.
                tracing::warn!(component = %pool.key, replica = %lease.replica, error = %e, "connect failed; retrying");
                tried.push(lease.replica.clone());
                continue;
            }
            Ok(Err(e)) => return Err(lost(pool, &lease.replica, &e)),
            Ok(Ok(resp)) => {
                let (mut head, body) = resp.into_parts();
                head.headers.remove(header::TRANSFER_ENCODING);
                metrics::counter!("siesta_gateway_requests_total", "component" => pool.name.clone(), "status" => head.status.as_str().to_string()).increment(1);
                metrics::histogram!("siesta_gateway_held_seconds", "component" => pool.name.clone()).record(held.as_secs_f64());
                if let Some(r) = &gw.recorder {
                    let arrived_ms = pool
                        .now_ms()
                        .saturating_sub(arrived.elapsed().as_millis() as u64);
                    r.record(
                        &pool.name,
                        arrived_ms,
                        arrived.elapsed().saturating_sub(held),
                    );
                }
                let ms = format!("{:.3}", held.as_secs_f64() * 1e3);
                head.headers.insert(
                    "x-siesta-held-ms",
                    HeaderValue::from_str(&ms).expect("ascii"),
                );
                note_cold_start(pool, &lease, held, &mut head.headers);
                // Streams back; the slot is freed when the last frame is through.
                return Ok(Response::from_parts(
                    head,
                    Body::new(LeasedBody {
                        inner: body,
                        held: Some((lease, demand)),
                    }),
                ));
            }
        }
    }
    Err(GatewayError::Upstream {
        replica: tried.join(", "),
        reason: "connection refused on every attempt".into(),
    })
}

/// A request that found no replica and waited for one to start or resume says which, and
/// what the wait was made of: `x-siesta-cold-start: spawn|resume` and
/// `x-siesta-cold-start-ms: process=..;fetch=..;load=..;upload=..;warmup=..;queue=..`
/// (gRPC: the same as response metadata); `siesta_cold_start_seconds{component,kind}` is the
/// time such requests were held.
pub(crate) fn note_cold_start(pool: &Pool, lease: &Lease, held: Duration, headers: &mut HeaderMap) {
    let Some(cold) = &lease.cold_start else {
        return;
    };
    metrics::histogram!("siesta_cold_start_seconds", "component" => pool.name.clone(), "kind" => cold.kind.as_str())
        .record(held.as_secs_f64());
    pool.count_cold_start(cold.kind);
    headers.insert(
        "x-siesta-cold-start",
        HeaderValue::from_static(cold.kind.as_str()),
    );
    headers.insert(
        "x-siesta-cold-start-ms",
        HeaderValue::from_str(&cold.phases_header(held)).expect("ascii"),
    );
}

/// A request whose exchange with its replica failed. If the client's own body failed (past the
/// limit, or the client broke off), that is the client's error. Otherwise the replica failed
/// before answering (it died, or cut the connection): not retried, since the replica may have
/// acted on it, and counted, so that losses can be matched against replica failures
/// (`siesta_gateway_lost_total`).
fn lost(pool: &Pool, replica: &str, e: &hyper_util::client::legacy::Error) -> GatewayError {
    if let Some(fault) = client_body_fault(e) {
        return fault;
    }
    metrics::counter!("siesta_gateway_lost_total", "component" => pool.name.clone()).increment(1);
    tracing::warn!(component = %pool.key, %replica, error = %e, "request lost with its replica");
    GatewayError::Upstream {
        replica: replica.to_string(),
        reason: e.to_string(),
    }
}

/// The client's body as the cause of a failed upstream exchange: hyper reports an error of the
/// body it was sending as a "user" error, with the body's own error as its source.
fn client_body_fault(e: &hyper_util::client::legacy::Error) -> Option<GatewayError> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    let mut from_body = false;
    while let Some(err) = cause {
        if err.is::<http_body_util::LengthLimitError>() {
            return Some(GatewayError::TooLarge { limit: MAX_BODY });
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            from_body |= h.is_user();
        }
        cause = err.source();
    }
    from_body.then(|| GatewayError::Body(format!("the client's body failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_come_from_v1_and_v2_paths() {
        assert_eq!(
            model_in_path("/v1/models/flowers-sample:predict"),
            Some("flowers-sample")
        );
        assert_eq!(
            model_in_path("/v1/models/flowers-sample"),
            Some("flowers-sample")
        );
        assert_eq!(model_in_path("/v2/models/mnist/infer"), Some("mnist"));
        assert_eq!(model_in_path("/v2/health/ready"), None);
        assert_eq!(model_in_path("/v1/models/"), None);
    }

    #[tokio::test]
    async fn a_host_naming_a_namespace_routes_only_to_that_namespaces_service() {
        use crate::backend::ComponentKey;
        use crate::manifest::ComponentKind;
        let pool = |kind| {
            let key = ComponentKey {
                service: "m".into(),
                kind,
            };
            let none = tokio::sync::watch::channel(Vec::new()).1;
            Pool::new(key, 0, 10, none, tokio::sync::watch::channel(None).1)
        };
        let (entry, predictor) = (
            pool(ComponentKind::Transformer),
            pool(ComponentKind::Predictor),
        );
        let route = Route {
            namespace: "team-a".into(),
            entry: entry.clone(),
            predictor: predictor.clone(),
            timeout: Duration::from_secs(1),
        };
        let gw = Gateway::new(
            HashMap::from([("m".to_string(), route)]),
            Arc::new(String::new),
            Arc::new(Default::default),
            None,
        );
        let routed = |host: &str, path: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, host.parse().unwrap());
            gw.route(&path.parse().unwrap(), &headers)
                .map(|(p, _)| p.key.kind)
        };
        let infer = "/v2/models/m/infer";
        assert_eq!(
            routed("m.team-a.example.com", infer),
            Some(ComponentKind::Transformer)
        );
        assert_eq!(
            routed("m-predictor.team-a.example.com:8080", "/"),
            Some(ComponentKind::Predictor)
        );
        assert_eq!(routed("m", "/"), Some(ComponentKind::Transformer));
        assert_eq!(
            routed("localhost:8080", infer),
            Some(ComponentKind::Transformer)
        );
        assert_eq!(
            routed("127.0.0.1:8080", infer),
            Some(ComponentKind::Transformer)
        );
        // Another namespace's `m` is not this one, even though the path names `m` too.
        assert_eq!(routed("m.team-b.example.com", infer), None);
        assert_eq!(routed("m-predictor.team-b.svc.cluster.local", infer), None);
    }
}
