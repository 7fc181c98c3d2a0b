//! A scripted, rate-limiting HTTP/1.1 server on loopback that counts connections and requests.
//!
//! Every request gets a scripted [`Answer`]: `429`/`503` with `Retry-After` (delta-seconds or an
//! HTTP-date), `200` with a body of a chosen size, a slow or stalled body, no answer at all, or a
//! closed connection. The server counts what a client did to it — connections opened (accept
//! count), connections open now, requests seen, requests in flight now and at peak — so tests
//! can prove claims such as "the retrying client held no connection while it slept" by
//! counting instead of timing.
//!
//! Which answer a request gets, in order:
//! 0. in capacity mode ([`RateLimitServer::set_capacity`]: a token bucket of C requests a
//!    second, changeable while running), a request over capacity gets the capacity's reject
//!    answer (`429` + `Retry-After`, or `503`) and is counted per second
//!    ([`RateLimitServer::capacity_timeline`]);
//! 1. the next answer queued for its path with [`RateLimitServer::script`], if any;
//! 2. else, if this is the *n*-th request on its path and the prelude set with
//!    [`RateLimitServer::every_path_starts_with`] has an *n*-th answer, that one;
//! 3. else the default answer ([`RateLimitServer::set_default`], initially `200` with 2 bytes).
//!
//! A request is *in flight* from the moment its head is read until its response body has been
//! sent completely, or dropped (client gone, connection reset, server stopped). The server
//! stops when the [`RateLimitServer`] is dropped: the listener closes and every connection is
//! cut.
//!
//! ```
//! use testkit::ratelimit::{Answer, RateLimitServer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let server = RateLimitServer::start().await?;
//! // The first request on every path is throttled for one second; later ones succeed.
//! server.every_path_starts_with([Answer::too_many(1)]);
//! server.set_default(Answer::ok(1024));
//! println!("send requests to {}", server.url("/item/1"));
//! assert_eq!(server.stats().connections_opened, 0);
//! # Ok(())
//! # }
//! ```

mod answer;
mod body;
mod capacity;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use hyper::body::{Body as _, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use answer::Kind;
pub use answer::{Answer, RetryAfter};
use body::{InFlight, ScriptedBody};
use capacity::CapacityState;
pub use capacity::{Capacity, CapacityCounts};

/// Counters read from a running [`RateLimitServer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ServerStats {
    /// Connections accepted since the start.
    pub connections_opened: u64,
    /// Connections open now.
    pub connections_open: u64,
    /// Requests whose head was read since the start.
    pub requests_seen: u64,
    /// Requests in flight now (head read, response body not finished or dropped yet).
    pub in_flight: u64,
    /// The most requests ever in flight at once.
    pub peak_in_flight: u64,
}

/// One request, as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SeenRequest {
    /// The request method, e.g. `GET`.
    pub method: String,
    /// Path and query, e.g. `/item/1?x=2`.
    pub path: String,
    /// The connection it came on: 1 for the first connection accepted, 2 for the next …
    pub connection: u64,
    /// The `Authorization` header, if any (this is a test server: tokens here are fake).
    pub authorization: Option<String>,
    /// Bytes of request body received.
    pub body_len: usize,
    /// The status code scripted for it (0 for [`Answer::hang`] and [`Answer::reset`]).
    pub answered: u16,
}

#[derive(Debug)]
struct Script {
    default: Answer,
    prelude: Vec<Answer>,
    queued: HashMap<String, VecDeque<Answer>>,
    seen_per_path: HashMap<String, usize>,
}

impl Script {
    fn next(&mut self, path: &str) -> Answer {
        let nth = {
            let seen = self.seen_per_path.entry(path.to_string()).or_default();
            *seen += 1;
            *seen - 1
        };
        if let Some(answer) = self.queued.get_mut(path).and_then(VecDeque::pop_front) {
            return answer;
        }
        self.prelude
            .get(nth)
            .cloned()
            .unwrap_or_else(|| self.default.clone())
    }
}

/// Requests [`RateLimitServer::requests`] keeps (the newest; older ones are only counted), so a
/// server living inside a long-running process (the dashboard's demo) stays flat.
pub const REQUEST_LOG_CAPACITY: usize = 10_000;

/// The newest [`REQUEST_LOG_CAPACITY`] requests, and an exact count per path however many were
/// dropped (a test server sees the paths its clients ask for: bounded by the test, not by time).
#[derive(Debug, Default)]
struct RequestLog {
    ring: VecDeque<SeenRequest>,
    by_path: HashMap<String, usize>,
}

