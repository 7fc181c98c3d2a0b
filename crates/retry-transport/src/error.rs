//! The crate's error type.

use std::time::Duration;

/// A boxed error from a caller-supplied hook (a credential source).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a request through [`RetryClient`](crate::RetryClient) failed.
///
/// A response with an error status is *not* an error here: when retries run out, or a
/// `Retry-After` is longer than the cap, the last response is returned for the caller to read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No connection slot became free within the acquire timeout (R4). Every slot was held by
    /// a request or a response body that had not been read to its end or dropped; raise the
    /// limit, or read/drop response bodies sooner.
    #[error("no connection slot free after waiting {waited:?} ({max_in_use} in use)")]
    PoolTimeout {
        /// How long the request waited.
        waited: Duration,
        /// The configured limit of connections in use.
        max_in_use: usize,
    },
    /// The peer sent nothing for the read timeout (default 60 s, see
    /// [`Limits::read_timeout`](crate::Limits::read_timeout)), or an attempt ran past its
    /// connect or total timeout — a black hole, a half-open connection, a hung server — and
    /// the request was not retried (not idempotent) or its retries (attempts, time budget) ran
    /// out. The connection slot has been released.
    #[error("request timed out after {attempts} attempt(s)")]
    Timeout {
        /// Attempts made, the timed-out one included.
        attempts: u32,
        /// The last timeout, as reqwest reported it (`is_timeout()` is true).
        #[source]
        source: reqwest::Error,
    },
    /// The request failed in transport (connect refused, reset, closed mid-request …) and was
    /// not retried, or its retries ran out. Timeouts are [`Error::Timeout`].
    #[error("request failed after {attempts} attempt(s)")]
    Transport {
        /// Attempts made, the failed one included.
        attempts: u32,
        /// The last transport error.
        #[source]
        source: reqwest::Error,
    },
    /// Adaptive client-side throttling (R10, opt-in) rejected the request locally: the
    /// backend has been refusing most recent requests (429/503), so this one was not sent —
    /// no connection, no slot, no credential asked. Back off, or shed the work; the
    /// probability falls as the backend accepts requests again.
    #[error(
        "rejected locally by adaptive throttling (probability {probability:.2}) for {partition}"
    )]
    Throttled {
        /// The partition (by default the host and port) being throttled.
        partition: String,
        /// The rejection probability the request was drawn against.
        probability: f64,
    },
    /// The credential hook failed to produce an `Authorization` value.
    #[error("the credential hook failed")]
    Credential(#[source] BoxError),
    /// The credential hook gave no `Authorization` value within the credential timeout
    /// (default 30 s, see [`Limits::credential_timeout`](crate::Limits::credential_timeout)):
    /// a hung identity endpoint. No slot was held while waiting.
    #[error("the credential hook did not answer within {waited:?}")]
    CredentialTimeout {
        /// How long the request waited for it.
        waited: Duration,
    },
    /// The request could not be built (bad URL, header or body) by a reqwest `RequestBuilder`.
    #[error("invalid request")]
    Request(#[source] reqwest::Error),
    /// The underlying reqwest client could not be built (bad proxy, TLS roots …).
    #[error("could not build the HTTP client")]
    Build(#[source] reqwest::Error),
    /// A configuration value is out of its range (a zero timeout, zero slots). Values above a
    /// range's maximum are clamped, never rejected.
    #[error("invalid configuration: {0}")]
    Config(&'static str),
}

impl Error {
    /// True for [`Error::PoolTimeout`].
    pub fn is_pool_timeout(&self) -> bool {
        matches!(self, Error::PoolTimeout { .. })
    }

    /// True for [`Error::Throttled`]: rejected locally, nothing was sent.
    pub fn is_throttled(&self) -> bool {
        matches!(self, Error::Throttled { .. })
    }

    /// True for [`Error::Timeout`]: the peer did not answer in time.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }
}
