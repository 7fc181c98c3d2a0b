//! Scenario `inspector`: what the request inspector costs on the two kinds of traffic of seed
//! 001, over loopback HTTP/1.1 (axum + hyper), in one run.
//!
//! - A 50 MiB polling GET (`/api/monitor/aks`, streamed in 64 KiB chunks): through the layer,
//!   with no layer, and through the seed's buffering middleware (it collects the whole body
//!   before answering). Time to first byte, total time, and peak extra memory.
//! - The same GET in-process (tower `oneshot`, no socket): the layer's own cost, free of
//!   loopback scheduling noise.
//! - A captured 1 KiB POST (`/api/jobs`) with and without the layer: median and p99 latency.
//! - The layer's cost per request in-process (issue #23), with 1 and with 2 threads each sending
//!   requests through its own clone of the app: a small polling GET (the dashboard's tick) and a
//!   captured 1 KiB POST, against no layer. With the default features (metrics on, no recorder),
//!   and again with a Prometheus recorder's handles registered (metrics recorded); through
//!   axum's `Router::layer`, through `Router::layer` of a pass-through layer (what axum's
//!   per-route boxing costs any layer), and with the layer around the whole `Router`. For the
//!   polling GET, a reference layer that does only the request-id contract (the floor); and
//!   the layer with `request_id_extension(false)` (no `Extension<RequestId>`). For the captured
//!   POST, a reference layer that only captures (headers cloned, both bodies copied, exchanges
//!   pushed into one shared ring of 200), alone and under the request-id reference: what
//!   recording whole exchanges in a shared ring costs done the plain way.
//!
//! "Peak extra memory" is counted, not guessed from RSS: for the layer it is
//! `InspectorStats::peak_retained_bytes` (every byte it copies or records is counted), for the
//! buffering middleware the size of the body it held. Run with `cargo xtask bench inspector`.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::middleware::{Next, from_fn};
use axum::response::Response;
use axum::routing::{get, post};
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use request_inspector::{Inspector, InspectorConfig, REQUEST_ID_HEADER, RequestId};
use testkit::bench::{Comparison, emit, median, percentile};

const SCENARIO: &str = "inspector";
const CHUNK: usize = 64 * 1024;
const GET_BYTES: usize = 50 * 1024 * 1024;
const GET_ROUNDS: usize = 25;
const SEED_ROUNDS: usize = 9;
const IN_PROCESS_ROUNDS: usize = 50;
const POST_BODY: usize = 1024;
const POST_ROUNDS: usize = 5;
const POSTS_PER_ROUND: usize = 400;
const SMALL_ROUNDS: usize = 61;
const SMALL_PER_ROUND: usize = 5_000;
/// What a monitor card's poll answers: a few hundred bytes of JSON.
const SMALL_JSON: &str = r#"{"clusters":[{"name":"aks-eastus-1","status":"Succeeded","nodes":3,"version":"1.33.2"},{"name":"aks-westeu-2","status":"Succeeded","nodes":5,"version":"1.33.2"},{"name":"aks-sea-3","status":"Updating","nodes":4,"version":"1.32.6"}],"fetched_at":"2026-11-25T10:00:00Z"}"#;
static POST_1K: [u8; POST_BODY] = [b'{'; POST_BODY];

/// A 50 MiB body made chunk by chunk (clones of one shared chunk) as it is polled.
struct Stream {
    chunk: Bytes,
    remaining: usize,
}

impl http_body::Body for Stream {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        self.remaining -= 1;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.clone()))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact((self.remaining * self.chunk.len()) as u64)
    }
}

fn routes() -> Router {
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    Router::new()
        .route(
            "/api/monitor/aks",
            get(move || {
                let chunk = chunk.clone();
                async move {
                    Body::new(Stream {
                        chunk,
                        remaining: GET_BYTES / CHUNK,
                    })
                }
            }),
        )
        .route(
            "/api/jobs",
            post(|body: Bytes| async move { format!("{{\"accepted\":{}}}", body.len()) }),
        )
}

