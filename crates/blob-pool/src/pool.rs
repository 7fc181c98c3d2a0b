//! `BlobPool`: get-or-create by (credential identity, endpoint), eviction, sweeper, reset, stats.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use azure_core::credentials::TokenCredential;
use azure_core::http::ClientOptions;
use azure_storage_blob::{BlobServiceClient, BlobServiceClientOptions};
use pool_core::{Created, EvictionCause, KeyedPool, PoolConfig, PoolError, RetireReport};
use retry_transport::{AzureTransport, RetryClient};
use token_refresh::RefreshStats;
use tokio::time::Instant;

use crate::config::BlobPoolConfig;
use crate::endpoint::Endpoint;
use crate::error::BlobPoolError;
use crate::handle::{Entry, Key, PooledBlobClient};
use crate::identity::{Registration, Registry};
use crate::rejection::RejectedTokenPolicy;
use crate::stats::{BlobPoolStats, SweepReport};

/// The scope the Blob SDK asks tokens for.
pub const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";

/// A retry-transport builder set up for Azure Storage: no gzip/deflate decoding (the storage
/// SDK checks `Content-Length`/`Content-MD5` on what it receives). Add your TLS roots, proxy or
/// limits, build it, and hand it to [`BlobPoolBuilder::transport`].
///
/// Calling `customize` on the result replaces this preset: repeat `.no_gzip().no_deflate()`.
pub fn storage_transport() -> retry_transport::Builder {
    RetryClient::builder().customize(|builder| builder.no_gzip().no_deflate())
}

pub(crate) struct Inner {
    pub(crate) pool: KeyedPool<Key, Entry>,
    pub(crate) registry: Registry,
    transport: AzureTransport,
    client_options: ClientOptions,
    config: BlobPoolConfig,
    retired: Arc<AtomicU64>,
    credentials_dropped: AtomicU64,
    /// Tokens storage rejected (401, or 403 `AuthenticationFailed`) that were still cached.
    pub(crate) tokens_rejected: AtomicU64,
    sweeper_started: pool_core::TaskFlag,
    pub(crate) metrics: crate::telemetry::BlobMetrics,
}

/// A pool of Azure `BlobServiceClient`s keyed by (credential identity, endpoint) (seed 000,
/// B1–B8). Cloning is cheap and shares the pool.
///
/// See the [crate docs](crate) for the identity design and an example.
#[derive(Clone)]
pub struct BlobPool {
    pub(crate) inner: Arc<Inner>,
}

/// Builds a [`BlobPool`]; start from [`BlobPool::builder`].
#[derive(Debug)]
pub struct BlobPoolBuilder {
    config: BlobPoolConfig,
    transport: Option<RetryClient>,
}

impl BlobPoolBuilder {
    /// Replace the configuration (default: [`BlobPoolConfig::from_env`]).
    pub fn config(mut self, config: BlobPoolConfig) -> Self {
        self.config = config;
        self
    }

    /// The one retry-transport client every pooled client sends through (B8). Default:
    /// [`storage_transport`] with limits from the `RETRY_TRANSPORT_*` environment.
    pub fn transport(mut self, client: RetryClient) -> Self {
        self.transport = Some(client);
        self
    }

    /// Build the pool. No IO happens until a client sends a request.
    pub fn build(self) -> Result<BlobPool, BlobPoolError> {
        let client = match self.transport {
            Some(client) => client,
            None => storage_transport()
                .build()
                .map_err(|e| BlobPoolError::Transport(Arc::new(e)))?,
        };
        let transport = AzureTransport::new(client);
        // The transport's options turn the SDK's own retry policy off (it holds the response
        // while it sleeps); retries happen in retry-transport, which releases it first.
        let client_options = transport.client_options();
        let pool = KeyedPool::new(
            PoolConfig::default()
                .max_entries(self.config.max_entries)
                .capacity_knob(crate::config::MAX_ENTRIES.name())
                .name(crate::telemetry::POOL_NAME),
        );
        Ok(BlobPool {
            inner: Arc::new(Inner {
                pool,
                registry: Registry::new(self.config.refresh.clone()),
                transport,
                client_options,
                config: self.config,
                retired: Arc::default(),
                credentials_dropped: AtomicU64::new(0),
                tokens_rejected: AtomicU64::new(0),
                sweeper_started: pool_core::TaskFlag::default(),
                metrics: crate::telemetry::BlobMetrics::new(),
            }),
        })
    }
}

impl BlobPool {
    /// A builder with the configuration from the environment.
    pub fn builder() -> BlobPoolBuilder {
        BlobPoolBuilder {
            config: BlobPoolConfig::from_env(),
            transport: None,
        }
    }

    /// A pool configured from the environment, with its own shared transport.
    pub fn new() -> Result<Self, BlobPoolError> {
        Self::builder().build()
    }

