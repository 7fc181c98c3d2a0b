//! K8–K10: the session's own HTTP stack — one HTTP/2 connection per session, multiplexed.
//!
//! kube 5's default stack speaks HTTP/1.1 only, so every request in flight needs its own TLS
//! connection. A session built here instead offers ALPN `h2` and `http/1.1` with kube's own
//! rustls configuration and:
//!
//! - negotiates once per session: the first request of a cold burst opens the one connection
//!   (the *probe*) while every other request waits for its outcome; the probe's connection is
//!   then handed to the HTTP/2 client (or to the HTTP/1.1 client when the server chose
//!   HTTP/1.1: a fallback, counted), so a cold burst costs one TLS handshake (K9);
//! - sends everything over that HTTP/2 connection (kept by the session itself, see [`link`]:
//!   one connection at a time, every further connect waits for the one attempt in progress),
//!   the server's `SETTINGS_MAX_CONCURRENT_STREAMS` bounding the streams in flight (K10);
//! - sends requests carrying `Upgrade` (exec, attach, port-forward: websockets cannot run over
//!   HTTP/2 without RFC 8441) to an HTTP/1.1 client of the same session (K8);
//! - detects a stalled connection by HTTP/2 keep-alive PINGs: it is closed, only its own streams
//!   fail, and the next request opens a new connection (K10);
//! - lets a connection go the moment the server's GOAWAY arrives (see [`goaway`]), and sends
//!   again, on the next connection, the requests the server never processed (see [`link`]);
//! - bounds the wait for response headers and for each body frame by the read timeout.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt as _, Shared, TryFutureExt as _};
use http::{Request, Response, Uri, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder, MaybeHttpsStream};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use kube::client::Body;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tower_service::Service;
use tracing::Instrument as _;

use crate::telemetry::{ClusterMetrics, InUse};

mod goaway;
mod link;

use link::{H2Link, SendError, Sent, Stream};

type BoxError = Box<dyn StdError + Send + Sync>;

/// What a session's connector yields: TLS (or plain TCP for an `http://` cluster URL).
type Io = MaybeHttpsStream<TokioIo<TcpStream>>;

/// A probe connection not taken within this long is dropped rather than handed to a client
/// (the server may have closed it as idle).
const STASH_MAX_AGE: Duration = Duration::from_secs(5);

/// HTTP/2 keep-alive: a PING after this long without a frame from the server...
pub(crate) const DEFAULT_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// ...and the connection is closed when its acknowledgement takes longer than this.
pub(crate) const DEFAULT_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Idle pooled HTTP/1.1 connections are closed after this long (hyper-util's default).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Connection counters shared by every session of a pool.
#[derive(Debug, Default)]
pub(crate) struct ConnectionCounters {
    h2: AtomicU64,
    http1: AtomicU64,
    fallbacks: AtomicU64,
}

impl ConnectionCounters {
    pub(crate) fn snapshot(&self) -> ConnectionStats {
        ConnectionStats {
            http2_connections: self.h2.load(Ordering::Relaxed),
            http1_connections: self.http1.load(Ordering::Relaxed),
            http1_fallbacks: self.fallbacks.load(Ordering::Relaxed),
        }
    }
}

/// TLS connections the pool's sessions opened, by protocol (K9), from
/// [`SessionPool::connection_stats`](crate::SessionPool::connection_stats).
///
/// Counts the connections of the session's own stack; sessions that use kube's default stack
/// (a proxy is configured, or [`http2(false)`](crate::SessionPoolBuilder::http2)) are not
/// counted here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionStats {
    /// Connections that negotiated HTTP/2 (ALPN `h2`).
    pub http2_connections: u64,
    /// Connections that speak HTTP/1.1: fallbacks, and the upgrade (exec, attach,
    /// port-forward) side.
    pub http1_connections: u64,
    /// Times an API server answered HTTP/1.1 (or no ALPN) to an offer of HTTP/2: the session
    /// then sends over HTTP/1.1, bounded by the in-flight bound.
    pub http1_fallbacks: u64,
}

/// How the session's own stack is set up.
#[derive(Debug, Clone)]
pub(crate) struct StackOptions {
    pub(crate) connect_timeout: Option<Duration>,
    pub(crate) read_timeout: Option<Duration>,
    pub(crate) keep_alive_interval: Duration,
    pub(crate) keep_alive_timeout: Duration,
    /// Requests in flight over HTTP/1.1 (connections busy).
    pub(crate) http1_in_flight: usize,
    /// Requests in flight over HTTP/2 (`None`: the server's stream limit alone).
    pub(crate) h2_in_flight: Option<usize>,
}

/// The protocol a session's API server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    H2,
    Http1,
}