/// The seed's middleware: drain the whole response body into memory, then answer.
async fn buffering(held: Arc<AtomicUsize>, request: Request, next: Next) -> Response {
    let (parts, body) = next.run(request).await.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    held.fetch_max(bytes.len(), Ordering::Relaxed);
    Response::from_parts(parts, Body::from(bytes))
}

/// A blocking HTTP/1.1 keep-alive client that times the first body byte and the last.
struct Client {
    reader: BufReader<TcpStream>,
}

struct Timing {
    first_byte: Duration,
    total: Duration,
    body_bytes: usize,
}

impl Client {
    fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Self {
            reader: BufReader::with_capacity(256 * 1024, stream),
        }
    }

    fn send(&mut self, head: &str, body: &[u8]) -> Timing {
        let start = Instant::now();
        let stream = self.reader.get_mut();
        stream.write_all(head.as_bytes()).expect("write head");
        stream.write_all(body).expect("write body");
        let mut length = None;
        let mut line = String::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line).expect("read head");
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            if let Some((name, value)) = trimmed.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = Some(value.trim().parse::<usize>().expect("content-length"));
            }
        }
        let length = length.expect("the server sent a Content-Length");
        let mut first_byte = start.elapsed();
        let mut read = 0;
        let mut scratch = vec![0; 256 * 1024];
        while read < length {
            let n = self
                .reader
                .read(&mut scratch[..(length - read).min(256 * 1024)])
                .expect("read body");
            assert!(n > 0, "connection closed after {read} of {length} bytes");
            if read == 0 {
                first_byte = start.elapsed();
            }
            read += n;
        }
        Timing {
            first_byte,
            total: start.elapsed(),
            body_bytes: read,
        }
    }
}

