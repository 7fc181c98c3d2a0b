//! Black-box review of `Inspector::axum_layer()` (feature `axum`): `AxumInspectorLayer`, its
//! service `AxumInspectorService` and its future `AxumResponseFuture` must do everything
//! `Inspector::layer()` does — request ids (I1), polling GETs passed through and not recorded
//! (I2), capture of every other request (I3), bodies tee'd while streaming and cut at the limit
//! with secrets redacted (I5), redaction by pattern, query redaction, bounded headers and the
//! owner rules (I6), outcomes, byte counters, the tracing span and the metrics series — with
//! axum's `Body` on both sides, under `Router::layer`, around a whole `Router`, inside `nest`,
//! `route_layer` and an authentication layer, over plain tower services and behind hyper.
//!
//! Written black-box, without reading `crates/request-inspector/src/`, from
//! docs/request-inspector.md, the crate's rustdoc, the workspace SPEC (I1–I6) and seed 001,
//! through the public API only. Most tests are differential: the same traffic goes through
//! `layer()` and `axum_layer()` (each with its own inspector of the same configuration) and
//! must give the same responses, entries and counters, and the same responses as no layer at
//! all (bar `x-request-id`). Deterministic: seeded generators, virtual time where time matters,
//! no sleeps.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request as AxumRequest;
use axum::middleware::Next;
use axum::routing::{any, get};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use request_inspector::{
    Entry, EntryFilter, InspectBody, Inspector, InspectorConfig, InspectorStats, Outcome, REDACTED,
    REQUEST_ID_HEADER, RequestId,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::util::BoxCloneSyncService as BoxCloneService;
use tower::{Layer, Service, ServiceExt};

// A counting allocator for `alloc_probe` (run alone, in a child process: the counts are
// process-wide). The other tests only pay the counting.
#[global_allocator]
static GLOBAL: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

// ---------------------------------------------------------------------------------------------
// Deterministic generator and bodies
// ---------------------------------------------------------------------------------------------

/// xorshift64*: reproducible traffic from a seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self((seed ^ 0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }
}

/// A body that yields a scripted list of frames (data, trailers, errors), with an exact size
/// hint of what is left or none, optionally returning `Pending` once before each frame.
#[derive(Debug, Default)]
struct Script {
    frames: VecDeque<Result<Frame<Bytes>, io::Error>>,
    exact: bool,
    yield_each: bool,
    yielded: bool,
}

impl Script {
    fn data<I: IntoIterator<Item = &'static str>>(chunks: I) -> Self {
        Self {
            frames: chunks
                .into_iter()
                .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
                .collect(),
            exact: true,
            ..Self::default()
        }
    }

    fn remaining(&self) -> u64 {
        self.frames
            .iter()
            .map(|f| match f {
                Ok(frame) => frame.data_ref().map_or(0, |d| d.len() as u64),
                Err(_) => 0,
            })
            .sum()
    }
}

impl http_body::Body for Script {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.yield_each && !self.yielded && !self.frames.is_empty() {
            self.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.yielded = false;
        Poll::Ready(self.frames.pop_front())
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.remaining())
        } else {
            SizeHint::default()
        }
    }
}

/// A request body fed by the test, frame by frame.
#[derive(Debug)]
struct Channel(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for Channel {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

fn trailers() -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("abc"));
    trailers.insert("x-trailer-token", HeaderValue::from_static("tr4iler"));
    trailers
}

/// A request body, reproducible: the same spec makes the same body for every app.
#[derive(Clone, Debug)]
struct BodySpec {
    chunks: Vec<Bytes>,
    exact: bool,
    trailers: bool,
    fail: bool,
}

impl BodySpec {
    fn random(rng: &mut Rng) -> Self {
        let len = rng.pick(&[0, 0, 1, 63, 64, 65, 200]);
        let mut bytes: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
        if len > 3 && rng.chance(10) {
            let at = rng.below(len);
            bytes[at] = 0xC3; // a lone UTF-8 lead byte: the entry's text is lossy
        }
        let mut chunks = Vec::new();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let n = (1 + rng.below(70)).min(rest.len());
            chunks.push(Bytes::copy_from_slice(&rest[..n]));
            rest = &rest[n..];
            if rng.chance(8) {
                chunks.push(Bytes::new()); // an empty data frame
            }
        }
        Self {
            chunks,
            exact: rng.chance(50),
            trailers: rng.chance(15),
            fail: rng.chance(5),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        self.chunks.concat()
    }