/// The error every request waiting on a failed probe gets (cloned to each).
#[derive(Debug, Clone)]
struct ConnectError(Arc<BoxError>);

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "connecting to the Kubernetes API server failed: {}",
            self.0
        )
    }
}

impl StdError for ConnectError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&**self.0)
    }
}

/// A connection attempt that took longer than the connect timeout.
#[derive(Debug)]
struct ConnectTimeout(Duration);

impl fmt::Display for ConnectTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "connecting took longer than {:?}", self.0)
    }
}

impl StdError for ConnectTimeout {}

/// Response headers or a body frame not received within the read timeout.
#[derive(Debug)]
pub(crate) struct ReadTimeout(pub(crate) Duration);

impl fmt::Display for ReadTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the Kubernetes API server sent nothing for {:?} (read timeout)",
            self.0
        )
    }
}

impl StdError for ReadTimeout {}

/// The server answered a reconnect with HTTP/1.1 after having spoken HTTP/2: the requests
/// waiting for that connection, and the session's later ones, go over HTTP/1.1 (the link turns
/// it into [`SendError::Http1`]: no request fails with it).
#[derive(Debug)]
struct NotHttp2;

impl fmt::Display for NotHttp2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the Kubernetes API server no longer negotiates HTTP/2; retry over HTTP/1.1")
    }
}

impl StdError for NotHttp2 {}

type Probe = Shared<BoxFuture<'static, Result<Protocol, ConnectError>>>;

enum Negotiation {
    Unknown,
    Probing(Probe),
    Known(Protocol),
}

/// What one session's connectors and router share.
struct SessionState {
    negotiation: Mutex<Negotiation>,
    /// The probe's connection, waiting for the client of its protocol.
    stash: Mutex<Option<(Protocol, Instant, Io)>>,
    dial: Dial,
}

/// How a session opens connections. A connection attempt owns a clone, not the session: an
/// attempt its callers abandoned is stored in the session (to be resumed by the next request)
/// and must not keep the session, and its socket, alive once the session is dropped.
#[derive(Clone)]
struct Dial {
    /// ALPN h2 + http/1.1: the probe and the HTTP/2 connection.
    h2_tls: HttpsConnector<HttpConnector>,
    /// No ALPN (kube's own choice for HTTP/1.1): the HTTP/1.1 client.
    http1_tls: HttpsConnector<HttpConnector>,
    connect_timeout: Option<Duration>,
    counters: Arc<ConnectionCounters>,
    metrics: ClusterMetrics,
}

impl Dial {
    /// Open a TLS connection (offering h2 and http/1.1 when `h2`) within the connect timeout;
    /// count it by protocol.
    async fn connect(&self, h2: bool, uri: Uri) -> Result<(Io, Protocol), BoxError> {
        let mut tls = if h2 { &self.h2_tls } else { &self.http1_tls }.clone();
        let connecting = Service::call(&mut tls, uri);
        let io = match self.connect_timeout {
            Some(limit) => tokio::time::timeout(limit, connecting)
                .await
                .map_err(|_| ConnectTimeout(limit))??,
            None => connecting.await?,
        };
        let protocol = if io.connected().is_negotiated_h2() {
            self.counters.h2.fetch_add(1, Ordering::Relaxed);
            Protocol::H2
        } else {
            self.counters.http1.fetch_add(1, Ordering::Relaxed);
            Protocol::Http1
        };
        self.metrics.connection(protocol == Protocol::H2);
        Ok((io, protocol))
    }

    fn fallback(&self) {
        self.counters.fallbacks.fetch_add(1, Ordering::Relaxed);
        self.metrics.fallback();
        tracing::info!(
            "the Kubernetes API server answered HTTP/1.1 to an HTTP/2 offer: this session sends \
             over HTTP/1.1, bounded by its in-flight limit"
        );
    }
}

impl SessionState {
    fn set(&self, negotiation: Negotiation) {
        *self.negotiation.lock().unwrap_or_else(|e| e.into_inner()) = negotiation;
    }

    /// Whether the session has learned that its server speaks HTTP/1.1 only.
    fn speaks_http1(&self) -> bool {
        matches!(
            *self.negotiation.lock().unwrap_or_else(|e| e.into_inner()),
            Negotiation::Known(Protocol::Http1)
        )
    }

    /// The protocol to send with: known, or learned by the one probe in progress (K9).
    async fn protocol(self: &Arc<Self>, uri: &Uri) -> Result<Protocol, ConnectError> {
        let probe = {
            let mut negotiation = self.negotiation.lock().unwrap_or_else(|e| e.into_inner());
            match &*negotiation {
                Negotiation::Known(protocol) => return Ok(*protocol),
                Negotiation::Probing(probe) => probe.clone(),
                Negotiation::Unknown => {
                    let probe = probe(Arc::downgrade(self), self.dial.clone(), uri.clone())
                        .boxed()
                        .shared();
                    *negotiation = Negotiation::Probing(probe.clone());
                    probe
                }
            }
        };
        probe.await
    }

