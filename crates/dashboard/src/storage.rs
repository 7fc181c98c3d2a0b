//! Blob storage: submitted jobs and the storage card, through blob-pool (or a client per call).

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use apikey_cache::BlobStore;
use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, RequestContent, StatusCode, Transport};
use azure_storage_blob::models::BlobContainerClientListBlobsOptions;
use azure_storage_blob::{BlobServiceClient, BlobServiceClientOptions};
use blob_pool::{BlobPool, Endpoint, PooledBlobClient, storage_transport};
use futures::TryStreamExt;
use serde::Serialize;

use crate::config::{Mode, StorageConfig};
use crate::credential::Credentials;
use crate::error::{ApiError, StartError};

/// Counters for `/api/stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct StorageStats {
    /// `BlobServiceClient`s built (pooled: pool creations; naive: one per call).
    pub clients_created: u64,
    /// Storage operations the dashboard made (key-store reads and writes included).
    pub operations: u64,
}

/// A stored job, as the jobs list shows it.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct StoredJob {
    /// The blob name, `<job id>.json`.
    pub name: String,
    /// Its size in bytes.
    pub bytes: u64,
}

/// The storage card.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct StorageCard {
    /// The account endpoint.
    pub endpoint: String,
    /// The jobs container.
    pub container: String,
    /// Blobs in it.
    pub blobs: usize,
    /// Their total size.
    pub bytes: u64,
    /// The container holds more than [`CARD_COUNT_MAX`] blobs; the counts stop there.
    pub capped: bool,
}

/// Jobs `GET /api/blast/jobs` returns by default (`?limit=` changes it).
pub const JOBS_PAGE: usize = 50;
/// The most jobs one `GET /api/blast/jobs` returns.
pub const JOBS_PAGE_MAX: usize = 500;
/// The most blobs the storage card counts (one listing call).
pub const CARD_COUNT_MAX: usize = 1000;

/// A service client for one operation: a pooled handle or a throwaway client.
pub(crate) enum ServiceClient {
    Pooled(PooledBlobClient),
    Naive(Box<BlobServiceClient>),
}

impl Deref for ServiceClient {
    type Target = BlobServiceClient;

    fn deref(&self) -> &BlobServiceClient {
        match self {
            Self::Pooled(client) => client,
            Self::Naive(client) => client,
        }
    }
}

enum Backend {
    Pooled(BlobPool),
    /// The seed-000-era shape: a new client (and so a new token) for every call.
    Naive {
        ca: Option<reqwest::Certificate>,
        built: AtomicU64,
    },
}