    fn script(&self) -> Script {
        let mut frames: VecDeque<_> = self
            .chunks
            .iter()
            .map(|c| Ok(Frame::data(c.clone())))
            .collect();
        if self.trailers {
            frames.push_back(Ok(Frame::trailers(trailers())));
        }
        if self.fail {
            frames.push_back(Err(io::Error::other("request body broke")));
        }
        Script {
            frames,
            exact: self.exact,
            ..Script::default()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The application: handlers report what they saw in response headers
// ---------------------------------------------------------------------------------------------

/// An extension the client puts on the request (must reach the handler unchanged).
#[derive(Clone, Debug)]
struct Marker(String);

/// The caller an authentication layer puts in the extensions.
#[derive(Clone, Debug)]
struct Account(String);

fn owner(extensions: &http::Extensions) -> Option<String> {
    extensions.get::<Account>().map(|a| a.0.clone())
}

fn put(headers: &mut HeaderMap, name: &'static str, value: &str) {
    let value = HeaderValue::from_str(value)
        .unwrap_or_else(|_| HeaderValue::from_static("<not-a-header-value>"));
    headers.insert(HeaderName::from_static(name), value);
}

/// What the handler saw: its ids, extensions, body hint and path.
fn seen(request: &AxumRequest) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let ids: Vec<String> = request
        .headers()
        .get_all(REQUEST_ID_HEADER)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    put(&mut headers, "x-seen-id", &ids.join(","));
    let extension = request
        .extensions()
        .get::<RequestId>()
        .map_or_else(|| "none".to_owned(), |id| id.as_str().to_owned());
    put(&mut headers, "x-seen-ext", &extension);
    let marker = request
        .extensions()
        .get::<Marker>()
        .map_or("none", |m| m.0.as_str());
    put(&mut headers, "x-seen-marker", marker);
    let account = request
        .extensions()
        .get::<Account>()
        .map_or("none", |a| a.0.as_str());
    put(&mut headers, "x-seen-account", account);
    let hint = http_body::Body::size_hint(request.body());
    put(
        &mut headers,
        "x-seen-hint",
        &format!("{}..{:?}", hint.lower(), hint.upper()),
    );
    put(
        &mut headers,
        "x-seen-end",
        &http_body::Body::is_end_stream(request.body()).to_string(),
    );
    put(&mut headers, "x-seen-uri", &request.uri().to_string());
    put(
        &mut headers,
        "x-seen-version",
        &format!("{:?}", request.version()),
    );
    put(
        &mut headers,
        "x-seen-extensions",
        &request.extensions().len().to_string(),
    );
    headers
}

fn answer(status: StatusCode, headers: HeaderMap, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// An answer reporting what the handler saw, in the request's HTTP version, with a response
/// extension (which must reach the client).
fn reply(request: &AxumRequest, status: StatusCode, body: Body) -> Response<Body> {
    let mut response = answer(status, seen(request), body);
    *response.version_mut() = request.version();
    response
        .extensions_mut()
        .insert(Marker("from-handler".to_owned()));
    response
}

/// Streams the request body back, with secret and harmless response headers.
async fn echo(request: AxumRequest) -> Response<Body> {
    let mut response = reply(&request, StatusCode::OK, Body::empty());
    put(response.headers_mut(), "set-cookie", "session=s3cret");
    put(response.headers_mut(), "x-secret-token", "t0ken");
    put(response.headers_mut(), "x-author", "alice");
    *response.body_mut() = Body::new(request.into_body());
    response
}

/// A polling answer in two frames with an exact size.
async fn aks(request: AxumRequest) -> Response<Body> {
    let body = Script::data(["{\"clusters\":", "[\"a\",\"b\"]}"]);
    reply(&request, StatusCode::OK, Body::new(body))
}

/// A polling answer in four frames with an exact size.
async fn stream(request: AxumRequest) -> Response<Body> {
    let body = Script::data(["frame-0;", "frame-1;", "frame-2;", "frame-3;"]);
    reply(&request, StatusCode::OK, Body::new(body))
}

/// Never reads its request body.
async fn silent(request: AxumRequest) -> Response<Body> {
    reply(&request, StatusCode::ACCEPTED, Body::from("accepted"))
}

/// An empty answer (is_end_stream from the start).
async fn empty(request: AxumRequest) -> Response<Body> {
    reply(&request, StatusCode::NO_CONTENT, Body::empty())
}

/// A response body that fails after two frames.
async fn broken(request: AxumRequest) -> Response<Body> {
    let body = Script {
        frames: VecDeque::from([
            Ok(Frame::data(Bytes::from_static(b"part-1;"))),
            Ok(Frame::data(Bytes::from_static(b"part-2;"))),
            Err(io::Error::other("boom")),
        ]),
        ..Script::default()
    };
    reply(&request, StatusCode::OK, Body::new(body))
}

/// Waits 3 ms (virtual), then streams three frames 2 ms apart.
async fn slow(request: AxumRequest) -> Response<Body> {
    let mut response = reply(&request, StatusCode::OK, Body::empty());
    tokio::time::sleep(Duration::from_millis(3)).await;
    let frames = futures::stream::unfold(0u8, |n| async move {
        if n == 3 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        Some((Ok::<_, io::Error>(Bytes::from(format!("slow-{n};"))), n + 1))
    });
    *response.body_mut() = Body::from_stream(frames);
    response
}

/// Sets its own (two) `x-request-id` headers, which the layer must overwrite.
async fn own_id(request: AxumRequest) -> Response<Body> {
    let mut response = reply(&request, StatusCode::OK, Body::from("mine"));
    let headers = response.headers_mut();
    headers.append(REQUEST_ID_HEADER, HeaderValue::from_static("handler-1"));
    headers.append(REQUEST_ID_HEADER, HeaderValue::from_static("handler-2"));
    response
}

/// A response body with trailers.
async fn with_trailers(request: AxumRequest) -> Response<Body> {
    let body = Script {
        frames: VecDeque::from([
            Ok(Frame::data(Bytes::from_static(b"with trailers"))),
            Ok(Frame::trailers(trailers())),
        ]),
        exact: true,
        ..Script::default()
    };
    reply(&request, StatusCode::OK, Body::new(body))
}

/// Never answers.
async fn hang(_request: AxumRequest) -> Response<Body> {
    futures::future::pending::<Response<Body>>().await
}

async fn fallback(request: AxumRequest) -> Response<Body> {
    reply(&request, StatusCode::NOT_FOUND, Body::from("nothing here"))
}

fn routes() -> Router {
    Router::new()
        .route("/api/monitor/aks", get(aks).post(echo))
        .route("/api/monitor/stream", get(stream))
        .route("/api/echo", any(echo))
        .route("/api/jobs/{id}", any(silent))
        .route("/api/empty", any(empty))
        .route("/api/broken", any(broken))
        .route("/api/slow", any(slow))
        .route("/api/own-id", any(own_id))
        .route("/api/trailers", any(with_trailers))
        .route("/api/hang", any(hang))
        .fallback(fallback)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flavor {
    /// `Inspector::layer()`: the reference.
    Tower,
    /// `Inspector::axum_layer()`: under review.
    Axum,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Placement {
    /// `Router::layer(..)`.
    RouteLayer,
    /// `tower::Layer::layer(&layer, router)`: around the whole router.
    AroundRouter,
}

const PLACEMENTS: [Placement; 2] = [Placement::RouteLayer, Placement::AroundRouter];

type App = BoxCloneService<Request<Body>, Response<Body>, Infallible>;

/// `routes` with the inspector's layer of `flavor` in `placement`; `layer()`'s response body
/// is boxed into axum's `Body` (which forwards its hint and end) so both answer the same type.
fn layered(flavor: Flavor, placement: Placement, inspector: &Inspector, routes: Router) -> App {
    match (flavor, placement) {
        (Flavor::Tower, Placement::RouteLayer) => {
            BoxCloneService::new(routes.layer(inspector.layer()))
        }
        (Flavor::Axum, Placement::RouteLayer) => {
            BoxCloneService::new(routes.layer(inspector.axum_layer()))
        }
        (Flavor::Tower, Placement::AroundRouter) => {
            BoxCloneService::new(ServiceExt::<Request<Body>>::map_response(
                inspector.layer().layer(routes),
                |r: Response<InspectBody<Body>>| r.map(Body::new),
            ))
        }
        (Flavor::Axum, Placement::AroundRouter) => {
            BoxCloneService::new(inspector.axum_layer().layer(routes))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The client: what it sees of a response
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Read the whole response body.
    Full,
    /// Read one frame, then drop the body.
    FirstFrame,
    /// Poll the response future once, then drop it (or the response, unread).
    Cancel,
    /// Drop the response future without polling it.
    DropUnpolled,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Observation {
    status: u16,
    version: String,
    extension: Option<String>,
    headers: Vec<(String, String)>,
    hint: (u64, Option<u64>),
    end_before: bool,
    frames: Vec<String>,
    /// The body's size hint and end flag after each frame.
    progress: Vec<(u64, Option<u64>, bool)>,
    end_after: bool,
}

impl Observation {
    fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.header_values(name).first().copied()
    }

    fn data(&self) -> String {
        self.frames
            .iter()
            .filter_map(|f| f.strip_prefix("data "))
            .collect()
    }

    /// Without the type of a body error (only its message).
    fn without_error_kind(&self) -> Self {
        let mut this = self.clone();
        for frame in &mut this.frames {
            if frame.starts_with("error ")
                && let Some(at) = frame.rfind(" (")
            {
                frame.truncate(at);
            }
        }
        this
    }

    /// Without the headers the layer is meant to add or that report its work.
    fn without_layer_headers(&self) -> Self {
        let mut this = self.clone();
        this.headers.retain(|(n, _)| {
            !matches!(
                n.as_str(),
                "x-request-id" | "x-seen-id" | "x-seen-ext" | "x-seen-extensions"
            )
        });
        this
    }
}

fn header_list(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn describe(frame: Frame<Bytes>) -> String {
    match frame.into_data() {
        Ok(data) => format!("data {}", String::from_utf8_lossy(&data)),
        Err(frame) => match frame.into_trailers() {
            Ok(trailers) => {
                let mut list = header_list(&trailers);
                list.sort();
                format!("trailers {list:?}")
            }
            Err(_) => "unknown frame".to_owned(),
        },
    }
}

/// Reads up to `max_frames` frames (all with `None`), then drops the body.
async fn observe(response: Response<Body>, max_frames: Option<usize>) -> Observation {
    let (parts, mut body) = response.into_parts();
    let hint = body.size_hint();
    let end_before = body.is_end_stream();
    let mut frames = Vec::new();
    let mut progress = Vec::new();
    while max_frames.is_none_or(|max| frames.len() < max) {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => {
                frames.push(describe(frame));
                let hint = body.size_hint();
                progress.push((hint.lower(), hint.upper(), body.is_end_stream()));
            }
            Some(Err(error)) => {
                // What a client that downcasts the error finds under axum's `Error`.
                let display = error.to_string();
                let inner = error.into_inner();
                let kind = if inner.downcast_ref::<io::Error>().is_some() {
                    "io::Error"
                } else if inner.downcast_ref::<axum::Error>().is_some() {
                    "axum::Error"
                } else {
                    "other"
                };
                frames.push(format!("error {display} ({kind})"));
                break;
            }
        }
    }
    let end_after = body.is_end_stream();
    Observation {
        status: parts.status.as_u16(),
        version: format!("{:?}", parts.version),
        extension: parts.extensions.get::<Marker>().map(|m| m.0.clone()),
        headers: header_list(&parts.headers),
        hint: (hint.lower(), hint.upper()),
        end_before,
        frames,
        progress,
        end_after,
    }
}

fn infallible<T>(result: Result<T, Infallible>) -> T {
    result.unwrap_or_else(|never| match never {})
}

async fn exchange(app: &mut App, request: Request<Body>, mode: Mode) -> Option<Observation> {
    let mut future = infallible(app.ready().await).call(request);
    match mode {
        Mode::DropUnpolled => {
            drop(future);
            None
        }
        Mode::Cancel => match futures::poll!(&mut future) {
            Poll::Ready(response) => Some(observe(infallible(response), Some(0)).await),
            Poll::Pending => None,
        },
        Mode::FirstFrame => Some(observe(infallible(future.await), Some(1)).await),
        Mode::Full => Some(observe(infallible(future.await), None).await),
    }
}

// ---------------------------------------------------------------------------------------------
// Random requests
// ---------------------------------------------------------------------------------------------

const PATHS: &[&str] = &[
    "/api/monitor/aks",
    "/api/monitor/stream",
    "/api/monitor",
    "/api/monitor/",
    "/api/monitoring",
    "/api/monitor-old",
    "/api/monitor/../admin",
    "/api/monitor/./aks",
    "/API/monitor/aks",
    "/api//monitor/aks",
    "/api/%6Donitor/aks",
    "/api/echo",
    "/api/echo",
    "/api/echo",
    "/api/jobs/7",
    "/api/empty",
    "/api/broken",
    "/api/slow",
    "/api/own-id",
    "/api/trailers",
    "/missing",
    "/",
    "http://example.com/api/monitor/aks",
    "http://example.com/api/echo",
];

/// The paths of `PATHS` under the polling prefix `/api/monitor` (whole segments, no dot
/// segments, case-sensitive, no decoding): a GET to one of them is a polling GET.
const POLLING_PATHS: &[&str] = &[
    "/api/monitor/aks",
    "/api/monitor/stream",
    "/api/monitor",
    "/api/monitor/",
];

const QUERIES: &[&str] = &[
    "",
    "",
    "?limit=20",
    "?sv=2024-01-01&sig=abc%2Fdef&limit=20",
    "?access_token=tok&page=2",
    "?%73ig=zz&x=1",
    "?ticket=t1&code=c0de&state=st",
    "?a=1&a=2&password=pw",
    "?empty=&flag",
];

/// Query parameter names (as written in `QUERIES`) whose values must be recorded redacted.
fn secret_param(name: &str) -> bool {
    matches!(
        name,
        "sv" | "sig" | "%73ig" | "access_token" | "ticket" | "code" | "state" | "password"
    )
}

fn redacted_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if secret_param(name) => format!("{name}={REDACTED}"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

const METHODS: &[&str] = &[
    "GET", "GET", "GET", "GET", "POST", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS",
];

const HEADER_POOL: &[(&str, &str)] = &[
    ("authorization", "Bearer s3cret"),
    ("cookie", "sid=s3cret"),
    ("x-api-key", "k3y"),
    ("x-auth-token", "t0k"),
    ("x-ms-sas", "sv=1"),
    ("x-session", "sess"),
    ("x-author", "bob"),
    ("content-type", "application/json"),
    ("accept", "*/*"),
    ("x-custom", "caf\u{e9}"),
];

/// Request header names whose recorded values must read `[redacted]`.
const SECRET_REQUEST_HEADERS: &[&str] = &[
    "authorization",
    "cookie",
    "x-api-key",
    "x-auth-token",
    "x-ms-sas",
    "x-session",
];

#[derive(Clone, Debug)]
struct Spec {
    version: http::Version,
    method: Method,
    path: &'static str,
    query: &'static str,
    ids: Vec<HeaderValue>,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: BodySpec,
    marker: Option<String>,
    planted: bool,
    account: Option<&'static str>,
    mode: Mode,
}

impl Spec {
    fn random(rng: &mut Rng, k: usize) -> Self {
        let mut method = Method::from_bytes(rng.pick(METHODS).as_bytes()).expect("method");
        let mut path = rng.pick(PATHS);
        let mut query = rng.pick(QUERIES);
        match rng.below(40) {
            0 => (method, path, query) = (Method::CONNECT, "example.com:443", ""),
            1 => (method, path, query) = (Method::OPTIONS, "*", ""),
            _ => {}
        }
        let version = rng.pick(&[
            http::Version::HTTP_11,
            http::Version::HTTP_11,
            http::Version::HTTP_10,
            http::Version::HTTP_2,
        ]);
        let ids: Vec<HeaderValue> = match rng.below(11) {
            0..=2 => Vec::new(),
            3 => vec![HeaderValue::from_str(&format!("client-{k}")).unwrap()],
            4 => vec![HeaderValue::from_static("")],
            5 => vec![HeaderValue::from_static("has space")],
            6 => vec![HeaderValue::from_str(&"a".repeat(129)).unwrap()],
            7 => vec![HeaderValue::from_str(&"b".repeat(128)).unwrap()],
            8 => vec![
                HeaderValue::from_static("id-a"),
                HeaderValue::from_static("id-b"),
            ],
            9 => vec![HeaderValue::from_bytes("caf\u{e9}".as_bytes()).unwrap()],
            _ => vec![HeaderValue::from_static("~!{}")],
        };
        let mut headers = Vec::new();
        for _ in 0..rng.below(6) {
            let (name, value) = rng.pick(HEADER_POOL);
            headers.push((
                HeaderName::from_static(name),
                HeaderValue::from_bytes(value.as_bytes()).unwrap(),
            ));
        }
        if rng.chance(15) {
            for i in 0..8 {
                headers.push((
                    HeaderName::from_bytes(format!("x-filler-{i}").as_bytes()).unwrap(),
                    HeaderValue::from_str(&"f".repeat(90)).unwrap(),
                ));
            }
        }
        let mode = match rng.below(20) {
            0..=14 => Mode::Full,
            15 | 16 => Mode::FirstFrame,
            17 | 18 => Mode::Cancel,
            _ => Mode::DropUnpolled,
        };
        Self {
            version,
            method,
            path,
            query,
            ids,
            headers,
            body: BodySpec::random(rng),
            marker: rng.chance(50).then(|| format!("m{k}")),
            planted: rng.chance(15),
            account: if rng.chance(60) {
                Some(rng.pick(&["alice", "bob"]))
            } else {
                None
            },
            mode,
        }
    }

    fn request(&self) -> Request<Body> {
        let mut request = Request::builder()
            .version(self.version)
            .method(self.method.clone())
            .uri(format!("{}{}", self.path, self.query))
            .body(Body::new(self.body.script()))
            .expect("request");
        for id in &self.ids {
            request.headers_mut().append(REQUEST_ID_HEADER, id.clone());
        }
        for (name, value) in &self.headers {
            request.headers_mut().append(name.clone(), value.clone());
        }
        if let Some(marker) = &self.marker {
            request.extensions_mut().insert(Marker(marker.clone()));
        }
        if self.planted {
            request
                .extensions_mut()
                .insert(RequestId::parse("planted").unwrap());
        }
        if let Some(account) = self.account {
            request.extensions_mut().insert(Account(account.to_owned()));
        }
        request
    }

    /// The incoming id the layer must propagate (I1): exactly one, 1–128 bytes of `!`..`~`.
    fn valid_incoming(&self) -> Option<String> {
        match self.ids.as_slice() {
            [one]
                if (1..=128).contains(&one.len())
                    && one.as_bytes().iter().all(|b| (b'!'..=b'~').contains(b)) =>
            {
                Some(one.to_str().unwrap().to_owned())
            }
            _ => None,
        }
    }

    /// The path the layer sees (the path of an absolute-form target).
    fn uri_path(&self) -> String {
        self.path
            .parse::<http::Uri>()
            .expect("uri")
            .path()
            .to_owned()
    }

    fn polling(&self) -> bool {
        self.method == Method::GET && POLLING_PATHS.contains(&self.uri_path().as_str())
    }

    fn short(&self) -> String {
        format!(
            "{:?} {} {}{} ids={:?} body={}B exact={} trailers={} fail={} mode={:?} account={:?} planted={}",
            self.version,
            self.method,
            self.path,
            self.query,
            self.ids,
            self.body.bytes().len(),
            self.body.exact,
            self.body.trailers,
            self.body.fail,
            self.mode,
            self.account,
            self.planted
        )
    }
}

fn is_generated(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

// ---------------------------------------------------------------------------------------------
// Normalisation: generated ids and wall-clock times differ between runs
// ---------------------------------------------------------------------------------------------

type Generated = Vec<(String, String)>;

fn normalize_str(s: &str, generated: &Generated) -> String {
    generated
        .iter()
        .find(|(id, _)| id == s)
        .map_or_else(|| s.to_owned(), |(_, placeholder)| placeholder.clone())
}

fn normalize_value(value: &mut Value, generated: &Generated) {
    match value {
        Value::String(s) => *s = normalize_str(s, generated),
        Value::Array(items) => items.iter_mut().for_each(|v| normalize_value(v, generated)),
        Value::Object(map) => map.values_mut().for_each(|v| normalize_value(v, generated)),
        _ => {}
    }
}

fn normalize_entry(entry: &Entry, generated: &Generated) -> Value {
    let mut value = serde_json::to_value(entry).expect("entry as JSON");
    let object = value.as_object_mut().expect("an object");
    object.remove("started_at_unix_ms");
    object.insert("_retained_bytes".into(), entry.retained_bytes().into());
    normalize_value(&mut value, generated);
    value
}

/// Like [`normalize_entry`], without the durations (for tests in real time).
fn normalize_untimed(entry: &Entry) -> Value {
    let mut value = normalize_entry(entry, &Vec::new());
    let object = value.as_object_mut().expect("an object");
    object.remove("duration_us");
    object.remove("response_after_us");
    value
}

fn normalize_observation(observation: &Observation, generated: &Generated) -> Observation {
    let mut this = observation.clone();
    for (_, value) in &mut this.headers {
        *value = normalize_str(value, generated);
    }
    this
}

fn report(problems: &[String]) -> String {
    format!(
        "{} problem(s); the first ones:\n{}",
        problems.len(),
        problems
            .iter()
            .take(6)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n----\n")
    )
}

// ---------------------------------------------------------------------------------------------
// The differential runner
// ---------------------------------------------------------------------------------------------

struct Side {
    flavor: Flavor,
    inspector: Inspector,
    app: App,
    generated: Generated,
    ids: HashSet<String>,
}

struct Step {
    observation: Option<Observation>,
    newest: Option<Value>,
    stats: InspectorStats,
}

#[derive(Clone, Copy)]
struct Setup {
    config: fn() -> InspectorConfig,
    owner: bool,
    require_owner: bool,
}

fn base_config() -> InspectorConfig {
    InspectorConfig::new()
        .polling_prefixes(["/api/monitor"])
        .expect("prefix")
        .redact_header("x-session")
        .expect("header name")
        .redact_query_param("ticket")
}

fn config_small_limits() -> InspectorConfig {
    base_config().capacity(16).body_limit(64).header_limit(600)
}

fn config_sizes_only_no_extension() -> InspectorConfig {
    base_config()
        .capacity(5)
        .body_limit(0)
        .header_limit(600)
        .request_id_extension(false)
}

fn config_required_owner() -> InspectorConfig {
    base_config()
        .capacity(8)
        .body_limit(64)
        .header_limit(600)
        .owner_from(owner)
        .require_owner(true)
}

fn config_owner_no_headers() -> InspectorConfig {
    base_config()
        .capacity(200)
        .body_limit(100)
        .header_limit(0)
        .owner_from(owner)
}

/// One exchange through one side, with the documented invariants checked on the way.
async fn step(
    side: &mut Side,
    setup: Setup,
    spec: &Spec,
    k: usize,
    problems: &mut Vec<String>,
) -> Step {
    let config = side.inspector.config().clone();
    let before = side.inspector.stats();
    let observation = exchange(&mut side.app, spec.request(), spec.mode).await;
    let stats = side.inspector.stats();
    let newest = (stats.captured > before.captured).then(|| side.inspector.entries()[0].clone());
    let context = format!("{:?} request {k}: {}", side.flavor, spec.short());
    let mut problem = |what: String| problems.push(format!("{context}\n  {what}"));

    // I1: one id, propagated when valid, generated otherwise; the handler saw the same.
    let response_ids: Option<Vec<String>> = observation.as_ref().map(|o| {
        o.header_values("x-request-id")
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    });
    if let Some(ids) = &response_ids
        && ids.len() != 1
    {
        problem(format!(
            "response x-request-id values {ids:?}, want exactly one"
        ));
    }
    let id = response_ids
        .and_then(|ids| ids.into_iter().next())
        .or_else(|| newest.as_ref().map(|e| e.request_id.clone()));
    if let Some(id) = &id {
        match spec.valid_incoming() {
            Some(incoming) if id != &incoming => {
                problem(format!("id {id:?}, want the incoming {incoming:?}"))
            }
            Some(_) => {}
            None if !is_generated(id) => {
                problem(format!("id {id:?} is neither incoming nor generated"))
            }
            None => {
                if !side.ids.insert(id.clone()) {
                    problem(format!("generated id {id} repeated"));
                }
                side.generated
                    .push((id.clone(), format!("<generated-{k}>")));
            }
        }
    }
    if let (Some(observation), Some(id)) = (&observation, &id) {
        if let Some(seen) = observation.header("x-seen-id")
            && seen != id
        {
            problem(format!(
                "handler saw x-request-id {seen:?}, response says {id:?}"
            ));
        }
        if let Some(seen) = observation.header("x-seen-ext") {
            let want = if config.inserts_request_id_extension() {
                id.as_str()
            } else {
                "none"
            };
            if seen != want {
                problem(format!("handler saw extension {seen:?}, want {want:?}"));
            }
        }
        if let Some(seen) = observation.header("x-seen-marker") {
            let want = spec.marker.as_deref().unwrap_or("none");
            if seen != want {
                problem(format!("handler saw marker {seen:?}, want {want:?}"));
            }
        }
    }
    if let (Some(entry), Some(id)) = (&newest, &id)
        && &entry.request_id != id
    {
        problem(format!(
            "entry id {:?}, response id {id:?}",
            entry.request_id
        ));
    }

    // I2, I3, I6: what is recorded, passed through or counted as unowned.
    let counts = |s: &InspectorStats| (s.captured, s.passed_through, s.not_recorded_unowned);
    let (c0, p0, u0) = counts(&before);
    // A future dropped before it was ever polled may or may not count (both layers count
    // nothing today, neither captured nor passed through; compared with `layer()` below).
    let want = if spec.mode == Mode::DropUnpolled {
        None
    } else if spec.polling() {
        (!setup.require_owner || spec.account.is_some()).then_some((c0, p0 + 1, u0))
    } else if setup.require_owner && spec.account.is_none() {
        Some((c0, p0, u0 + 1))
    } else {
        Some((c0 + 1, p0, u0))
    };
    if let Some(want) = want
        && counts(&stats) != want
    {
        problem(format!(
            "(captured, passed_through, unowned) {:?} after {:?}, want {want:?}",
            counts(&stats),
            counts(&before)
        ));
    }

    // Byte accounting.
    if stats.in_flight_bytes != 0 {
        problem(format!(
            "in_flight_bytes {} after the exchange ended",
            stats.in_flight_bytes
        ));
    }
    if stats.retained_bytes
        != stats.in_flight_bytes + stats.ring_bytes + stats.ring_slot_bytes + stats.spare_bytes
        || stats.peak_retained_bytes < stats.retained_bytes
        || stats.evicted > stats.captured
        || stats.ring_len as u64 != stats.captured.min(config.ring_capacity() as u64)
    {
        problem(format!("inconsistent stats {stats:?}"));
    }

    // The entry: request line, query and header redaction, owner, bodies.
    if let Some(entry) = &newest {
        let special = matches!(spec.path, "*" | "example.com:443");
        if entry.method != spec.method.as_str() || (!special && entry.path != spec.uri_path()) {
            problem(format!("entry {} {}", entry.method, entry.path));
        }
        if config.header_limit_bytes() >= 600 {
            let want = spec.query.strip_prefix('?').map(redacted_query);
            if entry.query != want {
                problem(format!("entry query {:?}, want {want:?}", entry.query));
            }
        }
        let want_owner = if setup.owner {
            spec.account.map(str::to_owned)
        } else {
            None
        };
        if entry.owner != want_owner {
            problem(format!(
                "entry owner {:?}, want {want_owner:?}",
                entry.owner
            ));
        }
        for header in entry.request_headers.iter().chain(&entry.response_headers) {
            let secret = SECRET_REQUEST_HEADERS.contains(&header.name.as_str())
                || header.name == "set-cookie"
                || header.name == "x-secret-token";
            if secret && header.value != REDACTED {
                problem(format!(
                    "header {} recorded as {:?}",
                    header.name, header.value
                ));
            }
            if header.name == "x-author" && header.value == REDACTED {
                problem("x-author redacted".to_owned());
            }
        }
        let limit = config.body_limit_bytes();
        let body = spec.body.bytes();
        let plain_echo = spec.uri_path() == "/api/echo"
            && spec.mode == Mode::Full
            && !spec.body.fail
            && !matches!(spec.method, Method::HEAD | Method::OPTIONS);
        if plain_echo {
            let cut = body.len().min(limit);
            for (which, captured) in [
                ("request", &entry.request_body),
                ("response", &entry.response_body),
            ] {
                let got = (
                    captured.bytes().to_vec(),
                    captured.captured_bytes(),
                    captured.total_bytes(),
                    captured.truncated(),
                    captured.complete(),
                );
                let want = (
                    body[..cut].to_vec(),
                    cut,
                    body.len() as u64,
                    body.len() > limit,
                    true,
                );
                if got != want {
                    problem(format!("{which} body {got:?}, want {want:?}"));
                }
            }
            if entry.outcome != Outcome::Complete || entry.status != Some(200) {
                problem(format!(
                    "echo recorded {:?} {:?}",
                    entry.outcome, entry.status
                ));
            }
            if let Some(observation) = &observation
                && observation.data().as_bytes() != String::from_utf8_lossy(&body).as_bytes()
            {
                problem("the echoed bytes differ from the request body".to_owned());
            }
        }
        if spec.path == "/api/broken"
            && spec.mode == Mode::Full
            && matches!(spec.method, Method::GET | Method::POST | Method::PUT)
            && entry.outcome != Outcome::BodyError
        {
            problem(format!(
                "a failing response body recorded as {:?}",
                entry.outcome
            ));
        }
        if spec.path == "/api/jobs/7"
            && spec.mode == Mode::Full
            && !body.is_empty()
            && spec.method != Method::HEAD
            && (entry.request_body.complete() || entry.request_body.captured_bytes() != 0)
        {
            problem(format!(
                "an unread request body recorded as {:?}",
                entry.request_body
            ));
        }
    }

    Step {
        observation: observation.map(|o| normalize_observation(&o, &side.generated)),
        newest: newest.map(|e| normalize_entry(&e, &side.generated)),
        stats,
    }
}

/// Random traffic through `layer()`, `axum_layer()` and no layer, in both placements.
async fn differential(setup: Setup, seed: u64, requests: usize) -> Vec<String> {
    let mut problems = Vec::new();
    for placement in PLACEMENTS {
        let mut sides: Vec<Side> = [Flavor::Tower, Flavor::Axum]
            .into_iter()
            .map(|flavor| {
                let inspector = Inspector::new((setup.config)());
                let app = layered(flavor, placement, &inspector, routes());
                Side {
                    flavor,
                    inspector,
                    app,
                    generated: Vec::new(),
                    ids: HashSet::new(),
                }
            })
            .collect();
        let mut bare: App = BoxCloneService::new(routes());
        let mut rng = Rng::new(seed);
        for k in 0..requests {
            let spec = Spec::random(&mut rng, k);
            let mut steps = Vec::new();
            for side in &mut sides {
                steps.push(step(side, setup, &spec, k, &mut problems).await);
            }
            let context = format!("{placement:?} request {k}: {}", spec.short());
            let (tower, axum) = (&steps[0], &steps[1]);
            // The type under axum's `Error` of a body error may differ: `layer()` wraps the
            // bodies of polling GETs too (see `body_errors_keep_their_type`).
            let kindless =
                |o: &Option<Observation>| o.as_ref().map(Observation::without_error_kind);
            if kindless(&tower.observation) != kindless(&axum.observation) {
                problems.push(format!(
                    "{context}\n  the client saw different responses\n  layer():      {:?}\n  axum_layer(): {:?}",
                    tower.observation, axum.observation
                ));
            }
            if tower.newest != axum.newest {
                problems.push(format!(
                    "{context}\n  different entries\n  layer():      {}\n  axum_layer(): {}",
                    serde_json::to_string(&tower.newest).unwrap(),
                    serde_json::to_string(&axum.newest).unwrap()
                ));
            }
            if tower.stats != axum.stats {
                problems.push(format!(
                    "{context}\n  different stats\n  layer():      {:?}\n  axum_layer(): {:?}",
                    tower.stats, axum.stats
                ));
            }
            // The layer changes no status, header (but the id) or body byte (failure behaviour);
            // what it does not capture it hands on as it came, body errors included.
            let without = exchange(&mut bare, spec.request(), spec.mode).await;
            let captured = axum.newest.is_some();
            let strip = |o: &Option<Observation>| {
                o.as_ref().map(|o| {
                    let o = o.without_layer_headers();
                    if captured { o.without_error_kind() } else { o }
                })
            };
            if strip(&without) != strip(&axum.observation) {
                problems.push(format!(
                    "{context}\n  axum_layer() changed the response\n  no layer:     {:?}\n  axum_layer(): {:?}",
                    strip(&without),
                    strip(&axum.observation)
                ));
            }
        }
        let lists: Vec<Vec<Value>> = sides
            .iter()
            .map(|side| {
                side.inspector
                    .entries()
                    .iter()
                    .map(|e| normalize_entry(e, &side.generated))
                    .collect()
            })
            .collect();
        if lists[0] != lists[1] {
            problems.push(format!("{placement:?}: the final rings differ"));
        }
    }
    problems
}

// covers I1, I2, I3, I5, I6: random traffic (methods, polling and look-alike paths, secret
// queries and headers, bodies around a 64-byte limit, trailers, failing bodies, every id shape,
// drops and cancellations) gives the same responses, entries and stats with `axum_layer()` as
// with `layer()`, in both placements, and the same responses as no layer.
#[tokio::test(start_paused = true)]
async fn differential_small_limits() {
    let setup = Setup {
        config: config_small_limits,
        owner: false,
        require_owner: false,
    };
    let problems = differential(setup, 0x00A1_1CE5, 160).await;
    assert!(problems.is_empty(), "{}", report(&problems));
}

// covers I1, I5 (limit 0 keeps sizes only) and `request_id_extension(false)` (a planted
// `RequestId` is removed): `axum_layer()` agrees with `layer()`.
#[tokio::test(start_paused = true)]
async fn differential_sizes_only_without_the_extension() {
    let setup = Setup {
        config: config_sizes_only_no_extension,
        owner: false,
        require_owner: false,
    };
    let problems = differential(setup, 0x0000_B0B0, 70).await;
    assert!(problems.is_empty(), "{}", report(&problems));
}

// covers I6 (`owner_from` + `require_owner(true)`: unowned requests counted, not stored):
// `axum_layer()` agrees with `layer()`.
#[tokio::test(start_paused = true)]
async fn differential_required_owner() {
    let setup = Setup {
        config: config_required_owner,
        owner: true,
        require_owner: true,
    };
    let problems = differential(setup, 0x000C_0FFE, 70).await;
    assert!(problems.is_empty(), "{}", report(&problems));
}

// covers I6 (owner recorded, header limit 0: every header list cut): `axum_layer()` agrees with
// `layer()`.
#[tokio::test(start_paused = true)]
async fn differential_owner_and_no_recorded_headers() {
    let setup = Setup {
        config: config_owner_no_headers,
        owner: true,
        require_owner: false,
    };
    let problems = differential(setup, 0x0000_D00D, 70).await;
    assert!(problems.is_empty(), "{}", report(&problems));
}

// ---------------------------------------------------------------------------------------------
// Streaming, outcomes and time
// ---------------------------------------------------------------------------------------------

// covers I5: a captured echo is tee'd while streaming (each response frame arrives before the
// next request frame is produced) and cut at the limit; same entry as `layer()`.
#[tokio::test(start_paused = true)]
async fn captured_echo_streams_frame_by_frame() {
    for placement in PLACEMENTS {
        let mut entries = Vec::new();
        for flavor in [Flavor::Tower, Flavor::Axum] {
            let inspector = Inspector::new(config_small_limits());
            let mut app = layered(flavor, placement, &inspector, routes());
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let request = Request::post("/api/echo")
                .header(REQUEST_ID_HEADER, "stream-1")
                .body(Body::new(Channel(rx)))
                .unwrap();
            let response = infallible(app.ready().await).call(request).await.unwrap();
            assert_eq!(response.headers()[REQUEST_ID_HEADER], "stream-1");
            let mut body = response.into_body();
            for i in 0..5 {
                let chunk = Bytes::from(format!("chunk-{i}:{}", "x".repeat(20)));
                tx.send(chunk.clone()).await.unwrap();
                let frame = body.frame().await.expect("a frame").expect("data");
                assert_eq!(
                    frame.into_data().unwrap(),
                    chunk,
                    "{flavor:?} {placement:?}: frame {i} echoed before the next was sent"
                );
                assert_eq!(inspector.stats().captured, 0, "recorded before the end");
            }
            drop(tx);
            assert!(body.frame().await.is_none());
            let entry = inspector.entries()[0].clone();
            assert_eq!(entry.outcome, Outcome::Complete, "{flavor:?} {placement:?}");
            assert_eq!(entry.request_body.total_bytes(), 5 * 28);
            assert_eq!(entry.request_body.captured_bytes(), 64);
            assert!(entry.request_body.truncated() && entry.response_body.truncated());
            assert_eq!(entry.response_body.bytes(), entry.request_body.bytes());
            assert_eq!(inspector.stats().in_flight_bytes, 0);
            entries.push(normalize_entry(&entry, &Vec::new()));
        }
        assert_eq!(
            entries[0], entries[1],
            "{placement:?}: layer() vs axum_layer()"
        );
    }
}

/// An answer that never ends: one frame of `tick` per poll.
async fn endless(_request: AxumRequest) -> Response<Body> {
    let ticks = futures::stream::repeat_with(|| Ok::<_, io::Error>(Bytes::from_static(b"tick")));
    Response::new(Body::from_stream(ticks))
}

// covers I2, I5 and "never reads ahead": an endless polling GET streams and leaves nothing; an
// endless captured GET dropped after 100 frames is `Aborted` with exactly the 400 bytes the client
// read as `total_bytes`.
#[tokio::test(start_paused = true)]
async fn endless_bodies_stream_and_are_never_read_ahead() {
    for placement in PLACEMENTS {
        let mut entries = Vec::new();
        for flavor in [Flavor::Tower, Flavor::Axum] {
            let inspector = Inspector::new(config_small_limits());
            let routes = Router::new()
                .route("/api/monitor/ticks", get(endless))
                .route("/api/ticks", get(endless));
            let mut app = layered(flavor, placement, &inspector, routes);
            let get_request = |path: &str| Request::get(path).body(Body::empty()).unwrap();
            let response = infallible(app.ready().await)
                .call(get_request("/api/monitor/ticks"))
                .await
                .unwrap();
            let mut body = response.into_body();
            for _ in 0..3 {
                body.frame().await.unwrap().unwrap();
            }
            drop(body);
            let stats = inspector.stats();
            assert_eq!(
                (
                    stats.captured,
                    stats.passed_through,
                    stats.peak_retained_bytes
                ),
                (0, 1, 0)
            );

            let response = infallible(app.ready().await)
                .call(get_request("/api/ticks"))
                .await
                .unwrap();
            let mut body = response.into_body();
            for _ in 0..100 {
                body.frame().await.unwrap().unwrap();
            }
            drop(body);
            let entry = inspector.entries()[0].clone();
            assert_eq!(entry.outcome, Outcome::Aborted, "{flavor:?} {placement:?}");
            assert_eq!(
                entry.response_body.total_bytes(),
                400,
                "{flavor:?} {placement:?}"
            );
            assert!(entry.response_body.truncated() && !entry.response_body.complete());
            assert_eq!(inspector.stats().in_flight_bytes, 0);
            entries.push(normalize_entry(
                &entry,
                &vec![(entry.request_id.clone(), "<id>".into())],
            ));
        }
        assert_eq!(
            entries[0], entries[1],
            "{placement:?}: layer() vs axum_layer()"
        );
    }
}

// covers the outcomes: a failing response body (`BodyError`, the error reaches the client), a
// body dropped part-way (`Aborted`), a future dropped before the head (`Cancelled`, no status),
// an unread request body (`complete: false`); `axum_layer()` as `layer()`.
#[tokio::test(start_paused = true)]
async fn outcomes_match_layer() {
    for placement in PLACEMENTS {
        let mut results = Vec::new();
        for flavor in [Flavor::Tower, Flavor::Axum] {
            let inspector = Inspector::new(config_small_limits());
            let mut app = layered(flavor, placement, &inspector, routes());
            let post = |path: &str, body: &'static str| {
                Request::post(path)
                    .header(REQUEST_ID_HEADER, "outcome-1")
                    .body(Body::from(body))
                    .unwrap()
            };
            let mut broken = exchange(&mut app, post("/api/broken", ""), Mode::Full)
                .await
                .unwrap();
            assert_eq!(
                broken.frames.last().map(|f| f.starts_with("error boom")),
                Some(true),
                "{flavor:?} {placement:?}: the client sees the body's error"
            );
            // `axum_layer()` hands the error on as the handler's body raised it (under axum's
            // one box), as without the layer; `layer()`'s `InspectBody` is boxed by axum once
            // more (documented: use `axum_layer()` with axum). The rest must match.
            if flavor == Flavor::Axum {
                assert_eq!(
                    broken.frames.last().map(String::as_str),
                    Some("error boom (io::Error)"),
                    "{placement:?}: axum_layer() keeps a captured body's error type"
                );
            }
            if let Some(last) = broken.frames.last_mut() {
                *last = "error boom".to_string();
            }
            let aborted = exchange(&mut app, post("/api/trailers", "t"), Mode::FirstFrame).await;
            assert_eq!(aborted.unwrap().frames, ["data with trailers"]);
            assert!(
                exchange(&mut app, post("/api/hang", "h"), Mode::Cancel)
                    .await
                    .is_none()
            );
            exchange(&mut app, post("/api/jobs/1", "never read"), Mode::Full)
                .await
                .unwrap();
            let entries = inspector.entries();
            let outcomes: Vec<_> = entries.iter().map(|e| (e.outcome, e.status)).collect();
            assert_eq!(
                outcomes,
                [
                    (Outcome::Complete, Some(202)),
                    (Outcome::Cancelled, None),
                    (Outcome::Aborted, Some(200)),
                    (Outcome::BodyError, Some(200)),
                ],
                "{flavor:?} {placement:?}"
            );
            assert!(
                !entries[0].request_body.complete(),
                "an unread request body"
            );
            assert!(
                !entries[3].response_body.complete(),
                "a failed response body"
            );
            assert_eq!(inspector.stats().in_flight_bytes, 0);
            results.push((
                broken,
                entries
                    .iter()
                    .map(|e| normalize_entry(e, &Vec::new()))
                    .collect::<Vec<_>>(),
                inspector.stats(),
            ));
        }
        assert_eq!(
            results[0], results[1],
            "{placement:?}: layer() vs axum_layer()"
        );
    }
}

// covers durations in virtual time: a handler that waits 3 ms and streams three frames 2 ms
// apart is recorded with the same `response_after_us` and `duration_us` through both layers.
#[tokio::test(start_paused = true)]
async fn durations_match_layer_in_virtual_time() {
    for placement in PLACEMENTS {
        let mut durations = Vec::new();
        for flavor in [Flavor::Tower, Flavor::Axum] {
            let inspector = Inspector::new(config_small_limits());
            let mut app = layered(flavor, placement, &inspector, routes());
            let request = Request::put("/api/slow").body(Body::empty()).unwrap();
            let observation = exchange(&mut app, request, Mode::Full).await.unwrap();
            assert_eq!(observation.data(), "slow-0;slow-1;slow-2;");
            let entry = inspector.entries()[0].clone();
            let response_after = entry.response_after_us.expect("a head");
            assert!(
                (3_000..4_100).contains(&response_after)
                    && (9_000..12_100).contains(&entry.duration_us),
                "{flavor:?} {placement:?}: {response_after} µs to the head, {} µs in all",
                entry.duration_us
            );
            durations.push((response_after, entry.duration_us));
        }
        assert_eq!(
            durations[0], durations[1],
            "{placement:?}: layer() vs axum_layer()"
        );
    }
}

/// A body whose second poll panics.
#[derive(Debug)]
struct PanicBody(u8);

impl http_body::Body for PanicBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0 += 1;
        assert!(self.0 < 2, "response body panicked");
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
            b"before the panic",
        )))))
    }
}

async fn panicking_handler(_request: AxumRequest) -> Response<Body> {
    panic!("handler panicked")
}

async fn panicking_body(_request: AxumRequest) -> Response<Body> {
    Response::new(Body::new(PanicBody(0)))
}

// covers "a panic elsewhere is recovered": a handler that panics and a response body that panics
// part-way leave no bytes in flight, are recorded as `layer()` records them, and the next
// exchanges are recorded normally.
#[tokio::test(start_paused = true)]
async fn panics_in_handlers_and_bodies_are_survived() {
    use futures::FutureExt;
    for placement in PLACEMENTS {
        let mut results = Vec::new();
        for flavor in [Flavor::Tower, Flavor::Axum] {
            let inspector = Inspector::new(config_small_limits());
            let routes = routes()
                .route("/api/panic", any(panicking_handler))
                .route("/api/panic-body", any(panicking_body));
            let mut app = layered(flavor, placement, &inspector, routes);
            let post = |path: &str| {
                Request::post(path)
                    .header(REQUEST_ID_HEADER, "panic-1")
                    .body(Body::from("p"))
                    .unwrap()
            };
            let caught =
                std::panic::AssertUnwindSafe(exchange(&mut app, post("/api/panic"), Mode::Full))
                    .catch_unwind()
                    .await;
            assert!(caught.is_err(), "the handler's panic reaches the caller");
            let caught = std::panic::AssertUnwindSafe(exchange(
                &mut app,
                post("/api/panic-body"),
                Mode::Full,
            ))
            .catch_unwind()
            .await;
            assert!(caught.is_err(), "the body's panic reaches the caller");
            assert_eq!(
                inspector.stats().in_flight_bytes,
                0,
                "{flavor:?} {placement:?}"
            );
            let after = exchange(&mut app, post("/api/echo"), Mode::Full)
                .await
                .unwrap();
            assert_eq!(after.data(), "p");
            let entries = inspector.entries();
            assert_eq!(
                entries[0].outcome,
                Outcome::Complete,
                "{flavor:?} {placement:?}"
            );
            assert_eq!(entries[0].response_body.text(), "p");
            let outcomes: Vec<_> = entries
                .iter()
                .map(|e| (e.path.clone(), e.outcome))
                .collect();
            println!("{flavor:?} {placement:?}: after panics {outcomes:?}");
            let entries: Vec<Value> = entries
                .iter()
                .map(|e| normalize_entry(e, &Vec::new()))
                .collect();
            results.push((entries, inspector.stats()));
        }
        assert_eq!(
            results[0], results[1],
            "{placement:?}: layer() vs axum_layer()"
        );
    }
}

// covers "request bodies the handler never read are recorded as complete: false with what was
// read" and "nothing changes once the record is finished": a handler that keeps the request body
// and reads it after the exchange ended changes neither the entry nor the counters; as `layer()`.
#[tokio::test(start_paused = true)]
async fn a_request_body_read_after_the_exchange_changes_nothing() {
    for placement in PLACEMENTS {
        let mut results = Vec::new();
        for flavor in [Flavor::Tower, Flavor::Axum] {
            let inspector = Inspector::new(config_small_limits());
            let kept: Arc<Mutex<Option<Body>>> = Arc::new(Mutex::new(None));
            let slot = Arc::clone(&kept);
            let routes = Router::new().route(
                "/api/later",
                any(move |request: AxumRequest| {
                    let slot = Arc::clone(&slot);
                    async move {
                        *slot.lock().unwrap() = Some(request.into_body());
                        "taken"
                    }
                }),
            );
            let mut app = layered(flavor, placement, &inspector, routes);
            let body = BodySpec {
                chunks: vec![Bytes::from_static(b"late-"), Bytes::from(vec![b'z'; 100])],
                exact: true,
                trailers: false,
                fail: false,
            };
            let request = Request::put("/api/later")
                .header(REQUEST_ID_HEADER, "late-1")
                .body(Body::new(body.script()))
                .unwrap();
            exchange(&mut app, request, Mode::Full).await.unwrap();
            let before = normalize_entry(&inspector.entries()[0], &Vec::new());
            let stats_before = inspector.stats();
            assert!(!inspector.entries()[0].request_body.complete());
            let late = kept
                .lock()
                .unwrap()
                .take()
                .expect("the handler kept the body");
            let read = late.collect().await.unwrap().to_bytes();
            assert_eq!(read.len(), 105, "the kept body still reads whole");
            let after = normalize_entry(&inspector.entries()[0], &Vec::new());
            assert_eq!(
                before, after,
                "{flavor:?} {placement:?}: a finished entry changed"
            );
            assert_eq!(inspector.stats(), stats_before, "{flavor:?} {placement:?}");
            results.push((after, inspector.stats()));
        }
        assert_eq!(
            results[0], results[1],
            "{placement:?}: layer() vs axum_layer()"
        );
    }
}

// covers I1 across two inspectors: an outer and an inner `axum_layer()` (two inspectors, as two
// services in one process would) agree on one id, propagated from the outer to the inner, and
// record what two `layer()`s record.
#[tokio::test(start_paused = true)]
async fn nested_inspectors_share_the_id() {
    let mut results = Vec::new();
    for flavor in [Flavor::Tower, Flavor::Axum] {
        let outer = Inspector::new(config_small_limits());
        let inner = Inspector::new(config_small_limits());
        let inner_app = layered(flavor, Placement::RouteLayer, &inner, routes());
        let mut app: App = match flavor {
            Flavor::Tower => BoxCloneService::new(ServiceExt::<Request<Body>>::map_response(
                outer
                    .layer()
                    .layer(inner_app.map_request(|r: Request<InspectBody<Body>>| r.map(Body::new))),
                |r: Response<InspectBody<Body>>| r.map(Body::new),
            )),
            Flavor::Axum => BoxCloneService::new(outer.axum_layer().layer(inner_app)),
        };
        for path in ["/api/echo", "/api/monitor/aks"] {
            let request = Request::post(path).body(Body::from("nested")).unwrap();
            let observation = exchange(&mut app, request, Mode::Full).await.unwrap();
            let id = observation.header("x-request-id").unwrap().to_owned();
            assert!(is_generated(&id));
            assert_eq!(observation.header("x-seen-id"), Some(id.as_str()));
            assert_eq!(outer.entries()[0].request_id, id, "{flavor:?}");
            assert_eq!(inner.entries()[0].request_id, id, "{flavor:?}");
        }
        let untimed = |inspector: &Inspector| -> Vec<Value> {
            inspector
                .entries()
                .iter()
                .map(|e| {
                    let generated = vec![(e.request_id.clone(), "<id>".to_owned())];
                    normalize_entry(e, &generated)
                })
                .collect()
        };
        results.push((
            untimed(&outer),
            untimed(&inner),
            outer.stats(),
            inner.stats(),
        ));
    }
    assert_eq!(results[0], results[1], "layer() vs axum_layer()");
}

async fn upload(body: Bytes) -> String {
    format!("{} bytes", body.len())
}

/// `app` behind an outer length limit on request bodies (what tower-http's
/// `RequestBodyLimitLayer` does to a body without `Content-Length`).
fn behind_a_length_limit(app: App, limit: usize) -> App {
    BoxCloneService::new(app.map_request(move |request: Request<Body>| {
        request.map(|body| Body::new(http_body_util::Limited::new(body, limit)))
    }))
}

// covers "the layer never changes status": a request body cut by a length limit outside the
// layer makes axum's `Bytes` extractor answer 413 Payload Too Large without the layer; it must
// answer 413 with `axum_layer()` too, for a polling GET, for an unowned POST under
// `require_owner(true)` (neither captured) and for a captured POST. (axum's
// extractor recognises the limit by downcasting the body error through at most two `axum::Error`
// boxes; a wrapper that boxes the error once more turns the 413 into a 400.)
#[tokio::test(start_paused = true)]
async fn a_request_over_an_outer_length_limit_keeps_its_413() {
    let routes = || {
        Router::new()
            .route("/api/upload", any(upload))
            .route("/api/monitor/upload", get(upload))
    };
    let request = |method: Method, path: &str| {
        Request::builder()
            .method(method)
            .uri(path)
            .body(Body::new(Script::data([
                "0123456789",
                "0123456789",
                "0123456789",
            ])))
            .unwrap()
    };
    let cases = [
        (Method::GET, "/api/monitor/upload"),
        (Method::POST, "/api/upload"),
    ];
    let mut bare = behind_a_length_limit(BoxCloneService::new(routes()), 16);
    let mut failures = Vec::new();
    for (method, path) in &cases {
        let without = exchange(&mut bare, request(method.clone(), path), Mode::Full)
            .await
            .unwrap();
        assert_eq!(
            without.status, 413,
            "{method} {path} without the layer: {without:?}"
        );
        for placement in PLACEMENTS {
            for (flavor, unowned) in [
                (Flavor::Tower, false),
                (Flavor::Axum, false),
                (Flavor::Tower, true),
                (Flavor::Axum, true),
            ] {
                // `unowned`: under `require_owner(true)` with no owner nothing is captured.
                let config = if unowned {
                    config_required_owner()
                } else {
                    config_small_limits()
                };
                let inspector = Inspector::new(config);
                let mut app =
                    behind_a_length_limit(layered(flavor, placement, &inspector, routes()), 16);
                let with = exchange(&mut app, request(method.clone(), path), Mode::Full)
                    .await
                    .unwrap();
                if with.status != 413 {
                    let unowned = if unowned { " unowned" } else { "" };
                    failures.push(format!(
                        "{flavor:?} {placement:?} {method} {path}{unowned}: {} {:?} instead of 413 {:?}",
                        with.status,
                        with.data(),
                        without.data()
                    ));
                }
            }
        }
    }
    let axum_failures: Vec<_> = failures.iter().filter(|f| f.starts_with("Axum")).collect();
    assert!(
        axum_failures.is_empty(),
        "axum_layer() changed the status of a request over an outer length limit:\n{}\n(all: {failures:#?})",
        axum_failures
            .iter()
            .map(|f| f.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

// covers "a polling GET's bodies are handed on as they came": a response body's error reaches the
// client of a polling GET (and of an unowned request under `require_owner`) as the very error
// the handler's body raised (an `io::Error` under axum's one `Error` box), as without the layer.
#[tokio::test(start_paused = true)]
async fn body_errors_keep_their_type_when_not_captured() {
    let routes = || {
        Router::new()
            .route("/api/monitor/broken", get(broken))
            .route("/api/broken", any(broken))
    };
    let mut bare: App = BoxCloneService::new(routes());
    let get_request = |path: &str| Request::get(path).body(Body::empty()).unwrap();
    let without = exchange(&mut bare, get_request("/api/broken"), Mode::Full)
        .await
        .unwrap();
    assert_eq!(without.frames.last().unwrap(), "error boom (io::Error)");
    let mut kinds = Vec::new();
    for placement in PLACEMENTS {
        let inspector = Inspector::new(config_required_owner());
        let mut app = layered(Flavor::Axum, placement, &inspector, routes());
        for path in ["/api/monitor/broken", "/api/broken"] {
            let observation = exchange(&mut app, get_request(path), Mode::Full)
                .await
                .unwrap();
            assert_eq!(
                observation.frames.last(),
                without.frames.last(),
                "{placement:?} {path}: not captured (polling, or unowned), handed on as it came"
            );
        }
        let mut owned = get_request("/api/broken");
        owned.extensions_mut().insert(Account("alice".into()));
        let observation = exchange(&mut app, owned, Mode::Full).await.unwrap();
        kinds.push(format!(
            "{placement:?} captured: {}",
            observation.frames.last().unwrap()
        ));
        assert_eq!(inspector.stats().captured, 1);
    }
    println!("{kinds:?}");
}

// ---------------------------------------------------------------------------------------------
// Plain tower services, service errors, readiness
// ---------------------------------------------------------------------------------------------

/// `inspector`'s layer of `flavor` over a plain service answering `make()` (no router).
fn plain<B, F>(flavor: Flavor, inspector: &Inspector, make: F) -> App
where
    F: Fn() -> B + Clone + Send + Sync + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    match flavor {
        Flavor::Tower => {
            let service = tower::service_fn(move |_request: Request<InspectBody<Body>>| {
                let make = make.clone();
                async move { Ok::<_, Infallible>(Response::new(make())) }
            });
            BoxCloneService::new(
                inspector
                    .layer()
                    .layer(service)
                    .map_response(|r: Response<InspectBody<B>>| r.map(Body::new)),
            )
        }
        Flavor::Axum => {
            let service = tower::service_fn(move |_request: Request<Body>| {
                let make = make.clone();
                async move { Ok::<_, Infallible>(Response::new(make())) }
            });
            BoxCloneService::new(inspector.axum_layer().layer(service))
        }
    }
}

async fn plain_case<B, F>(what: &str, make: F)
where
    F: Fn() -> B + Clone + Send + Sync + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let bare = {
        let make = make.clone();
        observe(Response::new(Body::new(make())), None).await
    };
    for path in ["/api/monitor/plain", "/api/plain"] {
        let mut results = Vec::new();
        for flavor in [Flavor::Tower, Flavor::Axum] {
            let inspector = Inspector::new(config_small_limits());
            let mut app = plain(flavor, &inspector, make.clone());
            let request = Request::get(path)
                .header(REQUEST_ID_HEADER, "plain-1")
                .body(Body::empty())
                .unwrap();
            let observation = exchange(&mut app, request, Mode::Full).await.unwrap();
            assert_eq!(
                observation.without_layer_headers(),
                bare,
                "{what} {path} {flavor:?}: the body as no layer hands it on (hint, end, frames)"
            );
            assert_eq!(observation.header("x-request-id"), Some("plain-1"));
            let entries: Vec<Value> = inspector
                .entries()
                .iter()
                .map(|e| normalize_entry(e, &Vec::new()))
                .collect();
            results.push((entries, inspector.stats()));
        }
        assert_eq!(
            results[0], results[1],
            "{what} {path}: layer() vs axum_layer()"
        );
    }
}

// covers "any response body type" over a plain tower service: `String`, `Full`, `Empty`, a
// stream with no size hint, trailers and a failing body reach the client with the same size
// hint, end flag, frames and trailers as without the layer, polling or captured, and are
// recorded as by `layer()`.
#[tokio::test(start_paused = true)]
async fn plain_services_with_other_body_types() {
    plain_case("String", || String::from("plain string")).await;
    plain_case("Full", || Full::new(Bytes::from_static(b"full body"))).await;
    plain_case("Empty", Empty::<Bytes>::new).await;
    plain_case("StreamBody", || {
        StreamBody::new(futures::stream::iter([
            Ok::<_, io::Error>(Frame::data(Bytes::from_static(b"one;"))),
            Ok(Frame::data(Bytes::from_static(b"two;"))),
        ]))
    })
    .await;
    plain_case("trailers", || Script {
        frames: VecDeque::from([
            Ok(Frame::data(Bytes::from_static(b"data"))),
            Ok(Frame::trailers(trailers())),
        ]),
        exact: true,
        ..Script::default()
    })
    .await;
    plain_case("failing", || Script {
        frames: VecDeque::from([
            Ok(Frame::data(Bytes::from_static(b"data"))),
            Err(io::Error::other("plain failure")),
        ]),
        ..Script::default()
    })
    .await;
}

// covers `ServiceError`: an inner service's error reaches the caller unchanged; a captured call
// is recorded as `ServiceError` with no status, a polling GET is not recorded; as `layer()`.
#[tokio::test(start_paused = true)]
async fn service_errors_match_layer() {
    let mut results = Vec::new();
    for flavor in [Flavor::Tower, Flavor::Axum] {
        let inspector = Inspector::new(config_small_limits());
        for path in ["/api/monitor/fail", "/api/fail"] {
            let request = Request::get(path).body(Body::empty()).unwrap();
            let error = match flavor {
                Flavor::Tower => inspector
                    .layer()
                    .layer(tower::service_fn(|_: Request<InspectBody<Body>>| async {
                        Err::<Response<Body>, _>("boom")
                    }))
                    .oneshot(request)
                    .await
                    .unwrap_err(),
                Flavor::Axum => inspector
                    .axum_layer()
                    .layer(tower::service_fn(|_: Request<Body>| async {
                        Err::<Response<Body>, _>("boom")
                    }))
                    .oneshot(request)
                    .await
                    .unwrap_err(),
            };
            assert_eq!(error, "boom");
        }
        let entries = inspector.entries();
        assert_eq!(entries.len(), 1, "{flavor:?}");
        assert_eq!(
            (entries[0].outcome, entries[0].status),
            (Outcome::ServiceError, None)
        );
        let stats = inspector.stats();
        assert_eq!(stats.in_flight_bytes, 0);
        results.push((
            normalize_entry(
                &entries[0],
                &vec![(entries[0].request_id.clone(), "<id>".into())],
            ),
            stats,
        ));
    }
    assert_eq!(results[0], results[1], "layer() vs axum_layer()");
}

/// A service that is not ready until its gate opens (or that fails `poll_ready`).
#[derive(Clone, Debug)]
struct Gate {
    open: Arc<AtomicBool>,
    waker: Arc<Mutex<Option<Waker>>>,
    fail: bool,
}

impl Service<Request<Body>> for Gate {
    type Response = Response<Body>;
    type Error = &'static str;
    type Future = futures::future::Ready<Result<Response<Body>, &'static str>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), &'static str>> {
        if self.fail {
            return Poll::Ready(Err("not ready"));
        }
        if self.open.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(()));
        }
        *self.waker.lock().unwrap() = Some(cx.waker().clone());
        Poll::Pending
    }