    /// The cached client for (`credential`, `endpoint`), or a new one (B1).
    ///
    /// Hit path: one read lock on the credential registry (the credential's id, plus a check
    /// of up to 16 registrations for dropped credentials) and pool-core's hit path, which
    /// updates the entry's last-used time (B3). A dropped credential seen here has its clients
    /// evicted before this call returns (B4). A miss registers the credential if needed and
    /// builds the client once, however many callers miss together (no IO: the client
    /// authenticates on its first request).
    pub async fn client(
        &self,
        credential: &Arc<dyn TokenCredential>,
        endpoint: &Endpoint,
    ) -> Result<PooledBlobClient, BlobPoolError> {
        self.ensure_sweeper();
        let inner = &*self.inner;
        let lookup = inner.registry.lookup(credential);
        if lookup.saw_dropped {
            self.evict_dropped().await;
        }
        if let Some(id) = lookup.id {
            let key = Key {
                credential: id,
                endpoint: endpoint.clone(),
            };
            if let Some(hit) = inner.pool.get(&key) {
                return Ok(PooledBlobClient { inner: hit });
            }
        }
        let registration = inner.registry.register(credential);
        let key = Key {
            credential: registration.id,
            endpoint: endpoint.clone(),
        };
        let pooled = inner
            .pool
            .get_or_create(&key, || async {
                let entry = self.build_entry(&registration, endpoint)?;
                Ok::<_, azure_core::Error>(Created::new(entry))
            })
            .await
            .map_err(|error| match error {
                PoolError::Create(error) => BlobPoolError::Client(error),
                _ => BlobPoolError::ShutDown,
            })?;
        Ok(PooledBlobClient { inner: pooled })
    }

    pub(crate) fn build_entry(
        &self,
        registration: &Registration,
        endpoint: &Endpoint,
    ) -> Result<Entry, azure_core::Error> {
        let inner = &*self.inner;
        let mut options = BlobServiceClientOptions {
            client_options: inner.client_options.clone(),
            ..BlobServiceClientOptions::default()
        };
        if let Some(version) = &inner.config.api_version {
            options.version = version.clone();
        }
        // T11: runs after the SDK's bearer policy, so it sees the token the request carried.
        options
            .client_options
            .per_try_policies
            .push(Arc::new(RejectedTokenPolicy {
                credential: registration.credential.clone(),
                id: registration.id,
                pool: Arc::downgrade(&self.inner),
            }));
        let credential: Arc<dyn TokenCredential> = registration.credential.clone();
        let client =
            BlobServiceClient::new(endpoint.url().clone(), Some(credential), Some(options))?;
        tracing::debug!(
            credential = %registration.id,
            endpoint = %endpoint,
            "blob-pool: client created"
        );
        Ok(Entry {
            client,
            credential: registration.id,
            owner: registration.owner.clone(),
            endpoint: endpoint.clone(),
            retired: inner.retired.clone(),
        })
    }

    /// Evict the clients of every dropped credential (cause `OwnerGone`) and forget their
    /// registrations and token caches (B4). [`client`](Self::client) and the sweeper call it
    /// when they see a dropped credential; call it yourself to be sure right now.
    pub async fn evict_dropped(&self) -> RetireReport {
        let inner = &*self.inner;
        let gone = inner.registry.remove_dropped();
        if !gone.is_empty() {
            inner
                .credentials_dropped
                .fetch_add(gone.len() as u64, Ordering::Relaxed);
            inner.metrics.credentials_dropped(gone.len());
            tracing::debug!(count = gone.len(), "blob-pool: credentials dropped");
        }
        inner
            .pool
            .evict_where(EvictionCause::OwnerGone, |_, entry| entry.owner_dropped())
            .await
    }

    /// Retire clients unused for longer than the configured idle TTL (default 1800 s,
    /// `BLOB_SERVICE_POOL_IDLE_TTL_SECONDS`) (B5).
    pub async fn prune_idle(&self) -> RetireReport {
        self.prune_idle_with(self.inner.config.idle_ttl).await
    }

    /// Retire clients unused for longer than `idle_ttl`, clamped into the idle-TTL knob's range
    /// as [`BlobPoolConfig::idle_ttl`](crate::BlobPoolConfig::idle_ttl) is: 1 s – 7 days (any
    /// value, zero and `Duration::MAX` included).
    pub async fn prune_idle_with(&self, idle_ttl: Duration) -> RetireReport {
        let idle_ttl = crate::config::IDLE_TTL_SECONDS.clamp_secs(idle_ttl);
        self.inner.pool.prune_idle(idle_ttl).await
    }

