//! Bodies through the gateway, without buffering them whole. A request body is read only once a
//! replica slot is ours, and only up to [`RETRY_BUFFER`]: a body that ends within it is kept so
//! that a connection refused by a dying replica can be retried on another one; a longer body is
//! streamed to the replica as it arrives (no retry then: it is already half sent). A response
//! streams back to the client, holding its replica slot and its demand count until the last
//! frame.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::GatewayError;
use super::pool::{DemandGuard, Lease};

/// The most of a request body the gateway holds to be able to retry it.
pub const RETRY_BUFFER: usize = 64 << 10;
/// How long a client may take by default to send what the gateway reads ahead once a replica
/// slot is its request's (`--body-timeout`): a client that stalls must not keep the slot for
/// the component's whole timeout. Beyond the read-ahead, the replica's own applies.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

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
        body: Body,
        declared: Option<u64>,
        limit: usize,
        within: Duration,
    ) -> Result<RequestBody, GatewayError> {
        tokio::time::timeout(within, Self::read_ahead(body, declared, limit))
            .await
            .map_err(|_| GatewayError::ClientTimeout(within.as_secs()))?
    }

    async fn read_ahead(
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
                    share: None,
                }));
            }
        }
        let mut whole = Vec::with_capacity(len);
        head.iter().for_each(|b| whole.extend_from_slice(b));
        Ok(RequestBody::Whole(Bytes::from(whole)))
    }
}

/// The request-body bytes the gateway holds in memory at once, all requests together: each
/// proxied request reads up to [`RETRY_BUFFER`] ahead only with a share of it. Without one,
/// its body streams through untouched (and cannot be retried), so memory stays bounded however
/// many requests are in flight.
#[derive(Clone)]
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
    /// How long the read-ahead may take.
    pub timeout: Duration,
}

/// The budget's unit: one share is one request's read-ahead.
const SHARE: u32 = (RETRY_BUFFER >> 10) as u32;

impl BodyBudget {
    pub fn new(bytes: usize, timeout: Duration) -> Self {
        BodyBudget {
            bytes: Arc::new(Semaphore::new((bytes >> 10).min(Semaphore::MAX_PERMITS))),
            timeout,
        }
    }

    fn share(&self) -> Option<OwnedSemaphorePermit> {
        let share = self.bytes.clone().try_acquire_many_owned(SHARE).ok();
        if share.is_none() {
            metrics::counter!("siesta_gateway_body_budget_exhausted_total").increment(1);
        }
        share
    }
}

/// A request body across the attempts of one request (both protocols): unread until a replica
/// slot is ours, then kept (short: each attempt sends it again) or streamed (long, or no share
/// of the budget: once).
pub enum Outgoing {
    Unread(Body),
    Kept(Bytes, OwnedSemaphorePermit),
    /// Read ahead (to route by its content) and longer than the retry buffer: sent once.
    Begun(Prefixed),
    Streamed,
}

impl Outgoing {
    /// Reads the start of `body` now (up to [`RETRY_BUFFER`]), for a request routed by what
    /// its body says; the rest stays in the client's socket.
    pub async fn read_ahead(
        body: Body,
        limit: usize,
        budget: &BodyBudget,
    ) -> Result<Outgoing, GatewayError> {
        let share = budget.share().ok_or(GatewayError::BodyBudget)?;
        Ok(
            match RequestBody::read(body, None, limit, budget.timeout).await? {
                RequestBody::Whole(b) => Outgoing::Kept(b, share),
                RequestBody::Streaming(mut p) => {
                    p.share = Some(share);
                    Outgoing::Begun(p)
                }
            },
        )
    }

    /// Up to `n` of the body's first bytes, as far as they have been read.
    pub fn prefix(&self, n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let chunks: Box<dyn Iterator<Item = &Bytes>> = match self {
            Outgoing::Kept(b, _) => Box::new(std::iter::once(b)),
            Outgoing::Begun(p) => Box::new(p.head.iter()),
            Outgoing::Unread(_) | Outgoing::Streamed => Box::new(std::iter::empty()),
        };
        for c in chunks {
            let take = (n - out.len()).min(c.len());
            out.extend_from_slice(&c[..take]);
            if out.len() == n {
                break;
            }
        }
        out
    }