    fn call(&mut self, _request: Request<Body>) -> Self::Future {
        futures::future::ready(Ok(Response::new(Body::from("gate"))))
    }
}

// covers the tower contract: `poll_ready` is forwarded (not ready while the inner service is
// not, ready when it is, its error returned) and nothing is recorded for a call never made.
#[tokio::test(start_paused = true)]
async fn readiness_is_forwarded() {
    let inspector = Inspector::new(config_small_limits());
    let gate = Gate {
        open: Arc::new(AtomicBool::new(false)),
        waker: Arc::new(Mutex::new(None)),
        fail: false,
    };
    let mut service = inspector.axum_layer().layer(gate.clone());
    assert!(
        futures::poll!(service.ready()).is_pending(),
        "not ready while the inner is not"
    );
    gate.open.store(true, Ordering::SeqCst);
    if let Some(waker) = gate.waker.lock().unwrap().take() {
        waker.wake();
    }
    let response = service
        .ready()
        .await
        .unwrap()
        .call(Request::post("/api/gate").body(Body::from("in")).unwrap())
        .await
        .unwrap();
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "gate"
    );
    assert_eq!(inspector.stats().captured, 1);

    let failing = Gate { fail: true, ..gate };
    let mut service = inspector.axum_layer().layer(failing);
    assert_eq!(service.ready().await.unwrap_err(), "not ready");
    assert_eq!(
        inspector.stats().captured,
        1,
        "nothing recorded without a call"
    );
}

