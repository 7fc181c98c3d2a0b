//! `SessionPool`: `kube::Client` sessions over pool-core's `KeyedPool`, TTLs clamped by credentials.

mod build;
pub(crate) use build::read_limited;
mod in_flight;
mod rejection;
mod session;
mod token_file;
mod transport;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use azure_core::credentials::AccessToken;
use azure_core::credentials::TokenCredential;
use pool_core::{
    Created, EvictionCause, KeyedPool, Knob, PoolConfig, PoolError, PoolStats, RetireReport,
    ShutdownReport,
};
use secrecy::{ExposeSecret, SecretString};
use token_refresh::{CachingCredential, TokenSource};
use tokio::time::Instant;

use crate::telemetry::ClusterMetrics;
use crate::{
    BuildError, ClusterCredentials, SessionError, SessionKey, SystemClock, WallClock, effective_ttl,
};
pub use build::AuthKind;
use build::ClientOptions;
pub use session::Session;
use session::{Entry, RetireObserver};
pub use transport::ConnectionStats;
use transport::{ConnectionCounters, DEFAULT_KEEP_ALIVE_INTERVAL, DEFAULT_KEEP_ALIVE_TIMEOUT};

/// `K8S_SESSION_POOL_TTL_SECONDS`: the pool TTL, default 300 s, clamped to [0, 86 400]. Zero
/// disables pooling (every session is one-shot).
pub const TTL_KNOB: Knob<u64> = Knob::new("K8S_SESSION_POOL_TTL_SECONDS", 300, 0, 86_400);

/// `K8S_SESSION_POOL_MAX_ENTRIES`: the pool capacity, default 32, clamped to [1, 4096] (K5).
pub const MAX_ENTRIES_KNOB: Knob<usize> = Knob::new("K8S_SESSION_POOL_MAX_ENTRIES", 32, 1, 4096);

/// `K8S_SESSION_MAX_IN_FLIGHT`: requests in flight per session over HTTP/1.1, default 32,
/// clamped to [1, 1024]. Over HTTP/1.1 every request in flight holds its own connection, so this
/// bounds the connections one session keeps busy. Over HTTP/2 (the default, K8) the server's
/// stream limit bounds requests in flight instead
/// ([`SessionPoolBuilder::max_streams_per_session`]).
pub const MAX_IN_FLIGHT_KNOB: Knob<usize> = Knob::new("K8S_SESSION_MAX_IN_FLIGHT", 32, 1, 1024);

/// kube's connect timeout unless [`SessionPoolBuilder::connect_timeout`] says otherwise.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// kube's read timeout unless [`SessionPoolBuilder::read_timeout`] says otherwise: 295 s, the
/// value kube uses for writes, above the 290 s a kube watch asks the server to close it after.
const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(295);
/// The default bound on one session's build ([`SessionPoolBuilder::build_timeout`]): room for
/// the AKS source's 60 s ARM call and the 60 s AAD token fetch, one after the other.
pub const DEFAULT_BUILD_TIMEOUT: Duration = Duration::from_secs(150);
/// The longest [`SessionPoolBuilder::aad_token_timeout`].
const MAX_AAD_TOKEN_TIMEOUT: Duration = Duration::from_secs(3600);
/// The longest [`SessionPoolBuilder::build_timeout`]: room for the AKS source's longest call
/// and the longest AAD token fetch, one after the other.
const MAX_BUILD_TIMEOUT: Duration =
    crate::source::MAX_ARM_TIMEOUT.saturating_add(MAX_AAD_TOKEN_TIMEOUT);
/// The default bound on fetching a kubelogin user's AAD token while a session is built
/// ([`SessionPoolBuilder::aad_token_timeout`]).
pub const DEFAULT_AAD_TOKEN_TIMEOUT: Duration = Duration::from_secs(60);

/// The default bound on a request's wait for a due re-read of a kubeconfig's `tokenFile`
/// ([`SessionPoolBuilder::token_file_timeout`]).
pub const DEFAULT_TOKEN_FILE_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest [`SessionPoolBuilder::token_file_timeout`].
const MAX_TOKEN_FILE_TIMEOUT: Duration = Duration::from_secs(60);

