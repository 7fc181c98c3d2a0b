//! `CachingCredential`: an `azure_core` `TokenCredential` with one cache per scope set (T7).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::error::ErrorKind;

use crate::cache::TokenCache;
use crate::config::RefreshConfig;
use crate::error::RefreshError;
use crate::source::{Fetched, TokenSource};

/// A [`TokenSource`] that asks an existing [`TokenCredential`] for a token for fixed scopes.
///
/// The token's wall-clock `expires_on` is converted into a monotonic deadline when the cache
/// installs it (T6).
#[derive(Debug, Clone)]
pub struct CredentialSource {
    credential: Arc<dyn TokenCredential>,
    scopes: Vec<String>,
}

impl CredentialSource {
    /// A source calling `credential.get_token(scopes)`.
    pub fn new(credential: Arc<dyn TokenCredential>, scopes: &[String]) -> Self {
        Self {
            credential,
            scopes: scopes.to_vec(),
        }
    }

    /// The scopes this source asks for.
    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }
}

impl TokenSource for CredentialSource {
    type Token = AccessToken;
    type Error = azure_core::Error;

    async fn fetch(&self) -> Result<Fetched<AccessToken>, azure_core::Error> {
        let scopes: Vec<&str> = self.scopes.iter().map(String::as_str).collect();
        // No caller's options: the refresh is shared by every caller, so no one caller's
        // context (cancellation, tracing) may govern it.
        let token = self.credential.get_token(&scopes, None).await?;
        Ok(Fetched::from(token))
    }

    /// A 400, 401 or 403 from the identity endpoint (a bad client secret, `invalid_client`, an
    /// unknown tenant) cannot be cured by retrying: it is non-recoverable (T10). Everything
    /// else — timeouts, connection errors, 5xx, 429, errors without a status — is recoverable.
    fn is_recoverable(&self, error: &azure_core::Error) -> bool {
        !matches!(
            error.kind(),
            ErrorKind::HttpResponse { status, .. } if matches!(u16::from(*status), 400 | 401 | 403)
        )
    }
}

type Factory<S> = Box<dyn Fn(&[String]) -> S + Send + Sync>;

/// An [`azure_core::credentials::TokenCredential`] that keeps one [`TokenCache`] per scope set
/// (T7): stale-while-refresh, back-off and single-flight for every Azure SDK client given it,
/// and for anything else that asks it for a token (the Kubernetes bearer path) — one cache and
/// one refresh per scope set, however many clients share it.
///
/// Scope sets are keyed sorted and de-duplicated, so `["b", "a"]` and `["a", "b", "a"]` share
/// a cache. Caches are created on first use (under a lock held only for the map lookup; a new
/// cache fetches nothing until asked) and live as long as the credential: services use a
/// handful of scope sets.
///
/// ```no_run
/// use std::sync::Arc;
/// use azure_core::credentials::TokenCredential;
/// use token_refresh::{CachingCredential, RefreshConfig};
///
/// # async fn example(inner: Arc<dyn TokenCredential>) -> azure_core::Result<()> {
/// // e.g. inner = azure_identity::ManagedIdentityCredential::new(None)?
/// let credential: Arc<dyn TokenCredential> =
///     Arc::new(CachingCredential::wrap(inner, RefreshConfig::from_env()));
/// // Give `credential` to every Azure SDK client; they now share one refresh per scope.
/// let token = credential.get_token(&["https://storage.azure.com/.default"], None).await?;
/// # drop(token);
/// # Ok(())
/// # }
/// ```
pub struct CachingCredential<S: TokenSource<Token = AccessToken> = CredentialSource> {
    factory: Factory<S>,
    config: RefreshConfig,
    caches: Mutex<HashMap<Vec<String>, TokenCache<S>>>,
}

impl CachingCredential<CredentialSource> {
    /// Cache the tokens of an existing credential (`azure_identity`'s, or any other).
    pub fn wrap(credential: Arc<dyn TokenCredential>, config: RefreshConfig) -> Self {
        Self::new(config, move |scopes| {
            CredentialSource::new(credential.clone(), scopes)
        })
    }
}

impl<S: TokenSource<Token = AccessToken>> CachingCredential<S> {
    /// A credential over any source of Azure access tokens: `factory` builds the source for a
    /// scope set (sorted, de-duplicated) the first time that scope set is asked for.
    pub fn new(
        config: RefreshConfig,
        factory: impl Fn(&[String]) -> S + Send + Sync + 'static,
    ) -> Self {
        Self {
            factory: Box::new(factory),
            config,
            caches: Mutex::new(HashMap::new()),
        }
    }

    /// The cache for `scopes`, created on first use. Clones share it: hand it to a path that
    /// needs the token directly (e.g. a Kubernetes bearer token for the AKS scope).
    pub fn cache_for<T: AsRef<str>>(&self, scopes: &[T]) -> TokenCache<S> {
        let mut key: Vec<String> = scopes.iter().map(|s| s.as_ref().to_owned()).collect();
        key.sort_unstable();
        key.dedup();
        let mut caches = self.caches.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(cache) = caches.get(&key) {
            return cache.clone();
        }
        let cache = TokenCache::new((self.factory)(&key), self.config.clone());
        caches.insert(key, cache.clone());
        cache
    }

    /// A token for `scopes`, through that scope set's cache.
    pub async fn access_token<T: AsRef<str>>(
        &self,
        scopes: &[T],
    ) -> Result<AccessToken, RefreshError> {
        self.cache_for(scopes).token().await
    }

    /// A server rejected `rejected` (a 401/403 for a request made with it): if it is still the
    /// cached token for `scopes`, that scope set's next call takes the mandatory path (T11);
    /// see [`TokenCache::invalidate_if`]. Returns whether it matched.
    pub fn invalidate<T: AsRef<str>>(&self, scopes: &[T], rejected: &AccessToken) -> bool {
        let rejected = rejected.token.secret();
        self.cache_for(scopes)
            .invalidate_if(|cached| cached.token.secret() == rejected)
    }

    /// How many scope sets have a cache.
    pub fn scope_sets(&self) -> usize {
        self.caches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[async_trait::async_trait]
impl<S: TokenSource<Token = AccessToken>> TokenCredential for CachingCredential<S> {
    async fn get_token(
        &self,
        scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        self.access_token(scopes)
            .await
            .map_err(|error| azure_core::Error::new(ErrorKind::Credential, error))
    }
}

impl<S: TokenSource<Token = AccessToken>> fmt::Debug for CachingCredential<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // TokenCache's Debug shows where each token stands, never the token.
        let caches = self.caches.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("CachingCredential")
            .field("caches", &*caches)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