// ---------------------------------------------------------------------------------------------
// Placement with other layers and routers
// ---------------------------------------------------------------------------------------------

async fn authenticate(mut request: AxumRequest, next: Next) -> Response<Body> {
    let key = request
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("good-"))
        .map(str::to_owned);
    match key {
        Some(name) => {
            request.extensions_mut().insert(Account(name));
            next.run(request).await
        }
        None if request.uri().path().starts_with("/public") => next.run(request).await,
        None => answer(
            StatusCode::UNAUTHORIZED,
            HeaderMap::new(),
            Body::from("{\"error\":\"unauthorized\"}"),
        ),
    }
}

fn owner_routes() -> Router {
    Router::new()
        .route("/api/echo", any(echo))
        .route("/api/monitor/aks", get(aks))
        .route("/public/echo", any(echo))
        .route("/public/monitor/aks", get(aks))
}

// covers I6 (owner rules inside an authentication layer): a rejected request never reaches the
// inspector, an authenticated one is recorded with its owner, an unauthenticated public one is
// counted as unowned and not stored, `EntryFilter::owner` serves each caller its own; the same
// responses, entries and stats as `layer()`, in both placements.
#[tokio::test(start_paused = true)]
async fn inside_an_authentication_layer() {
    let requests: &[(&str, &str, Option<&str>)] = &[
        ("POST", "/api/echo", Some("good-alice")),
        ("POST", "/api/echo", None),
        ("POST", "/api/echo", Some("bad-key")),
        ("GET", "/api/monitor/aks", Some("good-bob")),
        ("GET", "/api/monitor/aks", None),
        ("POST", "/public/echo", None),
        ("GET", "/public/monitor/aks", None),
        ("DELETE", "/public/echo", Some("good-bob")),
        ("PUT", "/api/echo", Some("good-bob")),
    ];
    for placement in PLACEMENTS {
        let mut results = Vec::new();
        for flavor in [Flavor::Tower, Flavor::Axum] {
            let inspector = Inspector::new(
                config_small_limits()
                    .polling_prefixes(["/public/monitor"])
                    .unwrap()
                    .owner_from(owner)
                    .require_owner(true),
            );
            let auth = axum::middleware::from_fn(authenticate);
            let mut app: App = match placement {
                Placement::RouteLayer => {
                    let routes = owner_routes();
                    let routes = match flavor {
                        Flavor::Tower => routes.layer(inspector.layer()),
                        Flavor::Axum => routes.layer(inspector.axum_layer()),
                    };
                    BoxCloneService::new(routes.layer(auth))
                }
                Placement::AroundRouter => {
                    let inner = layered(flavor, placement, &inspector, owner_routes());
                    BoxCloneService::new(auth.layer(inner))
                }
            };
            let mut observations = Vec::new();
            for (method, path, key) in requests {
                let mut request = Request::builder()
                    .method(*method)
                    .uri(*path)
                    .header(REQUEST_ID_HEADER, format!("auth-{}", observations.len()));
                if let Some(key) = key {
                    request = request.header("x-api-key", *key);
                }
                let request = request.body(Body::from("payload")).unwrap();
                observations.push(exchange(&mut app, request, Mode::Full).await.unwrap());
            }
            let statuses: Vec<u16> = observations.iter().map(|o| o.status).collect();
            assert_eq!(statuses, [200, 401, 401, 200, 401, 200, 200, 200, 200]);
            let stats = inspector.stats();
            assert_eq!(
                (
                    stats.captured,
                    stats.passed_through,
                    stats.not_recorded_unowned
                ),
                (3, 2, 1),
                "{flavor:?} {placement:?}: 3 recorded, both polling GETs passed (the unowned public one \
                 too: polling comes first), 1 public POST unowned, the 401s unseen"
            );
            let owners: Vec<_> = inspector
                .entries()
                .iter()
                .map(|e| e.owner.clone())
                .collect();
            assert_eq!(
                owners,
                [
                    Some("bob".to_owned()),
                    Some("bob".into()),
                    Some("alice".into())
                ]
            );
            let alice = inspector.entries_matching(&EntryFilter::new().owner("alice"));
            assert_eq!(alice.len(), 1);
            assert_eq!(alice[0].request_id, "auth-0");
            let entries: Vec<Value> = inspector
                .entries()
                .iter()
                .map(|e| normalize_entry(e, &Vec::new()))
                .collect();
            results.push((observations, entries, stats));
        }
        assert_eq!(
            results[0], results[1],
            "{placement:?}: layer() vs axum_layer()"
        );
    }
}