/// The range explicit connect and read timeouts are clamped into.
const TIMEOUT_RANGE: (Duration, Duration) = (Duration::from_millis(1), Duration::from_secs(86_400));

/// The default expiry margin: the 60 s safety margin bearer sessions already keep before their
/// token's expiry (K3).
const DEFAULT_EXPIRY_MARGIN: Duration = Duration::from_secs(60);

/// The longest sweep interval kept (the longest pool TTL: sweeping less often is pointless).
const MAX_SWEEP_INTERVAL: Duration = Duration::from_secs(86_400);

/// An explicit timeout clamped into [`TIMEOUT_RANGE`]; `None` (no timeout) stays `None`.
fn clamp_timeout(timeout: Option<Duration>) -> Option<Duration> {
    timeout.map(|t| t.clamp(TIMEOUT_RANGE.0, TIMEOUT_RANGE.1))
}

/// The pool TTL clamped into [`TTL_KNOB`]'s range, [0, 86 400] s.
fn clamp_ttl(ttl: Duration) -> Duration {
    let (min, max) = TTL_KNOB.range();
    ttl.clamp(Duration::from_secs(min), Duration::from_secs(max))
}

/// A pool of Kubernetes sessions keyed by [`SessionKey`] (K1–K7).
///
/// - [`session`](Self::session) returns the pooled session for a key, or builds one from the
///   credential source (one build per key however many callers miss at once).
/// - A session is handed out until its effective TTL: the pool TTL clamped by the client
///   certificate's `notAfter`, the material's expiry and the bearer token's expiry minus 60 s
///   (K3). When that collapses to zero the caller gets a one-shot session, never pooled (K4).
/// - Beyond [`max_entries`](SessionPoolBuilder::max_entries) the soonest-expiring session is
///   evicted (K5), except while the pool thrashes (evicted clusters come straight back): then
///   sessions used since they were built stay and the newest unused one goes, so a round-robin
///   over one cluster more than the capacity still hits on almost every call; a session within
///   its [`expiry_margin`](SessionPoolBuilder::expiry_margin) still goes first. Thrashing is
///   counted in [`PoolStats::thrashing`] and logged once a minute, naming
///   `K8S_SESSION_POOL_MAX_ENTRIES`. Evicted sessions are retired after the pool's locks are
///   released (K7).
/// - Each session lets at most
///   [`max_in_flight_per_session`](SessionPoolBuilder::max_in_flight_per_session) requests be in
///   flight at once; more wait for a slot.
///
/// Cloning is cheap and shares the pool. A `kube::Client` is bound to the tokio runtime it was
/// built on: use one pool per runtime.
#[derive(Clone)]
pub struct SessionPool {
    shared: Arc<Shared>,
}

/// Called with (scope, secret) of an AAD token the API server rejected (T11).
type TokenRejected = Arc<dyn Fn(&str, &str) + Send + Sync>;

struct Shared {
    pool: KeyedPool<SessionKey, Entry>,
    source: Arc<dyn ClusterCredentials>,
    aad: Option<Arc<dyn TokenCredential>>,
    token_rejected: Option<TokenRejected>,
    /// Builds started: each session knows its build, so a rejection evicts only that one.
    builds: AtomicU64,
    /// 401s from API servers that retired a session (T11).
    rejections: AtomicU64,
    clock: Arc<dyn WallClock>,
    ttl: Duration,
    options: ClientOptions,
    observer: Option<RetireObserver>,
    /// Connections opened by every session's own stack, by protocol (K9).
    connections: Arc<ConnectionCounters>,
}

