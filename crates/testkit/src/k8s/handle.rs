//! [`K8sServer`]: the handle a test holds (start, kubeconfigs, faults, log, counters; stop on drop).

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use kube::config::Kubeconfig;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::error::K8sError;
use super::faults::{Fault, Faults, RequestRecord, Route};
use super::fixtures::Fixtures;
use super::kubeconfig::{KubeAuth, build_kubeconfig, kube_client};
use super::log::{REQUEST_LOG_CAPACITY, RequestLog};
use super::server::{Gauge, Shared, random_token, spawn};
use crate::tls::{ClientAuth, TestCa, install_crypto_provider};

/// The user name of [`K8sServer::kubeconfig_cert`]'s client certificate.
pub const ADMIN_USER: &str = "testkit-admin";

/// An in-process Kubernetes API server on `https://127.0.0.1:<port>`, serving [`Fixtures`].
///
/// Authentication is like kube-apiserver's: a client certificate signed by the server's CA,
/// or a bearer token it accepts; anything else gets 401 with a metav1 `Status`. The server stops
/// (and drops every connection) when the handle is dropped. See the [module docs](super) for
/// what it serves and what it does not do.
pub struct K8sServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl fmt::Debug for K8sServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("K8sServer")
            .field("url", &self.shared.url)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl Drop for K8sServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl K8sServer {
    /// Start with [`Fixtures::sample`] on the current tokio runtime.
    pub async fn start() -> Result<Self, K8sError> {
        Self::with_fixtures(Fixtures::sample()).await
    }

    /// Start serving `fixtures` on a free loopback port, on the current tokio runtime.
    pub async fn with_fixtures(fixtures: Fixtures) -> Result<Self, K8sError> {
        install_crypto_provider();
        let ca = TestCa::new("k8s").map_err(K8sError::Tls)?;
        let leaf = ca.server_leaf().map_err(K8sError::Tls)?;
        let config = ca
            .server_config(&leaf, ClientAuth::Optional)
            .map_err(K8sError::Tls)?;
        let default_token = random_token("testkit-k8s");
        let shared_for = move |addr: SocketAddr| {
            Arc::new(Shared {
                ca,
                url: format!("https://{addr}"),
                tokens: Mutex::new(HashSet::from([default_token.clone()])),
                default_token,
                fixtures: RwLock::new(fixtures),
                faults: Faults::default(),
                log: Mutex::new(RequestLog::new(REQUEST_LOG_CAPACITY)),
                tcp_accepted: AtomicU64::new(0),
                tls_accepted: AtomicU64::new(0),
                tls_failed: AtomicU64::new(0),
                in_flight: Gauge::default(),
                open_connections: Gauge::default(),
                http1_only: AtomicBool::new(false),
                h2_accepted: AtomicU64::new(0),
            })
        };
        let (shared, addr, task) = spawn(shared_for, TlsAcceptor::from(config))
            .await
            .map_err(K8sError::Bind)?;
        Ok(Self { shared, addr, task })
    }

    /// `https://127.0.0.1:<port>`: the cluster URL, and the ARM base URL.
    pub fn url(&self) -> &str {
        &self.shared.url
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's CA: trust it to talk to the server, or sign more client certificates.
    pub fn ca(&self) -> &TestCa {
        &self.shared.ca
    }

    /// The bearer token accepted from the start (a secret: do not log it).
    pub fn token(&self) -> &str {
        &self.shared.default_token
    }

    /// Accept one more bearer token.
    pub fn add_token(&self, token: impl Into<String>) {
        self.tokens().insert(token.into());
    }

    /// Stop accepting `token` (requests carrying it get 401 from now on).
    pub fn revoke_token(&self, token: &str) {
        self.tokens().remove(token);
    }

    fn tokens(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.shared.tokens.lock().expect("token set")
    }

    /// A kubeconfig for this server authenticating with `auth`.
    pub fn kubeconfig_with(&self, auth: KubeAuth<'_>) -> Kubeconfig {
        build_kubeconfig(self.url(), self.ca().cert_pem(), "testkit", auth)
    }

    /// A kubeconfig using [`K8sServer::token`].
    pub fn kubeconfig_token(&self) -> Kubeconfig {
        self.kubeconfig_with(KubeAuth::Token(self.token()))
    }

    /// A kubeconfig with a fresh client certificate for `CN=`[`ADMIN_USER`], `O=system:masters`.
    pub fn kubeconfig_cert(&self) -> Result<Kubeconfig, K8sError> {
        let leaf = self
            .ca()
            .client_leaf(ADMIN_USER, &["system:masters"])
            .map_err(K8sError::Tls)?;
        Ok(self.kubeconfig_with(KubeAuth::ClientCert(&leaf)))
    }

    /// A `kube::Client` over the bearer token (default retries off).
    pub async fn client_token(&self) -> Result<kube::Client, K8sError> {
        kube_client(self.kubeconfig_token()).await
    }

    /// A `kube::Client` over a client certificate, mTLS (default retries off).
    pub async fn client_cert(&self) -> Result<kube::Client, K8sError> {
        kube_client(self.kubeconfig_cert()?).await
    }

    /// The URL of the AKS credential action for a cluster (POST it with an ARM bearer token and
    /// `?api-version=…`; see [`arm_test_token`](super::arm_test_token)).
    pub fn aks_credential_url(
        &self,
        subscription: &str,
        resource_group: &str,
        cluster: &str,
        admin: bool,
    ) -> String {
        let action = if admin {
            "listClusterAdminCredential"
        } else {
            "listClusterUserCredential"
        };
        format!(
            "{}/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/Microsoft.ContainerService/managedClusters/{cluster}/{action}?api-version=2024-05-01",
            self.url()
        )
    }

    /// Apply `fault` to requests matching `route` (rules are tried in the order added; the
    /// first one with uses left applies).
    pub fn inject(&self, route: impl Into<Route>, fault: Fault) {
        self.shared.faults.add(route.into(), fault);
    }

    /// Remove every fault.
    pub fn clear_faults(&self) {
        self.shared.faults.clear();
    }

    /// The newest requests, in arrival order: at most [`request_log_capacity`] of them
    /// (default [`REQUEST_LOG_CAPACITY`]); older ones are only counted (see [`count`],
    /// [`requests_total`]), so a long-running server's memory stays flat.
    ///
    /// [`request_log_capacity`]: Self::request_log_capacity
    /// [`count`]: Self::count
    /// [`requests_total`]: Self::requests_total
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.log().records()
    }

    /// How many requests had exactly this path (exact, evicted ones included).
    pub fn count(&self, path: &str) -> usize {
        usize::try_from(self.log().count(path)).unwrap_or(usize::MAX)
    }

    /// How many requests had a path `keep` accepts (exact, evicted ones included).
    pub fn count_matching(&self, keep: impl Fn(&str) -> bool) -> u64 {
        self.log().count_matching(keep)
    }

    /// Every request since the start (or the last [`clear_requests`](Self::clear_requests)).
    pub fn requests_total(&self) -> u64 {
        self.log().total()
    }

    /// Keep at most `capacity` records (at least 1); the counts are unaffected.
    pub fn set_request_log_capacity(&self, capacity: usize) {
        self.log().set_capacity(capacity);
    }

    /// How many records [`requests`](Self::requests) keeps at most.
    pub fn request_log_capacity(&self) -> usize {
        self.log().capacity()
    }

    /// Forget the request log and its counts.
    pub fn clear_requests(&self) {
        self.log().clear();
    }

    fn log(&self) -> std::sync::MutexGuard<'_, RequestLog> {
        self.shared.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// TLS handshakes completed (one per client connection that got as far as HTTP).
    pub fn tls_connections(&self) -> u64 {
        self.shared.tls_accepted.load(Ordering::SeqCst)
    }

    /// TLS connections that negotiated HTTP/2 (ALPN `h2`); the rest of
    /// [`tls_connections`](Self::tls_connections) spoke HTTP/1.1.
    pub fn h2_connections(&self) -> u64 {
        self.shared.h2_accepted.load(Ordering::SeqCst)
    }

    /// Serve HTTP/2 on new connections (default `true`); `false`: ALPN offers `http/1.1` only
    /// and connections speak HTTP/1.1, as an old API server or an HTTP/1.1-only proxy would.
    /// Connections already open keep their protocol.
    pub fn serve_http2(&self, on: bool) {
        self.shared.http1_only.store(!on, Ordering::SeqCst);
    }

    /// TLS connections open now (closed ones are no longer counted).
    pub fn open_connections(&self) -> u64 {
        self.shared.open_connections.now()
    }

    /// The most TLS connections open at once since the server started.
    pub fn peak_open_connections(&self) -> u64 {
        self.shared.open_connections.peak()
    }

    /// Requests being answered now: counted from the request's arrival until its response
    /// (headers and a fully buffered body) is handed to the connection, or the connection resets.
    pub fn in_flight(&self) -> u64 {
        self.shared.in_flight.now()
    }

    /// The most requests in flight at once since the server started.
    pub fn peak_in_flight(&self) -> u64 {
        self.shared.in_flight.peak()
    }

    /// TCP connections accepted (including ones whose handshake then failed).
    pub fn tcp_connections(&self) -> u64 {
        self.shared.tcp_accepted.load(Ordering::SeqCst)
    }

    /// TLS handshakes refused (wrong CA on the client side, rogue client certificate, …).
    pub fn tls_handshake_failures(&self) -> u64 {
        self.shared.tls_failed.load(Ordering::SeqCst)
    }

    /// Change the fixtures while the server runs.
    pub fn update_fixtures(&self, change: impl FnOnce(&mut Fixtures)) {
        change(&mut self.shared.fixtures.write().expect("fixtures"));
    }

    /// Let the cluster evolve while the server runs: every `every` (tokio time, on the current
    /// runtime), `change(step, fixtures)` with `step` = 1, 2, 3, … — warmup progress advancing,
    /// a node going NotReady and back, jobs finishing. The task holds no strong reference to
    /// the server: it ends at the first tick after the server is dropped. `every` is at least
    /// 1 ms.
    pub fn evolve(
        &self,
        every: std::time::Duration,
        mut change: impl FnMut(u64, &mut Fixtures) + Send + 'static,
    ) {
        let shared = Arc::downgrade(&self.shared);
        let every = every.max(std::time::Duration::from_millis(1));
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut step = 0u64;
            loop {
                ticks.tick().await;
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                step += 1;
                let mut fixtures = shared
                    .fixtures
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                change(step, &mut fixtures);
            }
        });
    }
}
