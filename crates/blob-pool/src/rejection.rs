//! `RejectedTokenPolicy`: a token Azure Storage rejected is invalidated in the credential's
//! token cache by identity (T11), so the next request gets a new one.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use azure_core::http::headers::{AUTHORIZATION, HeaderName};
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{Context, Request, StatusCode};
use pool_core::EvictionCause;

use crate::identity::{CredentialId, SharedCredential};
use crate::pool::{Inner, STORAGE_SCOPE};

/// Azure Storage's error code header.
const ERROR_CODE: HeaderName = HeaderName::from_static("x-ms-error-code");

/// A per-try policy on every pooled client, after the SDK's bearer policy (so the request
/// carries the token it sent). On a `401`, or a `403` with `x-ms-error-code:
/// AuthenticationFailed` (how Azure Storage rejects a token), it invalidates that token in the
/// credential's cache if it is still the cached one (T11: a burst of rejections of one token
/// costs one refresh). The SDK's bearer policy drops its own copy on a 401, but not on a 403,
/// so a 403 also evicts the credential's pooled clients: the next `client()` builds one that
/// asks the cache again.
#[derive(Debug)]
pub(crate) struct RejectedTokenPolicy {
    pub(crate) credential: Arc<SharedCredential>,
    pub(crate) id: CredentialId,
    pub(crate) pool: Weak<Inner>,
}

/// Whether the response says the token was rejected.
fn rejected(status: StatusCode, error_code: Option<&str>) -> bool {
    status == StatusCode::Unauthorized
        || (status == StatusCode::Forbidden && error_code == Some("AuthenticationFailed"))
}

#[allow(
    elided_lifetimes_in_paths,
    reason = "the trait's signature, as azure_core's own policies spell it; async-trait rejects `Context<'_>`"
)]
#[async_trait::async_trait]
impl Policy for RejectedTokenPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        let response = next[0].send(ctx, request, &next[1..]).await?;
        let status = response.status();
        if !rejected(status, response.headers().get_optional_str(&ERROR_CODE)) {
            return Ok(response);
        }
        let Some(sent) = request
            .headers()
            .get_optional_str(&AUTHORIZATION)
            .and_then(|value| value.strip_prefix("Bearer "))
        else {
            return Ok(response);
        };
        let matched = self
            .credential
            .cache_for(&[STORAGE_SCOPE])
            .invalidate_if(|cached| cached.token.secret() == sent);
        tracing::debug!(
            credential = %self.id,
            status = u16::from(status),
            matched,
            "blob-pool: storage rejected the token"
        );
        if matched && let Some(pool) = self.pool.upgrade() {
            pool.tokens_rejected.fetch_add(1, Ordering::Relaxed);
            pool.metrics.token_rejected();
            if status == StatusCode::Forbidden {
                // Before the caller sees the 403, so its next `client()` builds a new one.
                let id = self.id;
                pool.pool
                    .evict_where(EvictionCause::Invalidated, |key, _| key.credential == id)
                    .await;
            }
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // covers T11: what counts as a rejected token.
    #[test]
    fn a_401_or_a_403_authentication_failed_is_a_rejection() {
        assert!(rejected(StatusCode::Unauthorized, None));
        assert!(rejected(
            StatusCode::Forbidden,
            Some("AuthenticationFailed")
        ));
        assert!(!rejected(
            StatusCode::Forbidden,
            Some("AuthorizationPermissionMismatch")
        ));
        assert!(!rejected(StatusCode::Forbidden, None));
        assert!(!rejected(StatusCode::Ok, None));
        assert!(!rejected(
            StatusCode::NotFound,
            Some("AuthenticationFailed")
        ));
    }
}
