//! Black-box review of request-inspector under concurrency, and of its byte accounting on
//! multi-thread runtimes (helper round, issue #23 follow-up).
//!
//! Written from SPEC I1–I6, seed 001 and `docs/request-inspector.md` through the public API
//! only, without reading the crate's code or its other tests. Many threads (a tokio multi-thread
//! runtime, and plain OS threads each with a current-thread runtime) capture, stream, poll,
//! evict, cancel, read `stats()`, `entries()`, `entries_matching()` and `clear()` at once; the
//! guide's promises are checked on every read and once everything is quiet:
//!
//! - one `stats()` read agrees with itself: `evicted <= captured`, `retained_bytes` is
//!   `in_flight + ring + slot + spare`, `peak_retained_bytes >= retained_bytes`, and the peak
//!   never goes down between reads;
//! - `in_flight_bytes` is 0 once everything finished, also when captures started on one thread
//!   and finished (or were dropped) on another;
//! - the peak counts captures that were in flight together with no read until they finished;
//! - a counting global allocator (in a child process, so no other test's allocations count)
//!   sees exactly `retained_bytes` live after cross-thread captures, and nothing after the
//!   inspector is dropped.

use std::alloc::System;
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, mpsc};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use request_inspector::{
    Entry, EntryFilter, InspectBody, Inspector, InspectorConfig, InspectorService, InspectorStats,
    Outcome, PollingPrefixes, REDACTED, REQUEST_ID_HEADER, RequestId,
};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use tower::util::ServiceFn;
use tower::{Layer, Service, ServiceExt, service_fn};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// The error of the test bodies and of the inner service.
#[derive(Debug)]
struct BoxErr(String);

impl std::fmt::Display for BoxErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BoxErr {}

impl From<&str> for BoxErr {
    fn from(message: &str) -> Self {
        BoxErr(message.to_owned())
    }
}
type TBody = UnsyncBoxBody<Bytes, BoxErr>;
type Resp = Response<InspectBody<TBody>>;
type RespFuture = Pin<Box<dyn Future<Output = Result<Resp, BoxErr>> + Send>>;

/// The most spare bytes the guide allows: 8 stripes × (16 KiB arena + 320-byte record).
const MAX_SPARE_BYTES: usize = 8 * (16 * 1024 + 320);

// ---------------------------------------------------------------------------------------------
// Bodies, the inner service, requests
// ---------------------------------------------------------------------------------------------

