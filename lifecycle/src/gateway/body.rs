//! Bodies through the gateway, without buffering them whole. A request body is read only once a
//! replica slot is ours, and only up to [`RETRY_BUFFER`]: a body that ends within it is kept so
//! that a connection refused by a dying replica can be retried on another one; a longer body is
//! streamed to the replica as it arrives (no retry then: it is already half sent). A response
//! streams back to the client, holding its replica slot and its demand count until the last
//! frame.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming, SizeHint};

use super::error::GatewayError;
use super::pool::{DemandGuard, Lease};

/// The most of a request body the gateway holds to be able to retry it.
pub const RETRY_BUFFER: usize = 64 << 10;

/// A request body once the gateway has looked at its start.
pub enum RequestBody {
    /// Ended within [`RETRY_BUFFER`]: may be sent again.
    Whole(Bytes),
    /// Longer: its start, and the rest still in the client's socket.
    Streaming(Prefixed),
}

impl RequestBody {
    /// Reads `body` until it ends or passes [`RETRY_BUFFER`], refusing more than `limit` bytes
    /// by its declared length.
    pub async fn read(
        mut body: Body,
        declared: Option<u64>,
        limit: usize,
    ) -> Result<RequestBody, GatewayError> {
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(GatewayError::TooLarge { limit });
        }
        let mut head = VecDeque::new();
        let mut len = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| GatewayError::Body(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                len += data.len();
                head.push_back(data);
            }
            if len > limit {
                return Err(GatewayError::TooLarge { limit });
            }
            if len > RETRY_BUFFER {
                return Ok(RequestBody::Streaming(Prefixed {
                    head,
                    rest: http_body_util::Limited::new(body, limit - len).boxed_unsync(),
                }));
            }
        }
        let mut whole = Vec::with_capacity(len);
        head.iter().for_each(|b| whole.extend_from_slice(b));
        Ok(RequestBody::Whole(Bytes::from(whole)))
    }
}

/// A request body across the attempts of one request (both protocols): unread until a replica
/// slot is ours, then kept (short: each attempt sends it again) or streamed (long: once).
pub enum Outgoing {
    Unread(Body),
    Kept(Bytes),
    Streamed,
}

impl Outgoing {
    /// The body for the next attempt; `None` once a streamed body has been sent, which cannot
    /// be sent again.
    pub async fn next(
        &mut self,
        declared: Option<u64>,
        limit: usize,
    ) -> Result<Option<Body>, GatewayError> {
        let kept = |this: &mut Self, b: Bytes| {
            *this = Outgoing::Kept(b.clone());
            Some(Body::from(b))
        };
        match std::mem::replace(self, Outgoing::Streamed) {
            Outgoing::Kept(b) => Ok(kept(self, b)),
            Outgoing::Unread(b) => match RequestBody::read(b, declared, limit).await? {
                RequestBody::Whole(b) => Ok(kept(self, b)),
                RequestBody::Streaming(p) => Ok(Some(Body::new(p))),
            },
            Outgoing::Streamed => Ok(None),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The frames already read, then the rest of the client's body.
pub struct Prefixed {
    head: VecDeque<Bytes>,
    rest: http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>,
}

impl hyper::body::Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(b) = self.head.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_empty() && self.rest.is_end_stream()
    }
}

/// A replica's response body; keeps the replica slot and the demand count until it ends.
pub struct LeasedBody {
    pub inner: Incoming,
    pub held: Option<(Lease, DemandGuard)>,
}

impl hyper::body::Body for LeasedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.held = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(parts: Vec<&'static [u8]>) -> Body {
        let frames = parts
            .into_iter()
            .map(|p| Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(p))));
        Body::new(http_body_util::StreamBody::new(futures::stream::iter(
            frames,
        )))
    }

    #[tokio::test]
    async fn a_short_body_is_kept_whole_and_a_long_one_streams_in_order() {
        let short = RequestBody::read(chunked(vec![b"ab", b"cd"]), None, 1 << 20)
            .await
            .unwrap();
        assert!(matches!(short, RequestBody::Whole(b) if b == "abcd"));

        static BIG: [u8; RETRY_BUFFER] = [7; RETRY_BUFFER];
        let long = RequestBody::read(chunked(vec![&BIG, b"xy", b"z"]), None, 1 << 20)
            .await
            .unwrap();
        let RequestBody::Streaming(p) = long else {
            panic!("a body over the retry buffer streams")
        };
        let all = Body::new(p).collect().await.unwrap().to_bytes();
        assert_eq!(all.len(), RETRY_BUFFER + 3);
        assert_eq!(&all[RETRY_BUFFER..], b"xyz");
    }

    #[tokio::test]
    async fn a_kept_body_is_sent_on_every_attempt_and_a_streamed_one_once() {
        let mut short = Outgoing::Unread(chunked(vec![b"ab", b"cd"]));
        for _ in 0..2 {
            let b = short.next(None, 1 << 20).await.unwrap().unwrap();
            assert_eq!(b.collect().await.unwrap().to_bytes(), "abcd");
        }
        static BIG: [u8; RETRY_BUFFER + 1] = [7; RETRY_BUFFER + 1];
        let mut long = Outgoing::Unread(chunked(vec![&BIG]));
        assert!(long.next(None, 1 << 20).await.unwrap().is_some());
        assert!(long.next(None, 1 << 20).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn more_than_the_limit_is_refused_declared_or_not() {
        let e = RequestBody::read(chunked(vec![b"ab"]), Some(11), 10).await;
        assert!(matches!(e, Err(GatewayError::TooLarge { limit: 10 })));
        let e = RequestBody::read(chunked(vec![b"0123456", b"789ab"]), None, 10).await;
        assert!(matches!(e, Err(GatewayError::TooLarge { limit: 10 })));
        // Streaming past the limit fails the stream itself.
        static BIG: [u8; RETRY_BUFFER + 1] = [7; RETRY_BUFFER + 1];
        let RequestBody::Streaming(p) =
            RequestBody::read(chunked(vec![&BIG, b"0123456789"]), None, RETRY_BUFFER + 5)
                .await
                .unwrap()
        else {
            panic!("streams")
        };
        assert!(Body::new(p).collect().await.is_err());
    }
}