/// The inner router of the nest test: its paths are relative to where it is nested.
fn nested_routes() -> Router {
    Router::new()
        .route("/echo", any(echo))
        .route("/monitor/aks", get(aks))
        .fallback(fallback)
}

// covers placement in `Router::nest`, `route_layer` and with a `fallback`: every request gives
// the same responses, entries (paths as the layer saw them) and stats with `axum_layer()` as with
// `layer()`.
#[tokio::test(start_paused = true)]
async fn nest_route_layer_and_fallback_match_layer() {
    let requests = [
        ("POST", "/api/echo?sig=x"),
        ("GET", "/api/monitor/aks"),
        ("GET", "/api/nowhere"),
        ("POST", "/elsewhere"),
        ("GET", "/api/monitor/none"),
    ];
    for arrangement in ["nest", "route_layer", "layer+fallback"] {
        let mut results = Vec::new();
        for flavor in [Flavor::Tower, Flavor::Axum] {
            let inspector = Inspector::new(config_small_limits());
            let app: Router = match (arrangement, flavor) {
                ("nest", Flavor::Tower) => {
                    Router::new().nest("/api", nested_routes().layer(inspector.layer()))
                }
                ("nest", Flavor::Axum) => {
                    Router::new().nest("/api", nested_routes().layer(inspector.axum_layer()))
                }
                ("route_layer", Flavor::Tower) => routes().route_layer(inspector.layer()),
                ("route_layer", Flavor::Axum) => routes().route_layer(inspector.axum_layer()),
                (_, Flavor::Tower) => routes().layer(inspector.layer()).fallback(fallback),
                (_, Flavor::Axum) => routes().layer(inspector.axum_layer()).fallback(fallback),
            };
            let mut app: App = BoxCloneService::new(app);
            let mut observations = Vec::new();
            for (i, (method, uri)) in requests.iter().enumerate() {
                let request = Request::builder()
                    .method(*method)
                    .uri(*uri)
                    .header(REQUEST_ID_HEADER, format!("n-{i}"))
                    .body(Body::from("n"))
                    .unwrap();
                observations.push(exchange(&mut app, request, Mode::Full).await.unwrap());
            }
            let entries: Vec<Value> = inspector
                .entries()
                .iter()
                .map(|e| normalize_entry(e, &Vec::new()))
                .collect();
            let paths: Vec<_> = inspector
                .entries()
                .iter()
                .map(|e| format!("{} {}", e.method, e.path))
                .collect();
            println!(
                "{arrangement} {flavor:?}: recorded {paths:?}, stats {:?}",
                inspector.stats()
            );
            results.push((observations, entries, inspector.stats()));
        }
        assert_eq!(
            results[0], results[1],
            "{arrangement}: layer() vs axum_layer()"
        );
    }
}