fn full(bytes: impl Into<Bytes>) -> TBody {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// A body of `frames` frames of `size` bytes each, no size announced.
fn chunks(frames: usize, size: usize, byte: u8) -> TBody {
    let frames: Vec<Result<Frame<Bytes>, BoxErr>> = (0..frames)
        .map(|_| Ok(Frame::data(Bytes::from(vec![byte; size]))))
        .collect();
    StreamBody::new(futures::stream::iter(frames)).boxed_unsync()
}

/// A body of the given frames, no size announced.
fn frames_of(parts: Vec<Bytes>) -> TBody {
    let frames: Vec<Result<Frame<Bytes>, BoxErr>> =
        parts.into_iter().map(|b| Ok(Frame::data(b))).collect();
    StreamBody::new(futures::stream::iter(frames)).boxed_unsync()
}

/// Sent by the handler once it has read the request body (request extension).
#[derive(Clone)]
struct Signal(tokio::sync::mpsc::UnboundedSender<()>);

/// A response body the handler answers with (request extension).
#[derive(Clone)]
struct GivenBody(Arc<Mutex<Option<TBody>>>);

/// Where the handler puts the request body, unread, before answering (mode `later`).
#[derive(Clone)]
struct LaterBody(Arc<Mutex<Option<InspectBody<TBody>>>>);

fn header(req: &Request<InspectBody<TBody>>, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The inner service. `x-mode`: `read` (default: read the request body, answer
/// `x-resp-len` bytes or the `GivenBody`), `echo` (answer with the request body itself),
/// `pending` (read, signal, never answer), `error` (read, fail), `panic` (read, panic),
/// `later` (hand the unread request body out, answer at once).
async fn handler(req: Request<InspectBody<TBody>>) -> Result<Response<TBody>, BoxErr> {
    let mode = header(&req, "x-mode").unwrap_or_default();
    let resp_len: usize = header(&req, "x-resp-len")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let status: u16 = header(&req, "x-status")
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let signal = req.extensions().get::<Signal>().cloned();
    let given = req
        .extensions()
        .get::<GivenBody>()
        .and_then(|g| g.0.lock().unwrap().take());
    let later = req.extensions().get::<LaterBody>().cloned();
    let body = req.into_body();
    match mode.as_str() {
        "echo" => return Ok(Response::new(body.boxed_unsync())),
        "later" => {
            *later.expect("LaterBody extension").0.lock().unwrap() = Some(body);
            return Ok(Response::new(full("later")));
        }
        _ => {}
    }
    let _ = body.collect().await?;
    if let Some(signal) = signal {
        let _ = signal.0.send(());
    }
    match mode.as_str() {
        "pending" => return std::future::pending().await,
        "error" => return Err("the inner service failed".into()),
        "panic" => panic!("handler panicked on purpose (blackbox_concurrency)"),
        _ => {}
    }
    let body = given.unwrap_or_else(|| full(vec![b'r'; resp_len]));
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::from_u16(status).expect("status");
    response
        .headers_mut()
        .insert("x-answer", HeaderValue::from_static("yes"));
    Ok(response)
}

type HandlerFuture = Pin<Box<dyn Future<Output = Result<Response<TBody>, BoxErr>> + Send>>;
type Svc = InspectorService<ServiceFn<fn(Request<InspectBody<TBody>>) -> HandlerFuture>>;

fn boxed_handler(req: Request<InspectBody<TBody>>) -> HandlerFuture {
    Box::pin(handler(req))
}

fn service(inspector: &Inspector) -> Svc {
    inspector
        .layer()
        .layer(service_fn(boxed_handler as fn(_) -> HandlerFuture))
}

fn request(method: Method, uri: &str, mode: &str, body: TBody) -> Request<TBody> {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .body(body)
        .expect("valid request");
    req.headers_mut()
        .insert("x-mode", HeaderValue::from_str(mode).expect("mode"));
    req
}

fn with_id(mut req: Request<TBody>, id: &str) -> Request<TBody> {
    req.headers_mut()
        .insert(REQUEST_ID_HEADER, HeaderValue::from_str(id).expect("id"));
    req
}

fn with_header(mut req: Request<TBody>, name: &'static str, value: &str) -> Request<TBody> {
    req.headers_mut()
        .insert(name, HeaderValue::from_str(value).expect("value"));
    req
}

fn config() -> InspectorConfig {
    InspectorConfig::new()
        .polling_prefixes(["/api/monitor/", "/api/blast/jobs", "/api/warmup"])
        .expect("valid prefixes")
}

fn current_thread_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}

// ---------------------------------------------------------------------------------------------
// The promises, as checks
// ---------------------------------------------------------------------------------------------

/// What one `stats()` read must agree with (InspectorStats rustdoc, guide "Capture, streaming
/// and memory").
fn check_stats(s: &InspectorStats, capacity: usize) {
    assert!(
        s.evicted <= s.captured,
        "evicted > captured in one read: {s:?}"
    );
    assert_eq!(
        s.retained_bytes,
        s.in_flight_bytes + s.ring_bytes + s.ring_slot_bytes + s.spare_bytes,
        "retained_bytes is not the sum of its parts: {s:?}"
    );
    assert!(
        s.peak_retained_bytes >= s.retained_bytes,
        "peak below retained in one read: {s:?}"
    );
    assert!(
        s.ring_len <= capacity,
        "ring_len over capacity {capacity}: {s:?}"
    );
    assert!(
        s.spare_bytes <= MAX_SPARE_BYTES,
        "spare_bytes over 8 x (16 KiB + 320): {s:?}"
    );
}

/// A list read from the ring: at most `capacity`, newest first, consecutive ids (one snapshot).
fn check_list(list: &[Arc<Entry>], capacity: usize) {
    assert!(
        list.len() <= capacity,
        "{} entries > capacity {capacity}",
        list.len()
    );
    for pair in list.windows(2) {
        assert_eq!(
            pair[0].id,
            pair[1].id + 1,
            "a ring snapshot is not newest-first with consecutive ids: {:?}",
            list.iter().map(|e| e.id).collect::<Vec<_>>()
        );
    }
}

/// Everything finished: nothing in flight, the ring's bytes are its entries' bytes.
fn check_quiet(inspector: &Inspector) -> InspectorStats {
    let s = inspector.stats();
    check_stats(&s, inspector.capacity());
    assert_eq!(
        s.in_flight_bytes, 0,
        "in_flight_bytes after everything finished: {s:?}"
    );
    let entries = inspector.entries();
    check_list(&entries, inspector.capacity());
    assert_eq!(entries.len(), s.ring_len, "ring_len vs entries(): {s:?}");
    assert_eq!(
        s.ring_bytes,
        entries.iter().map(|e| e.retained_bytes()).sum::<usize>(),
        "ring_bytes vs the entries' retained_bytes: {s:?}"
    );
    s
}

/// Reads `stats()` until `done`, checking every read and that the peak never goes down.
fn stats_reader(inspector: Inspector, done: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let capacity = inspector.capacity();
        let mut peak = 0;
        let mut reads = 0;
        loop {
            let finished = done.load(Ordering::Acquire);
            let s = inspector.stats();
            check_stats(&s, capacity);
            assert!(
                s.peak_retained_bytes >= peak,
                "peak went down between two reads: {peak} then {s:?}"
            );
            peak = s.peak_retained_bytes;
            reads += 1;
            if finished {
                return reads;
            }
            std::thread::yield_now();
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Mixed traffic on a multi-thread runtime
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Post,
    Polling,
    Echo,
    Aborted,
    Cancelled,
    ServiceError,
    NotFound,
}

const KINDS: [Kind; 7] = [
    Kind::Post,
    Kind::Polling,
    Kind::Echo,
    Kind::Aborted,
    Kind::Cancelled,
    Kind::ServiceError,
    Kind::NotFound,
];

/// One exchange of `kind`, with incoming id `id`, driven to its end on the current task.
async fn exchange(svc: Svc, kind: Kind, id: &str) {
    match kind {
        Kind::Post => {
            let req = with_header(
                request(Method::POST, "/api/jobs", "read", full(vec![b'p'; 700])),
                "x-resp-len",
                "300",
            );
            let resp = svc.oneshot(with_id(req, id)).await.expect("POST answers");
            assert_eq!(resp.headers()[REQUEST_ID_HEADER], id);
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            assert_eq!(body.len(), 300);
        }
        Kind::Polling => {
            let req = with_header(
                request(Method::GET, "/api/monitor/aks", "read", full(Bytes::new())),
                "x-resp-len",
                "2000",
            );
            let resp = svc.oneshot(with_id(req, id)).await.expect("GET answers");
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            assert_eq!(body.len(), 2000);
        }
        Kind::Echo => {
            let req = request(Method::PUT, "/api/echo", "echo", chunks(4, 300, b'e'));
            let resp = svc.oneshot(with_id(req, id)).await.expect("echo answers");
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            assert_eq!(body, Bytes::from(vec![b'e'; 1200]));
        }
        Kind::Aborted => {
            let mut req = request(Method::DELETE, "/api/jobs/1", "read", full("x"));
            req.extensions_mut()
                .insert(GivenBody(Arc::new(Mutex::new(Some(chunks(3, 500, b'a'))))));
            let resp = svc.oneshot(with_id(req, id)).await.expect("DELETE answers");
            let mut body = resp.into_body();
            let first = body.frame().await.expect("a frame").expect("data");
            assert_eq!(first.into_data().expect("data").len(), 500);
            drop(body); // the client went away
        }
        Kind::Cancelled => {
            let req = request(Method::POST, "/api/slow", "pending", full(vec![b'c'; 200]));
            let mut fut = Box::pin(svc.oneshot(with_id(req, id)));
            // One poll reads the (ready) request body and parks in the handler; then the
            // caller gives up.
            let polled = futures::poll!(fut.as_mut());
            assert!(polled.is_pending(), "the pending handler answered");
            drop(fut);
        }
        Kind::ServiceError => {
            let req = request(Method::PATCH, "/api/jobs/2", "error", full("patch"));
            let result = svc.oneshot(with_id(req, id)).await;
            assert!(result.is_err(), "the inner service's error passes through");
        }
        Kind::NotFound => {
            let req = with_header(
                request(Method::GET, "/api/jobs/404", "read", full(Bytes::new())),
                "x-status",
                "404",
            );
            let resp = svc.oneshot(with_id(req, id)).await.expect("GET answers");
            assert_eq!(resp.status(), 404);
            let _ = resp.into_body().collect().await.expect("body");
        }
    }
}

/// Many tasks on 8 workers send every kind of exchange into a small ring while OS threads read
/// `stats()` (every read checked, the peak never going down), read `entries()` and
/// `entries_matching()` (newest first, consecutive, bounded, filtered) and `clear()` the ring.
/// Once quiet: nothing in flight, counters exact. Covers the InspectorStats promises, I1–I3.
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn mt_runtime_mixed_traffic_with_readers_and_clears_keeps_every_read_consistent() {
    const TASKS: usize = 16;
    const PER_TASK: usize = 70;
    let inspector = Inspector::new(config().capacity(12).body_limit(512));
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| stats_reader(inspector.clone(), done.clone()))
        .collect();
    let list_reader = {
        let inspector = inspector.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let post = EntryFilter::new().method(Method::POST).limit(5);
            loop {
                let finished = done.load(Ordering::Acquire);
                check_list(&inspector.entries(), 12);
                let posts = inspector.entries_matching(&post);
                assert!(posts.len() <= 5, "limit 5 gave {}", posts.len());
                for pair in posts.windows(2) {
                    assert!(pair[0].id > pair[1].id, "entries_matching not newest first");
                }
                assert!(
                    posts.iter().all(|e| e.method == "POST"),
                    "filter let a non-POST through"
                );
                if finished {
                    return;
                }
                std::thread::yield_now();
            }
        })
    };
    let clears = Arc::new(AtomicUsize::new(0));
    let clearer = {
        let inspector = inspector.clone();
        let done = done.clone();
        let clears = clears.clone();
        std::thread::spawn(move || {
            loop {
                inspector.clear();
                clears.fetch_add(1, Ordering::Relaxed);
                if done.load(Ordering::Acquire) {
                    return;
                }
                for _ in 0..50 {
                    std::thread::yield_now();
                }
            }
        })
    };
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let svc = service(&inspector);
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_TASK {
                let kind = KINDS[(t + i) % KINDS.len()];
                exchange(svc.clone(), kind, &format!("mt-{t}-{i}")).await;
                if i % 5 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer task");
    }
    done.store(true, Ordering::Release);
    for reader in readers {
        assert!(reader.join().expect("stats reader") > 0);
    }
    list_reader.join().expect("list reader");
    clearer.join().expect("clearer");

    let total = TASKS * PER_TASK;
    let polling = (0..TASKS)
        .flat_map(|t| (0..PER_TASK).map(move |i| KINDS[(t + i) % KINDS.len()]))
        .filter(|k| *k == Kind::Polling)
        .count();
    let s = check_quiet(&inspector);
    assert_eq!(s.passed_through, polling as u64, "{s:?}");
    assert_eq!(s.captured, (total - polling) as u64, "{s:?}");
    assert!(clears.load(Ordering::Relaxed) > 0);
    inspector.clear();
    let s = check_quiet(&inspector);
    assert_eq!(s.ring_len, 0);
    assert_eq!(s.spare_bytes, 0, "clear() frees the spare records: {s:?}");
}

