//! `Dashboard`: wires every crate together and serves the router.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use apikey_cache::{ApiKeyCache, ApiKeyLayer, CacheConfig, Identity};
use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use azure_core::credentials::TokenCredential;
use request_inspector::{Inspector, InspectorConfig, REQUEST_ID_HEADER, RequestId};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::buffering::{Buffered, buffer_every_body};
use crate::clusters::{ClusterStats, Clusters};
use crate::config::{DashboardConfig, Mode};
use crate::credential::Credentials;
use crate::error::{ApiError, StartError};
use crate::keystore::AnyKeyStore;
use crate::routes;
use crate::serve::{ConnLimits, ConnStats};
use crate::storage::{Storage, StorageStats};
use crate::telemetry::Telemetry;
use crate::upstream::{Upstream, UpstreamStats};

/// The GETs the page polls: streamed through the inspector, never captured (seed 001's
/// `_INSPECTOR_EXCLUDE_GET_PREFIXES`, plus the inspector and stats endpoints themselves).
pub const POLLING_PREFIXES: &[&str] = &[
    "/api/monitor/aks",
    "/api/monitor/storage",
    "/api/monitor/acr",
    "/api/monitor/terminal",
    "/api/monitor/cluster",
    "/api/monitor/jobs",
    "/api/blast/jobs",
    "/api/blast/databases",
    "/api/warmup",
    "/api/me",
    "/api/inspector",
    "/api/stats",
];

pub(crate) struct Inner {
    pub(crate) config: DashboardConfig,
    pub(crate) credentials: Credentials,
    pub(crate) clusters: Clusters,
    pub(crate) storage: Arc<Storage>,
    pub(crate) upstream: Upstream,
    pub(crate) keys: ApiKeyCache<AnyKeyStore>,
    pub(crate) inspector: Inspector,
    pub(crate) buffered: Arc<Buffered>,
    pub(crate) jobs_submitted: AtomicU64,
    /// SHA-256 of the admin token (compared digest to digest, fixed length).
    pub(crate) admin_digest: Option<[u8; 32]>,
    /// `/api/*` requests answered 401 by the API-key layer (never in the inspector's ring).
    pub(crate) rejected: Arc<AtomicU64>,
    pub(crate) connections: Arc<ConnStats>,
    /// The dashboard's own metric handles (issue #19).
    pub(crate) telemetry: Arc<Telemetry>,
    /// Renders `GET /metrics`; set by the application that installed an exporter.
    pub(crate) metrics_render: OnceLock<MetricsRender>,
}

/// Renders the process's metrics in the Prometheus text format for `GET /metrics`: the
/// application installs the exporter (e.g. metrics-exporter-prometheus's `PrometheusHandle::render`)
/// and hands the dashboard this closure; the library never installs a recorder.
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

/// The inspector's owner of a request: the account the API-key layer authenticated.
fn account_of(extensions: &http::Extensions) -> Option<String> {
    extensions
        .get::<Identity>()
        .map(|identity| identity.account.as_str().to_string())
}

/// Count the `/api/*` requests the API-key layer turned away (outside it: the inspector, inside
/// it, never sees them), and give every `/api/*` answer an `x-request-id`, 401s included: the
/// id is settled here (a valid incoming one or a fresh one) and written into the request, so
/// the inspector further in propagates the same id instead of minting its own.
async fn count_rejections(
    axum::extract::State((rejected, telemetry)): axum::extract::State<(
        Arc<AtomicU64>,
        Arc<Telemetry>,
    )>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let (id, _) = RequestId::from_headers_or_generate(request.headers());
    request
        .headers_mut()
        .insert(REQUEST_ID_HEADER, id.header_value().clone());
    let mut response = next.run(request).await;
    if response.status() == http::StatusCode::UNAUTHORIZED {
        rejected.fetch_add(1, Ordering::Relaxed);
        telemetry.rejected();
    }
    response
        .headers_mut()
        .entry(REQUEST_ID_HEADER)
        .or_insert_with(|| id.header_value().clone());
    response
}

/// The dashboard service: every crate composed. Cloning is cheap.
#[derive(Clone)]
pub struct Dashboard {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboard")
            .field("mode", &self.inner.config.mode)
            .field("clusters", &self.inner.clusters)
            .finish_non_exhaustive()
    }
}