/// Builds a [`SessionPool`]. Knobs not set explicitly are read from the environment
/// ([`TTL_KNOB`], [`MAX_ENTRIES_KNOB`], [`MAX_IN_FLIGHT_KNOB`]) when [`build`](Self::build) runs.
pub struct SessionPoolBuilder {
    source: Arc<dyn ClusterCredentials>,
    aad: Option<Arc<dyn TokenCredential>>,
    token_rejected: Option<TokenRejected>,
    clock: Arc<dyn WallClock>,
    ttl: Option<Duration>,
    max_entries: Option<usize>,
    max_in_flight: Option<usize>,
    sweep_interval: Option<Duration>,
    expiry_margin: Duration,
    options: ClientOptions,
    observer: Option<RetireObserver>,
}

impl SessionPool {
    /// Start building a pool over `source`.
    pub fn builder(source: impl ClusterCredentials) -> SessionPoolBuilder {
        Self::builder_arc(Arc::new(source))
    }

    /// [`builder`](Self::builder) for a shared source.
    pub fn builder_arc(source: Arc<dyn ClusterCredentials>) -> SessionPoolBuilder {
        SessionPoolBuilder {
            source,
            aad: None,
            token_rejected: None,
            clock: Arc::new(SystemClock),
            ttl: None,
            max_entries: None,
            max_in_flight: None,
            sweep_interval: None,
            expiry_margin: DEFAULT_EXPIRY_MARGIN,
            options: ClientOptions {
                kube_retry: false,
                connect_timeout: Some(DEFAULT_CONNECT_TIMEOUT),
                read_timeout: Some(DEFAULT_READ_TIMEOUT),
                accept_insecure_skip_tls_verify: false,
                // Replaced in `build` by the explicit value or the environment's.
                max_in_flight: MAX_IN_FLIGHT_KNOB.default_value(),
                http2: true,
                max_streams: None,
                keep_alive: (DEFAULT_KEEP_ALIVE_INTERVAL, DEFAULT_KEEP_ALIVE_TIMEOUT),
                aad_token_timeout: DEFAULT_AAD_TOKEN_TIMEOUT,
                build_timeout: DEFAULT_BUILD_TIMEOUT,
                token_file_timeout: DEFAULT_TOKEN_FILE_TIMEOUT,
            },
            observer: None,
        }
    }

    /// The session for `key`: the pooled one if it is still valid, else a new one (K1, K3, K4).
    pub async fn session(&self, key: &SessionKey) -> Result<Session, SessionError> {
        let shared = &*self.shared;
        let weak = Arc::downgrade(&self.shared);
        let result = shared
            .pool
            .get_or_create(key, || async move {
                let after = shared.options.build_timeout;
                tokio::time::timeout(after, shared.build(key, weak))
                    .await
                    .map_err(|_| BuildError::Timeout { after })?
            })
            .await;
        match result {
            Ok(inner) => Ok(Session {
                _in_use: inner.metrics.session_in_use(),
                inner,
            }),
            Err(PoolError::Create(source)) => Err(SessionError::Build {
                key: key.clone(),
                source,
            }),
            Err(_) => Err(SessionError::ShutDown),
        }
    }

    /// Sessions retired because their API server answered 401 (T11); each also invalidated its
    /// AAD token when the pool has a token cache ([`SessionPoolBuilder::aad_caching_credential`]
    /// or [`SessionPoolBuilder::on_token_rejected`]).
    pub fn rejections(&self) -> u64 {
        self.shared.rejections.load(Ordering::Relaxed)
    }

    /// TLS connections the sessions opened, by protocol, and HTTP/1.1 fallbacks (K9).
    pub fn connection_stats(&self) -> ConnectionStats {
        self.shared.connections.snapshot()
    }

    /// Whether sessions offer HTTP/2 ([`SessionPoolBuilder::http2`]).
    pub fn http2(&self) -> bool {
        self.shared.options.http2
    }

    /// The per-session bound on HTTP/2 requests in flight in force (`None`: the server's
    /// stream limit alone).
    pub fn max_streams_per_session(&self) -> Option<usize> {
        self.shared.options.max_streams
    }

    /// Counters: hits, misses, creations, one-shots, evictions by cause, retire failures.
    pub fn stats(&self) -> PoolStats {
        self.shared.pool.stats()
    }