/// The same traffic into a ring large enough to keep it all: every exchange is recorded once
/// with the outcome, status and bodies its kind implies, under the incoming id the client sent
/// (I1, I3, the outcomes of the guide's capture section); polling GETs leave no entry (I2).
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn mt_runtime_every_exchange_is_recorded_once_with_its_outcome() {
    const TASKS: usize = 12;
    const PER_TASK: usize = 42;
    let inspector = Inspector::new(config().capacity(1000).body_limit(2000));
    let mut tasks = Vec::new();
    let mut expected = HashMap::new();
    for t in 0..TASKS {
        let svc = service(&inspector);
        for i in 0..PER_TASK {
            expected.insert(format!("ok-{t}-{i}"), KINDS[(t * 3 + i) % KINDS.len()]);
        }
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_TASK {
                let kind = KINDS[(t * 3 + i) % KINDS.len()];
                exchange(svc.clone(), kind, &format!("ok-{t}-{i}")).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer task");
    }
    let s = check_quiet(&inspector);
    let entries = inspector.entries();
    let polling = expected.values().filter(|k| **k == Kind::Polling).count();
    assert_eq!(entries.len(), expected.len() - polling, "{s:?}");
    assert_eq!(s.evicted, 0);
    let mut seen = HashSet::new();
    for entry in &entries {
        assert!(
            seen.insert(entry.request_id.clone()),
            "recorded twice: {}",
            entry.request_id
        );
        let kind = expected[&entry.request_id];
        let (outcome, status, req_bytes, resp_bytes) = match kind {
            Kind::Post => (Outcome::Complete, Some(200), 700, 300),
            Kind::Echo => (Outcome::Complete, Some(200), 1200, 1200),
            Kind::Aborted => (Outcome::Aborted, Some(200), 1, 500),
            Kind::Cancelled => (Outcome::Cancelled, None, 200, 0),
            Kind::ServiceError => (Outcome::ServiceError, None, 5, 0),
            Kind::NotFound => (Outcome::Complete, Some(404), 0, 0),
            Kind::Polling => panic!("a polling GET was recorded: {entry:?}"),
        };
        assert_eq!(entry.outcome, outcome, "{kind:?}: {entry:?}");
        assert_eq!(entry.status, status, "{kind:?}: {entry:?}");
        assert_eq!(
            entry.request_body.captured_bytes(),
            req_bytes,
            "{kind:?}: {entry:?}"
        );
        assert_eq!(
            entry.response_body.captured_bytes(),
            resp_bytes,
            "{kind:?}: {entry:?}"
        );
        assert_eq!(
            entry.response_body.complete(),
            outcome == Outcome::Complete,
            "{kind:?}: {entry:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// OS threads, each with its own runtime
// ---------------------------------------------------------------------------------------------

/// A ring of one, 8 OS threads (each with a current-thread runtime) capturing as fast as they
/// can, 3 threads reading `stats()`: `evicted <= captured` and `ring_len <= 1` in every read,
/// even though both move between the loads of one read. Once quiet:
/// `captured == evicted + ring_len` (no clear) and every exchange counted.
#[test]
fn os_threads_ring_of_one_every_read_has_evicted_at_most_captured() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 250;
    let inspector = Inspector::new(config().capacity(1).body_limit(64));
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|_| stats_reader(inspector.clone(), done.clone()))
        .collect();
    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            let svc = service(&inspector);
            std::thread::spawn(move || {
                current_thread_rt().block_on(async move {
                    for i in 0..PER_THREAD {
                        let kind = if i % 4 == 3 {
                            Kind::Aborted
                        } else {
                            Kind::Post
                        };
                        exchange(svc.clone(), kind, &format!("one-{t}-{i}")).await;
                    }
                });
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("writer");
    }
    done.store(true, Ordering::Release);
    for reader in readers {
        reader.join().expect("reader");
    }
    let s = check_quiet(&inspector);
    assert_eq!(s.captured, (THREADS * PER_THREAD) as u64, "{s:?}");
    assert_eq!(s.ring_len, 1, "{s:?}");
    assert_eq!(s.captured, s.evicted + s.ring_len as u64, "{s:?}");
    assert_eq!(
        inspector.entries()[0].id,
        s.captured,
        "the newest entry has the last id"
    );
}

#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
struct CrossCounts {
    complete: usize,
    aborted: usize,
    cancelled: usize,
    service_error: usize,
    polling: usize,
    /// Captures held in flight once the producers were done, with their request body read.
    held_with_read_body: usize,
}

enum Work {
    /// A response head; `how`: 0 finish here, 1 drop after a frame, 2 hand to the finisher.
    Resp(Resp, u8),
    /// A response future polled once on the producer's thread, dropped here.
    Fut(RespFuture),
}

/// Captures start on producer threads (each with its own current-thread runtime: the request
/// body is read and the response head taken there) and end on other threads: consumers finish
/// them, drop them part-way, drop futures that were polled once, or hand a half-read body on to
/// a third thread that finishes it. Returns what the exchanges must have recorded and the
/// `stats()` read taken while the producers' captures were all held in flight (`None` when
/// `read_mid` is false).
fn cross_thread_run(
    inspector: &Inspector,
    producers: usize,
    per: usize,
    read_mid: bool,
) -> (CrossCounts, Option<InspectorStats>) {
    let mut counts = CrossCounts::default();
    let mut consumer_txs = Vec::new();
    let mut consumer_rxs = Vec::new();
    for _ in 0..producers {
        let (tx, rx) = mpsc::channel::<Work>();
        consumer_txs.push(tx);
        consumer_rxs.push(rx);
    }
    for p in 0..producers {
        for j in 0..per {
            match (p + j) % 7 {
                0 | 2 | 3 => {
                    counts.complete += 1;
                    if (p + j) % 7 != 3 {
                        counts.held_with_read_body += 1;
                    }
                }
                1 => {
                    counts.aborted += 1;
                    counts.held_with_read_body += 1;
                }
                4 => {
                    counts.cancelled += 1;
                    counts.held_with_read_body += 1;
                }
                5 => counts.service_error += 1,
                _ => counts.polling += 1,
            }
        }
    }
    let producer_threads: Vec<_> = (0..producers)
        .map(|p| {
            let svc = service(inspector);
            let txs = consumer_txs.clone();
            std::thread::spawn(move || {
                let rt = current_thread_rt();
                for j in 0..per {
                    let to = &txs[(p + j + 1) % txs.len()];
                    let read = || {
                        let mut req =
                            request(Method::POST, "/api/jobs", "read", chunks(3, 1000, b'q'));
                        req.extensions_mut()
                            .insert(GivenBody(Arc::new(Mutex::new(Some(chunks(3, 1000, b's'))))));
                        req
                    };
                    match (p + j) % 7 {
                        kind @ (0..=2) => {
                            let resp = rt.block_on(svc.clone().oneshot(read())).expect("answers");
                            to.send(Work::Resp(resp, kind as u8))
                                .expect("consumer alive");
                        }
                        3 => {
                            let req =
                                request(Method::PUT, "/api/echo", "echo", chunks(3, 1000, b'e'));
                            let resp = rt.block_on(svc.clone().oneshot(req)).expect("answers");
                            to.send(Work::Resp(resp, 0)).expect("consumer alive");
                        }
                        4 => {
                            let req = request(
                                Method::POST,
                                "/api/slow",
                                "pending",
                                chunks(3, 1000, b'c'),
                            );
                            let mut fut: RespFuture = Box::pin(svc.clone().oneshot(req));
                            let polled = rt.block_on(futures::future::poll_fn(|cx| {
                                Poll::Ready(fut.as_mut().poll(cx).is_pending())
                            }));
                            assert!(polled, "the pending handler answered");
                            to.send(Work::Fut(fut)).expect("consumer alive");
                        }
                        5 => {
                            let req = request(Method::DELETE, "/api/jobs/9", "error", full("d"));
                            assert!(rt.block_on(svc.clone().oneshot(req)).is_err());
                        }
                        _ => {
                            let req = with_header(
                                request(Method::GET, "/api/warmup/x", "read", full(Bytes::new())),
                                "x-resp-len",
                                "3000",
                            );
                            let resp = rt.block_on(svc.clone().oneshot(req)).expect("answers");
                            to.send(Work::Resp(resp, 0)).expect("consumer alive");
                        }
                    }
                }
            })
        })
        .collect();
    drop(consumer_txs);
    for producer in producer_threads {
        producer.join().expect("producer");
    }
    let mid = read_mid.then(|| inspector.stats());

    let (finisher_tx, finisher_rx) = mpsc::channel::<InspectBody<TBody>>();
    let finisher = std::thread::spawn(move || {
        let rt = current_thread_rt();
        for body in finisher_rx {
            rt.block_on(body.collect())
                .expect("finished on a third thread");
        }
    });
    let consumers: Vec<_> = consumer_rxs
        .into_iter()
        .map(|rx| {
            let finisher_tx = finisher_tx.clone();
            std::thread::spawn(move || {
                let rt = current_thread_rt();
                for work in rx {
                    match work {
                        Work::Resp(resp, 0) => {
                            rt.block_on(resp.into_body().collect()).expect("finished");
                        }
                        Work::Resp(resp, how) => {
                            let mut body = resp.into_body();
                            let frame = rt.block_on(body.frame()).expect("a frame").expect("data");
                            assert!(frame.is_data());
                            if how == 2 {
                                finisher_tx.send(body).expect("finisher alive");
                            }
                        }
                        Work::Fut(fut) => drop(fut),
                    }
                }
            })
        })
        .collect();
    drop(finisher_tx);
    for consumer in consumers {
        consumer.join().expect("consumer");
    }
    finisher.join().expect("finisher");
    (counts, mid)
}

/// Captures started on one OS thread and finished (or dropped) on another are accounted
/// exactly: while they are all held, `in_flight_bytes` counts at least their captured request
/// bodies; once done it is 0, the outcomes are right and the byte counts agree with the entries.
/// Covers the guide's striped `in_flight_bytes` ("the thread that finishes it subtracts from its
/// own") and the outcomes `complete`, `aborted`, `cancelled`, `service_error`.
#[test]
fn captures_finished_on_other_os_threads_release_their_in_flight_bytes() {
    let inspector = Inspector::new(config().capacity(1000).body_limit(4096));
    let (counts, mid) = cross_thread_run(&inspector, 4, 56, true);
    let mid = mid.expect("a mid read");
    check_stats(&mid, 1000);
    assert!(
        mid.in_flight_bytes >= counts.held_with_read_body * 3000,
        "{} captures held with 3000 request bytes each, in_flight_bytes {}: {mid:?}",
        counts.held_with_read_body,
        mid.in_flight_bytes
    );
    let s = check_quiet(&inspector);
    let entries = inspector.entries();
    let count = |o: Outcome| entries.iter().filter(|e| e.outcome == o).count();
    assert_eq!(count(Outcome::Complete), counts.complete, "{s:?}");
    assert_eq!(count(Outcome::Aborted), counts.aborted, "{s:?}");
    assert_eq!(count(Outcome::Cancelled), counts.cancelled, "{s:?}");
    assert_eq!(count(Outcome::ServiceError), counts.service_error, "{s:?}");
    assert_eq!(s.passed_through, counts.polling as u64, "{s:?}");
    for e in entries.iter().filter(|e| e.outcome == Outcome::Aborted) {
        assert_eq!(e.response_body.captured_bytes(), 1000, "{e:?}");
        assert!(!e.response_body.complete());
    }
    for e in entries.iter().filter(|e| e.method == "PUT") {
        assert_eq!(e.request_body.bytes(), &Bytes::from(vec![b'e'; 3000]));
        assert_eq!(e.response_body.bytes(), &Bytes::from(vec![b'e'; 3000]));
    }
    assert!(s.peak_retained_bytes >= mid.retained_bytes);
}

// ---------------------------------------------------------------------------------------------
// Cancellation and panics on a multi-thread runtime
// ---------------------------------------------------------------------------------------------

/// Tasks on a multi-thread runtime are aborted while parked in the handler (response future
/// dropped: `cancelled`) or holding a half-read response body (`aborted`), and handlers panic
/// (the task's future is dropped by tokio: `cancelled`). Every one is recorded with its
/// outcome, and nothing stays in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aborted_tasks_and_panicking_handlers_record_outcomes_and_release_bytes() {
    const N: usize = 60;
    let inspector = Inspector::new(config().capacity(200).body_limit(2048));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut handles = Vec::new();
    let mut panicking = Vec::new();
    for i in 0..N {
        let svc = service(&inspector);
        let signal = Signal(tx.clone());
        let list = if i % 3 == 2 {
            &mut panicking
        } else {
            &mut handles
        };
        list.push(tokio::spawn(async move {
            let id = format!("abort-{i}");
            match i % 3 {
                0 => {
                    let mut req =
                        request(Method::POST, "/api/slow", "pending", full(vec![b'x'; 1500]));
                    req.extensions_mut().insert(signal);
                    let _ = svc.oneshot(with_id(req, &id)).await;
                    unreachable!("the pending handler answered");
                }
                1 => {
                    let mut req = request(Method::PUT, "/api/jobs", "read", full(vec![b'y'; 1500]));
                    req.extensions_mut()
                        .insert(GivenBody(Arc::new(Mutex::new(Some(chunks(4, 600, b'z'))))));
                    let resp = svc.oneshot(with_id(req, &id)).await.expect("answers");
                    let mut body = resp.into_body();
                    let _ = body.frame().await;
                    let _ = signal.0.send(());
                    std::future::pending::<()>().await;
                    drop(body);
                }
                _ => {
                    let req = request(Method::POST, "/api/boom", "panic", full(vec![b'p'; 1500]));
                    let _ = svc.oneshot(with_id(req, &id)).await;
                }
            }
        }));
    }
    drop(tx);
    for _ in 0..(2 * N / 3) {
        rx.recv().await.expect("a parked task");
    }
    for handle in &handles {
        handle.abort();
    }
    for handle in handles {
        let err = handle.await.expect_err("every parked task was aborted");
        assert!(err.is_cancelled(), "{err:?}");
    }
    for handle in panicking {
        let err = handle
            .await
            .expect_err("every handler of the third kind panicked");
        assert!(err.is_panic(), "{err:?}");
    }
    let s = check_quiet(&inspector);
    assert_eq!(s.captured, N as u64, "{s:?}");
    for entry in inspector.entries() {
        let i: usize = entry.request_id["abort-".len()..].parse().expect("our id");
        let (outcome, status) = match i % 3 {
            1 => (Outcome::Aborted, Some(200)),
            _ => (Outcome::Cancelled, None),
        };
        assert_eq!(entry.outcome, outcome, "{entry:?}");
        assert_eq!(entry.status, status, "{entry:?}");
        assert_eq!(entry.request_body.captured_bytes(), 1500, "{entry:?}");
        if i % 3 == 1 {
            assert_eq!(entry.response_body.captured_bytes(), 600, "{entry:?}");
        }
    }
}

/// An inner service whose `call` panics (before it returns a future) must not leave the
/// capture's bytes counted as in flight forever, and the inspector keeps working ("never a
/// panic" of the layer, "releases its bytes").
#[test]
fn inner_call_panicking_releases_the_capture() {
    let inspector = Inspector::new(config().capacity(8));
    let mut svc = inspector.layer().layer(service_fn(
        |req: Request<InspectBody<TBody>>| -> std::future::Ready<Result<Response<TBody>, BoxErr>> {
            if req.uri().path() == "/api/panic" {
                panic!("call panicked on purpose (blackbox_concurrency)");
            }
            std::future::ready(Ok(Response::new(full("fine"))))
        },
    ));
    for _ in 0..3 {
        let req = request(Method::POST, "/api/panic", "", full(vec![b'x'; 5000]));
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| svc.call(req)));
        assert!(result.is_err());
    }
    let s = inspector.stats();
    check_stats(&s, 8);
    assert_eq!(
        s.in_flight_bytes, 0,
        "a panicked call left bytes in flight: {s:?}"
    );
    let rt = current_thread_rt();
    let resp = rt
        .block_on(svc.call(request(Method::POST, "/api/ok", "", full("x"))))
        .expect("answers");
    let body = rt
        .block_on(resp.into_body().collect())
        .expect("body")
        .to_bytes();
    assert_eq!(body, "fine");
    let s = check_quiet(&inspector);
    assert!(s.captured >= 1, "{s:?}");
    assert_eq!(inspector.entries()[0].path, "/api/ok");
}