/// Everything `/api/stats` reports: what the dashboard's clients did.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct DashboardStats {
    /// `pooled` or `naive`.
    pub mode: &'static str,
    /// Kubernetes sessions and calls.
    pub clusters: ClusterStats,
    /// Blob clients and operations.
    pub storage: StorageStats,
    /// Token fetches that reached the Azure credential (ARM and storage).
    pub token_fetches: u64,
    /// Upstream calls, retries, pool timeouts.
    pub upstream: UpstreamStats,
    /// API-key store reads: document loads (each a conditional GET for the Blob store) or, in
    /// the keyed layout, point reads of one key record plus change-feed reads.
    pub key_store_loads: u64,
    /// Of those, answered "not modified".
    pub key_store_not_modified: u64,
    /// Entries in the inspector ring now.
    pub inspector_entries: usize,
    /// Requests the inspector captured (bodies tee'd) since the start.
    pub inspector_captured: u64,
    /// Polling GETs streamed through untouched.
    pub inspector_passed_through: u64,
    /// Response bytes a buffering middleware held in memory (naive mode only).
    pub middleware_buffered_bytes: u64,
    /// Jobs submitted through `POST /api/blast/jobs`.
    pub jobs_submitted: u64,
    /// `/api/*` requests refused by the API-key layer (401): counted, not stored.
    pub rejected_unauthenticated: u64,
    /// HTTP connections open now.
    pub connections_open: u64,
    /// HTTP connections accepted since the start.
    pub connections_accepted: u64,
    /// The most HTTP connections open at once.
    pub connections_peak: u64,
}