/// Blob storage as the dashboard uses it.
pub(crate) struct Storage {
    config: StorageConfig,
    endpoint: Endpoint,
    /// One `Arc` for the pool's whole life: blob-pool keys clients by credential identity.
    cached: Arc<dyn TokenCredential>,
    raw: Arc<dyn TokenCredential>,
    /// The pool for infrastructure (the API-key store), whatever the mode.
    infra: BlobPool,
    backend: Backend,
    operations: AtomicU64,
    /// Jobs written since start (pruning runs every [`Storage::prune_every`] of them).
    jobs_written: AtomicU64,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Storage {
    pub(crate) fn new(
        config: &StorageConfig,
        credentials: &Credentials,
        mode: Mode,
    ) -> Result<Self, StartError> {
        crate::http::ensure_crypto_provider();
        let endpoint =
            Endpoint::parse(&config.endpoint).map_err(|e| StartError::Storage(Box::new(e)))?;
        let ca = match &config.ca_pem {
            Some(pem) => Some(crate::http::certificate(pem, "Blob storage")?),
            None => None,
        };
        let mut transport = storage_transport();
        if let Some(ca) = &ca {
            transport = transport.tls_certs_only([ca.clone()]);
        }
        let transport = transport
            .build()
            .map_err(|e| StartError::Storage(Box::new(e)))?;
        let infra = BlobPool::builder()
            .transport(transport)
            .build()
            .map_err(|e| StartError::Storage(Box::new(e)))?;
        let backend = match mode {
            Mode::Pooled => Backend::Pooled(infra.clone()),
            Mode::Naive => Backend::Naive {
                ca,
                built: AtomicU64::new(0),
            },
        };
        Ok(Self {
            config: config.clone(),
            endpoint,
            cached: credentials.cached(),
            raw: credentials.raw(),
            infra,
            backend,
            operations: AtomicU64::new(0),
            jobs_written: AtomicU64::new(0),
        })
    }

    pub(crate) fn stats(&self) -> StorageStats {
        let clients_created = match &self.backend {
            Backend::Pooled(pool) => pool.stats().pool.creations,
            Backend::Naive { built, .. } => built.load(Ordering::Relaxed),
        };
        StorageStats {
            clients_created,
            operations: self.operations.load(Ordering::Relaxed),
        }
    }

    /// apikey-cache's Blob store for `container`/`blob`, over the pooled clients (whatever
    /// the mode: the key store is infrastructure, not a path under comparison).
    pub(crate) fn key_store(&self, container: &str, blob: &str) -> BlobStore {
        BlobStore::new(
            self.infra.clone(),
            self.cached.clone(),
            self.endpoint.clone(),
            container,
            blob,
        )
    }

    /// A client for one operation of the dashboard's own storage paths.
    async fn client(&self) -> Result<ServiceClient, ApiError> {
        self.operations.fetch_add(1, Ordering::Relaxed);
        match &self.backend {
            Backend::Pooled(pool) => pool
                .client(&self.cached, &self.endpoint)
                .await
                .map(ServiceClient::Pooled)
                .map_err(|e| ApiError::backend("blob storage", &e)),
            Backend::Naive { ca, built } => {
                let mut http = reqwest::Client::builder().no_gzip().no_deflate();
                if let Some(ca) = ca {
                    http = http.tls_certs_only([ca.clone()]);
                }
                let http = http
                    .build()
                    .map_err(|e| ApiError::backend("blob storage", &e))?;
                let options = BlobServiceClientOptions {
                    client_options: ClientOptions {
                        transport: Some(Transport::new(Arc::new(http))),
                        ..ClientOptions::default()
                    },
                    ..BlobServiceClientOptions::default()
                };
                let client = BlobServiceClient::new(
                    self.endpoint.url().clone(),
                    Some(self.raw.clone()),
                    Some(options),
                )
                .map_err(|e| ApiError::backend("blob storage", &e))?;
                built.fetch_add(1, Ordering::Relaxed);
                Ok(ServiceClient::Naive(Box::new(client)))
            }
        }
    }

    /// Create the jobs container unless it exists.
    pub(crate) async fn ensure_containers(&self) -> Result<(), ApiError> {
        let client = self.client().await?;
        create_container(&client, &self.config.jobs_container).await
    }

    /// Write a job document.
    pub(crate) async fn put_job(&self, id: &str, document: Vec<u8>) -> Result<(), ApiError> {
        let client = self.client().await?;
        client
            .blob_container_client(&self.config.jobs_container)
            .blob_client(&format!("{id}.json"))
            .upload(RequestContent::from(document), None)
            .await
            .map_err(|e| ApiError::backend("blob storage", &e))?;
        let written = self.jobs_written.fetch_add(1, Ordering::Relaxed) + 1;
        if written.is_multiple_of(self.prune_every()) {
            // The job is stored; a failed prune only delays the trimming to the next one.
            if let Err(error) = self.prune_jobs().await {
                tracing::warn!(%error, "pruning old jobs failed; retrying at the next prune");
            }
        }
        Ok(())
    }

    /// Prune once per this many jobs written: a tenth of the retention, so the container
    /// holds at most 110 % of it and a submission lists the container at most every tenth time.
    fn prune_every(&self) -> u64 {
        (self.config.job_retention as u64 / 10).max(1)
    }

    /// Delete the jobs older than the newest [`StorageConfig::job_retention`]: the container
    /// (and so the storage card's listing and the job list) stays bounded however long the
    /// service runs.
    async fn prune_jobs(&self) -> Result<(), ApiError> {
        let keep = self.config.job_retention;
        let (jobs, _) = self
            .list_jobs(keep.saturating_add(self.prune_every() as usize * 2))
            .await?;
        let client = self.client().await?;
        let container = client.blob_container_client(&self.config.jobs_container);
        for job in jobs.iter().skip(keep) {
            match container.blob_client(&job.name).delete(None).await {
                Ok(_) => {}
                Err(e) if e.http_status() == Some(StatusCode::NotFound) => {}
                Err(e) => return Err(ApiError::backend("blob storage", &e)),
            }
        }
        Ok(())
    }

    /// The newest `limit` jobs (job names sort newest first) and whether there are more: one
    /// listing call of at most `limit` items, however many jobs the container holds.
    pub(crate) async fn list_jobs(&self, limit: usize) -> Result<(Vec<StoredJob>, bool), ApiError> {
        let client = self.client().await?;
        let container = client.blob_container_client(&self.config.jobs_container);
        let options = BlobContainerClientListBlobsOptions {
            maxresults: Some(i32::try_from(limit.saturating_add(1)).unwrap_or(i32::MAX)),
            ..Default::default()
        };
        let mut pager = container
            .list_blobs(Some(options))
            .map_err(|e| ApiError::backend("blob storage", &e))?;
        let mut jobs = Vec::new();
        while let Some(item) = pager
            .try_next()
            .await
            .map_err(|e| ApiError::backend("blob storage", &e))?
        {
            if jobs.len() == limit {
                return Ok((jobs, true));
            }
            jobs.push(StoredJob {
                name: item.name.unwrap_or_default(),
                bytes: item
                    .properties
                    .and_then(|p| p.content_length)
                    .unwrap_or_default(),
            });
        }
        Ok((jobs, false))
    }

    /// The storage card: what the jobs container holds, counted up to [`CARD_COUNT_MAX`] blobs
    /// (`capped` says the container holds more).
    pub(crate) async fn card(&self) -> Result<StorageCard, ApiError> {
        let (jobs, capped) = self.list_jobs(CARD_COUNT_MAX).await?;
        Ok(StorageCard {
            endpoint: self.endpoint.as_str().to_string(),
            container: self.config.jobs_container.clone(),
            blobs: jobs.len(),
            bytes: jobs.iter().map(|j| j.bytes).sum(),
            capped,
        })
    }
}

/// Create `name` unless it exists (409 is fine).
async fn create_container(client: &BlobServiceClient, name: &str) -> Result<(), ApiError> {
    match client.blob_container_client(name).create(None).await {
        Ok(_) => Ok(()),
        Err(e) if e.http_status() == Some(StatusCode::Conflict) => Ok(()),
        Err(e) => Err(ApiError::backend("blob storage", &e)),
    }
}