/// A response body that panics part-way (caught by the caller) and is then dropped: recorded
/// `aborted` with what passed, nothing left in flight, and the ring keeps serving (guide:
/// "A poisoned lock (a panic elsewhere) is recovered").
#[test]
fn response_body_panicking_mid_stream_is_recorded_and_released() {
    struct Panicky(u8);
    impl Body for Panicky {
        type Data = Bytes;
        type Error = BoxErr;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxErr>>> {
            self.0 += 1;
            if self.0 > 1 {
                panic!("response body panicked on purpose (blackbox_concurrency)");
            }
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"first")))))
        }
    }
    let inspector = Inspector::new(config().capacity(4));
    let rt = current_thread_rt();
    for round in 0..3 {
        let mut req = request(Method::POST, "/api/jobs", "read", full("in"));
        req.extensions_mut()
            .insert(GivenBody(Arc::new(Mutex::new(Some(
                Panicky(0).boxed_unsync(),
            )))));
        let resp = rt
            .block_on(service(&inspector).oneshot(req))
            .expect("answers");
        let mut body = resp.into_body();
        let first = rt.block_on(body.frame()).expect("frame").expect("data");
        assert_eq!(first.into_data().expect("data"), "first");
        let panicked = std::panic::catch_unwind(AssertUnwindSafe(|| rt.block_on(body.frame())));
        assert!(panicked.is_err());
        // Dropped on another thread, as a server would after a panic in the connection task.
        std::thread::spawn(move || drop(body)).join().expect("drop");
        let s = check_quiet(&inspector);
        assert_eq!(s.captured, round + 1, "{s:?}");
        let entry = &inspector.entries()[0];
        assert_eq!(entry.outcome, Outcome::Aborted, "{entry:?}");
        assert_eq!(entry.response_body.text(), "first");
    }
}