    /// The probe's connection, if it was for `protocol` and is fresh.
    fn take_stash(&self, protocol: Protocol) -> Option<Io> {
        let mut stash = self.stash.lock().unwrap_or_else(|e| e.into_inner());
        match stash.take() {
            Some((p, at, io)) if p == protocol && at.elapsed() <= STASH_MAX_AGE => Some(io),
            Some(other) if other.0 != protocol => {
                *stash = Some(other);
                None
            }
            _ => None,
        }
    }

    /// A connection for the HTTP/2 client: the probe's, or a new one. A server that now answers
    /// HTTP/1.1 moves the session to HTTP/1.1 (with this connection) and gets [`NotHttp2`]: the
    /// requests waiting for the connection go to the HTTP/1.1 client, unsent.
    async fn h2_io(&self, uri: Uri) -> Result<Io, BoxError> {
        if let Some(io) = self.take_stash(Protocol::H2) {
            return Ok(io);
        }
        let (io, negotiated) = self.dial.connect(true, uri).await?;
        if negotiated == Protocol::H2 {
            return Ok(io);
        }
        self.dial.fallback();
        *self.stash.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Protocol::Http1, Instant::now(), io));
        self.set(Negotiation::Known(Protocol::Http1));
        Err(NotHttp2.into())
    }
}

/// Open the session's first connection, offering h2 and http/1.1, and keep it for the client of
/// the protocol the server chose.
async fn probe(state: Weak<SessionState>, dial: Dial, uri: Uri) -> Result<Protocol, ConnectError> {
    let result = dial.connect(true, uri).await;
    // Gone: no request waits for the answer any more.
    let Some(state) = state.upgrade() else {
        return result
            .map(|(_, protocol)| protocol)
            .map_err(|e| ConnectError(Arc::new(e)));
    };
    match result {
        Ok((io, protocol)) => {
            if protocol == Protocol::Http1 {
                dial.fallback();
            }
            *state.stash.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((protocol, Instant::now(), io));
            state.set(Negotiation::Known(protocol));
            Ok(protocol)
        }
        Err(error) => {
            // Every request waiting on this probe fails with it; the next one probes again.
            state.set(Negotiation::Unknown);
            Err(ConnectError(Arc::new(error)))
        }
    }
}

/// The connector of the session's HTTP/1.1 client: the probe's connection when the server chose
/// HTTP/1.1, else a new one offering no ALPN.
#[derive(Clone)]
struct Http1Connector(Arc<SessionState>);

impl Service<Uri> for Http1Connector {
    type Response = Io;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Io, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let state = Arc::clone(&self.0);
        Box::pin(async move {
            match state.take_stash(Protocol::Http1) {
                Some(io) => Ok(io),
                None => Ok(state.dial.connect(false, uri).await?.0),
            }
        })
    }
}

/// The innermost service of a session's stack: routes each request to its HTTP/2 or HTTP/1.1
/// client, takes its in-flight slot, bounds its reads.
#[derive(Clone)]
pub(crate) struct Router {
    state: Arc<SessionState>,
    h2: H2Link,
    http1: HyperClient<Http1Connector, Body>,
    http1_bound: Arc<Semaphore>,
    read_timeout: Option<Duration>,
}

impl Router {
    /// A session's router. `rustls` is kube's `Config::rustls_client_config()` (verification,
    /// CA, client certificate), used as is; `server_name` is kube's `tls_server_name`.
    pub(crate) fn new(
        rustls: rustls::ClientConfig,
        server_name: Option<rustls::pki_types::ServerName<'static>>,
        options: &StackOptions,
        counters: Arc<ConnectionCounters>,
        metrics: ClusterMetrics,
    ) -> Self {
        let tls = |h2: bool| -> HttpsConnector<HttpConnector> {
            let mut http = HttpConnector::new();
            http.enforce_http(false);
            http.set_nodelay(true);
            let mut builder = HttpsConnectorBuilder::new()
                .with_tls_config(rustls.clone())
                .https_or_http();
            if let Some(name) = &server_name {
                builder = builder.with_server_name_resolver(
                    hyper_rustls::FixedServerNameResolver::new(name.clone()),
                );
            }
            if h2 {
                builder.enable_all_versions().wrap_connector(http)
            } else {
                builder.enable_http1().wrap_connector(http)
            }
        };
        let state = Arc::new(SessionState {
            negotiation: Mutex::new(Negotiation::Unknown),
            stash: Mutex::new(None),
            dial: Dial {
                h2_tls: tls(true),
                http1_tls: tls(false),
                connect_timeout: options.connect_timeout,
                counters,
                metrics,
            },
        });
        let h2 = H2Link::new(Arc::clone(&state), options);
        let http1 = HyperClient::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(Http1Connector(Arc::clone(&state)));
        Self {
            h2,
            http1,
            http1_bound: Arc::new(Semaphore::new(options.http1_in_flight.max(1))),
            read_timeout: options.read_timeout,
            state,
        }
    }
}