    /// Sessions in the pool now.
    pub fn len(&self) -> usize {
        self.shared.pool.len()
    }

    /// Whether the pool holds no session.
    pub fn is_empty(&self) -> bool {
        self.shared.pool.is_empty()
    }

    /// The pool TTL in force (before credential clamps).
    pub fn ttl(&self) -> Duration {
        self.shared.ttl
    }

    /// The capacity in force.
    pub fn max_entries(&self) -> usize {
        self.shared.pool.config().max_entries_value()
    }

    /// The per-session bound on HTTP/1.1 requests in flight in force.
    pub fn max_in_flight_per_session(&self) -> usize {
        self.shared.options.max_in_flight
    }

    /// kube's connect timeout in force (`None`: no timeout).
    pub fn connect_timeout(&self) -> Option<Duration> {
        self.shared.options.connect_timeout
    }

    /// kube's read timeout in force (`None`: no timeout).
    pub fn read_timeout(&self) -> Option<Duration> {
        self.shared.options.read_timeout
    }

    /// Drop the session for `key` (e.g. after its credentials were revoked). Returns whether
    /// there was one.
    pub async fn invalidate(&self, key: &SessionKey) -> bool {
        self.shared.pool.invalidate(key).await
    }

    /// Retire expired sessions now.
    pub async fn prune_expired(&self) -> RetireReport {
        self.shared.pool.prune_expired().await
    }

    /// Retire every session (K7): each retire is isolated, one failure never stops the others.
    /// The pool stays usable.
    pub async fn reset(&self) -> RetireReport {
        self.shared.pool.reset().await
    }

    /// Close the pool and retire its sessions without blocking on a contended lock (K7).
    pub async fn shutdown(&self) -> ShutdownReport {
        self.shared.pool.shutdown().await
    }

    /// Whether a pool lock is held at this instant: for tests of "retire never under the lock"
    /// (K7), called from a [`SessionPoolBuilder::on_retire`] observer.
    pub fn is_locked(&self) -> bool {
        self.shared.pool.is_locked()
    }
}

impl SessionPoolBuilder {
    /// The Azure credential serving kubelogin (AAD) users: their exec plugin is never run;
    /// the pool asks this credential for a token for the plugin's `--server-id` scope (default
    /// [`AKS_SERVER_SCOPE`](crate::AKS_SERVER_SCOPE)) and the session's deadline follows that
    /// token's expiry minus 60 s.
    #[must_use]
    pub fn aad_credential(mut self, credential: Arc<dyn TokenCredential>) -> Self {
        self.aad = Some(credential);
        self
    }

    /// [`aad_credential`](Self::aad_credential) with token-refresh's caching credential, wired
    /// for rejections (T11): when an API server answers 401 to a session built with an AAD
    /// token, that token is invalidated in the credential's cache (if it is still the cached
    /// one), so the session rebuilt for the caller's retry carries a new token — one refresh
    /// per rejected token, however many requests saw the 401.
    #[must_use]
    pub fn aad_caching_credential<S>(mut self, credential: Arc<CachingCredential<S>>) -> Self
    where
        S: TokenSource<Token = AccessToken>,
    {
        let cache = Arc::clone(&credential);
        self.aad = Some(credential);
        self.token_rejected = Some(Arc::new(move |scope: &str, secret: &str| {
            cache
                .cache_for(&[scope])
                .invalidate_if(|cached| cached.token.secret() == secret);
        }));
        self
    }

    /// Called with (scope, token) when an API server rejects (401) a session built with an AAD
    /// token — to invalidate it in whatever cache serves [`aad_credential`](Self::aad_credential)
    /// (T11). Never log the token. [`aad_caching_credential`](Self::aad_caching_credential)
    /// sets this for token-refresh's `CachingCredential`.
    #[must_use]
    pub fn on_token_rejected(mut self, hook: impl Fn(&str, &str) + Send + Sync + 'static) -> Self {
        self.token_rejected = Some(Arc::new(hook));
        self
    }