/// Median time to the first frame and to the last, in ms, of a 50 MiB GET through `app`
/// called in-process (no socket): the layer's own cost without loopback scheduling noise.
fn in_process(runtime: &tokio::runtime::Runtime, apps: [Router; 2]) -> [(f64, f64); 2] {
    use tower::ServiceExt;
    let mut first = [const { Vec::new() }; 2];
    let mut total = [const { Vec::new() }; 2];
    runtime.block_on(async {
        for round in 0..=IN_PROCESS_ROUNDS {
            for k in 0..apps.len() {
                let i = (round + k) % apps.len();
                let request = http::Request::get("/api/monitor/aks")
                    .body(Body::empty())
                    .expect("request");
                let start = Instant::now();
                let response = apps[i].clone().oneshot(request).await.expect("response");
                let mut body = response.into_body();
                let mut bytes = 0;
                let mut first_frame = Duration::ZERO;
                while let Some(frame) = body.frame().await {
                    if bytes == 0 {
                        first_frame = start.elapsed();
                    }
                    bytes += frame.expect("frame").into_data().map_or(0, |d| d.len());
                }
                assert_eq!(bytes, GET_BYTES);
                if round > 0 {
                    first[i].push(first_frame.as_secs_f64() * 1e3);
                    total[i].push(start.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
    });
    let [mut f0, mut f1] = first;
    let [mut t0, mut t1] = total;
    [
        (median(&mut f0), median(&mut t0)),
        (median(&mut f1), median(&mut t1)),
    ]
}

/// `router` as `axum::serve` runs it: `with_state(())` turns every handler into a route once.
/// Called as a plain tower service without it, a `Router` turns the matched handler into a
/// route on every request, and under `Router::layer` it also clones the boxed layer for it (an
/// allocation for any layer that is not zero-sized): costs a served router never pays.
fn serving(router: Router) -> Router {
    router.with_state(())
}

/// The small app the in-process per-request rows go through: the polling GET answers
/// [`SMALL_JSON`], the POST reads its body and answers a short JSON.
fn small_routes() -> Router {
    Router::new()
        .route("/api/monitor/aks", get(|| async { SMALL_JSON }))
        .route(
            "/api/jobs",
            post(|body: Bytes| async move { format!("{{\"accepted\":{}}}", body.len()) }),
        )
}

/// A request as hyper hands it over: a URI, a host and a couple of headers.
fn small_request(method: http::Method) -> http::Request<Body> {
    let (uri, body) = if method == http::Method::GET {
        ("/api/monitor/aks", Body::empty())
    } else {
        ("/api/jobs", Body::from(Bytes::from_static(&POST_1K)))
    };
    http::Request::builder()
        .method(method)
        .uri(http::Uri::from_static(uri))
        .header(http::header::HOST, "dashboard.local")
        .header(http::header::ACCEPT, "application/json")
        .header(
            http::header::AUTHORIZATION,
            "Bearer not-a-real-token-but-as-long-as-one",
        )
        .body(body)
        .expect("request")
}

/// The same app as a plain tower service (no router): the layer's own cost, as the issue's
/// probe measured it.
async fn small_service<B>(
    request: http::Request<B>,
) -> Result<http::Response<http_body_util::Full<Bytes>>, std::convert::Infallible>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let body = if request.method() == http::Method::GET {
        Bytes::from_static(SMALL_JSON.as_bytes())
    } else {
        let body = request
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        Bytes::from(format!("{{\"accepted\":{}}}", body.len()))
    };
    let mut response = http::Response::new(http_body_util::Full::new(body));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// Send one request through a clone of `app` and read the response to its end.
async fn send<S, B>(app: &S, method: &http::Method)
where
    S: tower::Service<http::Request<Body>, Response = http::Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    use tower::ServiceExt;
    let response = app
        .clone()
        .oneshot(small_request(method.clone()))
        .await
        .expect("response");
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        frame.expect("frame");
    }
}

/// The reference for the polling GET rows: a layer that does only what the request-id contract
/// asks (a fresh id into the request's `x-request-id` header and its extensions, and into the
/// response's header), as tower-http's request-id layers do (cloning the id into each place),
/// and nothing else: what a plain layer keeping `Extension<RequestId>` and both headers costs.
/// With a handle, it also holds what any layer with shared state holds (an `Arc`, cloned with
/// every service clone, as axum and the bench clone the service per request).
#[derive(Clone)]
struct IdOnly<S>(S, Option<Arc<()>>);

impl<S, B, RB> tower::Service<http::Request<B>> for IdOnly<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = IdOnlyFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        std::hint::black_box(&self.1);
        let id = RequestId::generate();
        request
            .headers_mut()
            .insert(REQUEST_ID_HEADER, id.header_value().clone());
        request.extensions_mut().insert(id.clone());
        IdOnlyFuture {
            inner: self.0.call(request),
            id: Some(id),
        }
    }
}

pin_project_lite::pin_project! {
    struct IdOnlyFuture<F> {
        #[pin]
        inner: F,
        id: Option<RequestId>,
    }
}

impl<F, RB, E> Future for IdOnlyFuture<F>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.inner.poll(cx))?;
        if let Some(id) = this.id.take() {
            response
                .headers_mut()
                .insert(REQUEST_ID_HEADER, id.header_value().clone());
        }
        Poll::Ready(Ok(response))
    }
}

/// The reference for the captured POST rows: the least a layer that records whole exchanges in a
/// shared ring does, and nothing else. The request's method, URI and headers are cloned (its
/// header values shared, not copied), both bodies are copied as they stream through, and the
/// finished exchange is pushed into a ring of 200 under one mutex (the oldest dropped outside
/// it). No request id, no redaction, no size limits, no clock, no accounting, no metrics: the
/// plain way of capturing into a shared ring, measured in the same run as the layer.
#[derive(Clone)]
struct CaptureOnly<S> {
    inner: S,
    ring: Arc<Mutex<VecDeque<Captured>>>,
}

/// One exchange as [`CaptureOnly`] keeps it (held, never read: the bench only pays for it).
#[derive(Default)]
#[expect(
    dead_code,
    reason = "what a capture holds; nothing reads it in the bench"
)]
struct Captured {
    method: http::Method,
    uri: http::Uri,
    request_headers: http::HeaderMap,
    request_body: Vec<u8>,
    status: u16,
    response_headers: http::HeaderMap,
    response_body: Vec<u8>,
}