/// `future`, failing with [`ReadTimeout`] past `limit` (the read timeout; `None`: unbounded).
async fn within_read_timeout<T>(
    limit: Option<Duration>,
    future: impl Future<Output = T>,
) -> Result<T, BoxError> {
    match limit {
        Some(limit) => Ok(tokio::time::timeout(limit, future)
            .await
            .map_err(|_| ReadTimeout(limit))?),
        None => Ok(future.await),
    }
}

/// What a response body holds until it ends, fails or is dropped.
#[expect(
    dead_code,
    reason = "never read: each is held for what its drop gives back"
)]
struct Held {
    /// The request's in-flight slot.
    permit: Option<OwnedSemaphorePermit>,
    /// Its place in the active-requests gauge.
    active: InUse,
    /// Its stream on the session's HTTP/2 connection (which is not idle while one is held).
    stream: Option<Stream>,
}

impl Service<Request<Body>> for Router {
    type Response = Response<StreamBody>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<StreamBody>, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Never busy: requests wait for their protocol and their slot inside `call`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let this = self.clone();
        let span = tracing::debug_span!(
            "HTTP",
            http.method = %request.method(),
            http.url = %request.uri(),
            network.protocol.version = tracing::field::Empty,
            otel.kind = "client",
        );
        Box::pin(
            async move {
                // Websockets (exec, attach, port-forward) need HTTP/1.1 (K8).
                let protocol = if request.headers().contains_key(header::UPGRADE) {
                    Protocol::Http1
                } else {
                    this.state.protocol(request.uri()).await?
                };
                tracing::Span::current().record(
                    "network.protocol.version",
                    if protocol == Protocol::H2 { "2" } else { "1.1" },
                );
                let mut request = request;
                if protocol == Protocol::H2 {
                    match this.h2.send(request, this.read_timeout).await {
                        Ok(Sent {
                            response,
                            stream,
                            slot,
                            active,
                        }) => {
                            let held = Held {
                                permit: slot,
                                active,
                                stream: Some(stream),
                            };
                            return Ok(
                                response.map(|body| StreamBody::new(body, held, this.read_timeout))
                            );
                        }
                        Err(SendError::Failed(error)) => return Err(error),
                        // A reconnect found HTTP/1.1: this request goes over it, unsent so far.
                        Err(SendError::Http1(unsent)) => {
                            tracing::Span::current().record("network.protocol.version", "1.1");
                            request = *unsent;
                        }
                    }
                }
                let permit = Arc::clone(&this.http1_bound).acquire_owned().await.ok();
                let active = this.state.dial.metrics.request_active();
                let sending = this.http1.request(request).map_err(BoxError::from);
                let response = within_read_timeout(this.read_timeout, sending).await??;
                let held = Held {
                    permit,
                    active,
                    stream: None,
                };
                Ok(response.map(|body| StreamBody::new(body, held, this.read_timeout)))
            }
            .instrument(span),
        )
    }
}

pin_project_lite::pin_project! {
    /// A response body holding its request's slot (and its place in the active-requests gauge)
    /// until it ends, fails, or is dropped, and failing when a frame takes longer than the read
    /// timeout.
    pub(crate) struct StreamBody {
        #[pin]
        inner: Incoming,
        held: Option<Held>,
        read_timeout: Option<Duration>,
        idle: Option<Pin<Box<Sleep>>>,
    }
}

impl StreamBody {
    fn new(inner: Incoming, held: Held, read_timeout: Option<Duration>) -> Self {
        // An empty body (204, 101, Content-Length: 0) frees its slot now.
        let held = Some(held).filter(|_| !inner.is_end_stream());
        Self {
            inner,
            held,
            read_timeout,
            idle: None,
        }
    }
}

impl HttpBody for StreamBody {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, BoxError>>> {
        let mut this = self.project();
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                *this.idle = None;
                if this.inner.is_end_stream() {
                    *this.held = None;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                *this.held = None;
                Poll::Ready(Some(Err(error.into())))
            }
            Poll::Ready(None) => {
                *this.held = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let Some(limit) = *this.read_timeout else {
                    return Poll::Pending;
                };
                let idle = this
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match idle.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        *this.held = None;
                        *this.idle = None;
                        Poll::Ready(Some(Err(ReadTimeout(limit).into())))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl fmt::Debug for StreamBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamBody")
            .field("holds_slot", &self.held.is_some())
            .finish_non_exhaustive()
    }
}
