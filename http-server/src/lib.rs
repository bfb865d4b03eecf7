//! The accept loop every Siesta HTTP server runs (replicas, the transformer, both gateways):
//! HTTP/1 and HTTP/2 (h2c) on one port, with the limits a hostile or broken client cannot
//! outlast. A client that sends half a header and stops is cut off after the header read
//! timeout (axum's `serve` gives hyper no timer, so it never is); an HTTP/2 connection carries
//! a bounded number of concurrent streams and is pinged, so a dead peer is dropped.
//!
//! Owns: connections, not requests: body limits, admission and routing are the servers' own;
//! the one rule for what of a server's error text may leave it (`redact`); the replica control
//! contract (`replica_control`).
//!
//! Must not depend on: any other Siesta crate; every server depends on it.

pub mod redact;
pub mod replica_control;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// Connection limits; each server exposes them as flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// From a connection's first byte (or a keep-alive connection's next request) to the end of
    /// the request head.
    pub header_read_timeout: Duration,
    /// Concurrent streams one HTTP/2 connection may open.
    pub http2_max_concurrent_streams: u32,
    /// How often an idle HTTP/2 connection is pinged, and how long the answer may take.
    pub http2_keep_alive_interval: Duration,
    pub http2_keep_alive_timeout: Duration,
    /// Client bytes an HTTP/2 stream, and a whole connection, may send before the server reads
    /// them (flow-control windows): what one connection can make the server buffer.
    pub http2_stream_window: u32,
    pub http2_connection_window: u32,
    /// Connections open at once; past it the server stops accepting until one closes (the
    /// kernel's backlog holds the next ones).
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(10),
            http2_max_concurrent_streams: 256,
            http2_keep_alive_interval: Duration::from_secs(30),
            http2_keep_alive_timeout: Duration::from_secs(10),
            http2_stream_window: 256 << 10,
            http2_connection_window: 1 << 20,
            max_connections: 10_000,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves; then stops accepting, lets in-flight
/// requests finish and closes idle connections, and returns once every connection is closed.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .keep_alive_interval(limits.http2_keep_alive_interval)
        .keep_alive_timeout(limits.http2_keep_alive_timeout)
        .initial_stream_window_size(limits.http2_stream_window)
        .initial_connection_window_size(limits.http2_connection_window);
    let graceful = GracefulShutdown::new();
    let open = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = open.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            app.clone().oneshot(req)
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            // A client that vanished or broke the protocol: nothing to answer.
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start(
        limits: ConnectionLimits,
    ) -> (
        std::net::SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "hi" }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, app, limits, async move {
            let _ = stopped.await;
        }));
        (addr, stop, server)
    }

    #[tokio::test]
    async fn a_half_sent_header_is_cut_off_and_whole_requests_are_served() {
        let limits = ConnectionLimits {
            header_read_timeout: Duration::from_millis(300),
            ..Default::default()
        };
        let (addr, stop, server) = start(limits).await;
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "the connection was not closed");
        let head = String::from_utf8_lossy(&buf);
        assert!(buf.is_empty() || head.starts_with("HTTP/1.1 408"), "{head}");

        let mut ok = tokio::net::TcpStream::connect(addr).await.unwrap();
        ok.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        ok.read_to_end(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));

        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn past_the_connection_limit_the_next_client_waits_for_a_free_one() {
        let limits = ConnectionLimits {
            max_connections: 1,
            ..Default::default()
        };
        let (addr, stop, server) = start(limits).await;
        let get = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
        let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
        first.write_all(get).await.unwrap();
        let mut head = [0u8; 12];
        first.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        // The first stays open (keep-alive): the second is not served meanwhile.
        let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
        second.write_all(get).await.unwrap();
        let waited =
            tokio::time::timeout(Duration::from_millis(300), second.read_exact(&mut head)).await;
        assert!(waited.is_err(), "served past the limit");
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), second.read_exact(&mut head))
            .await
            .expect("served once the first closed")
            .unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        drop(second);
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn shutdown_closes_idle_keep_alive_connections() {
        let (addr, stop, server) = start(ConnectionLimits::default()).await;
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut first = [0u8; 12];
        idle.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"HTTP/1.1 200");
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("shutdown waited on an idle connection")
            .unwrap();
    }
}