    /// The wall clock used to turn credential expiries into deadlines (default: system).
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn WallClock>) -> Self {
        self.clock = clock;
        self
    }

    /// The pool TTL, overriding `K8S_SESSION_POOL_TTL_SECONDS`; clamped to [0, 86 400] s like
    /// the knob (`Duration::MAX` gives a day). Zero makes every session one-shot (K4).
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(clamp_ttl(ttl));
        self
    }

    /// The capacity, overriding `K8S_SESSION_POOL_MAX_ENTRIES`; clamped to [1, 4096].
    #[must_use]
    pub fn max_entries(mut self, max_entries: usize) -> Self {
        let (min, max) = MAX_ENTRIES_KNOB.range();
        self.max_entries = Some(max_entries.clamp(min, max));
        self
    }

    /// At most `max` requests in flight at once over HTTP/1.1 through each session (each built
    /// client and all its clones), overriding `K8S_SESSION_MAX_IN_FLIGHT`; default 32, clamped
    /// to [1, 1024]. Applies when the session speaks HTTP/1.1: the server did not negotiate
    /// HTTP/2 (a fallback), [`http2(false)`](Self::http2), a proxy, and upgrade requests (exec,
    /// attach, port-forward). Over HTTP/2, see
    /// [`max_streams_per_session`](Self::max_streams_per_session).
    ///
    /// Over HTTP/1.1 every request in flight holds its own connection until its response body
    /// is read. Without a bound, 1 000 concurrent calls through one session open ~1 000 TLS
    /// connections to one API server. With it, a call beyond the bound **waits** for a slot (it
    /// does not fail; put your own timeout around the call if you need one). A slot is held from
    /// the request until its response body is read to the end, fails, or is dropped, so a
    /// long-lived stream (a watch, a followed log) holds its slot for as long as it is open.
    #[must_use]
    pub fn max_in_flight_per_session(mut self, max: usize) -> Self {
        let (min, most) = MAX_IN_FLIGHT_KNOB.range();
        self.max_in_flight = Some(max.clamp(min, most));
        self
    }

    /// Read the knobs through `lookup` (given a variable name) instead of the process
    /// environment. Explicit [`ttl`](Self::ttl) / [`max_entries`](Self::max_entries) /
    /// [`max_in_flight_per_session`](Self::max_in_flight_per_session) calls made before this are
    /// replaced.
    #[must_use]
    pub fn knobs_from(mut self, lookup: impl Fn(&str) -> Option<String>) -> Self {
        self.ttl = Some(TTL_KNOB.read_secs_with(&lookup));
        self.max_entries = Some(MAX_ENTRIES_KNOB.read_with(&lookup));
        self.max_in_flight = Some(MAX_IN_FLIGHT_KNOB.read_with(&lookup));
        self
    }

    /// Retire expired sessions in the background on this interval (default: none; expired
    /// sessions are evicted when next looked up, by capacity, or by
    /// [`SessionPool::prune_expired`]). Zero means none; longer than a day (the longest pool
    /// TTL) is clamped to a day.
    #[must_use]
    pub fn sweep_interval(mut self, every: Duration) -> Self {
        self.sweep_interval = Some(every.min(MAX_SWEEP_INTERVAL));
        self
    }

    /// Sessions whose deadline is at most this far away go first when capacity forces an
    /// eviction, even while the pool thrashes (default 60 s, the bearer safety margin of K3;
    /// clamped to [0, 86 400] s). A margin at least the TTL turns the thrashing protection off:
    /// plain soonest-deadline eviction, which misses on every call of a round-robin over more
    /// clusters than the capacity.
    #[must_use]
    pub fn expiry_margin(mut self, margin: Duration) -> Self {
        self.expiry_margin = margin.min(MAX_SWEEP_INTERVAL);
        self
    }

    /// Whether sessions offer HTTP/2 (default `true`, K8/K9): each session builds its own stack,
    /// offers ALPN `h2` and `http/1.1` and multiplexes every call over one TLS connection; an
    /// API server that answers HTTP/1.1 still works (counted in
    /// [`ConnectionStats::http1_fallbacks`]). `false`: kube's default HTTP/1.1 stack, one
    /// connection per request in flight, bounded by
    /// [`max_in_flight_per_session`](Self::max_in_flight_per_session). A kubeconfig naming a
    /// proxy always gets kube's default stack (its proxy support).
    #[must_use]
    pub fn http2(mut self, on: bool) -> Self {
        self.options.http2 = on;
        self
    }

    /// At most `max` requests in flight at once over each session's HTTP/2 connection (K10);
    /// default `None`: the server's advertised `SETTINGS_MAX_CONCURRENT_STREAMS` (100 on
    /// kube-apiserver) alone. `Some(n)` is clamped to [1, 1024]; the server's limit still
    /// applies when it is lower. Calls beyond the bound wait, they do not fail; a slot is held
    /// until the response body ends, fails or is dropped.
    ///
    /// The bound is per connection: when the server sends GOAWAY (or the connection is reset),
    /// the calls waiting for one of its slots go out on the session's next connection at once,
    /// rather than waiting for the old connection's streams (watches, followed logs) to end.
    /// While an old connection drains, a session can so have up to `max` streams on it and
    /// `max` on the new one.
    #[must_use]
    pub fn max_streams_per_session(mut self, max: Option<usize>) -> Self {
        let (min, most) = MAX_IN_FLIGHT_KNOB.range();
        self.options.max_streams = max.map(|n| n.clamp(min, most));
        self
    }

    /// HTTP/2 keep-alive (K10): a PING after `interval` without a frame from the server, and
    /// the connection is closed when the acknowledgement takes longer than `timeout` (defaults
    /// 20 s and 10 s; each clamped to [1 ms, 86 400 s]). A stalled connection is so detected
    /// and closed, failing only its own streams; the next call opens a new connection.
    #[must_use]
    pub fn http2_keep_alive(mut self, interval: Duration, timeout: Duration) -> Self {
        let clamp = |d: Duration| d.clamp(TIMEOUT_RANGE.0, TIMEOUT_RANGE.1);
        self.options.keep_alive = (clamp(interval), clamp(timeout));
        self
    }

    /// Whether kube's own retry of 429/503/504 is on (default: off, so a caller's deadline and
    /// retry policy are the only ones in force).
    #[must_use]
    pub fn kube_retry(mut self, on: bool) -> Self {
        self.options.kube_retry = on;
        self
    }

    /// kube's connect timeout (default 30 s; `None`: no timeout). Clamped to [1 ms, 86 400 s].
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.options.connect_timeout = clamp_timeout(timeout);
        self
    }

    /// kube's read timeout: how long one read from the API server may wait for data (default
    /// 295 s; `None`: no timeout). Clamped to [1 ms, 86 400 s] (kube adds it to `Instant::now()`
    /// with a plain `+`, so `Duration::MAX` would panic). A watch or followed log silent for
    /// longer ends with a timeout error: give such streams `None` or a longer value.
    #[must_use]
    pub fn read_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.options.read_timeout = clamp_timeout(timeout);
        self
    }

    /// The bound on fetching a kubelogin user's AAD token from
    /// [`aad_credential`](Self::aad_credential) while a session is built (default
    /// [`DEFAULT_AAD_TOKEN_TIMEOUT`], 60 s; clamped into [1 ms, 1 h]). A hung identity endpoint
    /// fails the build with [`BuildError::AadTokenTimeout`](crate::BuildError::AadTokenTimeout)
    /// instead of stalling every caller waiting on that session. [`build_timeout`](Self::build_timeout)
    /// (150 s by default) bounds the whole build, this fetch included: raise it too to give the
    /// fetch more.
    #[must_use]
    pub fn aad_token_timeout(mut self, timeout: Duration) -> Self {
        self.options.aad_token_timeout =
            timeout.clamp(Duration::from_millis(1), MAX_AAD_TOKEN_TIMEOUT);
        self
    }

    /// The longest a session's requests wait for a due re-read of the kubeconfig's `tokenFile`
    /// (default [`DEFAULT_TOKEN_FILE_TIMEOUT`], 1 s; clamped into [1 ms, 60 s]). A session whose
    /// user names a token file (and nothing kube would prefer: an auth provider, basic auth, an
    /// inline token) reads it once as it is built, then again when the last read is 50 s old,
    /// as kube does, so that a rotated token (a projected service-account token) is sent.
    /// Unlike kube, which re-reads the file with a blocking call under a lock every request of
    /// the client waits on, the read runs on tokio's blocking pool, one at a time per session.
    /// The session's requests (they pass one by one through kube's buffer) wait for a due read
    /// at most this long, then go with the last token read; a read that never returns makes
    /// them wait once, and no other read starts until it does. A file removed or unreadable
    /// keeps the last token, as kube and client-go do, and so does one holding no valid token,
    /// as client-go does (kube would send it), each with a `warn`. Surrounding white space (a
    /// trailing newline) is trimmed, as client-go trims it. kube's retry
    /// ([`kube_retry`](Self::kube_retry)) resends a request with the token it was first sent
    /// with.
    #[must_use]
    pub fn token_file_timeout(mut self, timeout: Duration) -> Self {
        self.options.token_file_timeout =
            timeout.clamp(Duration::from_millis(1), MAX_TOKEN_FILE_TIMEOUT);
        self
    }

    /// The bound on one session's build, from asking the source for material to the built
    /// client (default [`DEFAULT_BUILD_TIMEOUT`], 150 s; clamped into [1 ms, 2 h], room for the
    /// AKS source's and the AAD token's own bounds of at most 1 h each): a source of
    /// your own that never answers, or a kubeconfig, certificate or CA file that never finishes
    /// reading (a FIFO, a hung mount), fails the build with
    /// [`BuildError::Timeout`](crate::BuildError::Timeout) instead of holding every caller
    /// waiting on that session. The files a kubeconfig names are read here, asynchronously,
    /// and handed to kube as data (kube would read them with blocking calls, which no timeout
    /// can interrupt).
    #[must_use]
    pub fn build_timeout(mut self, timeout: Duration) -> Self {
        self.options.build_timeout = timeout.clamp(Duration::from_millis(1), MAX_BUILD_TIMEOUT);
        self
    }

    /// Honour a kubeconfig's `insecure-skip-tls-verify: true`: sessions for such a cluster
    /// accept **any** server certificate, so anyone on the network path can read the session's
    /// token or impersonate the API server. Each such session logs a `warn`.
    ///
    /// Off by default: material comes from ARM or from files, not from your code, so without
    /// this call a kubeconfig that sets the flag fails to build with
    /// [`BuildError::InsecureSkipTlsVerify`](crate::BuildError::InsecureSkipTlsVerify), before any
    /// token is fetched or request sent. Give the cluster its CA instead where you can.
    #[must_use]
    pub fn danger_accept_insecure_skip_tls_verify(mut self) -> Self {
        self.options.accept_insecure_skip_tls_verify = true;
        self
    }

    /// Call `observer` with the key of every session the pool retires (after its locks are
    /// released): for metrics, logs, and tests.
    #[must_use]
    pub fn on_retire(mut self, observer: impl Fn(&SessionKey) + Send + Sync + 'static) -> Self {
        self.observer = Some(Arc::new(observer));
        self
    }

    /// The pool.
    pub fn build(mut self) -> SessionPool {
        let ttl = clamp_ttl(self.ttl.unwrap_or_else(|| TTL_KNOB.read_secs()));
        self.options.max_in_flight = self
            .max_in_flight
            .unwrap_or_else(|| MAX_IN_FLIGHT_KNOB.read());
        let max_entries = self.max_entries.unwrap_or_else(|| MAX_ENTRIES_KNOB.read());
        let mut config = PoolConfig::default()
            .name("k8s-session")
            .ttl(ttl)
            .max_entries(max_entries)
            .expiry_margin(self.expiry_margin)
            .capacity_knob(MAX_ENTRIES_KNOB.name());
        if let Some(every) = self.sweep_interval {
            config = config.sweep_interval(every);
        }
        SessionPool {
            shared: Arc::new(Shared {
                pool: KeyedPool::new(config),
                source: self.source,
                aad: self.aad,
                token_rejected: self.token_rejected,
                builds: AtomicU64::new(0),
                rejections: AtomicU64::new(0),
                clock: self.clock,
                ttl,
                options: self.options,
                observer: self.observer,
                connections: Arc::default(),
            }),
        }
    }
}