impl Dashboard {
    /// Build the service from `config`, authenticating to Azure (ARM, Blob storage) with
    /// `credential`. No network IO happens until [`Dashboard::prepare`] or a request.
    pub fn new(
        config: DashboardConfig,
        credential: Arc<dyn TokenCredential>,
    ) -> Result<Self, StartError> {
        let config = config.validate()?;
        crate::http::ensure_crypto_provider();
        let credentials = Credentials::new(credential);
        let clusters = Clusters::new(&config.clusters, &credentials, config.mode)?;
        let storage = Arc::new(Storage::new(&config.storage, &credentials, config.mode)?);
        let upstream = Upstream::new(&config.upstream, config.mode)?;
        let store = AnyKeyStore::from_config(&config.keys, &storage);
        let key_config = CacheConfig::from_env();
        let keys = ApiKeyCache::new(store, key_config.clone());
        crate::keystore::watch(&keys, key_config.poll_interval());
        let prefixes: &[&str] = match config.mode {
            Mode::Pooled => POLLING_PREFIXES,
            // The seed's middleware captured every /api/* request.
            Mode::Naive => &[],
        };
        let inspector = Inspector::new(
            InspectorConfig::from_env()
                .polling_prefixes(prefixes.iter().copied())
                .map_err(|_| crate::error::ConfigError::Invalid {
                    name: "polling prefixes",
                    reason: "each prefix must start with `/`",
                })?
                .capacity(config.inspector_capacity)
                // Inside the API-key layer: each entry names its account, and a request
                // without one is counted, never stored (I6).
                .owner_from(account_of)
                .require_owner(true),
        );
        let admin_digest = config.admin_token.as_ref().map(|token| {
            use sha2::Digest;
            sha2::Sha256::digest(token.expose().as_bytes()).into()
        });
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                credentials,
                clusters,
                storage,
                upstream,
                keys,
                inspector,
                buffered: Arc::default(),
                jobs_submitted: AtomicU64::new(0),
                admin_digest,
                rejected: Arc::default(),
                connections: Arc::default(),
                telemetry: Arc::new(Telemetry::new()),
                metrics_render: OnceLock::new(),
            }),
        })
    }

    /// Create the jobs container (idempotent; the key store creates its own on first write).
    pub async fn prepare(&self) -> Result<(), ApiError> {
        self.inner.storage.ensure_containers().await
    }

    /// Serve `GET /metrics` (unauthenticated, like a health check, on the same listener) with
    /// `render`'s text. The application installs the exporter and passes its render function;
    /// until then `/metrics` answers 404. Returns `false` (and changes nothing) if a render
    /// function was already set.
    pub fn set_metrics_render(&self, render: MetricsRender) -> bool {
        self.inner.metrics_render.set(render).is_ok()
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &DashboardConfig {
        &self.inner.config
    }

    /// The inspector (its ring holds the captured calls).
    pub fn inspector(&self) -> &Inspector {
        &self.inner.inspector
    }

    /// What the dashboard's clients have done so far.
    pub fn stats(&self) -> DashboardStats {
        let inner = &self.inner;
        let keys = inner.keys.stats();
        let inspector = inner.inspector.stats();
        DashboardStats {
            mode: inner.config.mode.as_str(),
            clusters: inner.clusters.stats(),
            storage: inner.storage.stats(),
            token_fetches: inner.credentials.fetches(),
            upstream: inner.upstream.stats(),
            key_store_loads: keys.store_loads + keys.point_reads + keys.feed_polls,
            key_store_not_modified: keys.not_modified,
            inspector_entries: inspector.ring_len,
            inspector_captured: inspector.captured,
            inspector_passed_through: inspector.passed_through,
            middleware_buffered_bytes: inner.buffered.bytes.load(Ordering::Relaxed),
            jobs_submitted: inner.jobs_submitted.load(Ordering::Relaxed),
            rejected_unauthenticated: inner.rejected.load(Ordering::Relaxed),
            connections_open: inner.connections.open.load(Ordering::Relaxed),
            connections_accepted: inner.connections.accepted.load(Ordering::Relaxed),
            connections_peak: inner.connections.peak.load(Ordering::Relaxed),
        }
    }

    /// The axum router: `/` (the page), `/favicon.ico`, `/healthz` and `/metrics`
    /// (unauthenticated), `/api/admin/accounts` (admin token), and the `/api/*` routes behind
    /// the API-key layer, with the inspector inside it. Outermost: the request timeout, the body
    /// limit, the security headers and the request metrics.
    pub fn router(&self) -> Router {
        let inner = &self.inner;
        let api = Router::new()
            .route("/api/me", get(routes::me))
            .route("/api/stats", get(routes::stats))
            .route("/api/monitor/aks", get(routes::aks))
            .route("/api/monitor/aks/{cluster}", get(routes::aks_detail))
            .route("/api/monitor/jobs", get(routes::jobs))
            .route("/api/monitor/storage", get(routes::storage))
            .route("/api/warmup", get(routes::warmup_clusters))
            .route("/api/warmup/{cluster}", get(routes::warmup))
            .route(
                "/api/blast/jobs",
                get(routes::list_jobs).post(routes::submit_job),
            )
            .route("/api/inspector", get(routes::inspector))
            // A path no route has: behind the same layers (401 without a key), then the
            // JSON envelope every `/api/*` error has. The merged router takes this fallback.
            .fallback(routes::not_found)
            .with_state(self.clone());
        let api = match inner.config.mode {
            Mode::Pooled => api,
            Mode::Naive => api.layer(from_fn_with_state(
                inner.buffered.clone(),
                buffer_every_body,
            )),
        };
        // Order, outside in: count 401s, authenticate, then the inspector — so a request
        // without a valid key never reaches the ring (issue #24 finding 3).
        let api = api
            .layer(inner.inspector.axum_layer())
            .layer(ApiKeyLayer::new(inner.keys.clone()))
            .layer(from_fn_with_state(
                (inner.rejected.clone(), Arc::clone(&inner.telemetry)),
                count_rejections,
            ));
        // Admin answers carry a new key's plaintext: they stay outside the inspector's ring.
        // The token is checked before the body is read.
        let admin = Router::new()
            .route("/api/admin/accounts", post(routes::create_account))
            .route_layer(from_fn_with_state(self.clone(), routes::require_admin))
            .with_state(self.clone());
        let timeout = inner.config.request_timeout();
        Router::new()
            .route("/", get(routes::index))
            .route("/favicon.ico", get(routes::favicon))
            .route("/healthz", get(|| async { "ok" }))
            .route("/metrics", get(routes::metrics))
            .with_state(self.clone())
            .merge(admin)
            .merge(api)
            .layer(DefaultBodyLimit::max(inner.config.body_limit_bytes))
            // A declared length over the limit is refused before anything else, at once:
            // DefaultBodyLimit alone would wait for the bytes (up to the request timeout).
            .layer(from_fn_with_state(
                inner.config.body_limit_bytes,
                routes::refuse_declared_oversize,
            ))
            .layer(
                tower::ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
                        ApiError::Timeout.into_response()
                    }))
                    .timeout(timeout),
            )
            .layer(from_fn(routes::security_headers))
            // Outermost: every answer's duration, the refusals and timeouts included.
            .layer(from_fn_with_state(
                Arc::clone(&inner.telemetry),
                crate::telemetry::record_requests,
            ))
    }

    /// Bind the configured address and serve until the returned handle is stopped or dropped,
    /// with the configured header-read timeout, header size and connection cap.
    pub async fn serve(&self) -> Result<Running, StartError> {
        let config = &self.inner.config;
        let addr = config.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| StartError::Bind { addr, source })?;
        let (stop, stopped) = oneshot::channel::<()>();
        let limits = ConnLimits {
            header_read_timeout: config.header_read_timeout(),
            max_header_bytes: config.max_header_bytes,
            max_connections: config.max_connections,
        };
        let task = tokio::spawn(crate::serve::run(
            listener,
            self.router(),
            limits,
            Arc::clone(&self.inner.connections),
            stopped,
        ));
        Ok(Running {
            addr: local,
            stop: Some(stop),
            task,
        })
    }
}

/// A dashboard serving on a local address; stops when dropped.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stop accepting, let requests in flight finish, and wait.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}