    /// The body for the next attempt; `None` once a streamed body has been sent, which cannot
    /// be sent again.
    pub async fn next(
        &mut self,
        declared: Option<u64>,
        limit: usize,
        budget: &BodyBudget,
    ) -> Result<Option<Body>, GatewayError> {
        match std::mem::replace(self, Outgoing::Streamed) {
            Outgoing::Kept(b, share) => {
                *self = Outgoing::Kept(b.clone(), share);
                Ok(Some(Body::from(b)))
            }
            Outgoing::Unread(b) => {
                let Some(share) = budget.share() else {
                    return Ok(Some(Body::new(http_body_util::Limited::new(b, limit))));
                };
                match RequestBody::read(b, declared, limit, budget.timeout).await? {
                    RequestBody::Whole(b) => {
                        *self = Outgoing::Kept(b.clone(), share);
                        Ok(Some(Body::from(b)))
                    }
                    RequestBody::Streaming(mut p) => {
                        p.share = Some(share);
                        Ok(Some(Body::new(p)))
                    }
                }
            }
            Outgoing::Begun(p) => Ok(Some(Body::new(p))),
            Outgoing::Streamed => Ok(None),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The frames already read, then the rest of the client's body.
pub struct Prefixed {
    head: VecDeque<Bytes>,
    rest: http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>,
    /// The budget share its head was read with, returned once the head is sent.
    share: Option<OwnedSemaphorePermit>,
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
        self.share = None;
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
        let short = RequestBody::read(chunked(vec![b"ab", b"cd"]), None, 1 << 20, BODY_TIMEOUT)
            .await
            .unwrap();
        assert!(matches!(short, RequestBody::Whole(b) if b == "abcd"));

        static BIG: [u8; RETRY_BUFFER] = [7; RETRY_BUFFER];
        let long = RequestBody::read(
            chunked(vec![&BIG, b"xy", b"z"]),
            None,
            1 << 20,
            BODY_TIMEOUT,
        )
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
        let budget = BodyBudget::new(1 << 20, BODY_TIMEOUT);
        let mut short = Outgoing::Unread(chunked(vec![b"ab", b"cd"]));
        for _ in 0..2 {
            let b = short.next(None, 1 << 20, &budget).await.unwrap().unwrap();
            assert_eq!(b.collect().await.unwrap().to_bytes(), "abcd");
        }
        static BIG: [u8; RETRY_BUFFER + 1] = [7; RETRY_BUFFER + 1];
        let mut long = Outgoing::Unread(chunked(vec![&BIG]));
        assert!(long.next(None, 1 << 20, &budget).await.unwrap().is_some());
        assert!(long.next(None, 1 << 20, &budget).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn past_the_budget_bodies_stream_through_and_shares_come_back() {
        // Room for two requests' read-ahead.
        let budget = BodyBudget::new(2 * RETRY_BUFFER, BODY_TIMEOUT);
        let mut kept: Vec<Outgoing> = (0..2)
            .map(|_| Outgoing::Unread(chunked(vec![b"ab"])))
            .collect();
        for o in &mut kept {
            let _ = o.next(None, 1 << 20, &budget).await.unwrap().unwrap();
            assert!(matches!(o, Outgoing::Kept(..)));
        }
        // The third is sent as it comes, once, with its limit still enforced.
        let mut third = Outgoing::Unread(chunked(vec![b"cd"]));
        let b = third.next(None, 1 << 20, &budget).await.unwrap().unwrap();
        assert_eq!(b.collect().await.unwrap().to_bytes(), "cd");
        assert!(third.next(None, 1 << 20, &budget).await.unwrap().is_none());
        let mut over = Outgoing::Unread(chunked(vec![b"0123456789ab"]));
        let b = over.next(None, 10, &budget).await.unwrap().unwrap();
        assert!(b.collect().await.is_err());
        // A finished request returns its share.
        kept.pop();
        let mut fourth = Outgoing::Unread(chunked(vec![b"ef"]));
        let _ = fourth.next(None, 1 << 20, &budget).await.unwrap().unwrap();
        assert!(matches!(fourth, Outgoing::Kept(..)));
    }

    #[tokio::test]
    async fn more_than_the_limit_is_refused_declared_or_not() {
        let e = RequestBody::read(chunked(vec![b"ab"]), Some(11), 10, BODY_TIMEOUT).await;
        assert!(matches!(e, Err(GatewayError::TooLarge { limit: 10 })));
        let e =
            RequestBody::read(chunked(vec![b"0123456", b"789ab"]), None, 10, BODY_TIMEOUT).await;
        assert!(matches!(e, Err(GatewayError::TooLarge { limit: 10 })));
        // Streaming past the limit fails the stream itself.
        static BIG: [u8; RETRY_BUFFER + 1] = [7; RETRY_BUFFER + 1];
        let RequestBody::Streaming(p) = RequestBody::read(
            chunked(vec![&BIG, b"0123456789"]),
            None,
            RETRY_BUFFER + 5,
            BODY_TIMEOUT,
        )
        .await
        .unwrap() else {
            panic!("streams")
        };
        assert!(Body::new(p).collect().await.is_err());
    }
}