impl Shared {
    /// One session's build: the source's material, then the client (under
    /// [`SessionPoolBuilder::build_timeout`], in [`SessionPool::session`]).
    async fn build(
        &self,
        key: &SessionKey,
        weak: Weak<Shared>,
    ) -> Result<Created<Entry>, BuildError> {
        let material = self.source.credentials(key).await?;
        let build_id = self.builds.fetch_add(1, Ordering::Relaxed);
        let on_rejected = rejection_hook(weak, key.clone(), build_id);
        let metrics = ClusterMetrics::new(key.cluster_name());
        let built = build::build(
            material,
            self.aad.as_ref(),
            &self.options,
            &self.connections,
            metrics.clone(),
            on_rejected,
        )
        .await?;
        // The one wall-clock read: every expiry becomes a duration from here.
        let ttl = effective_ttl(self.ttl, self.clock.now(), &built.expiries);
        let entry = Entry {
            client: built.client,
            build_id,
            key: key.clone(),
            auth: built.auth,
            ttl,
            observer: self.observer.clone(),
            metrics,
        };
        tracing::debug!(%key, ttl = ?ttl.ttl, bound = ?ttl.bound, "built Kubernetes session");
        // The pool TTL is clamped to a day, so `now + ttl` fits; were it ever not to, the
        // pool's own (clamped) TTL still bounds the entry.
        let deadline = Instant::now().checked_add(ttl.ttl);
        Ok(match deadline {
            _ if !ttl.is_poolable() => Created::one_shot(entry),
            Some(deadline) => Created::until(entry, deadline),
            None => Created::new(entry),
        })
    }
}

