//! gRPC (h2c) through the gateway: KServe's V2 `GRPCInferenceService` to the replicas' gRPC
//! ports. A call is routed by `:authority`/`Host` like REST, or else by the model name in its
//! request message (field 1 of every V2 request that names a model). Errors are gRPC statuses
//! (`GatewayError::into_grpc_response`), never HTTP error pages a gRPC client cannot read. The response
//! streams back with its trailers, and the replica slot is held until the last frame.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use tokio::time::Instant;

use super::body::{LeasedBody, Outgoing};
use super::error::GatewayError;
use super::forwarded;
use super::pool::Pool;
use super::{ATTEMPTS, Gateway, HostRoute, MAX_BODY, lost};

/// How far into a message its model name is looked for: a name is at most a few hundred bytes
/// and comes first.
const MODEL_NAME_WITHIN: usize = 4 << 10;

pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The model name of a V2 request message: field 1 (a string) of the first length-prefixed
/// message in the body.
pub(crate) fn model_name(body: &[u8]) -> Option<&str> {
    // 1 byte compressed flag (must be 0: a compressed message cannot be read here), 4 bytes length.
    let (&flag, rest) = body.split_first()?;
    if flag != 0 || rest.len() < 4 {
        return None;
    }
    let len = u32::from_be_bytes(rest[..4].try_into().ok()?) as usize;
    // Only the message's start may be here: the name is found if it lies within it.
    let mut msg = &rest[4..rest.len().min(4usize.saturating_add(len))];
    while !msg.is_empty() {
        let (key, n) = varint(msg)?;
        msg = &msg[n..];
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => msg = &msg[varint(msg)?.1..],
            1 => msg = msg.get(8..)?,
            5 => msg = msg.get(4..)?,
            2 => {
                let (len, n) = varint(msg)?;
                let end = n.checked_add(usize::try_from(len).ok()?)?;
                let value = msg.get(n..end)?;
                if field == 1 {
                    return std::str::from_utf8(value).ok();
                }
                msg = &msg[end..];
            }
            _ => return None,
        }
    }
    None
}

fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, byte) in b.iter().take(10).enumerate() {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Forwards one gRPC call to a replica of the routed component.
pub async fn forward(gw: &Gateway, parts: axum::http::request::Parts, body: Body) -> Response {
    route_and_call(gw, parts, body)
        .await
        .unwrap_or_else(GatewayError::into_grpc_response)
}

async fn route_and_call(
    gw: &Gateway,
    parts: axum::http::request::Parts,
    body: Body,
) -> Result<Response, GatewayError> {
    match forwarded::grpc(parts.uri.path()) {
        forwarded::Verdict::Forward => {}
        forwarded::Verdict::Control => {
            return Err(GatewayError::Control(parts.uri.path().to_string()));
        }
        forwarded::Verdict::Unknown => {
            return Err(GatewayError::NotInference(parts.uri.path().to_string()));
        }
    }
    match gw.route_by_host(&parts.uri, &parts.headers) {
        // Routed by `:authority`: the message stays in the socket while the call is held.
        HostRoute::Found(pool, timeout) => {
            call(gw, &pool, timeout, parts, Outgoing::Unread(body)).await
        }
        HostRoute::OtherNamespace => Err(GatewayError::NoRoute(format!(
            "{} in the namespace the authority names",
            parts.uri.authority().map_or("?", |a| a.as_str())
        ))),
        // Only the message names the model: its start is read to find the route (encoders
        // write `model_name`, field 1, first), and the rest stays in the socket while held.
        HostRoute::NotByHost => {
            let message = Outgoing::read_ahead(body, MAX_BODY, &gw.body_budget).await?;
            let start = message.prefix(MODEL_NAME_WITHIN);
            let name = model_name(&start);
            let (pool, timeout) = name.and_then(|m| gw.route_model(m)).ok_or_else(|| {
                GatewayError::NoRoute(format!(
                    "{} (model {:?})",
                    parts.uri.path(),
                    name.unwrap_or("?")
                ))
            })?;
            call(gw, &pool, timeout, parts, message).await
        }
    }
}

async fn call(
    gw: &Gateway,
    pool: &Arc<Pool>,
    timeout: Duration,
    parts: axum::http::request::Parts,
    mut message: Outgoing,
) -> Result<Response, GatewayError> {
    let demand = pool.arrive();
    let arrived = Instant::now();
    let deadline = arrived + timeout;
    let mut tried = Vec::new();
    for _ in 0..ATTEMPTS {
        let lease = pool.acquire(deadline, &tried).await?;
        let Some(body) =
            tokio::time::timeout_at(deadline, message.next(None, MAX_BODY, &gw.body_budget))
                .await
                .map_err(|_| GatewayError::Timeout(timeout.as_secs()))??
        else {
            return Err(GatewayError::Upstream {
                replica: tried.join(", "),
                reason: "connection refused, and the message had already been streamed".into(),
            });
        };
        let addr = lease
            .grpc
            .ok_or_else(|| GatewayError::NoGrpc(pool.name.clone()))?;
        let mut upstream = hyper::Request::builder()
            .method(parts.method.clone())
            .uri(format!(
                "http://{addr}{}",
                parts.uri.path_and_query().map_or("/", |p| p.as_str())
            ));
        for (k, v) in &parts.headers {
            if k != header::HOST && k != header::CONNECTION {
                upstream = upstream.header(k, v);
            }
        }
        let upstream = upstream.body(body).expect("valid request parts");
        match tokio::time::timeout_at(deadline, gw.h2.request(upstream)).await {
            Err(_) => return Err(GatewayError::Timeout(timeout.as_secs())),
            Ok(Err(e)) if e.is_connect() => {
                tracing::warn!(component = %pool.key, replica = %lease.replica, error = %e, "gRPC connect failed; retrying");
                tried.push(lease.replica.clone());
            }
            Ok(Err(e)) => return Err(lost(pool, &lease.replica, &e)),
            Ok(Ok(resp)) => {
                metrics::counter!("siesta_gateway_requests_total", "component" => pool.name.clone(), "status" => "grpc").increment(1);
                let (mut head, inner) = resp.into_parts();
                // As on REST: how long the call waited for a replica (gRPC response metadata).
                let held = arrived.elapsed();
                let ms = format!("{:.3}", held.as_secs_f64() * 1e3);
                head.headers.insert(
                    "x-siesta-held-ms",
                    HeaderValue::from_str(&ms).expect("ascii"),
                );
                super::note_cold_start(pool, &lease, held, &mut head.headers);
                return Ok(Response::from_parts(
                    head,
                    Body::new(LeasedBody {
                        inner,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(msg: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8];
        b.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        b.extend_from_slice(msg);
        b
    }

    #[test]
    fn the_model_name_is_field_one_of_the_message() {
        // ModelInferRequest { model_name: "mnist", model_version: "1" }
        let msg = [&[0x0a, 5][..], b"mnist", &[0x12, 1], b"1"].concat();
        assert_eq!(model_name(&frame(&msg)), Some("mnist"));
        // Other fields first (a varint, a fixed64, a string) are skipped.
        let msg = [
            &[0x18, 0x96, 0x01, 0x21][..],
            &[0; 8],
            &[0x12, 1],
            b"x",
            &[0x0a, 2],
            b"ab",
        ]
        .concat();
        assert_eq!(model_name(&frame(&msg)), Some("ab"));
        // ServerLiveRequest is empty; compressed and truncated messages name no model.
        assert_eq!(model_name(&frame(&[])), None);
        assert_eq!(model_name(&[1, 0, 0, 0, 0]), None);
        assert_eq!(model_name(&frame(&[0x0a, 9, b'a'])), None);
        // The start of a large message is enough: the name comes first.
        let big = [
            &[0x0a, 5][..],
            b"mnist",
            &[0x12, 0x80, 0x80, 0x80, 0x04],
            &[0; 4096],
        ]
        .concat();
        let framed = frame(&big);
        assert_eq!(model_name(&framed[..64]), Some("mnist"));
        assert_eq!(model_name(&framed[..8]), None);
    }
}