/// A request body the handler hands out unread and that is read only after the response
/// ended: the entry recorded at the response's end says `complete: false` with nothing read,
/// and reading the body later changes neither the entry nor the byte counts (the tee still
/// forwards every byte). Guide: "Request bodies the handler never read are recorded as
/// `complete: false` with what was read".
#[test]
fn request_body_read_after_the_response_ended_changes_nothing() {
    let inspector = Inspector::new(config().capacity(4).body_limit(4096));
    let rt = current_thread_rt();
    let later = LaterBody(Arc::new(Mutex::new(None)));
    let mut req = request(Method::POST, "/api/upload", "later", chunks(4, 1500, b'u'));
    req.extensions_mut().insert(later.clone());
    let resp = rt
        .block_on(service(&inspector).oneshot(req))
        .expect("answers");
    let body = rt
        .block_on(resp.into_body().collect())
        .expect("body")
        .to_bytes();
    assert_eq!(body, "later");
    let before = check_quiet(&inspector);
    let entry_before = inspector.entries()[0].clone();
    assert_eq!(entry_before.outcome, Outcome::Complete);
    assert!(!entry_before.request_body.complete(), "{entry_before:?}");
    assert_eq!(
        entry_before.request_body.captured_bytes(),
        0,
        "{entry_before:?}"
    );

    let unread = later.0.lock().unwrap().take().expect("handed out");
    let read = std::thread::spawn(move || {
        current_thread_rt()
            .block_on(unread.collect())
            .expect("request body")
            .to_bytes()
    })
    .join()
    .expect("late reader");
    assert_eq!(
        read,
        Bytes::from(vec![b'u'; 6000]),
        "the tee forwards every byte"
    );

    let after = check_quiet(&inspector);
    let entry_after = inspector.entries()[0].clone();
    assert_eq!(
        after.retained_bytes, before.retained_bytes,
        "{before:?} then {after:?}"
    );
    assert_eq!(entry_after.request_body, entry_before.request_body);
    assert_eq!(entry_after.retained_bytes(), entry_before.retained_bytes());
    assert_eq!(after.truncated_bodies, before.truncated_bodies);
}

// ---------------------------------------------------------------------------------------------
// The peak
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum PeakEnd {
    Complete,
    Aborted,
    Cancelled,
    ClearFirst,
}

