//! `RefreshError`: why a caller who had to wait for a blocking refresh got no token.

use std::sync::Arc;
use std::time::Duration;

/// Why [`TokenCache::token`](crate::TokenCache::token) returned no token.
///
/// Only callers that had to wait (no token yet, or the cached one expired) ever see an error:
/// a stale token is served whatever happens to its background refresh, and in the
/// static-stability preset (T9) a cached token, even an expired one, is served instead of a
/// recoverable error. The error is shared by every caller that waited on the same refresh (it is
/// cheap to clone). A recoverable error is not cached: the next call tries again. A
/// [`NonRecoverable`](Self::NonRecoverable) one (T10) reaches the waiting callers in both
/// presets and is repeated to callers for a jittered 1–5 s without contacting the source.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RefreshError {
    /// The token source failed; the source's error is the `source()`.
    #[error("token source failed to fetch a token")]
    Source(#[source] Arc<dyn std::error::Error + Send + Sync + 'static>),
    /// The token source failed with an error it classified as non-recoverable
    /// ([`TokenSource::is_recoverable`](crate::TokenSource::is_recoverable)): a bad secret, a
    /// rejected client. Returned at once, never backed off, and repeated to callers for a
    /// jittered 1–5 s without contacting the source (T10); the source's error is the `source()`.
    #[error("token source failed with a non-recoverable error")]
    NonRecoverable(#[source] Arc<dyn std::error::Error + Send + Sync + 'static>),
    /// The token source did not answer within the load timeout; raise
    /// `TOKEN_REFRESH_LOAD_TIMEOUT_SECONDS` if the identity endpoint is legitimately slow.
    #[error("token source did not answer within {0:?}")]
    Timeout(Duration),
    /// The token source panicked while fetching; the panic is logged at `warn`, every caller
    /// waiting on that refresh gets this error, and the next call tries again.
    #[error("token source panicked while fetching a token")]
    SourcePanicked,
}

impl RefreshError {
    /// Whether this is a load timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout(_))
    }

    /// Whether the source classified the error as non-recoverable (T10).
    pub fn is_non_recoverable(&self) -> bool {
        matches!(self, Self::NonRecoverable(_))
    }

    /// The source's error, if it is one of type `E`.
    pub fn source_error<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            Self::Source(source) | Self::NonRecoverable(source) => source.downcast_ref::<E>(),
            _ => None,
        }
    }
}
