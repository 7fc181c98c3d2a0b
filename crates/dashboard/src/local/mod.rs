//! Local backends for the demo and the end-to-end tests, started with testkit: Azurite, one
//! Kubernetes API test server per simulated AKS cluster (with latency), a 429-prone upstream.
//!
//! Everything listens on loopback and stops when its handle is dropped; Azurite is a child
//! process that testkit kills on drop (and a watchdog kills if this process dies).

mod fixtures;

use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use testkit::azurite::{Azurite, AzuriteError, TestCredential};
use testkit::k8s::{K8sError, K8sServer};
use testkit::ratelimit::{Answer, RateLimitServer};
use url::Url;

use crate::config::{
    ClusterConfig, DashboardConfig, KeyStoreConfig, Mode, StorageConfig, UpstreamConfig,
};

pub use fixtures::NAMESPACE;

/// The subscription the simulated clusters live in.
pub const SUBSCRIPTION: &str = "00000000-0000-0000-0000-00000000d001";
/// Their resource group.
pub const RESOURCE_GROUP: &str = "rg-dashboard";
/// Their names, in order (the first `clusters` are used).
pub const CLUSTER_NAMES: &[&str] = &[
    "aks-eastus",
    "aks-westeurope",
    "aks-southeastasia",
    "aks-4",
    "aks-5",
];

/// Request records each simulated cluster's test server keeps (its counts stay exact).
pub const DEMO_REQUEST_LOG_CAPACITY: usize = 1_000;

