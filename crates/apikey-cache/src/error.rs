//! Typed errors: store failures, authentication rejections and write failures.

use std::path::PathBuf;
use std::sync::Arc;

/// A boxed error from a store backend.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A [`KeyStore`](crate::KeyStore) operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An optimistic write found a different version than the one it expected (HTTP 412 for
    /// the Blob store, a changed content hash for the file store): re-load, re-apply, re-write.
    #[error("the key document changed since it was read (version conflict)")]
    Conflict,
    /// Reading or writing the key file failed.
    #[error("key file I/O failed on {path}")]
    Io {
        /// The file (or its lock or temporary sibling).
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The stored document is not a valid key document.
    #[error("the stored key document is not valid JSON")]
    Corrupt {
        /// The parse error (it never contains key material: only hashes are stored).
        #[source]
        source: serde_json::Error,
    },
    /// The store did not answer within the configured timeout
    /// ([`CacheConfig::load_timeout`](crate::CacheConfig::load_timeout) /
    /// [`CacheConfig::write_timeout`](crate::CacheConfig::write_timeout)); the operation was
    /// abandoned. For a write, whether it reached the store is unknown.
    #[error("the key store did not answer within {after:?}")]
    TimedOut {
        /// The timeout that expired.
        after: std::time::Duration,
    },
    /// The store does not implement this operation for its [`Layout`](crate::Layout) (e.g.
    /// `load` on a keyed store, `get_record` on a single-document one).
    #[error("the key store does not support `{operation}` in its layout")]
    Unsupported {
        /// The operation asked for.
        operation: &'static str,
    },
    /// The backend could not be reached or answered with an error.
    #[error("the key store is unavailable")]
    Unavailable {
        /// What the backend said.
        #[source]
        source: BoxError,
    },
}

impl StoreError {
    /// A [`StoreError::Unavailable`] carrying `message`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable {
            source: message.into().into(),
        }
    }
}

/// Why [`ApiKeyCache::authenticate`](crate::ApiKeyCache::authenticate) did not return an
/// identity. No variant carries the presented key, so logging one is safe.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No key was presented.
    #[error("no API key presented")]
    Missing,
    /// The key is empty, too long, or contains characters other than visible ASCII.
    #[error("malformed API key")]
    Malformed,
    /// No such key (after a reload from the store, or while reloads are rate-limited).
    #[error("unknown API key")]
    Unknown,
    /// The key exists but was revoked.
    #[error("revoked API key")]
    Revoked,
    /// The key could not be checked: the store failed and this instance has no snapshot that
    /// could answer. Retrying later may succeed.
    #[error("the API key store is unavailable")]
    Unavailable {
        /// The store failure.
        #[source]
        source: Arc<StoreError>,
    },
}

impl AuthError {
    /// A short machine-readable code, used as `error` in the HTTP layer's JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing => "missing_api_key",
            Self::Malformed => "malformed_api_key",
            Self::Unknown | Self::Revoked => "invalid_api_key",
            Self::Unavailable { .. } => "api_key_store_unavailable",
        }
    }
}

/// A local write (create account, issue key, revoke key) failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// An account with this id already exists.
    #[error("account already exists")]
    AccountExists,
    /// No account with this id.
    #[error("no such account")]
    NoSuchAccount,
    /// No key with this id.
    #[error("no such key")]
    NoSuchKey,
    /// Account ids are 1–64 characters of `A-Z a-z 0-9 . _ -`.
    #[error("invalid account id: use 1-64 characters of A-Z, a-z, 0-9, '.', '_' or '-'")]
    InvalidAccountId,
    /// Every attempt met a concurrent writer (version conflict); nothing was written.
    #[error("the key document kept changing under this write ({attempts} attempts)")]
    Contended {
        /// Attempts made.
        attempts: u32,
    },
    /// The store failed; nothing was written (or the outcome of the last attempt is unknown).
    #[error("the key store failed during a write")]
    Store {
        /// The store failure.
        #[source]
        source: Arc<StoreError>,
    },
}
