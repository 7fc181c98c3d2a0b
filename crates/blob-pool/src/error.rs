//! `BlobPoolError`: what can go wrong building the pool, parsing an endpoint or building a client.

use std::sync::Arc;

/// Errors from [`BlobPool`](crate::BlobPool) and [`Endpoint`](crate::Endpoint).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BlobPoolError {
    /// The endpoint is not a usable Blob service URL. The message says why; the URL itself is
    /// not repeated (it may carry a SAS token in its query).
    #[error("invalid Blob service endpoint: {reason}")]
    InvalidEndpoint {
        /// What is wrong, e.g. "bearer-token clients need https".
        reason: &'static str,
    },
    /// The storage account name is not 3–24 lowercase letters and digits.
    #[error("invalid storage account name: use 3 to 24 lowercase letters and digits")]
    InvalidAccountName,
    /// The shared retry-transport client could not be built (for example a bad limit).
    #[error("building the shared HTTP transport failed")]
    Transport(#[source] Arc<retry_transport::Error>),
    /// The Azure SDK refused to build a `BlobServiceClient` for this endpoint.
    #[error("building the BlobServiceClient failed")]
    Client(#[source] Arc<azure_core::Error>),
    /// The pool's underlying keyed pool was shut down.
    #[error("the blob client pool is shut down")]
    ShutDown,
}

/// Whether `error` is the service refusing the bearer token: HTTP 401, or 403 with error code
/// `AuthenticationFailed` (what Azure Storage and Azurite answer for an expired, not-yet-valid,
/// wrong-audience or revoked token).
///
/// The SDK clears its own token cache only on 401. After a 403 `AuthenticationFailed` for a
/// credential that still hands out the same token, call
/// [`BlobPool::invalidate_credential`](crate::BlobPool::invalidate_credential).
pub fn is_authentication_failed(error: &azure_core::Error) -> bool {
    use azure_core::error::ErrorKind;
    use azure_core::http::StatusCode;
    match error.kind() {
        ErrorKind::HttpResponse {
            status, error_code, ..
        } => {
            *status == StatusCode::Unauthorized
                || (*status == StatusCode::Forbidden
                    && error_code.as_deref() == Some("AuthenticationFailed"))
        }
        _ => false,
    }
}