/// A local backend failed to start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalError {
    /// Azurite did not start (its message says how to fix it, e.g. `cargo xtask setup`).
    #[error("Azurite did not start")]
    Azurite(#[source] AzuriteError),
    /// A Kubernetes API test server did not start.
    #[error("the Kubernetes API test server did not start")]
    K8s(#[source] K8sError),
    /// The upstream test server did not start.
    #[error("the upstream test server did not start")]
    Upstream(#[source] std::io::Error),
    /// A test server's URL did not parse (a testkit bug).
    #[error("a local server's URL does not parse")]
    Url(#[source] url::ParseError),
    /// More clusters were asked for than there are names.
    #[error("at most {max} simulated clusters are supported")]
    TooManyClusters {
        /// The limit.
        max: usize,
    },
}

/// How the simulation behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SimulationOptions {
    /// Simulated clusters (default 3).
    pub clusters: usize,
    /// Per-call latency range in ms, inclusive (default 20–80; `(0, 0)`: none).
    pub latency_ms: (u64, u64),
    /// `Retry-After` of the upstream's 429 to each job's first attempt, in seconds (default 1).
    pub upstream_retry_after_secs: u64,
    /// Let the clusters evolve at this period (default `None`: fixed fixtures, so runs
    /// compare): warmup progress advances, a node goes NotReady and back, maintenance jobs
    /// start and finish. `demo --serve` turns it on, so an open page visibly live-updates.
    pub evolve_every: Option<std::time::Duration>,
}

impl Default for SimulationOptions {
    fn default() -> Self {
        Self {
            clusters: 3,
            latency_ms: (20, 80),
            upstream_retry_after_secs: 1,
            evolve_every: None,
        }
    }
}

impl SimulationOptions {
    /// Set the per-call latency range in ms (`(0, 0)`: none).
    pub fn latency_ms(mut self, range: (u64, u64)) -> Self {
        self.latency_ms = range;
        self
    }

    /// Set the number of simulated clusters.
    pub fn clusters(mut self, clusters: usize) -> Self {
        self.clusters = clusters;
        self
    }

    /// Let the clusters evolve every `period` (`None`: never).
    pub fn evolve_every(mut self, period: Option<std::time::Duration>) -> Self {
        self.evolve_every = period;
        self
    }

    /// Set the upstream's `Retry-After`, in seconds.
    pub fn upstream_retry_after_secs(mut self, secs: u64) -> Self {
        self.upstream_retry_after_secs = secs;
        self
    }
}

/// Azurite with a credential it accepts. Start it once; several dashboards can share it.
#[derive(Debug)]
pub struct LocalStorage {
    azurite: Azurite,
}

impl LocalStorage {
    /// Start Azurite (installed by `cargo xtask setup` under `target/tools/azurite`).
    pub async fn start() -> Result<Self, LocalError> {
        let azurite = Azurite::start().await.map_err(LocalError::Azurite)?;
        Ok(Self { azurite })
    }

    /// The Azurite fixture.
    pub fn azurite(&self) -> &Azurite {
        &self.azurite
    }

    /// Storage settings for a dashboard writing jobs to `container`.
    pub fn storage_config(&self, container: &str) -> StorageConfig {
        let mut config = StorageConfig::new(
            self.azurite.endpoint().as_str().trim_end_matches('/'),
            Some(self.azurite.ca().cert_pem().to_string()),
        );
        config.jobs_container = container.to_string();
        config
    }
}

/// A credential minting tokens Azurite and testkit's ARM endpoint accept.
pub fn credential() -> Arc<dyn TokenCredential> {
    Arc::new(TestCredential::new())
}

/// One simulated AKS cluster.
#[derive(Debug)]
pub struct LocalCluster {
    /// Its dashboard configuration (ARM at the server, trusting its CA).
    pub config: ClusterConfig,
    /// The server playing its API server and its ARM endpoint.
    pub server: K8sServer,
}

/// The simulated clusters and the upstream. Start one per dashboard run for clean counters.
#[derive(Debug)]
pub struct Simulation {
    /// The clusters, in order.
    pub clusters: Vec<LocalCluster>,
    /// The 429-prone upstream: every job's first attempt gets `429` + `Retry-After`.
    pub upstream: RateLimitServer,
}

impl Simulation {
    /// Start `options.clusters` Kubernetes API servers and the upstream on this runtime.
    pub async fn start(options: &SimulationOptions) -> Result<Self, LocalError> {
        if options.clusters > CLUSTER_NAMES.len() {
            return Err(LocalError::TooManyClusters {
                max: CLUSTER_NAMES.len(),
            });
        }
        crate::http::ensure_crypto_provider();
        let mut clusters = Vec::new();
        for (index, name) in CLUSTER_NAMES.iter().take(options.clusters).enumerate() {
            let fixtures = fixtures::cluster(index);
            let server = K8sServer::with_fixtures(fixtures.clone())
                .await
                .map_err(LocalError::K8s)?;
            fixtures::inject_latency(&server, index, &fixtures, options.latency_ms);
            // The demo runs for hours under polling: keep each log's window small (the counts
            // the summary reads stay exact).
            server.set_request_log_capacity(DEMO_REQUEST_LOG_CAPACITY);
            if let Some(every) = options.evolve_every {
                server.evolve(every, move |step, f| fixtures::evolve(f, index, step));
            }
            let arm = Url::parse(server.url()).map_err(LocalError::Url)?;
            let config = ClusterConfig::new(*name, SUBSCRIPTION, RESOURCE_GROUP)
                .namespace(NAMESPACE)
                .arm(arm, Some(server.ca().cert_pem().to_string()));
            clusters.push(LocalCluster { config, server });
        }
        let upstream = RateLimitServer::start()
            .await
            .map_err(LocalError::Upstream)?;
        upstream.every_path_starts_with([Answer::too_many(options.upstream_retry_after_secs)]);
        upstream.set_default(Answer::ok(2));
        Ok(Self { clusters, upstream })
    }

    /// A dashboard configuration for this simulation over `storage`, in `mode`, listening on
    /// a free port. Jobs and API keys of each mode go to their own container and blob.
    pub fn dashboard_config(
        &self,
        storage: &LocalStorage,
        mode: Mode,
    ) -> Result<DashboardConfig, LocalError> {
        let upstream = Url::parse(&self.upstream.url("/")).map_err(LocalError::Url)?;
        let mut config = DashboardConfig::new(
            self.clusters.iter().map(|c| c.config.clone()).collect(),
            storage.storage_config(&format!("blast-jobs-{}", mode.as_str())),
            UpstreamConfig::new(upstream),
        );
        config.listen = ([127, 0, 0, 1], 0).into();
        config.mode = mode;
        config.keys = KeyStoreConfig::KeyedBlob {
            container: "dashboard".to_string(),
            prefix: format!("apikeys-{}/", mode.as_str()),
        };
        Ok(config)
    }

    /// Kubernetes API calls the clusters received (ARM credential calls excluded).
    pub fn kube_calls(&self) -> usize {
        self.requests(|path| !path.starts_with("/subscriptions/"))
    }

    /// ARM credential calls (`listClusterUserCredential`) the clusters received.
    pub fn arm_calls(&self) -> usize {
        self.requests(|path| path.starts_with("/subscriptions/"))
    }

    fn requests(&self, keep: impl Fn(&str) -> bool + Copy) -> usize {
        // Exact counts: the servers' logs keep only their newest records.
        let total: u64 = self
            .clusters
            .iter()
            .map(|c| c.server.count_matching(keep))
            .sum();
        usize::try_from(total).unwrap_or(usize::MAX)
    }

    /// TLS connections the clusters accepted (one per handshake).
    pub fn tls_connections(&self) -> u64 {
        self.clusters
            .iter()
            .map(|c| c.server.tls_connections())
            .sum()
    }
}
