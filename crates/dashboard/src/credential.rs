//! Token plumbing: every token the dashboard uses goes through one counted credential.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use token_refresh::{CachingCredential, RefreshConfig};

/// Counts the `get_token` calls that reach the underlying credential: the number of token
/// fetches (from Entra ID in production; from testkit's `TestCredential` in the demo).
#[derive(Clone)]
pub struct CountingCredential {
    inner: Arc<dyn TokenCredential>,
    fetches: Arc<AtomicU64>,
}

impl CountingCredential {
    /// Count the fetches of `inner`.
    pub fn new(inner: Arc<dyn TokenCredential>) -> Self {
        Self {
            inner,
            fetches: Arc::default(),
        }
    }

    /// Fetches so far.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for CountingCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountingCredential")
            .field("fetches", &self.fetches())
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl TokenCredential for CountingCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        self.inner.get_token(scopes, options).await
    }
}

/// The dashboard's credentials: the raw (counted) one, and the token-refresh cache over it
/// that every pooled path uses (ARM for AKS credentials, Blob storage through blob-pool).
#[derive(Debug, Clone)]
pub struct Credentials {
    counted: CountingCredential,
    cached: Arc<dyn TokenCredential>,
}

impl Credentials {
    /// Wrap `credential`: count its fetches, and cache its tokens per scope (token-refresh:
    /// stale-while-refresh, one refresh per scope however many callers).
    pub fn new(credential: Arc<dyn TokenCredential>) -> Self {
        let counted = CountingCredential::new(credential);
        let cached: Arc<dyn TokenCredential> = Arc::new(CachingCredential::wrap(
            Arc::new(counted.clone()),
            RefreshConfig::from_env(),
        ));
        Self { counted, cached }
    }

    /// The token-refresh cache (what the pooled paths use).
    pub fn cached(&self) -> Arc<dyn TokenCredential> {
        self.cached.clone()
    }

    /// The raw credential, counted but not cached (what the naive paths use: each new SDK
    /// client then fetches its own token).
    pub fn raw(&self) -> Arc<dyn TokenCredential> {
        Arc::new(self.counted.clone())
    }

    /// Token fetches that reached the underlying credential.
    pub fn fetches(&self) -> u64 {
        self.counted.fetches()
    }
}