/// An exchange being captured, shared by the request body, the future and the response body.
type Partial = Arc<Mutex<Captured>>;

const CAPTURE_ONLY_CAPACITY: usize = 200;

impl<S> CaptureOnly<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            ring: Arc::new(Mutex::new(VecDeque::with_capacity(CAPTURE_ONLY_CAPACITY))),
        }
    }
}

impl<S, B, RB> tower::Service<http::Request<B>> for CaptureOnly<S>
where
    S: tower::Service<http::Request<CopyBody<B>>, Response = http::Response<RB>>,
{
    type Response = http::Response<CopyBody<RB>>;
    type Error = S::Error;
    type Future = CaptureOnlyFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let partial = Arc::new(Mutex::new(Captured {
            method: request.method().clone(),
            uri: request.uri().clone(),
            request_headers: request.headers().clone(),
            ..Captured::default()
        }));
        let request = request.map(|inner| CopyBody {
            inner,
            partial: Some(Arc::clone(&partial)),
            push_to: None,
        });
        CaptureOnlyFuture {
            inner: self.inner.call(request),
            partial: Some(partial),
            ring: Arc::clone(&self.ring),
        }
    }
}

pin_project_lite::pin_project! {
    struct CaptureOnlyFuture<F> {
        #[pin]
        inner: F,
        partial: Option<Partial>,
        ring: Arc<Mutex<VecDeque<Captured>>>,
    }
}

impl<F, RB, E> Future for CaptureOnlyFuture<F>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
{
    type Output = Result<http::Response<CopyBody<RB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx))?;
        let partial = this.partial.take().expect("polled after completion");
        {
            let mut captured = partial.lock().expect("capture");
            captured.status = response.status().as_u16();
            captured.response_headers = response.headers().clone();
        }
        let ring = Arc::clone(this.ring);
        Poll::Ready(Ok(response.map(|inner| CopyBody {
            inner,
            partial: Some(partial),
            push_to: Some(ring),
        })))
    }
}

pin_project_lite::pin_project! {
    /// A body copied into its exchange as it streams; the response's pushes the exchange into
    /// the ring when it ends.
    struct CopyBody<B> {
        #[pin]
        inner: B,
        partial: Option<Partial>,
        // `Some` on the response side.
        push_to: Option<Arc<Mutex<VecDeque<Captured>>>>,
    }
}