// covers the JSON handler mounted under the layer (the guide's example): its polling GET is not
// recorded, it lists what `entries_matching` returns, an invalid filter gets 400; as `layer()`.
#[tokio::test(start_paused = true)]
async fn json_handler_under_the_layer_matches_layer() {
    let mut results = Vec::new();
    for flavor in [Flavor::Tower, Flavor::Axum] {
        let inspector = Inspector::new(
            config_small_limits()
                .polling_prefixes(["/api/inspector"])
                .unwrap(),
        );
        let routes = routes().nest("/api/inspector", inspector.router());
        let mut app = layered(flavor, Placement::RouteLayer, &inspector, routes);
        for (i, (method, path)) in [
            ("POST", "/api/echo"),
            ("DELETE", "/api/jobs/3"),
            ("GET", "/missing"),
        ]
        .into_iter()
        .enumerate()
        {
            let request = Request::builder()
                .method(method)
                .uri(path)
                .header(REQUEST_ID_HEADER, format!("j-{i}"))
                .body(Body::from("json"))
                .unwrap();
            exchange(&mut app, request, Mode::Full).await.unwrap();
        }
        let get_request = |uri: &str| Request::get(uri).body(Body::empty()).unwrap();
        let listed = exchange(
            &mut app,
            get_request("/api/inspector?method=post&limit=5"),
            Mode::Full,
        )
        .await
        .unwrap();
        assert_eq!(listed.status, 200);
        let mut json: Value = serde_json::from_str(&listed.data()).unwrap();
        let want: Vec<Value> = inspector
            .entries_matching(&EntryFilter::parse(Some("post"), None).unwrap().limit(5))
            .iter()
            .map(|e| serde_json::to_value(&**e).unwrap())
            .collect();
        assert_eq!(json["entries"], Value::Array(want), "{flavor:?}");
        let bad = exchange(
            &mut app,
            get_request("/api/inspector?status=abc"),
            Mode::Full,
        )
        .await
        .unwrap();
        assert_eq!(bad.status, 400);
        let stats = inspector.stats();
        assert_eq!((stats.captured, stats.passed_through), (3, 2), "{flavor:?}");
        for entry in json["entries"].as_array_mut().unwrap() {
            entry.as_object_mut().unwrap().remove("started_at_unix_ms");
        }
        json.as_object_mut().unwrap().remove("stats");
        results.push((json, bad.data(), stats));
    }
    assert_eq!(results[0], results[1], "layer() vs axum_layer()");
}

// ---------------------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------------------

