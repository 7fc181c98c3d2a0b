//! The rate-limited upstream job API: retry-transport (or a naive loop that sleeps holding its slot).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use reqwest::{Method, StatusCode};
use retry_transport::{Limits, RetryClient, RetryPolicy, parse_retry_after};
use serde::Serialize;
use tokio::sync::Semaphore;
use url::Url;

use crate::config::{Mode, UpstreamConfig};
use crate::error::{ApiError, StartError};

/// Counters for `/api/stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct UpstreamStats {
    /// Calls made.
    pub requests: u64,
    /// Attempts sent (first tries and retries).
    pub attempts: u64,
    /// Retries after 429/503.
    pub retries: u64,
    /// Calls that found no free connection slot within the acquire timeout.
    pub pool_timeouts: u64,
}

/// What the upstream said to a submitted job.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Submitted {
    /// The final HTTP status.
    pub status: u16,
}

/// The seed-002 loop: sleep through `Retry-After` while still holding the throttled response
/// and its connection slot. Comparison only.
struct NaiveRetry {
    http: reqwest::Client,
    slots: Arc<Semaphore>,
    acquire_timeout: Duration,
    max_attempts: u32,
    requests: AtomicU64,
    attempts: AtomicU64,
    retries: AtomicU64,
    pool_timeouts: AtomicU64,
}

enum Backend {
    Pooled(RetryClient),
    Naive(NaiveRetry),
}

/// The upstream as the dashboard calls it.
pub(crate) struct Upstream {
    base: Url,
    backend: Backend,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

/// The longest `Retry-After` either mode honours (retry-transport's default cap).
const RETRY_AFTER_CAP: Duration = Duration::from_secs(60);

impl Upstream {
    pub(crate) fn new(config: &UpstreamConfig, mode: Mode) -> Result<Self, StartError> {
        crate::http::ensure_crypto_provider();
        let http_error = |source: Box<dyn std::error::Error + Send + Sync>| StartError::Http {
            what: "the upstream job API".to_string(),
            source,
        };
        let backend = match mode {
            Mode::Pooled => Backend::Pooled(
                RetryClient::builder()
                    .limits(
                        Limits::from_env()
                            .max_in_use(config.max_connections)
                            .acquire_timeout(config.acquire_timeout()),
                    )
                    .policy(
                        RetryPolicy::default()
                            .max_attempts(config.max_attempts)
                            .retry_after_cap(RETRY_AFTER_CAP),
                    )
                    .build()
                    .map_err(|e| http_error(Box::new(e)))?,
            ),
            Mode::Naive => Backend::Naive(NaiveRetry {
                http: reqwest::Client::builder()
                    .build()
                    .map_err(|e| http_error(Box::new(e)))?,
                slots: Arc::new(Semaphore::new(config.max_connections.max(1))),
                acquire_timeout: config.acquire_timeout(),
                max_attempts: config.max_attempts.max(1),
                requests: AtomicU64::new(0),
                attempts: AtomicU64::new(0),
                retries: AtomicU64::new(0),
                pool_timeouts: AtomicU64::new(0),
            }),
        };
        Ok(Self {
            base: config.url.clone(),
            backend,
        })
    }

    pub(crate) fn stats(&self) -> UpstreamStats {
        match &self.backend {
            Backend::Pooled(client) => {
                let stats = client.stats();
                UpstreamStats {
                    requests: stats.requests,
                    attempts: stats.attempts,
                    retries: stats.retries.throttled + stats.retries.unavailable,
                    pool_timeouts: stats.pool_timeouts,
                }
            }
            Backend::Naive(naive) => UpstreamStats {
                requests: naive.requests.load(Ordering::Relaxed),
                attempts: naive.attempts.load(Ordering::Relaxed),
                retries: naive.retries.load(Ordering::Relaxed),
                pool_timeouts: naive.pool_timeouts.load(Ordering::Relaxed),
            },
        }
    }

    fn url(&self, id: &str) -> Result<Url, ApiError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| ApiError::BadRequest("the upstream URL cannot take a path".into()))?
            .pop_if_empty()
            .extend(["submit", id]);
        Ok(url)
    }

    /// POST the job to `{upstream}/submit/{id}`.
    pub(crate) async fn submit(&self, id: &str, body: Vec<u8>) -> Result<Submitted, ApiError> {
        let url = self.url(id)?;
        match &self.backend {
            Backend::Pooled(client) => {
                let request = client
                    .request(Method::POST, url)
                    .header("content-type", "application/json")
                    .body(body);
                let response = client.send(request).await.map_err(|e| {
                    if e.is_pool_timeout() {
                        ApiError::UpstreamBusy
                    } else {
                        ApiError::backend("upstream", &e)
                    }
                })?;
                let status = response.status().as_u16();
                // Reading the body to its end releases the connection slot.
                let _ = response.bytes().await;
                Ok(Submitted { status })
            }
            Backend::Naive(naive) => naive.submit(url, body).await,
        }
    }
}

impl NaiveRetry {
    async fn submit(&self, url: Url, body: Vec<u8>) -> Result<Submitted, ApiError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let Ok(Ok(_permit)) =
            tokio::time::timeout(self.acquire_timeout, self.slots.clone().acquire_owned()).await
        else {
            self.pool_timeouts.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::UpstreamBusy);
        };
        let mut attempt = 1;
        loop {
            self.attempts.fetch_add(1, Ordering::Relaxed);
            let response = self
                .http
                .post(url.clone())
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .map_err(|e| ApiError::backend("upstream", &e))?;
            let status = response.status();
            let retryable = matches!(
                status,
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
            );
            if !retryable || attempt >= self.max_attempts {
                let _ = response.bytes().await;
                return Ok(Submitted {
                    status: status.as_u16(),
                });
            }
            let wait = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|value| parse_retry_after(value, SystemTime::now()))
                .unwrap_or(Duration::from_secs(1))
                .min(RETRY_AFTER_CAP);
            // The seed's bug, kept on purpose: the response (its connection) and the slot are
            // held through the sleep.
            tokio::time::sleep(wait).await;
            drop(response);
            self.retries.fetch_add(1, Ordering::Relaxed);
            attempt += 1;
        }
    }
}
