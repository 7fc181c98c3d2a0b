//! Helpers shared by the integration tests: a counting streamed body, an app, body readers.
#![allow(
    dead_code,
    reason = "each test binary uses a different subset of the helpers"
)]

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::routing::{any, get};
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use request_inspector::{Inspector, InspectorConfig};

pub(crate) const MIB: usize = 1024 * 1024;

/// A body that makes its chunks only when polled and counts how many it has made, so a test
/// can tell whether a consumer saw the first chunk before the producer made the last one.
#[derive(Debug)]
pub(crate) struct CountingBody {
    chunk: Bytes,
    remaining: usize,
    produced: Arc<AtomicUsize>,
}

impl CountingBody {
    /// `chunks` chunks of `chunk_size` bytes; the counter says how many were produced so far.
    pub(crate) fn new(chunks: usize, chunk_size: usize) -> (Self, Arc<AtomicUsize>) {
        let produced = Arc::new(AtomicUsize::new(0));
        (
            Self::counting_into(chunks, chunk_size, Arc::clone(&produced)),
            produced,
        )
    }

    /// Like [`CountingBody::new`], counting into a counter the test already holds.
    pub(crate) fn counting_into(
        chunks: usize,
        chunk_size: usize,
        produced: Arc<AtomicUsize>,
    ) -> Self {
        Self {
            chunk: Bytes::from(vec![b'x'; chunk_size]),
            remaining: chunks,
            produced,
        }
    }
}

impl http_body::Body for CountingBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        self.remaining -= 1;
        self.produced.fetch_add(1, Ordering::SeqCst);
        // A clone of one shared chunk: the stream is 50 MB, the producer's memory is not.
        Poll::Ready(Some(Ok(Frame::data(self.chunk.clone()))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact((self.remaining * self.chunk.len()) as u64)
    }
}

/// The polling prefixes of the seed's dashboard.
pub(crate) const POLLING: [&str; 4] = [
    "/api/monitor/",
    "/api/blast/jobs",
    "/api/warmup",
    "/api/inspector",
];

pub(crate) fn inspector(capacity: usize, body_limit: usize) -> Inspector {
    Inspector::new(
        InspectorConfig::new()
            .polling_prefixes(POLLING)
            .expect("valid prefixes")
            .capacity(capacity)
            .body_limit(body_limit),
    )
}

/// An app with a polling GET, an echo route for every method and the inspector's JSON.
pub(crate) fn app(inspector: &Inspector) -> Router {
    Router::new()
        .route("/api/monitor/aks", get(|| async { "aks status" }))
        .route(
            "/api/echo",
            any(|request: Request| async move {
                request
                    .into_body()
                    .collect()
                    .await
                    .expect("body")
                    .to_bytes()
            }),
        )
        .route(
            "/api/missing",
            get(|| async { (http::StatusCode::NOT_FOUND, "no such thing") }),
        )
        .nest("/api/inspector", inspector.router())
        .layer(inspector.layer())
}

/// Read a whole body.
pub(crate) async fn read_all<B>(body: B) -> Bytes
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    body.collect().await.expect("body").to_bytes()
}

pub(crate) fn request(
    method: http::Method,
    uri: &str,
    body: impl Into<Body>,
) -> http::Request<Body> {
    http::Request::builder()
        .method(method)
        .uri(uri)
        .body(body.into())
        .expect("request")
}

/// A tiny deterministic generator (xorshift64*, no dependency), so the black-box suites'
/// random traffic is reproducible from a seed.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    pub(crate) fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    pub(crate) fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    /// Up to `max` characters from `alphabet`.
    pub(crate) fn text_upto(&mut self, max: usize, alphabet: &[u8]) -> String {
        let n = self.below(max);
        self.text(n, alphabet)
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// `n` characters from `alphabet`.
    pub(crate) fn text(&mut self, n: usize, alphabet: &[u8]) -> String {
        (0..n)
            .map(|_| alphabet[self.below(alphabet.len())] as char)
            .collect()
    }
}
