//! What a cache refreshes from: the `TokenSource` trait and what a fetch returns.

use std::error::Error;
use std::fmt;
use std::future::Future;

use crate::clock::Expiry;

/// Where tokens come from: an identity endpoint, a CLI, a file, another credential.
///
/// A source is called by the cache only — at most one blocking fetch and one background fetch
/// at a time (T1, T3) — so it needs no caching or locking of its own. A fetch that hangs is
/// bounded by the cache's load timeout and then dropped.
///
/// ```
/// use std::time::Duration;
/// use token_refresh::{BearerToken, Expiry, Fetched, TokenSource};
///
/// #[derive(Debug)]
/// struct Static;
///
/// impl TokenSource for Static {
///     type Token = BearerToken;
///     type Error = std::io::Error;
///
///     async fn fetch(&self) -> Result<Fetched<BearerToken>, std::io::Error> {
///         Ok(Fetched::new(
///             BearerToken::new("opaque"),
///             Expiry::In(Duration::from_secs(3600)),
///         ))
///     }
/// }
/// ```
pub trait TokenSource: Send + Sync + 'static {
    /// The token handed to callers. Cloned on every cache hit, so keep it cheap to clone
    /// (an `Arc`, or a small struct), and make its `Debug` redact the secret
    /// ([`BearerToken`] and `azure_core`'s `AccessToken` both do).
    type Token: Clone + Send + Sync + 'static;
    /// Why a fetch failed. Shared with every waiter of a failed blocking refresh.
    type Error: Error + Send + Sync + 'static;

    /// Fetch a new token and say when it expires.
    fn fetch(&self) -> impl Future<Output = Result<Fetched<Self::Token>, Self::Error>> + Send;

    /// Whether retrying can cure `error` (T10). The default says yes for every error.
    ///
    /// Say no for errors only a person can fix — a bad client secret, `invalid_client`, a 400
    /// or 401 from the token endpoint: the cache then returns them to callers at once, applies
    /// no back-off, and answers further calls with the same error for a jittered 1–5 s, so a
    /// caller retrying in a loop cannot hammer the identity endpoint. Recoverable errors (a
    /// timeout, a 5xx, a reset) keep the back-off.
    fn is_recoverable(&self, error: &Self::Error) -> bool {
        let _ = error;
        true
    }
}

/// A freshly fetched token and its expiry, as the source knows it.
///
/// The expiry may be given in any of the forms [`Expiry`] accepts; the cache converts it once,
/// when the token is installed, into a monotonic deadline (T6).
#[derive(Clone)]
pub struct Fetched<T> {
    /// The token.
    pub token: T,
    /// When it stops being valid.
    pub expiry: Expiry,
}

impl<T> Fetched<T> {
    /// A token and its expiry.
    pub fn new(token: T, expiry: Expiry) -> Self {
        Self { token, expiry }
    }

    /// A token that never expires: always fresh, never refreshed.
    pub fn never_expires(token: T) -> Self {
        Self::new(token, Expiry::Never)
    }
}

impl<T> fmt::Debug for Fetched<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token is a secret: only its expiry is shown.
        f.debug_struct("Fetched")
            .field("token", &"<redacted>")
            .field("expiry", &self.expiry)
            .finish()
    }
}

#[cfg(feature = "azure")]
impl From<azure_core::credentials::AccessToken> for Fetched<azure_core::credentials::AccessToken> {
    /// An Azure access token, expiring at its (wall-clock) `expires_on`.
    fn from(token: azure_core::credentials::AccessToken) -> Self {
        let expiry = Expiry::On(token.expires_on);
        Self::new(token, expiry)
    }
}

/// An opaque bearer token whose `Debug` and `Display` never show the secret.
///
/// ```
/// let token = token_refresh::BearerToken::new("s3cr3t");
/// assert_eq!(token.secret(), "s3cr3t");
/// assert!(!format!("{token:?} {token}").contains("s3cr3t"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(std::sync::Arc<str>);

impl BearerToken {
    /// Wrap a secret.
    pub fn new(secret: impl Into<std::sync::Arc<str>>) -> Self {
        Self(secret.into())
    }

    /// The secret, for the `Authorization` header. Never log it.
    pub fn secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BearerToken(<redacted, {} bytes>)", self.0.len())
    }
}

impl fmt::Display for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted bearer token>")
    }
}
