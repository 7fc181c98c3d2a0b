//! The workspace's reference downstream service: a monitoring dashboard like the one in seed
//! 001, composed of every crate, and the local backends `cargo xtask demo` runs it against.
//!
//! Seed 001: the dashboard's auto-refresh fanned out 15–20 requests per tick; each Kubernetes
//! helper built a new session (TLS handshake, temp files), the warmup read made up to 18 calls
//! in series, and a middleware buffered every polling body for the HTTP inspector. Seeds 000,
//! 002, 003 and 004 are the same service's other paths: Blob clients, upstream retries under
//! 429, API keys across instances, token refresh. Here each path uses the crate that fixes it:
//!
//! | route | crates |
//! |---|---|
//! | `GET /api/monitor/aks`, `/api/monitor/aks/{cluster}`, `/api/monitor/jobs` | k8s-session (pooled `kube::Client` per cluster, AKS credentials from ARM) |
//! | `GET /api/warmup/{cluster}` | k8s-session + warmup-fanout (phased parallel reads) |
//! | `GET /api/monitor/storage`, `GET /api/blast/jobs` | blob-pool (one client per credential and account) |
//! | `POST /api/blast/jobs` | blob-pool (write the job) + retry-transport (the 429-prone upstream) |
//! | `GET /api/me`, every `/api/*` | apikey-cache (`x-api-key`; its Blob store over the same blob pool, or a file) |
//! | `POST /api/admin/accounts` | apikey-cache writes (guarded by `x-admin-token`, checked before the body) |
//! | `GET /api/inspector` | request-inspector (polling GETs streamed, one-shot calls captured; each account sees its own) |
//! | every Azure token (ARM, storage) | token-refresh (`CachingCredential`) |
//! | `GET /` | the page: cards, per-node warmup chips, the inspector panel |
//!
//! [`Mode::Naive`] runs the same routes with the behaviours the seeds replaced (a client per
//! call, serial warmup reads, a buffering capture-everything middleware, retries that sleep
//! holding their connection slot) so the demo can print both side by side.
//!
//! [`local`] starts the backends on loopback with testkit: Azurite, one Kubernetes API test
//! server per simulated cluster (20–80 ms per call) and a 429-prone upstream.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use dashboard::{Dashboard, DashboardConfig};
//!
//! # async fn run(credential: Arc<dyn azure_core::credentials::TokenCredential>) -> Result<(), Box<dyn std::error::Error>> {
//! let config = DashboardConfig::from_file("dashboard.json".as_ref())?.with_env()?;
//! let dashboard = Dashboard::new(config, credential)?;
//! dashboard.prepare().await?; // create the storage containers
//! let running = dashboard.serve().await?;
//! println!("dashboard on {}", running.url());
//! # Ok(())
//! # }
//! ```

mod app;
mod buffering;
mod clusters;
mod config;
mod credential;
mod error;
mod http;
mod keystore;
pub mod local;
mod routes;
mod serve;
mod storage;
mod telemetry;
mod upstream;

pub use app::{Dashboard, DashboardStats, MetricsRender, POLLING_PREFIXES, Running};
pub use clusters::{AksCard, AksDetail, ClusterJobs, ClusterStats, JobRow, NodeRow, WarningRow};
pub use config::{
    AdminToken, BODY_LIMIT_BYTES, ClusterConfig, DashboardConfig, HEADER_READ_TIMEOUT_MS,
    INSPECTOR_CAPACITY, KeyStoreConfig, MAX_CONNECTIONS, MAX_HEADER_BYTES, MIN_ADMIN_TOKEN_LEN,
    Mode, REQUEST_TIMEOUT_MS, StorageConfig, UPSTREAM_ACQUIRE_TIMEOUT_MS, UPSTREAM_MAX_ATTEMPTS,
    UPSTREAM_MAX_CONNECTIONS, UpstreamConfig,
};
pub use credential::{CountingCredential, Credentials};
pub use error::{ApiError, ConfigError, StartError};
pub use http::ensure_crypto_provider;
pub use keystore::AnyKeyStore;
pub use routes::ADMIN_TOKEN_HEADER;
pub use storage::{CARD_COUNT_MAX, JOBS_PAGE, JOBS_PAGE_MAX, StorageCard, StorageStats, StoredJob};
pub use upstream::{Submitted, UpstreamStats};
