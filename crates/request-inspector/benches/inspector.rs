//! Scenario `inspector`: what the request inspector costs on the two kinds of traffic of seed
//! 001, over loopback HTTP/1.1 (axum + hyper), in one run.
//!
//! - A 50 MiB polling GET (`/api/monitor/aks`, streamed in 64 KiB chunks): through the layer,
//!   with no layer, and through the seed's buffering middleware (it collects the whole body
//!   before answering). Time to first byte, total time, and peak extra memory.
//! - The same GET in-process (tower `oneshot`, no socket): the layer's own cost, free of
//!   loopback scheduling noise.
//! - A captured 1 KiB POST (`/api/jobs`) with and without the layer: median and p99 latency.
//!
//! "Peak extra memory" is counted, not guessed from RSS: for the layer it is
//! `InspectorStats::peak_retained_bytes` (every byte it copies or records is counted), for the
//! buffering middleware the size of the body it held. Run with `cargo xtask bench inspector`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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
use request_inspector::{Inspector, InspectorConfig};
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

    let row = |baseline: &str, metric, unit, ours, base| Comparison {
        scenario: SCENARIO,
        baseline_name: baseline.to_string(),
        metric,
        unit,
        ours,
        baseline: base,
        lower_is_better: true,
    };
    emit(&[
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
    ]);
}