    /// What the sweeper does on each tick: evict dropped credentials' clients, clients left
    /// over from registrations removed by [`reset`](Self::reset) or
    /// [`invalidate_credential`](Self::invalidate_credential) while they were being built, and
    /// idle clients.
    pub async fn sweep(&self) -> SweepReport {
        let dropped = self.evict_dropped().await;
        let (live, bound) = self.inner.registry.snapshot();
        let orphans = self
            .inner
            .pool
            .evict_where(EvictionCause::Reset, |key, _| {
                key.credential < bound && !live.contains(&key.credential)
            })
            .await;
        let idle = self.prune_idle().await;
        SweepReport {
            owner_gone: dropped.total(),
            orphaned: orphans.total(),
            idle: idle.total(),
        }
    }

    /// Forget `credential`: retire its clients and its token cache (cause `Invalidated`). The
    /// next [`client`](Self::client) call registers it afresh and fetches a new token. Use it
    /// when the service rejects a token the credential still claims is valid (Azure answers
    /// 403 `AuthenticationFailed`, which the SDK does not treat as "refresh the token").
    pub async fn invalidate_credential(
        &self,
        credential: &Arc<dyn TokenCredential>,
    ) -> RetireReport {
        let Some(id) = self.inner.registry.remove(credential) else {
            return RetireReport::default();
        };
        self.inner
            .pool
            .evict_where(EvictionCause::Invalidated, |key, _| key.credential == id)
            .await
    }

    /// Retire every client and forget every credential registration and token cache (B6), and
    /// rebuild the shared transport's connection pool (requests in flight finish on the old
    /// one). The pool stays usable.
    pub async fn reset(&self) -> Result<RetireReport, BlobPoolError> {
        let inner = &*self.inner;
        let credentials = inner.registry.clear();
        let report = inner.pool.reset().await;
        tracing::info!(credentials, clients = report.total(), "blob-pool: reset");
        inner
            .transport
            .client()
            .reset()
            .map_err(|e| BlobPoolError::Transport(Arc::new(e)))?;
        Ok(report)
    }

    /// The token-cache counters for `credential`'s storage scope, if it is registered: how many
    /// tokens were fetched for every client of that credential together (B8).
    pub fn token_stats(&self, credential: &Arc<dyn TokenCredential>) -> Option<RefreshStats> {
        let registration = self.inner.registry.get(credential)?;
        Some(registration.credential.cache_for(&[STORAGE_SCOPE]).stats())
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> BlobPoolStats {
        let inner = &*self.inner;
        BlobPoolStats {
            pool: inner.pool.stats(),
            credentials: inner.registry.len(),
            registrations: inner.registry.issued(),
            credentials_dropped: inner.credentials_dropped.load(Ordering::Relaxed),
            tokens_rejected: inner.tokens_rejected.load(Ordering::Relaxed),
            clients_retired: inner.retired.load(Ordering::Relaxed),
            transport: inner.transport.client().stats(),
        }
    }

    /// Clients in the pool now.
    pub fn len(&self) -> usize {
        self.inner.pool.len()
    }

    /// Whether the pool holds no client.
    pub fn is_empty(&self) -> bool {
        self.inner.pool.is_empty()
    }

    /// The configuration.
    pub fn config(&self) -> &BlobPoolConfig {
        &self.inner.config
    }

    /// The shared retry-transport client (limits, stats).
    pub fn transport(&self) -> &RetryClient {
        self.inner.transport.client()
    }

    /// Start the sweeper on first use, if configured. It holds only a `Weak` to the pool and
    /// ends when the pool is dropped.
    fn ensure_sweeper(&self) {
        let Some(every) = self.inner.config.sweep_interval else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // The first tick is fixed now, not when the task is first polled. `every` is clamped
        // (at most 1 day) by the config; checked_add keeps even a bad value from panicking.
        let Some(first) = Instant::now().checked_add(every) else {
            return;
        };
        // The token goes with the task: a pool outliving the runtime that ran its sweeper
        // starts a new one on its next `client()` call.
        let Some(running) = self.inner.sweeper_started.start() else {
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        runtime.spawn(async move {
            let _running = running;
            sweep_loop(weak, first, every).await;
        });
    }

    #[cfg(test)]
    pub(crate) fn with_http_client(
        config: BlobPoolConfig,
        http: Arc<dyn azure_core::http::HttpClient>,
    ) -> Self {
        let pool = BlobPool::builder()
            .config(config)
            .build()
            .expect("a default transport builds without IO");
        let mut inner = Arc::into_inner(pool.inner).expect("sole owner");
        inner.client_options.transport = Some(azure_core::http::Transport::new(http));
        Self {
            inner: Arc::new(inner),
        }
    }
}

async fn sweep_loop(pool: Weak<Inner>, first: Instant, every: Duration) {
    let mut ticks = tokio::time::interval_at(first, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(inner) = pool.upgrade() else { return };
        BlobPool { inner }.sweep().await;
    }
}

impl fmt::Debug for BlobPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobPool")
            .field("clients", &self.len())
            .field("registry", &self.inner.registry)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}