/// Fills a ring of 1 280 (20 slot chunks) from several workers so that it holds entries, slot
/// chunks and spare records with large arenas, then returns one quiet `stats()` read.
async fn fill_with_spares(inspector: &Inspector) -> InspectorStats {
    async fn run(inspector: &Inspector, n: usize, big: bool) {
        let mut tasks = Vec::new();
        for t in 0..8 {
            let svc = service(inspector);
            tasks.push(tokio::spawn(async move {
                for i in 0..n / 8 {
                    let (req_len, resp_len) = if big { (7000, 7000) } else { (10, 10) };
                    let req = with_header(
                        request(Method::POST, "/api/fill", "read", full(vec![b'f'; req_len])),
                        "x-resp-len",
                        &resp_len.to_string(),
                    );
                    let resp = svc.clone().oneshot(req).await.expect("answers");
                    let _ = resp.into_body().collect().await.expect("body");
                    if (t + i) % 3 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            }));
        }
        for task in tasks {
            task.await.expect("fill task");
        }
    }
    // The oldest entries are big; the last small ones evict them, and the evicting threads keep
    // them (arenas of about 14 KiB) as spares.
    run(inspector, 16, true).await;
    run(inspector, 1280 - 16, false).await;
    run(inspector, 16, false).await;
    let s = check_quiet(inspector);
    assert_eq!(s.ring_len, 1280, "{s:?}");
    assert_eq!(s.ring_slot_bytes, 20 * 1024, "{s:?}");
    assert!(
        s.spare_bytes > 0,
        "evictions by threads with no spare keep the evicted record: {s:?}"
    );
    s
}

/// Eight captures of 16 KiB request bodies (a 20 KiB body cut at the 16 KiB limit, so no spare
/// arena fits them) are held in flight together on a multi-thread runtime, with no `stats()`
/// read until all have ended; the peak must still count the bytes held just before the first
/// ended: the quiet read before plus at least 8 × 16 KiB. Guide: "`peak_retained_bytes` is
/// raised when a capture finishes (to what was held just before …) … so no peak is missed".
async fn peak_case(end: PeakEnd) {
    const N: usize = 8;
    const LIMIT: usize = 16 * 1024;
    let inspector = Inspector::new(config().capacity(1280).body_limit(LIMIT));
    let before = fill_with_spares(&inspector).await;

    let heads = Arc::new(tokio::sync::Barrier::new(N + 1));
    let go = Arc::new(tokio::sync::Barrier::new(N + 1));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for i in 0..N {
        let svc = service(&inspector);
        let (heads, go, signal) = (heads.clone(), go.clone(), Signal(tx.clone()));
        tasks.push(tokio::spawn(async move {
            let big = full(vec![b'P'; 20 * 1024]);
            if let PeakEnd::Cancelled = end {
                let mut req = request(Method::POST, "/api/peak", "pending", big);
                req.extensions_mut().insert(signal);
                let _ = svc.oneshot(req).await;
                unreachable!("the pending handler answered");
            }
            let req = with_header(
                request(Method::POST, "/api/peak", "read", big),
                "x-resp-len",
                "64",
            );
            let resp = svc.oneshot(req).await.expect("answers");
            heads.wait().await;
            go.wait().await;
            // Finish on whichever worker runs this now.
            if i % 2 == 0 {
                tokio::task::yield_now().await;
            }
            match end {
                PeakEnd::Aborted => drop(resp),
                _ => {
                    let _ = resp.into_body().collect().await.expect("body");
                }
            }
        }));
    }
    drop(tx);
    match end {
        PeakEnd::Cancelled => {
            for _ in 0..N {
                rx.recv().await.expect("a parked handler");
            }
            for task in &tasks {
                task.abort();
            }
        }
        PeakEnd::ClearFirst => {
            heads.wait().await;
            inspector.clear();
            go.wait().await;
        }
        _ => {
            heads.wait().await;
            go.wait().await;
        }
    }
    for task in tasks {
        let _ = task.await;
    }
    let after = check_quiet(&inspector);
    let floor = before.retained_bytes + N * LIMIT;
    assert!(
        after.peak_retained_bytes >= floor,
        "{end:?}: the peak missed the {N} captures held together on top of what the ring, \
         its slots and the spares held: peak {} < {} (= quiet retained {} + {N} x {LIMIT}); \
         before {before:?}, after {after:?}",
        after.peak_retained_bytes,
        floor,
        before.retained_bytes,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peak_counts_completed_captures_held_together_on_top_of_ring_slots_and_spares() {
    peak_case(PeakEnd::Complete).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peak_counts_aborted_captures_held_together_on_top_of_ring_slots_and_spares() {
    peak_case(PeakEnd::Aborted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peak_counts_cancelled_captures_held_together_on_top_of_ring_slots_and_spares() {
    peak_case(PeakEnd::Cancelled).await;
}

/// As above, but the ring is cleared while the captures are held: `clear()` frees the ring and
/// the spares, and the peak must not lose what was held just before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peak_is_not_lost_when_clear_runs_while_captures_are_in_flight() {
    peak_case(PeakEnd::ClearFirst).await;
}

/// The simplest form, on OS threads: a ring of one, eight captures each holding 8 KiB of
/// request body taken on eight threads and finished on the main thread, no read in between.
#[test]
fn peak_counts_captures_started_on_eight_os_threads_without_reads() {
    let inspector = Inspector::new(config().capacity(1).body_limit(8192));
    let barrier = Arc::new(Barrier::new(8));
    let heads: Vec<Resp> = (0..8)
        .map(|_| {
            let svc = service(&inspector);
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let resp = current_thread_rt()
                    .block_on(svc.oneshot(with_header(
                        request(Method::POST, "/api/jobs", "read", chunks(8, 1024, b'h')),
                        "x-resp-len",
                        "64",
                    )))
                    .expect("answers");
                barrier.wait();
                resp
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .collect();
    let rt = current_thread_rt();
    for resp in heads {
        rt.block_on(resp.into_body().collect()).expect("body");
    }
    let s = check_quiet(&inspector);
    assert!(
        s.peak_retained_bytes >= 8 * 8192,
        "the peak missed eight captures held together: {s:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Counting allocator, in a child process
// ---------------------------------------------------------------------------------------------

const CHILD_ENV: &str = "REQUEST_INSPECTOR_BLACKBOX_CONCURRENCY_CHILD";

fn live_bytes() -> isize {
    let s = GLOBAL.stats();
    s.bytes_allocated as isize - s.bytes_deallocated as isize
}

/// Runs `name` alone in a child process of this test binary (so no other test allocates
/// meanwhile) and waits at most 60 s for it.
fn run_in_child(name: &str) {
    let exe = std::env::current_exe().expect("test binary");
    let child = std::process::Command::new(exe)
        .args([name, "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD_ENV, "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("child");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the child test ended within 60 s")
        .expect("child output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "child test {name} failed:\n{stdout}\n{stderr}"
    );
}

/// A counting global allocator sees exactly `retained_bytes` live (beyond what the inspector
/// held when built) after captures started on OS threads and finished, dropped, cancelled or
/// handed on on others (echo spills included, a small ring evicting, spares in play); the same
/// after `clear()`; and nothing once the inspector is dropped. Guide: "`InspectorStats` counts
/// bytes as the allocator sees them … the live bytes equal `retained_bytes` exactly".
#[test]
fn allocator_sees_retained_bytes_after_cross_thread_captures() {
    if std::env::var_os(CHILD_ENV).is_none() {
        run_in_child("allocator_sees_retained_bytes_after_cross_thread_captures");
        return;
    }
    let cfg = || config().capacity(70).body_limit(2048);
    // Warm up everything that allocates once per process (callsites, runtimes' statics).
    let warm = Inspector::new(cfg());
    cross_thread_run(&warm, 4, 42, false);
    drop(warm);

    let base = live_bytes();
    let inspector = Inspector::new(cfg());
    let built = live_bytes();
    let (counts, _) = cross_thread_run(&inspector, 4, 42, false);
    let after_run = inspector.stats();
    let live_run = live_bytes();
    inspector.clear();
    let after_clear = inspector.stats();
    let live_clear = live_bytes();
    drop(inspector);
    // Measured against what is live once the inspector is gone (in about one run in a hundred
    // under load, 144 bytes of the process's own, not the inspector's, are freed or allocated
    // between the warm-up and `base`, shifting every figure taken against `base` alike).
    let live_drop = live_bytes();
    let fixed = built - base;
    let run_diff = live_run - live_drop - fixed - after_run.retained_bytes as isize;
    let clear_diff = live_clear - live_drop - fixed - after_clear.retained_bytes as isize;
    assert_eq!(after_run.in_flight_bytes, 0, "{after_run:?}");
    assert!(
        after_run.evicted > 0 && after_run.spare_bytes > 0,
        "the ring evicted and kept spares: {after_run:?}"
    );
    assert_eq!(
        (run_diff, clear_diff),
        (0, 0),
        "live bytes held by the inspector beyond its fixed {fixed} bytes, minus retained_bytes, \
         after cross-thread captures {counts:?} and after clear(); after the run {after_run:?}, \
         after clear() {after_clear:?}; base {base}, dropped {live_drop}"
    );
}

// ---------------------------------------------------------------------------------------------
// Redaction, request ids, limits, prefixes under concurrency
// ---------------------------------------------------------------------------------------------

/// Eight workers send secrets in default, pattern-matched and configured headers, in the query
/// (plain and percent-encoded names) and in response headers, through a ring of 4 (so spare
/// arenas are reused all the time): no secret value appears in any entry, its `Debug` or its
/// JSON, the names stay, harmless headers keep their values (I5, I6).
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn secrets_never_reach_entries_under_concurrent_reuse() {
    let inspector = Inspector::new(
        config()
            .capacity(4)
            .redact_header("x-session")
            .expect("valid name")
            .redact_query_param("ticket"),
    );
    let found = Arc::new(Mutex::new(Vec::<String>::new()));
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let inspector = inspector.clone();
        let (found, done) = (found.clone(), done.clone());
        std::thread::spawn(move || {
            loop {
                let finished = done.load(Ordering::Acquire);
                for entry in inspector.entries() {
                    let text =
                        format!("{entry:?}{}", serde_json::to_string(&*entry).expect("json"));
                    if text.contains("SECRET") {
                        found.lock().unwrap().push(text);
                    }
                }
                if finished {
                    return;
                }
                std::thread::yield_now();
            }
        })
    };
    let mut tasks = Vec::new();
    for t in 0..8 {
        let svc = service(&inspector);
        tasks.push(tokio::spawn(async move {
            for i in 0..40 {
                let s = |n: &str| format!("SECRET-{t}-{i}-{n}");
                let uri = format!(
                    "/api/jobs?sig={}&access%5Ftoken={}&%73ig={}&Ticket={}&limit=20",
                    s("sig"),
                    s("at"),
                    s("pct"),
                    s("ticket")
                );
                let mut req = request(Method::POST, &uri, "read", full("{}"));
                for name in [
                    "authorization",
                    "cookie",
                    "x-api-key",
                    "x-auth-token",
                    "x-client-secret",
                    "x-ms-sas",
                    "x-hub-signature-256",
                    "x-session",
                    "x-upstream-credential",
                ] {
                    req = with_header(req, name, &s(name));
                }
                req = with_header(req, "x-author", &format!("alice-{t}-{i}"));
                let resp = svc.clone().oneshot(req).await.expect("answers");
                let _ = resp.into_body().collect().await.expect("body");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    done.store(true, Ordering::Release);
    reader.join().expect("reader");
    let leaked = found.lock().unwrap();
    assert!(
        leaked.is_empty(),
        "a secret reached an entry: {}",
        leaked[0]
    );
    for entry in inspector.entries() {
        let value = |name: &str| {
            entry
                .request_headers
                .iter()
                .find(|h| h.name == name)
                .map(|h| h.value.clone())
        };
        assert_eq!(value("authorization").as_deref(), Some(REDACTED));
        assert_eq!(value("x-session").as_deref(), Some(REDACTED));
        assert!(value("x-author").expect("kept").starts_with("alice-"));
        let query = entry.query.as_deref().expect("a query");
        assert!(query.ends_with("&limit=20"), "{query}");
        assert!(
            query.starts_with(
                "sig=[redacted]&access%5Ftoken=[redacted]&%73ig=[redacted]&Ticket=[redacted]"
            ),
            "{query}"
        );
    }
    check_quiet(&inspector);
}

/// Request ids from many threads at once: valid incoming ids (1 and 128 bytes, `!` and `~`)
/// are propagated; absent, empty, 129-byte, non-ASCII, control and repeated ones are replaced
/// by fresh 32-hex-digit ids, unique across all threads; the response header always equals the
/// entry's id (I1, guide "Request ids").
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn request_ids_under_concurrency_are_propagated_or_replaced_and_unique() {
    let inspector = Inspector::new(config().capacity(2000));
    let cases: Vec<(Option<Vec<Vec<u8>>>, bool)> = vec![
        (None, false),
        (Some(vec![b"a".to_vec()]), true),
        (Some(vec![vec![b'k'; 128]]), true),
        (Some(vec![b"!~".to_vec()]), true),
        (Some(vec![vec![b'k'; 129]]), false),
        (Some(vec![Vec::new()]), false),
        (Some(vec![b"caf\xc3\xa9".to_vec()]), false),
        (Some(vec![b"a\tb".to_vec()]), false),
        (Some(vec![b"a b".to_vec()]), false),
        (Some(vec![b"one".to_vec(), b"two".to_vec()]), false),
    ];
    let cases = Arc::new(cases);
    let mut tasks = Vec::new();
    for t in 0..8 {
        let svc = service(&inspector);
        let cases = cases.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..100 {
                let (incoming, keep) = &cases[(t + i) % cases.len()];
                let mut req = request(
                    Method::POST,
                    &format!("/api/ids/{t}/{i}"),
                    "read",
                    full("x"),
                );
                if let Some(values) = incoming {
                    for value in values {
                        req.headers_mut().append(
                            REQUEST_ID_HEADER,
                            HeaderValue::from_bytes(value).expect("header value"),
                        );
                    }
                }
                let resp = svc.clone().oneshot(req).await.expect("answers");
                let ids: Vec<_> = resp.headers().get_all(REQUEST_ID_HEADER).iter().collect();
                assert_eq!(ids.len(), 1, "one x-request-id on the response");
                let id = ids[0].to_str().expect("ascii").to_owned();
                let _ = resp.into_body().collect().await;
                if *keep {
                    let sent = &incoming.as_ref().expect("sent")[0];
                    assert_eq!(id.as_bytes(), &sent[..], "a valid id is propagated");
                } else {
                    assert_eq!(id.len(), 32, "fresh id {id:?}");
                    assert!(
                        id.bytes()
                            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                    );
                }
                out.push((format!("/api/ids/{t}/{i}"), id, *keep));
            }
            out
        }));
    }
    let mut fresh = HashSet::new();
    let mut by_path = HashMap::new();
    for task in tasks {
        for (path, id, keep) in task.await.expect("task") {
            if !keep {
                assert!(fresh.insert(id.clone()), "generated id repeated: {id}");
            }
            by_path.insert(path, id);
        }
    }
    for entry in inspector.entries() {
        assert_eq!(by_path[&entry.path], entry.request_id, "{entry:?}");
        assert!(RequestId::parse(&entry.request_id).is_ok());
    }
    check_quiet(&inspector);
}

/// Bodies around the limit, split into frames of every size, from many workers: captured bytes
/// are `min(len, limit)`, `truncated` iff `len > limit`, `total_bytes` is `len`, and
/// `truncated_bodies` counts exactly the cut bodies (I5).
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn bodies_around_the_limit_are_cut_exactly_under_concurrency() {
    const LIMIT: usize = 100;
    let inspector = Inspector::new(config().capacity(1000).body_limit(LIMIT));
    let lens = [0usize, 1, 99, 100, 101, 250];
    let mut tasks = Vec::new();
    for t in 0..8 {
        let svc = service(&inspector);
        tasks.push(tokio::spawn(async move {
            for i in 0..30 {
                let req_len = lens[(t + i) % lens.len()];
                let resp_len = lens[(t * 7 + i * 5) % lens.len()];
                let split = |len: usize, step: usize| -> Vec<Bytes> {
                    let data: Vec<u8> = (0..len).map(|k| (k % 251) as u8).collect();
                    data.chunks(step.max(1))
                        .map(Bytes::copy_from_slice)
                        .collect()
                };
                let mut req = request(
                    Method::POST,
                    &format!("/api/limit/{req_len}/{resp_len}"),
                    "read",
                    frames_of(split(req_len, 1 + (t + i) % 37)),
                );
                req.extensions_mut()
                    .insert(GivenBody(Arc::new(Mutex::new(Some(frames_of(split(
                        resp_len,
                        1 + (t * 3 + i) % 53,
                    )))))));
                let resp = svc.clone().oneshot(req).await.expect("answers");
                let body = resp.into_body().collect().await.expect("body").to_bytes();
                assert_eq!(body.len(), resp_len, "bytes on the wire are not cut");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let s = check_quiet(&inspector);
    let mut cut = 0;
    for entry in inspector.entries() {
        let mut parts = entry.path.rsplit('/');
        let resp_len: usize = parts.next().expect("resp").parse().expect("n");
        let req_len: usize = parts.next().expect("req").parse().expect("n");
        for (body, len) in [
            (&entry.request_body, req_len),
            (&entry.response_body, resp_len),
        ] {
            assert_eq!(body.captured_bytes(), len.min(LIMIT), "{entry:?}");
            assert_eq!(body.total_bytes(), len as u64, "{entry:?}");
            assert_eq!(body.truncated(), len > LIMIT, "{entry:?}");
            assert!(body.complete(), "{entry:?}");
            let expect: Vec<u8> = (0..len.min(LIMIT)).map(|k| (k % 251) as u8).collect();
            assert_eq!(&body.bytes()[..], &expect[..], "{entry:?}");
            cut += usize::from(len > LIMIT);
        }
    }
    assert_eq!(s.truncated_bodies, cut as u64, "{s:?}");
}

/// `body_limit(0)` keeps sizes only: no byte captured, every non-empty body `truncated` with
/// its `total_bytes`, and an entry's bytes do not depend on its bodies' sizes (guide: "0 keeps
/// sizes only").
#[test]
fn body_limit_zero_keeps_sizes_only() {
    let inspector = Inspector::new(config().capacity(10).body_limit(0));
    let rt = current_thread_rt();
    let mut sizes = Vec::new();
    for len in [0usize, 1, 10_000] {
        let mut req = request(
            Method::POST,
            "/api/zero",
            "read",
            chunks(len.min(1), len, b'z'),
        );
        req.extensions_mut()
            .insert(GivenBody(Arc::new(Mutex::new(Some(chunks(
                len.min(1),
                len,
                b'y',
            ))))));
        let resp = rt
            .block_on(service(&inspector).oneshot(req))
            .expect("answers");
        let body = rt
            .block_on(resp.into_body().collect())
            .expect("body")
            .to_bytes();
        assert_eq!(body.len(), len);
        let entry = inspector.entries()[0].clone();
        for captured in [&entry.request_body, &entry.response_body] {
            assert_eq!(captured.captured_bytes(), 0, "{entry:?}");
            assert_eq!(captured.total_bytes(), len as u64, "{entry:?}");
            assert_eq!(captured.truncated(), len > 0, "{entry:?}");
        }
        sizes.push(entry.retained_bytes());
    }
    assert!(
        sizes.windows(2).all(|w| w[0] == w[1]),
        "entry bytes vary with body size: {sizes:?}"
    );
    check_quiet(&inspector);
}

/// Polling-prefix edge cases the guide's table implies but does not list: the query is
/// ignored even when it holds `..`; segments that merely contain dots are ordinary segments;
/// `%2e` forms of dot segments and dot segments anywhere after the prefix are captured; an
/// absolute-form request URI is matched on its path (I2, I4). Prefix validation rejects what
/// the guide forbids with a typed error.
#[test]
fn polling_prefix_edge_cases() {
    let polling = PollingPrefixes::new(["/api/monitor/"]).expect("valid");
    let get = Some(&Method::GET);
    for path in [
        "/api/monitor",
        "/api/monitor?",
        "/api/monitor/aks?next=/../admin",
        "/api/monitor/aks?..",
        "/api/monitor/.well-known",
        "/api/monitor/a..b",
        "/api/monitor/..x",
    ] {
        assert!(
            !polling.should_capture(path, get),
            "{path} should be polling"
        );
    }
    for path in [
        "/api/monitor/..",
        "/api/monitor/.",
        "/api/monitor/aks/..",
        "/api/monitor/%2e%2E",
        "/api/monitor/.%2e/x",
        "/api/monitor/%2E/x",
        "/api/monitor/aks/../../admin?x=1",
        "/api/monitor/aks/.?x",
    ] {
        assert!(polling.should_capture(path, get), "{path} must be captured");
    }
    for method in [Method::HEAD, Method::OPTIONS, Method::POST] {
        assert!(polling.should_capture("/api/monitor/aks", Some(&method)));
    }
    let lower_get = Method::from_bytes(b"get").expect("extension method");
    assert!(
        polling.should_capture("/api/monitor/aks", Some(&lower_get)),
        "methods are case-sensitive"
    );
    for bad in [
        "",
        "api",
        "/api//x",
        "/api/monitor//",
        "/api/./x",
        "/api/..",
        "/a?b",
        "/a#b",
        "/a%2e",
        "/a b",
        "/a\tb",
    ] {
        assert!(
            PollingPrefixes::new([bad]).is_err(),
            "prefix {bad:?} accepted"
        );
        assert!(
            config().polling_prefixes([bad]).is_err(),
            "prefix {bad:?} accepted by the config"
        );
    }
    let root = PollingPrefixes::new(["/"]).expect("/ is valid");
    assert!(!root.should_capture("/anything/at/all", get));

    // Through the layer, from several threads: an absolute-form URI is a polling GET; a dot
    // segment after the prefix is captured.
    let inspector = Inspector::new(config().capacity(50));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let svc = service(&inspector);
            std::thread::spawn(move || {
                let rt = current_thread_rt();
                for uri in [
                    "http://example.test/api/monitor/aks?x=1",
                    "/api/monitor/aks/../../jobs",
                ] {
                    let resp = rt
                        .block_on(svc.clone().oneshot(request(
                            Method::GET,
                            uri,
                            "read",
                            full(Bytes::new()),
                        )))
                        .expect("answers");
                    rt.block_on(resp.into_body().collect()).expect("body");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("thread");
    }
    let s = check_quiet(&inspector);
    assert_eq!(s.passed_through, 4, "{s:?}");
    assert_eq!(s.captured, 4, "{s:?}");
    assert!(
        inspector
            .entries()
            .iter()
            .all(|e| e.path == "/api/monitor/aks/../../jobs")
    );
}

/// Polling GETs from many threads never push one-shot calls out of a ring of two, and hold no
/// bytes while they stream (I2).
#[test]
fn polling_gets_from_many_threads_never_push_one_shot_calls_out() {
    let inspector = Inspector::new(config().capacity(2));
    let rt = current_thread_rt();
    for (method, path) in [(Method::POST, "/api/jobs"), (Method::DELETE, "/api/jobs/1")] {
        let resp = rt
            .block_on(service(&inspector).oneshot(request(method, path, "read", full("x"))))
            .expect("answers");
        rt.block_on(resp.into_body().collect()).expect("body");
    }
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let svc = service(&inspector);
            let inspector = inspector.clone();
            std::thread::spawn(move || {
                let rt = current_thread_rt();
                for i in 0..200 {
                    let path =
                        ["/api/monitor/aks", "/api/blast/jobs/7", "/api/warmup"][(t + i) % 3];
                    let req = with_header(
                        request(Method::GET, path, "read", full(Bytes::new())),
                        "x-resp-len",
                        "4096",
                    );
                    let resp = rt.block_on(svc.clone().oneshot(req)).expect("answers");
                    let mut body = resp.into_body();
                    rt.block_on(body.frame()).expect("frame").expect("data");
                    let s = inspector.stats();
                    assert_eq!(s.in_flight_bytes, 0, "a polling GET holds bytes: {s:?}");
                    drop(body);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("thread");
    }
    let s = check_quiet(&inspector);
    assert_eq!(s.passed_through, 1600, "{s:?}");
    assert_eq!(s.captured, 2, "{s:?}");
    let methods: Vec<_> = inspector
        .entries()
        .iter()
        .map(|e| e.method.clone())
        .collect();
    assert_eq!(methods, ["DELETE", "POST"]);
}