impl RequestLog {
    fn push(&mut self, request: SeenRequest) {
        match self.by_path.get_mut(&request.path) {
            Some(count) => *count += 1,
            None => {
                self.by_path.insert(request.path.clone(), 1);
            }
        }
        if self.ring.len() >= REQUEST_LOG_CAPACITY {
            self.ring.pop_front();
        }
        self.ring.push_back(request);
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    script: Mutex<Script>,
    capacity: Mutex<CapacityState>,
    log: Mutex<RequestLog>,
    connections_opened: AtomicU64,
    connections_open: AtomicU64,
    requests_seen: AtomicU64,
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
    /// Bumped on every counter change, so waiters wake without polling.
    changed: watch::Sender<u64>,
}

impl Shared {
    pub(crate) fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub(crate) fn request_started(&self) {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        self.bump();
    }

    pub(crate) fn request_finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.bump();
    }

    fn stats(&self) -> ServerStats {
        ServerStats {
            connections_opened: self.connections_opened.load(Ordering::SeqCst),
            connections_open: self.connections_open.load(Ordering::SeqCst),
            requests_seen: self.requests_seen.load(Ordering::SeqCst),
            in_flight: self.in_flight.load(Ordering::SeqCst),
            peak_in_flight: self.peak_in_flight.load(Ordering::SeqCst),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not turn every later call into a second panic.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The running server. Dropping it stops it.
#[derive(Debug)]
pub struct RateLimitServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

impl RateLimitServer {
    /// Bind `127.0.0.1:0` and start serving (on the current tokio runtime).
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            script: Mutex::new(Script {
                default: Answer::ok(2),
                prelude: Vec::new(),
                queued: HashMap::new(),
                seen_per_path: HashMap::new(),
            }),
            capacity: Mutex::new(CapacityState::new()),
            log: Mutex::new(RequestLog::default()),
            connections_opened: AtomicU64::new(0),
            connections_open: AtomicU64::new(0),
            requests_seen: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            peak_in_flight: AtomicU64::new(0),
            changed: watch::Sender::new(0),
        });
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(accept_loop(listener, Arc::clone(&shared), stopped));
        Ok(Self { addr, shared, stop })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The answer for requests nothing else is scripted for.
    pub fn set_default(&self, answer: Answer) {
        lock(&self.shared.script).default = answer;
    }

    /// Every path's first requests get these answers, in order (the first request on a path
    /// gets `answers[0]`, the second `answers[1]` …); later requests get the default.
    pub fn every_path_starts_with(&self, answers: impl IntoIterator<Item = Answer>) {
        lock(&self.shared.script).prelude = answers.into_iter().collect();
    }

    /// Queue answers for the next requests on `path` (path and query, exactly as sent).
    pub fn script(&self, path: &str, answers: impl IntoIterator<Item = Answer>) {
        lock(&self.shared.script)
            .queued
            .entry(path.to_string())
            .or_default()
            .extend(answers);
    }

    /// Capacity mode: serve at most `capacity.per_second` requests a second (a token bucket)
    /// and answer the excess with its reject answer; `None` turns it off. Callable while the
    /// server runs — raise or lower the capacity for an outage or a recovery; the bucket
    /// keeps its tokens (capped by the new burst) and the counters keep counting.
    ///
    /// ```
    /// use testkit::ratelimit::{Answer, Capacity, RateLimitServer};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let server = RateLimitServer::start().await?;
    /// server.set_capacity(Some(Capacity::per_second(1000.0))); // excess: 429 + Retry-After: 1
    /// server.set_capacity(Some(Capacity::per_second(3000.0).reject_with(Answer::status(503))));
    /// assert_eq!(server.capacity_counts().seen, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn set_capacity(&self, capacity: Option<Capacity>) {
        lock(&self.shared.capacity).set(capacity);
    }

    /// Requests seen, served and rejected in capacity mode since the counters were last reset.
    pub fn capacity_counts(&self) -> CapacityCounts {
        lock(&self.shared.capacity).totals()
    }

    /// The same counts per second (entry `i`: second `i` after the last reset, tokio time),
    /// up to the last second a request arrived in.
    pub fn capacity_timeline(&self) -> Vec<CapacityCounts> {
        lock(&self.shared.capacity).timeline()
    }