impl fmt::Debug for SessionPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionPool")
            .field("source", &self.shared.source)
            .field("ttl", &self.shared.ttl)
            .field("max_entries", &self.max_entries())
            .field(
                "max_in_flight_per_session",
                &self.max_in_flight_per_session(),
            )
            .field("entries", &self.len())
            .field("aad_credential", &self.shared.aad.is_some())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for SessionPoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionPoolBuilder")
            .field("source", &self.source)
            .field("ttl", &self.ttl)
            .field("max_entries", &self.max_entries)
            .field("max_in_flight", &self.max_in_flight)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// What a 401 from the API server does for the session of `key` built as `build_id` (T11):
/// invalidate its AAD token in the pool's token cache, if it has one, and retire the session
/// (only that build: a session already rebuilt with a new token stays).
fn rejection_hook(
    shared: Weak<Shared>,
    key: SessionKey,
    build_id: u64,
) -> impl FnOnce(Option<(String, SecretString)>) -> rejection::OnRejected {
    move |aad_token| {
        let aad_token = aad_token.map(Arc::new);
        Arc::new(move || {
            let (shared, key, aad_token) = (shared.clone(), key.clone(), aad_token.clone());
            Box::pin(async move {
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                shared.rejections.fetch_add(1, Ordering::Relaxed);
                if let (Some(hook), Some(token)) = (&shared.token_rejected, aad_token.as_deref()) {
                    hook(&token.0, token.1.expose_secret());
                }
                tracing::info!(%key, "the API server rejected the session's credentials (401): retiring it");
                shared
                    .pool
                    .evict_where(EvictionCause::Invalidated, |k, entry| {
                        k == &key && entry.build_id == build_id
                    })
                    .await;
            })
        })
    }
}

#[cfg(test)]
mod tests;