// covers concurrency on a multi-thread runtime: 240 interleaved exchanges (streamed echoes,
// polling GETs, aborted and cancelled calls) leave exact counters, `in_flight_bytes` 0,
// `ring_bytes` equal to the entries' `retained_bytes`, one entry per captured call with its id
// and outcome, ids consecutive; the counts equal `layer()`'s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_exchanges_keep_exact_counts() {
    for placement in PLACEMENTS {
        let mut counts = Vec::new();
        for flavor in [Flavor::Tower, Flavor::Axum] {
            let inspector = Inspector::new(
                InspectorConfig::new()
                    .polling_prefixes(["/api/monitor"])
                    .unwrap()
                    .capacity(1_000)
                    .body_limit(64),
            );
            let app = layered(flavor, placement, &inspector, routes());
            let mut tasks = Vec::new();
            for i in 0..240usize {
                let mut app = app.clone();
                tasks.push(tokio::spawn(async move {
                    let kind = i % 4;
                    let (method, path, mode) = match kind {
                        0 => (Method::POST, "/api/echo", Mode::Full),
                        1 => (Method::GET, "/api/monitor/stream", Mode::Full),
                        2 => (Method::PATCH, "/api/echo", Mode::FirstFrame),
                        _ => (Method::POST, "/api/hang", Mode::Cancel),
                    };
                    let body = Script {
                        frames: (0..6)
                            .map(|f| {
                                Ok(Frame::data(Bytes::from(format!(
                                    "{i:04}-{f}:{}",
                                    "y".repeat(12)
                                ))))
                            })
                            .collect(),
                        exact: i % 8 < 4,
                        yield_each: true,
                        yielded: false,
                    };
                    let request = Request::builder()
                        .method(method)
                        .uri(path)
                        .header(REQUEST_ID_HEADER, format!("t-{i}"))
                        .body(Body::new(body))
                        .unwrap();
                    let observation = exchange(&mut app, request, mode).await;
                    (i, observation)
                }));
            }
            for task in tasks {
                let (i, observation) = task.await.unwrap();
                if i.is_multiple_of(4) {
                    let data = observation.unwrap().data();
                    assert_eq!(data.len(), 6 * 19, "echo {i} complete");
                }
            }
            let stats = inspector.stats();
            assert_eq!(
                (
                    stats.captured,
                    stats.passed_through,
                    stats.ring_len,
                    stats.evicted
                ),
                (180, 60, 180, 0),
                "{flavor:?} {placement:?}"
            );
            assert_eq!(stats.in_flight_bytes, 0, "{flavor:?} {placement:?}");
            assert_eq!(
                stats.retained_bytes,
                stats.ring_bytes + stats.ring_slot_bytes + stats.spare_bytes
            );
            assert!(stats.peak_retained_bytes >= stats.retained_bytes);
            let entries = inspector.entries();
            assert_eq!(
                entries.iter().map(|e| e.retained_bytes()).sum::<usize>(),
                stats.ring_bytes,
                "{flavor:?} {placement:?}: ring_bytes is the entries' retained_bytes"
            );
            let ids: Vec<u64> = entries.iter().map(|e| e.id).collect();
            assert_eq!(ids, (1..=180).rev().collect::<Vec<_>>());
            let mut seen = HashSet::new();
            for entry in entries.iter() {
                let i: usize = entry
                    .request_id
                    .strip_prefix("t-")
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(seen.insert(i), "one entry per call");
                let want = match i % 4 {
                    0 => Outcome::Complete,
                    2 => Outcome::Aborted,
                    3 => Outcome::Cancelled,
                    _ => panic!("polling GET {i} recorded"),
                };
                assert_eq!(entry.outcome, want, "{flavor:?} {placement:?} call {i}");
                if i.is_multiple_of(4) {
                    assert_eq!(entry.request_body.total_bytes(), 6 * 19);
                    assert_eq!(entry.response_body.captured_bytes(), 64);
                }
            }
            counts.push((
                stats.captured,
                stats.passed_through,
                stats.truncated_bodies,
                stats.ring_len,
            ));
        }
        assert_eq!(
            counts[0], counts[1],
            "{placement:?}: layer() vs axum_layer()"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Behind hyper: empty bodies, Content-Length, upgrades
// ---------------------------------------------------------------------------------------------

async fn serve(app: App) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let make = axum::ServiceExt::<Request<Body>>::into_make_service(app);
    tokio::spawn(async move { axum::serve(listener, make).await.unwrap() });
    address
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 exchange on a fresh connection, read as far as the response's framing says.
async fn raw_exchange(address: SocketAddr, head: &str, body: &[u8]) -> Raw {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&buffer[..end]).into_owned();
            let mut lines = text.split("\r\n");
            let status: u16 = lines.next().unwrap()[9..12].parse().unwrap();
            let headers: Vec<(String, String)> = lines
                .map(|l| {
                    let (n, v) = l.split_once(':').unwrap();
                    (n.trim().to_ascii_lowercase(), v.trim().to_owned())
                })
                .collect();
            let rest = &buffer[end + 4..];
            let length = headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .map(|(_, v)| v.parse::<usize>().unwrap());
            let done = if head.starts_with("HEAD") || status == 204 {
                Some(Vec::new())
            } else if let Some(length) = length {
                (rest.len() >= length).then(|| rest[..length].to_vec())
            } else {
                rest.ends_with(b"0\r\n\r\n").then(|| rest.to_vec())
            };
            if let Some(body) = done {
                return Raw {
                    status,
                    headers,
                    body,
                };
            }
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "connection closed early: {:?}",
            String::from_utf8_lossy(&buffer)
        );
        buffer.extend_from_slice(&chunk[..n]);
    }
}

/// Lets the server task finish what it does after the last byte (no sleeping).
async fn settle(inspector: &Inspector, captured: u64) {
    for _ in 0..1_000 {
        if inspector.stats().captured >= captured && inspector.stats().in_flight_bytes == 0 {
            return;
        }
        tokio::task::yield_now().await;
    }
}

// covers I5 (`Content-Length` preserved) and the outcome of bodies hyper never polls: served by
// hyper, empty answers (a 204, an empty echo) are recorded `Complete`, exact sizes go out as
// `Content-Length` from a plain service (no router to set it), and `axum_layer()` answers and
// records as `layer()` (HEAD included).
#[tokio::test]
async fn served_by_hyper_empty_bodies_and_content_length() {
    let exchanges: &[(&str, &[u8])] = &[
        (
            "DELETE /api/empty HTTP/1.1\r\nhost: t\r\nx-request-id: h-0\r\nconnection: close\r\n\r\n",
            b"",
        ),
        (
            "HEAD /api/monitor/aks HTTP/1.1\r\nhost: t\r\nx-request-id: h-1\r\nconnection: close\r\n\r\n",
            b"",
        ),
        (
            "GET /api/echo HTTP/1.1\r\nhost: t\r\nx-request-id: h-2\r\nconnection: close\r\n\r\n",
            b"",
        ),
        (
            "POST /api/echo HTTP/1.1\r\nhost: t\r\nx-request-id: h-3\r\ncontent-length: 5\r\nconnection: close\r\n\r\n",
            b"hello",
        ),
        (
            "GET /api/monitor/stream HTTP/1.1\r\nhost: t\r\nx-request-id: h-4\r\nconnection: close\r\n\r\n",
            b"",
        ),
    ];
    for placement in PLACEMENTS {
        let mut results = Vec::new();
        for flavor in [Flavor::Tower, Flavor::Axum] {
            let inspector = Inspector::new(config_small_limits());
            let address = serve(layered(flavor, placement, &inspector, routes())).await;
            let mut responses = Vec::new();
            for (head, body) in exchanges {
                responses.push(raw_exchange(address, head, body).await);
            }
            settle(&inspector, 4).await;
            let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
            assert_eq!(statuses, [204, 200, 200, 200, 200]);
            assert_eq!(responses[3].header("content-length"), Some("5"));
            assert_eq!(responses[3].body, b"hello");
            assert_eq!(responses[4].header("content-length"), Some("32"));
            let outcomes: Vec<_> = inspector
                .entries()
                .iter()
                .map(|e| (e.request_id.clone(), e.outcome))
                .collect();
            // h-1 (HEAD) is compared with `layer()` below only: axum strips a HEAD answer's body.
            for (id, outcome) in &outcomes {
                assert!(
                    id == "h-1" || *outcome == Outcome::Complete,
                    "{flavor:?} {placement:?}: {id} recorded {outcome:?}: an empty answer hyper \
                     does not poll ended, it was not aborted ({outcomes:?})"
                );
            }
            assert_eq!(outcomes.len(), 4);
            println!("{flavor:?} {placement:?}: {outcomes:?}");
            let entries: Vec<Value> = inspector
                .entries()
                .iter()
                .map(|e| normalize_untimed(e))
                .collect();
            for response in &mut responses {
                response.headers.retain(|(n, _)| n != "date");
            }
            results.push((responses, entries, inspector.stats()));
        }
        assert_eq!(
            results[0], results[1],
            "{placement:?}: layer() vs axum_layer()"
        );
    }

    // A plain service: hyper sets Content-Length only from the body's exact size hint.
    for flavor in [Flavor::Tower, Flavor::Axum] {
        let inspector = Inspector::new(config_small_limits());
        let address = serve(plain(flavor, &inspector, || {
            Script::data(["0123456789", "abcdef"])
        }))
        .await;
        for path in ["/api/monitor/plain", "/api/plain"] {
            let raw = raw_exchange(
                address,
                &format!("GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"),
                b"",
            )
            .await;
            assert_eq!(
                raw.header("content-length"),
                Some("16"),
                "{flavor:?} {path}: {raw:?}"
            );
            assert_eq!(raw.header("transfer-encoding"), None);
            assert_eq!(raw.body, b"0123456789abcdef");
        }
        settle(&inspector, 1).await;
        assert_eq!(inspector.entries()[0].outcome, Outcome::Complete);
    }
}

// covers "the request goes through as it came" for upgrades: hyper's upgrade handle and every
// other extension reach the handler of a polling GET and of a captured GET (the handler counts
// them): one more than without the layer (the `RequestId`), none more with the extension off.
#[tokio::test]
async fn upgrade_requests_keep_their_extensions() {
    let upgrade = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nhost: t\r\nconnection: upgrade\r\nupgrade: foo\r\nx-request-id: up-1\r\n\r\n"
        )
    };
    let plain_get =
        |path: &str| format!("GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n");
    let extensions =
        |raw: &Raw| -> usize { raw.header("x-seen-extensions").unwrap().parse().unwrap() };
    for path in ["/api/monitor/aks", "/api/echo"] {
        let bare = serve(BoxCloneService::new(routes())).await;
        let bare_upgrade = extensions(&raw_exchange(bare, &upgrade(path), b"").await);
        let bare_plain = extensions(&raw_exchange(bare, &plain_get(path), b"").await);
        assert_eq!(
            bare_upgrade,
            bare_plain + 1,
            "hyper adds its upgrade handle"
        );
        for placement in PLACEMENTS {
            for flavor in [Flavor::Tower, Flavor::Axum] {
                for extension in [true, false] {
                    let inspector =
                        Inspector::new(config_small_limits().request_id_extension(extension));
                    let address = serve(layered(flavor, placement, &inspector, routes())).await;
                    let raw = raw_exchange(address, &upgrade(path), b"").await;
                    assert_eq!(raw.status, 200);
                    assert_eq!(raw.header("x-request-id"), Some("up-1"));
                    assert_eq!(
                        extensions(&raw),
                        bare_upgrade + usize::from(extension),
                        "{path} {flavor:?} {placement:?} extension {extension}"
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tracing span and metrics
// ---------------------------------------------------------------------------------------------

type Fields = Vec<(String, String)>;

/// Records every span's name and fields, and the entered spans (one thread).
#[derive(Debug, Default, Clone)]
struct Spans {
    spans: Arc<Mutex<Vec<(String, Fields)>>>,
    stack: Arc<Mutex<Vec<u64>>>,
}

struct Collect<'a>(&'a mut Fields);

impl tracing::field::Visit for Collect<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.0.push((field.name().to_owned(), format!("{value:?}")));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.push((field.name().to_owned(), value.to_owned()));
    }
}

impl tracing::Subscriber for Spans {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, attrs: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut fields = Vec::new();
        attrs.record(&mut Collect(&mut fields));
        let mut spans = self.spans.lock().unwrap();
        spans.push((attrs.metadata().name().to_owned(), fields));
        tracing::span::Id::from_u64(spans.len() as u64)
    }
    fn record(&self, span: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut spans = self.spans.lock().unwrap();
        let index = span.into_u64() as usize - 1;
        values.record(&mut Collect(&mut spans[index].1));
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, span: &tracing::span::Id) {
        self.stack.lock().unwrap().push(span.into_u64());
    }
    fn exit(&self, _: &tracing::span::Id) {
        self.stack.lock().unwrap().pop();
    }
}

// covers I1 (the `request` span): for a polling GET and a captured POST, the handler runs inside
// a `request` span with the same fields (`request_id`, `method`, `path`, `captured`, `status`)
// as with `layer()`, in both placements. Alone in a child process: tracing caches a callsite's
// interest process-wide, so a test on another thread can hide the spans from this one.
#[test]
fn request_span_matches_layer() {
    run_alone("span_probe");
}

/// Only meaningful alone in its process; see the test above.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn span_probe() {
    if std::env::var_os(PROBE_ENV).is_none() {
        return;
    }
    let spans = Spans::default();
    let _guard = tracing::subscriber::set_default(spans.clone());
    for placement in PLACEMENTS {
        let mut results = Vec::new();
        for flavor in [Flavor::Tower, Flavor::Axum] {
            spans.spans.lock().unwrap().clear();
            let inspector = Inspector::new(config_small_limits());
            let stack = Arc::clone(&spans.stack);
            let inside = Arc::new(Mutex::new(Vec::new()));
            let seen_inside = Arc::clone(&inside);
            let handler = move || {
                let stack = Arc::clone(&stack);
                let inside = Arc::clone(&seen_inside);
                async move {
                    inside.lock().unwrap().push(stack.lock().unwrap().clone());
                    "ok"
                }
            };
            let routes = Router::new()
                .route("/api/monitor/aks", get(handler.clone()))
                .route("/api/jobs", any(handler));
            let mut app = layered(flavor, placement, &inspector, routes);
            for (method, path, id) in [
                ("GET", "/api/monitor/aks", "span-1"),
                ("POST", "/api/jobs", "span-2"),
            ] {
                let request = Request::builder()
                    .method(method)
                    .uri(path)
                    .header(REQUEST_ID_HEADER, id)
                    .body(Body::from("b"))
                    .unwrap();
                exchange(&mut app, request, Mode::Full).await.unwrap();
            }
            let spans = spans.spans.lock().unwrap().clone();
            let requests: Vec<(u64, Fields)> = spans
                .iter()
                .enumerate()
                .filter(|(_, (name, _))| name == "request")
                .map(|(i, (_, fields))| {
                    let mut fields = fields.clone();
                    fields.sort();
                    (i as u64 + 1, fields)
                })
                .collect();
            assert_eq!(
                requests.len(),
                2,
                "{flavor:?} {placement:?}: one span per request"
            );
            let inside = inside.lock().unwrap().clone();
            for ((span, fields), stack) in requests.iter().zip(&inside) {
                assert!(
                    stack.contains(span),
                    "{flavor:?} {placement:?}: handler outside its span {fields:?}"
                );
            }
            results.push(requests.into_iter().map(|(_, f)| f).collect::<Vec<_>>());
        }
        assert_eq!(
            results[0], results[1],
            "{placement:?}: layer() vs axum_layer()"
        );
    }
}