    /// Zero the capacity counters and restart the timeline now (the bucket is unchanged).
    pub fn reset_capacity_counts(&self) {
        lock(&self.shared.capacity).reset_counters();
    }

    /// Time since the capacity counters were last reset (tokio time).
    pub fn capacity_elapsed(&self) -> std::time::Duration {
        lock(&self.shared.capacity).since_origin()
    }

    /// The counters now.
    pub fn stats(&self) -> ServerStats {
        self.shared.stats()
    }

    /// The requests seen so far, in arrival order: the newest [`REQUEST_LOG_CAPACITY`] of them
    /// ([`ServerStats`] and [`requests_on`](Self::requests_on) count every one).
    pub fn requests(&self) -> Vec<SeenRequest> {
        lock(&self.shared.log).ring.iter().cloned().collect()
    }

    /// How many requests arrived for `path` (exact, whatever the log kept).
    pub fn requests_on(&self, path: &str) -> usize {
        lock(&self.shared.log)
            .by_path
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Wait until `condition` holds for the counters, and return them. Wakes on every change
    /// (no polling, no sleeping); wrap it in a timeout if the condition may never hold.
    pub async fn wait_until(&self, condition: impl Fn(&ServerStats) -> bool) -> ServerStats {
        let mut changes = self.shared.changed.subscribe();
        loop {
            let stats = self.stats();
            if condition(&stats) {
                return stats;
            }
            // The sender lives in `self.shared`, so this cannot fail while `self` exists.
            if changes.changed().await.is_err() {
                return self.stats();
            }
        }
    }
}

impl Drop for RateLimitServer {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.wait_for(|stop| *stop) => return,
        };
        let Ok((stream, _peer)) = accepted else {
            // Transient accept errors (e.g. too many open files): keep serving.
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection = shared.connections_opened.fetch_add(1, Ordering::SeqCst) + 1;
        shared.connections_open.fetch_add(1, Ordering::SeqCst);
        shared.bump();
        let shared = Arc::clone(&shared);
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let service = {
                let shared = Arc::clone(&shared);
                service_fn(move |request| handle(Arc::clone(&shared), connection, request))
            };
            let serving = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = serving => {}
                _ = stopped.wait_for(|stop| *stop) => {}
            }
            shared.connections_open.fetch_sub(1, Ordering::SeqCst);
            shared.bump();
        });
    }
}

async fn handle(
    shared: Arc<Shared>,
    connection: u64,
    request: Request<Incoming>,
) -> Result<Response<ScriptedBody>, std::io::Error> {
    shared.requests_seen.fetch_add(1, Ordering::SeqCst);
    let in_flight = InFlight::start(Arc::clone(&shared));
    let (parts, mut body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_string(), ToString::to_string);
    let mut body_len = 0;
    while !body.is_end_stream() {
        match std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await {
            Some(Ok(frame)) => body_len += frame.data_ref().map_or(0, |d| d.len()),
            Some(Err(_)) | None => break,
        }
    }
    let over_capacity = lock(&shared.capacity).admit();
    let answer = match over_capacity {
        Some(reject) => reject,
        None => lock(&shared.script).next(&path),
    };
    lock(&shared.log).push(SeenRequest {
        method: parts.method.to_string(),
        path,
        connection,
        authorization: parts
            .headers
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body_len,
        answered: if answer.kind == Kind::Respond {
            answer.status
        } else {
            0
        },
    });
    shared.bump();
    match answer.kind {
        Kind::Reset => {
            drop(in_flight);
            return Err(std::io::Error::other("scripted reset"));
        }
        Kind::Hang => {
            // Held (with `in_flight`) until the connection goes away.
            match std::future::pending::<Infallible>().await {}
        }
        Kind::Respond => {}
    }
    if !answer.head_delay.is_zero() {
        tokio::time::sleep(answer.head_delay).await;
    }
    let mut response = Response::builder().status(answer.status);
    if let Some(retry_after) = &answer.retry_after {
        response = response.header(
            hyper::header::RETRY_AFTER,
            retry_after.header_value(SystemTime::now()),
        );
    }
    for (name, value) in &answer.headers {
        response = response.header(name.as_str(), value.as_str());
    }
    response = response.header(hyper::header::CONTENT_LENGTH, answer.body_len);
    response
        .body(ScriptedBody::new(&answer, in_flight))
        .map_err(std::io::Error::other)
}