impl<B: http_body::Body<Data = Bytes>> http_body::Body for CopyBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let frame = std::task::ready!(this.inner.as_mut().poll_frame(cx));
        if let (Some(Ok(frame)), Some(partial)) = (&frame, &this.partial)
            && let Some(data) = frame.data_ref()
        {
            let mut captured = partial.lock().expect("capture");
            let copy = if this.push_to.is_some() {
                &mut captured.response_body
            } else {
                &mut captured.request_body
            };
            copy.extend_from_slice(data);
        }
        if (frame.is_none() || this.inner.is_end_stream())
            && let Some(partial) = this.partial.take()
            && let Some(ring) = this.push_to.as_ref()
        {
            let captured = std::mem::take(&mut *partial.lock().expect("capture"));
            let oldest = {
                let mut ring = ring.lock().expect("ring");
                ring.push_back(captured);
                (ring.len() > CAPTURE_ONLY_CAPACITY).then(|| ring.pop_front())
            };
            drop(oldest);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Ns per request per thread through `layered` and through `bare`: `threads` threads,
/// each on its own current-thread runtime with its own clones of both apps, kept for the whole
/// measurement (warm allocator caches). Each round, all threads send [`SMALL_PER_ROUND`]
/// requests one after the other through one app, then through the other (rotating which goes
/// first, so load drift on the shared machine hits both alike); a round's figure is its slowest
/// thread's time. Returns the median without the layer, and that times the median of the
/// rounds' ratios (layer ÷ no layer within one round) for the layer.
fn layered_vs_bare<L, LB, S, SB>(
    layered: &L,
    bare: &S,
    threads: usize,
    method: &http::Method,
) -> (f64, f64)
where
    L: tower::Service<http::Request<Body>, Response = http::Response<LB>> + Clone + Send,
    L::Error: std::fmt::Debug,
    LB: http_body::Body<Data = Bytes> + Unpin,
    LB::Error: std::fmt::Debug,
    S: tower::Service<http::Request<Body>, Response = http::Response<SB>> + Clone + Send,
    S::Error: std::fmt::Debug,
    SB: http_body::Body<Data = Bytes> + Unpin,
    SB::Error: std::fmt::Debug,
{
    let barrier = Barrier::new(threads);
    let per_thread: Vec<Vec<(usize, Duration)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (layered, bare, barrier) = (layered.clone(), bare.clone(), &barrier);
                scope.spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .expect("runtime");
                    runtime.block_on(async {
                        for _ in 0..1000 {
                            send(&layered, method).await;
                            send(&bare, method).await;
                        }
                        let mut times = Vec::new();
                        for round in 0..SMALL_ROUNDS {
                            for k in 0..2 {
                                let i = (round + k) % 2;
                                barrier.wait();
                                let start = Instant::now();
                                for _ in 0..SMALL_PER_ROUND {
                                    if i == 0 {
                                        send(&layered, method).await;
                                    } else {
                                        send(&bare, method).await;
                                    }
                                }
                                times.push((i, start.elapsed()));
                            }
                        }
                        times
                    })
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("worker"))
            .collect()
    });
    let mut samples = [const { Vec::new() }; 2];
    for slot in 0..2 * SMALL_ROUNDS {
        let which = per_thread[0][slot].0;
        let slowest = per_thread
            .iter()
            .map(|t| t[slot].1)
            .max()
            .unwrap_or_default();
        samples[which].push(slowest.as_secs_f64() * 1e9 / SMALL_PER_ROUND as f64);
    }
    let [ours, mut base] = samples;
    // Each round's two halves ran back to back: their ratio is free of the load drifting over
    // the run, which moves both. The row reports the median round ratio (as `ours`, scaled by
    // the median without the layer).
    let mut ratios: Vec<f64> = ours.iter().zip(&base).map(|(o, b)| o / b).collect();
    let base = median(&mut base);
    (median(&mut ratios) * base, base)
}

/// Median time to first body byte and to the last, in ms, of `rounds` GETs per server.
fn get_rounds<const N: usize>(
    get: &str,
    servers: [SocketAddr; N],
    rounds: usize,
) -> [(f64, f64); N] {
    let mut clients = servers.map(Client::connect);
    let mut first = [const { Vec::new() }; N];
    let mut total = [const { Vec::new() }; N];
    for round in 0..=rounds {
        for k in 0..N {
            let i = (round + k) % N;
            let timing = clients[i].send(get, &[]);
            assert_eq!(timing.body_bytes, GET_BYTES);
            if round > 0 {
                // Round 0 warms connections and allocators up.
                first[i].push(timing.first_byte.as_secs_f64() * 1e3);
                total[i].push(timing.total.as_secs_f64() * 1e3);
            }
        }
    }
    let mut out = [(0.0, 0.0); N];
    for i in 0..N {
        out[i] = (median(&mut first[i]), median(&mut total[i]));
    }
    out
}

fn serve(runtime: &tokio::runtime::Runtime, app: Router) -> SocketAddr {
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
        addr
    })
}

