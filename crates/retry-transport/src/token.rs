//! `TokenCacheCredential`: a token-refresh cache as the client's credential hook (R7, T11).

use std::fmt;

use futures::future::BoxFuture;
use http::HeaderValue;
use token_refresh::{BearerToken, TokenCache, TokenSource};

use crate::error::BoxError;
use crate::hooks::Credential;

/// Sends `Authorization: Bearer <token>` from a [`TokenCache`], and wires rejections: on a 401
/// the client reports the value it sent ([`Credential::rejected`]) and the cache drops that
/// token if it is still the cached one (T11), so the one retry (R7) carries a new token — and
/// a burst of 401s for one token costs one refresh.
///
/// ```no_run
/// use std::sync::Arc;
/// use retry_transport::{RetryClient, TokenCacheCredential};
/// use token_refresh::{RefreshConfig, TokenCache, TokenSource, BearerToken};
///
/// fn client<S: TokenSource<Token = BearerToken>>(source: S) -> RetryClient {
///     let cache = TokenCache::new(source, RefreshConfig::static_stability());
///     RetryClient::builder()
///         .credential(Arc::new(TokenCacheCredential::new(cache)))
///         .build()
///         .expect("valid configuration")
/// }
/// ```
pub struct TokenCacheCredential<S: TokenSource<Token = BearerToken>> {
    cache: TokenCache<S>,
}

impl<S: TokenSource<Token = BearerToken>> TokenCacheCredential<S> {
    /// A credential hook over `cache` (clones of the cache share it).
    pub fn new(cache: TokenCache<S>) -> Self {
        Self { cache }
    }

    /// The cache, e.g. for its stats.
    pub fn cache(&self) -> &TokenCache<S> {
        &self.cache
    }
}

impl<S: TokenSource<Token = BearerToken>> Credential for TokenCacheCredential<S> {
    /// The cached token (a refresh after a 401 is driven by [`Credential::rejected`], which
    /// the client calls first, so `refresh` needs no handling of its own).
    fn authorization(&self, _refresh: bool) -> BoxFuture<'_, Result<HeaderValue, BoxError>> {
        Box::pin(async move {
            let token = self.cache.token().await?;
            let mut value = HeaderValue::try_from(format!("Bearer {}", token.secret()))?;
            value.set_sensitive(true);
            Ok(value)
        })
    }

    fn rejected(&self, value: &HeaderValue) {
        let Some(secret) = value
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
        else {
            return;
        };
        self.cache.invalidate_if(|cached| cached.secret() == secret);
    }
}

impl<S: TokenSource<Token = BearerToken>> fmt::Debug for TokenCacheCredential<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The cache's Debug shows where the token stands, never the token.
        f.debug_struct("TokenCacheCredential")
            .field("cache", &self.cache)
            .finish()
    }
}
