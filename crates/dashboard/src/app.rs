//! `Dashboard`: wires every crate together and serves the router.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use apikey_cache::{ApiKeyCache, ApiKeyLayer, CacheConfig, FileStore};
use axum::Router;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use azure_core::credentials::TokenCredential;
use request_inspector::{Inspector, InspectorConfig};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::buffering::{Buffered, buffer_every_body};
use crate::clusters::{ClusterStats, Clusters};
use crate::config::{DashboardConfig, KeyStoreConfig, Mode};
use crate::credential::Credentials;
use crate::error::{ApiError, StartError};
use crate::keystore::AnyKeyStore;
use crate::routes;
use crate::storage::{Storage, StorageStats};
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
    /// API-key store loads (each a conditional GET for the Blob store).
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
}

impl Dashboard {
    /// Build the service from `config`, authenticating to Azure (ARM, Blob storage) with
    /// `credential`. No network IO happens until [`Dashboard::prepare`] or a request.
    pub fn new(
        config: DashboardConfig,
        credential: Arc<dyn TokenCredential>,
    ) -> Result<Self, StartError> {
        crate::http::ensure_crypto_provider();
        let credentials = Credentials::new(credential);
        let clusters = Clusters::new(&config.clusters, &credentials, config.mode)?;
        let storage = Arc::new(Storage::new(&config.storage, &credentials, config.mode)?);
        let upstream = Upstream::new(&config.upstream, config.mode)?;
        let store = match &config.keys {
            KeyStoreConfig::Blob { container, blob } => {
                AnyKeyStore::Blob(storage.key_store(container, blob))
            }
            KeyStoreConfig::File { path } => AnyKeyStore::File(FileStore::new(path.clone())),
        };
        let keys = ApiKeyCache::new(store, CacheConfig::from_env());
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
                .capacity(config.inspector_capacity),
        );
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
            }),
        })
    }

    /// Create the jobs container (idempotent; the key store creates its own on first write).
    pub async fn prepare(&self) -> Result<(), ApiError> {
        self.inner.storage.ensure_containers().await
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
            key_store_loads: keys.store_loads,
            key_store_not_modified: keys.not_modified,
            inspector_entries: inspector.ring_len,
            inspector_captured: inspector.captured,
            inspector_passed_through: inspector.passed_through,
            middleware_buffered_bytes: inner.buffered.bytes.load(Ordering::Relaxed),
            jobs_submitted: inner.jobs_submitted.load(Ordering::Relaxed),
        }
    }

    /// The axum router: `/` (the page), `/api/admin/accounts` (admin token), and the `/api/*`
    /// routes behind the API-key layer and the inspector.
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
            .with_state(self.clone())
            .nest("/api/inspector", inner.inspector.router())
            .layer(ApiKeyLayer::new(inner.keys.clone()));
        let api = match inner.config.mode {
            Mode::Pooled => api,
            Mode::Naive => api.layer(from_fn_with_state(
                inner.buffered.clone(),
                buffer_every_body,
            )),
        };
        // Admin answers carry a new key's plaintext: they stay outside the inspector's ring.
        Router::new()
            .route("/", get(routes::index))
            .route("/healthz", get(|| async { "ok" }))
            .route("/api/admin/accounts", post(routes::create_account))
            .with_state(self.clone())
            .merge(api.layer(inner.inspector.layer()))
    }

    /// Bind the configured address and serve until the returned handle is stopped or dropped.
    pub async fn serve(&self) -> Result<Running, StartError> {
        let addr = self.inner.config.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| StartError::Bind { addr, source })?;
        let (stop, stopped) = oneshot::channel::<()>();
        let router = self.router();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
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