/// The in-process per-request rows (issue #23): small polling GET and captured 1 KiB POST, at 1
/// and 2 threads, with the default features (metrics compiled in, no recorder) and with a
/// Prometheus recorder's handles (every series recorded), through a plain tower service and
/// through an axum `Router::layer`. `INSPECTOR_BENCH_ONLY=<text>` runs only the rows whose name
/// contains the text, and nothing else (for profiling).
fn per_request_rows() -> Vec<Comparison> {
    let config = || {
        InspectorConfig::new()
            .polling_prefixes(["/api/monitor/", "/api/warmup"])
            .expect("prefixes")
            .capacity(200)
            .body_limit(16 * 1024)
    };
    let plain = Inspector::new(config());
    let headers_only = Inspector::new(config().request_id_extension(false));
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let recorded = metrics::with_local_recorder(&prometheus, || Inspector::new(config()));
    let bare_tower = tower::service_fn(small_service::<Body>);
    let bare_axum = serving(small_routes());
    let mut rows = Vec::new();
    let mut row = |what: &str, threads: usize, how: &str, (ours, base): (f64, f64)| {
        let metric = format!("{what} in-process, {threads} thread(s), {how}: time per request");
        println!(
            "{metric}: {ours:.0} ns with the layer, {base:.0} ns without ({:.2}x)",
            ours / base
        );
        rows.push(Comparison::lower_is_better(
            SCENARIO,
            "no layer",
            Box::leak(metric.into_boxed_str()),
            "ns",
            ours,
            base,
        ));
    };
    // `INSPECTOR_BENCH_ONLY=<text>` runs only the rows whose name contains it (`<text>$`: ends with
    // it), for profiling.
    let only = std::env::var("INSPECTOR_BENCH_ONLY").unwrap_or_default();
    // A trailing `$` asks for the row whose name ends with the text.
    let wanted = |what: &str, threads: usize, how: &str| {
        let name = format!("{what} in-process, {threads} thread(s), {how}");
        match only.strip_suffix('$') {
            Some(end) => name.ends_with(end),
            None => name.contains(&only),
        }
    };
    // Both thread counts of one row: the layered app (built only when the row is wanted)
    // against the bare one.
    macro_rules! rows {
        ($what:expr, $method:expr, $how:expr, $layered:expr, $bare:expr) => {
            for threads in [1, 2] {
                if wanted($what, threads, $how) {
                    let layered = $layered;
                    let figures = layered_vs_bare(&layered, $bare, threads, $method);
                    row($what, threads, $how, figures);
                }
            }
        };
    }
    let tower_app = |inspector: &Inspector| {
        tower::ServiceBuilder::new()
            .layer(inspector.layer())
            .service(tower::service_fn(small_service))
    };
    for (what, method) in [
        ("small polling GET", http::Method::GET),
        ("captured 1 KiB POST", http::Method::POST),
    ] {
        let (method, bare_tower, bare_axum) = (&method, &bare_tower, &bare_axum);
        rows!(what, method, "tower service", tower_app(&plain), bare_tower);
        rows!(
            what,
            method,
            "tower service, Prometheus recorder",
            tower_app(&recorded),
            bare_tower
        );
        // Without the `Extension<RequestId>` (handlers read the header or use the extractor).
        rows!(
            what,
            method,
            "tower service, request_id_extension(false)",
            tower_app(&headers_only),
            bare_tower
        );
        // The reference: a plain layer doing only the request-id contract (polling GET rows
        // only: it captures nothing).
        if *method == http::Method::GET {
            rows!(
                what,
                method,
                "reference: a layer doing only the request-id contract",
                IdOnly(tower::service_fn(small_service::<Body>), None),
                bare_tower
            );
            rows!(
                what,
                method,
                "reference: the request-id contract and a shared handle",
                IdOnly(tower::service_fn(small_service::<Body>), Some(Arc::new(()))),
                bare_tower
            );
        }
        // The reference: a minimal capture layer (POST rows only: a polling GET is not
        // captured).
        if *method == http::Method::POST {
            rows!(
                what,
                method,
                "reference: a minimal capture layer (headers cloned, bodies copied, one ring)",
                CaptureOnly::new(tower::service_fn(small_service::<CopyBody<Body>>)),
                bare_tower
            );
            rows!(
                what,
                method,
                "reference: the request-id contract and a minimal capture layer",
                IdOnly(
                    CaptureOnly::new(tower::service_fn(small_service::<CopyBody<Body>>)),
                    None
                ),
                bare_tower
            );
        }
        rows!(
            what,
            method,
            "axum Router::layer",
            serving(small_routes().layer(plain.layer())),
            bare_axum
        );
        // What `Router::layer` costs with any layer: axum boxes the layered route's service,
        // future and response body. A pass-through layer (a `MapResponse` that returns the
        // response as it is) against no layer.
        rows!(
            what,
            method,
            "axum Router::layer of a pass-through layer (axum's own cost)",
            serving(small_routes().layer(tower::util::MapResponseLayer::new(
                |response: Response| response
            ))),
            bare_axum
        );
        // The layer around the whole router (`inspector.layer().layer(router)`): applied once,
        // outside axum's per-route boxing.
        rows!(
            what,
            method,
            "axum, layer around the Router",
            tower::Layer::layer(&plain.layer(), serving(small_routes())),
            bare_axum
        );
        // The same two placements with the axum layer (`Inspector::axum_layer`): axum's `Body`
        // on both sides, a polling GET's bodies handed on unwrapped.
        rows!(
            what,
            method,
            "axum Router::layer, axum_layer()",
            serving(small_routes().layer(plain.axum_layer())),
            bare_axum
        );
        rows!(
            what,
            method,
            "axum, axum_layer() around the Router",
            tower::Layer::layer(&plain.axum_layer(), serving(small_routes())),
            bare_axum
        );
    }
    if !only.is_empty() {
        return rows;
    }
    let stats = plain.stats();
    assert!(stats.passed_through > 0 && stats.captured > 0);
    let scrape = prometheus.handle().render();
    assert!(
        scrape.contains("inspector_requests"),
        "the recorder saw the layer's series:\n{scrape}"
    );
    rows
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let inspector = Inspector::new(
        InspectorConfig::new()
            .polling_prefixes(["/api/monitor/", "/api/warmup"])
            .expect("prefixes")
            .capacity(200)
            .body_limit(16 * 1024),
    );
    // Per-request cost in-process first: nothing else is running yet.
    let per_request = per_request_rows();
    if std::env::var_os("INSPECTOR_BENCH_ONLY").is_some() {
        emit(&per_request);
        return;
    }

    let local = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let [
        (ip_first_ours, ip_total_ours),
        (ip_first_bare, ip_total_bare),
    ] = in_process(&local, [routes().layer(inspector.layer()), routes()]);

    let held = Arc::new(AtomicUsize::new(0));
    let held_by_middleware = Arc::clone(&held);
    let ours = serve(&runtime, routes().layer(inspector.layer()));
    let bare = serve(&runtime, routes());
    let seed = serve(
        &runtime,
        routes().layer(from_fn(move |request, next| {
            buffering(Arc::clone(&held_by_middleware), request, next)
        })),
    );

    // 50 MiB polling GET. The layer and no layer are interleaved per round, rotating which goes
    // first, so load drift hits both alike. The buffering middleware runs in its own phase: the
    // 50 MiB it frees after each response slows whichever request comes next on the machine.
    let get = "GET /api/monitor/aks HTTP/1.1\r\nHost: bench\r\n\r\n";
    let [(first_ours, total_ours), (first_bare, total_bare)] =
        get_rounds(get, [ours, bare], GET_ROUNDS);
    let [(first_seed, total_seed)] = get_rounds(get, [seed], SEED_ROUNDS);
    let stats = inspector.stats();
    assert_eq!(stats.captured, 0, "polling GETs must not be captured");
    let ours_peak = stats.peak_retained_bytes as f64;
    let seed_peak = held.load(Ordering::Relaxed) as f64;

    // Captured 1 KiB POST, with and without the layer.
    let post_body = vec![b'{'; POST_BODY];
    let post = format!(
        "POST /api/jobs HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n\
         Authorization: Bearer not-a-real-token\r\nContent-Length: {POST_BODY}\r\n\r\n"
    );
    let mut post_clients = [ours, bare].map(Client::connect);
    let mut latency = [const { Vec::new() }; 2];
    for round in 0..=POST_ROUNDS {
        for k in 0..post_clients.len() {
            let i = (round + k) % post_clients.len();
            for _ in 0..POSTS_PER_ROUND {
                let timing = post_clients[i].send(&post, &post_body);
                if round > 0 {
                    latency[i].push(timing.total.as_secs_f64() * 1e6);
                }
            }
        }
    }
    let [mut lat_ours, mut lat_bare] = latency;
    let (p50_ours, p50_bare) = (median(&mut lat_ours), median(&mut lat_bare));
    let (p99_ours, p99_bare) = (
        percentile(&mut lat_ours, 99.0),
        percentile(&mut lat_bare, 99.0),
    );
    let after = inspector.stats();
    assert_eq!(
        after.captured as usize,
        (POST_ROUNDS + 1) * POSTS_PER_ROUND,
        "every POST is captured"
    );

    println!(
        "50 MiB polling GET in-process (tower oneshot, no socket), median of {IN_PROCESS_ROUNDS} rounds:"
    );
    println!(
        "  first frame: layer {:.1} us, no layer {:.1} us; all 800 frames: layer {:.1} us, \
         no layer {:.1} us",
        ip_first_ours * 1e3,
        ip_first_bare * 1e3,
        ip_total_ours * 1e3,
        ip_total_bare * 1e3
    );
    println!(
        "50 MiB polling GET over loopback, median of {GET_ROUNDS} rounds \
         ({SEED_ROUNDS} for the buffering middleware):"
    );
    println!(
        "  time to first byte: layer {first_ours:.2} ms, no layer {first_bare:.2} ms, \
         buffering middleware {first_seed:.2} ms"
    );
    println!(
        "  total: layer {total_ours:.2} ms, no layer {total_bare:.2} ms, \
         buffering middleware {total_seed:.2} ms"
    );
    println!(
        "  peak extra memory, counted: layer {ours_peak} bytes (InspectorStats::peak_retained_bytes \
         over the whole GET phase: it copies nothing for a polling GET), buffering middleware \
         {seed_peak} bytes (the whole body it held); the no-layer server holds none either"
    );
    println!(
        "captured 1 KiB POST, {} requests each: median {p50_ours:.1} us with the layer vs \
         {p50_bare:.1} us without; p99 {p99_ours:.1} vs {p99_bare:.1} us; ring holds {} entries, \
         {} bytes (peak retained {} bytes)",
        POST_ROUNDS * POSTS_PER_ROUND,
        after.ring_len,
        after.ring_bytes,
        after.peak_retained_bytes
    );

    let row = |baseline: &str, metric, unit, ours, base| {
        Comparison::lower_is_better(SCENARIO, baseline.to_string(), metric, unit, ours, base)
    };
    let mut rows = vec![
        row(
            "no layer",
            "50 MiB polling GET in-process: time to first frame",
            "us",
            ip_first_ours * 1e3,
            ip_first_bare * 1e3,
        ),
        row(
            "no layer",
            "50 MiB polling GET in-process: total time",
            "us",
            ip_total_ours * 1e3,
            ip_total_bare * 1e3,
        ),
        row(
            "no layer",
            "50 MiB polling GET: time to first byte",
            "ms",
            first_ours,
            first_bare,
        ),
        row(
            "no layer",
            "50 MiB polling GET: total time",
            "ms",
            total_ours,
            total_bare,
        ),
        row(
            "buffering middleware (seed 001)",
            "50 MiB polling GET: time to first byte",
            "ms",
            first_ours,
            first_seed,
        ),
        row(
            "buffering middleware (seed 001)",
            "50 MiB polling GET: total time",
            "ms",
            total_ours,
            total_seed,
        ),
        row(
            "buffering middleware (seed 001)",
            "50 MiB polling GET: peak extra memory (counted)",
            "bytes",
            ours_peak,
            seed_peak,
        ),
        row(
            "no layer",
            "captured 1 KiB POST: median latency",
            "us",
            p50_ours,
            p50_bare,
        ),
        row(
            "no layer",
            "captured 1 KiB POST: p99 latency",
            "us",
            p99_ours,
            p99_bare,
        ),
    ];
    rows.extend(per_request);
    emit(&rows);
}