// covers X1 (the `inspector.*` series): the same traffic records the same counters and gauges
// through `axum_layer()` as through `layer()` (each inspector registered with its own recorder).
#[tokio::test(start_paused = true)]
async fn metrics_match_layer() {
    for placement in PLACEMENTS {
        let mut snapshots = Vec::new();
        for flavor in [Flavor::Tower, Flavor::Axum] {
            let recorder = metrics_util::debugging::DebuggingRecorder::new();
            let snapshotter = recorder.snapshotter();
            let inspector = metrics::with_local_recorder(&recorder, || {
                Inspector::new(config_required_owner().capacity(2))
            });
            let mut app = layered(flavor, placement, &inspector, routes());
            let mut rng = Rng::new(0x3E7);
            for k in 0..30 {
                let spec = Spec::random(&mut rng, k);
                exchange(&mut app, spec.request(), spec.mode).await;
            }
            let mut series: Vec<String> = snapshotter
                .snapshot()
                .into_vec()
                .into_iter()
                .map(|(key, unit, _, value)| format!("{key:?} {unit:?} {value:?}"))
                .collect();
            series.sort();
            assert!(
                series.iter().any(|s| s.contains("inspector.requests")),
                "series recorded: {series:?}"
            );
            snapshots.push(series);
        }
        assert_eq!(
            snapshots[0], snapshots[1],
            "{placement:?}: layer() vs axum_layer()"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Types and allocations
// ---------------------------------------------------------------------------------------------

fn assert_send_sync_clone<T: Send + Sync + Clone + fmt::Debug>(_: &T) {}
fn assert_send<T: Send>(_: &T) {}

// covers the public types: the layer, its service (around a `Router`) and its future are `Send`,
// the layer and service `Clone`, `Sync` and `Debug`; clones record into one inspector.
#[tokio::test(start_paused = true)]
async fn public_types_are_send_clone_and_share_one_ring() {
    let inspector = Inspector::new(config_small_limits());
    let layer = inspector.axum_layer();
    assert_send_sync_clone(&layer);
    let service = layer.layer(routes());
    assert_send_sync_clone(&service);
    assert!(!format!("{service:?}").is_empty());
    let mut clone = service.clone();
    let future = clone.call(Request::post("/api/echo").body(Body::from("a")).unwrap());
    assert_send(&future);
    assert!(!format!("{future:?}").is_empty());
    let response = future.await.unwrap();
    response.into_body().collect().await.unwrap();
    service
        .oneshot(Request::post("/api/echo").body(Body::from("b")).unwrap())
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap();
    assert_eq!(inspector.stats().captured, 2);
}

const PROBE_ENV: &str = "BLACKBOX_AXUM_LAYER_ALLOC_PROBE";

// covers "a polling GET's bodies are handed on as they came" (and X4: the pass-through allocates
// nothing it does not need): with an incoming id and `request_id_extension(false)`, a polling GET
// through `axum_layer()` around a `Router` or a plain service allocates exactly as much as through
// a layer that only sets the response's `x-request-id`; under `Router::layer` it allocates 2 fewer
// than `layer()` (the guide's figure), whose boxing shows the probe can see a box.
#[test]
fn polling_get_allocates_like_a_header_only_layer() {
    run_alone("alloc_probe");
}

/// Runs the test `name` of this binary alone in a child process, with [`PROBE_ENV`] set (the
/// allocation counts and tracing's callsite interest are process-wide: other tests running at
/// the same time would disturb them).
fn run_alone(name: &str) {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--test-threads=1", "--nocapture"])
        .env(PROBE_ENV, "1")
        .output()
        .expect("run the probe");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{name} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("1 passed"), "{name} did not run:\n{stdout}");
}

fn probe_routes() -> Router {
    Router::new().route("/api/monitor/aks", get(|| async { "[]" }))
}

/// Allocations per polling GET (the fewest of three windows of `n`, after a warm-up).
fn allocations_per_get(
    runtime: &tokio::runtime::Runtime,
    app: &mut App,
    n: usize,
    marker: bool,
) -> f64 {
    runtime.block_on(async {
        let make = || {
            let mut request = Request::get("/api/monitor/aks")
                .header(REQUEST_ID_HEADER, HeaderValue::from_static("client-1"))
                .body(Body::empty())
                .unwrap();
            if marker {
                request.extensions_mut().insert(Marker(String::new()));
            }
            request
        };
        for _ in 0..20 {
            exchange(app, make(), Mode::Full).await.unwrap();
        }
        let mut fewest = usize::MAX;
        for _ in 0..3 {
            let region = stats_alloc::Region::new(GLOBAL);
            for _ in 0..n {
                exchange(app, make(), Mode::Full).await.unwrap();
            }
            fewest = fewest.min(region.change().allocations);
        }
        fewest as f64 / n as f64
    })
}

/// Only meaningful alone in its process; see the test above.
#[test]
fn alloc_probe() {
    if std::env::var_os(PROBE_ENV).is_none() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let n = 320;
    let set_id = |mut response: Response<Body>| {
        response
            .headers_mut()
            .insert(REQUEST_ID_HEADER, HeaderValue::from_static("client-1"));
        response
    };
    let config = || {
        InspectorConfig::new()
            .polling_prefixes(["/api/monitor"])
            .unwrap()
            .request_id_extension(false)
    };
    let reference_service = || {
        tower::service_fn(|_request: Request<Body>| async {
            Ok::<_, Infallible>(Response::new(Body::from("[]")))
        })
    };
    let mut lines = Vec::new();
    let mut extra = Vec::new();
    for placement in [
        Some(Placement::RouteLayer),
        Some(Placement::AroundRouter),
        None,
    ] {
        let inspector = Inspector::new(config());
        let tower_inspector = Inspector::new(config());
        let (mut reference, mut axum, mut tower): (App, App, App) = match placement {
            Some(Placement::RouteLayer) => (
                BoxCloneService::new(
                    probe_routes().layer(tower::util::MapResponseLayer::new(set_id)),
                ),
                layered(
                    Flavor::Axum,
                    Placement::RouteLayer,
                    &inspector,
                    probe_routes(),
                ),
                layered(
                    Flavor::Tower,
                    Placement::RouteLayer,
                    &tower_inspector,
                    probe_routes(),
                ),
            ),
            Some(Placement::AroundRouter) => (
                BoxCloneService::new(ServiceExt::<Request<Body>>::map_response(
                    probe_routes(),
                    set_id,
                )),
                layered(
                    Flavor::Axum,
                    Placement::AroundRouter,
                    &inspector,
                    probe_routes(),
                ),
                layered(
                    Flavor::Tower,
                    Placement::AroundRouter,
                    &tower_inspector,
                    probe_routes(),
                ),
            ),
            None => (
                BoxCloneService::new(ServiceExt::<Request<Body>>::map_response(
                    reference_service(),
                    set_id,
                )),
                plain(Flavor::Axum, &inspector, || Body::from("[]")),
                plain(Flavor::Tower, &tower_inspector, || Body::from("[]")),
            ),
        };
        let with_reference = allocations_per_get(&runtime, &mut reference, n, false);
        let with_axum = allocations_per_get(&runtime, &mut axum, n, false);
        let with_tower = allocations_per_get(&runtime, &mut tower, n, false);
        let marked_reference = allocations_per_get(&runtime, &mut reference, n, true);
        let marked_axum = allocations_per_get(&runtime, &mut axum, n, true);
        let name = placement.map_or_else(|| "plain service".to_owned(), |p| format!("{p:?}"));
        lines.push(format!(
            "{name}: header-only layer {with_reference}, axum_layer() {with_axum}, layer() {with_tower} \
             allocations per polling GET"
        ));
        assert_eq!(inspector.stats().passed_through as usize, 2 * (20 + 3 * n));
        lines.push(format!(
            "{name}, the request carrying an extension: header-only layer {marked_reference}, \
             axum_layer() {marked_axum}"
        ));
        extra.push((
            name,
            with_reference,
            with_axum,
            with_tower,
            marked_reference,
            marked_axum,
        ));
    }
    // The cause of the one allocation more under `Router::layer`: a `Router` called as a plain
    // service (without `with_state(())`) turns the matched handler into a route on every
    // request, and for that clones the boxed layer `Router::layer` keeps, which allocates for
    // any layer that is not zero-sized (the header-only layer is a zero-sized closure, the
    // inspector's layers hold a handle). `axum::serve` and `into_make_service` call
    // `with_state(())` first, which turns the handlers into routes once: there the polling GET
    // allocates exactly as through the header-only layer.
    let finalized_inspector = Inspector::new(config());
    let mut finalized_reference: App = BoxCloneService::new(
        probe_routes()
            .layer(tower::util::MapResponseLayer::new(set_id))
            .with_state(()),
    );
    let mut finalized_axum: App = BoxCloneService::new(
        probe_routes()
            .layer(finalized_inspector.axum_layer())
            .with_state(()),
    );
    let finalized_with_reference =
        allocations_per_get(&runtime, &mut finalized_reference, n, false);
    let finalized_with_axum = allocations_per_get(&runtime, &mut finalized_axum, n, false);
    lines.push(format!(
        "RouteLayer, with_state(()) as axum::serve runs it: header-only layer \
         {finalized_with_reference}, axum_layer() {finalized_with_axum} allocations per polling GET"
    ));
    // What a clone of the service costs (axum's `Router::layer` clones the layered service for
    // every request).
    let inner = tower::service_fn(|_request: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Body::empty()))
    });
    let clones = |clone: &dyn Fn()| {
        let region = stats_alloc::Region::new(GLOBAL);
        for _ in 0..n {
            clone();
        }
        region.change().allocations as f64 / n as f64
    };
    let axum_service = Inspector::new(config()).axum_layer().layer(inner);
    let tower_service = Inspector::new(config()).layer().layer(inner);
    let reference_service = tower::util::MapResponseLayer::new(set_id).layer(inner);
    let clone_axum = clones(&|| {
        std::hint::black_box(axum_service.clone());
    });
    let clone_tower = clones(&|| {
        std::hint::black_box(tower_service.clone());
    });
    let clone_reference = clones(&|| {
        std::hint::black_box(reference_service.clone());
    });
    lines.push(format!(
        "one clone: header-only layer {clone_reference}, axum_layer() {clone_axum}, layer() {clone_tower} allocations"
    ));
    println!("{}", lines.join("\n"));
    assert!(
        (finalized_with_axum - finalized_with_reference).abs() < 0.05,
        "RouteLayer with with_state(()): axum_layer() allocates {} more per polling GET than a \
         header-only layer\n{}",
        finalized_with_axum - finalized_with_reference,
        lines.join("\n")
    );
    for (name, with_reference, with_axum, with_tower, marked_reference, marked_axum) in &extra {
        let report = lines.join("\n");
        if name == "RouteLayer" {
            // The guide: 2 allocations fewer than `layer()` under `Router::layer`. Against the
            // header-only layer both inspector layers pay one more there, for axum's clone of
            // the boxed layer when the router is not finalized (asserted equal above with
            // `with_state(())`).
            assert!(
                (with_tower - with_axum - 2.0).abs() < 0.05,
                "{name}: axum_layer() is not 2 allocations cheaper than layer()\n{report}"
            );
            assert!(
                with_axum - with_reference < 1.05,
                "{name}: axum_layer() allocates {} more than a header-only layer\n{report}",
                with_axum - with_reference
            );
            continue;
        }
        for (with, reference) in [(with_axum, with_reference), (marked_axum, marked_reference)] {
            assert!(
                (with - reference).abs() < 0.05,
                "{name}: axum_layer() allocates {} more per polling GET than a header-only layer\n{report}",
                with - reference
            );
        }
    }
}
