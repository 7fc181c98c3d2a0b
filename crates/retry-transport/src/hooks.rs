//! Hooks a caller plugs in: a credential source for 401 refresh (R7) and the retry sleep.

use std::fmt;
use std::time::Duration;

use futures::future::BoxFuture;
use http::HeaderValue;

use crate::error::BoxError;

/// Where the `Authorization` header comes from (e.g. a token-refresh cache).
///
/// The client asks for a value before every attempt with `refresh = false`. After a `401` it
/// asks once with `refresh = true` — the source should discard its cached credential and
/// fetch a new one — and retries once; a second `401` is returned to the caller (R7).
/// Implementations must keep the value out of `Debug` output.
pub trait Credential: Send + Sync + fmt::Debug {
    /// The header value for the next attempt.
    fn authorization(&self, refresh: bool) -> BoxFuture<'_, Result<HeaderValue, BoxError>>;

    /// The server answered `401` to a request sent with `value` (T11). Called once per send,
    /// just before `authorization(true)`: a caching source drops that token *if it is still
    /// the cached one* — matching by identity, so a token another request already refreshed is
    /// kept and a burst of 401s for one token costs one refresh. The default does nothing.
    /// [`TokenCacheCredential`](crate::TokenCacheCredential) (feature `token-refresh`) wires a
    /// token-refresh cache.
    fn rejected(&self, value: &HeaderValue) {
        let _ = value;
    }
}

/// How the client waits between attempts. The default is [`TokioSleep`]; tests may plug in a
/// sleeper that records the requested waits or holds them open until released.
pub trait Sleeper: Send + Sync + fmt::Debug {
    /// Wait `duration`.
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;
}

/// [`tokio::time::sleep`]: pausable and auto-advancing under `#[tokio::test(start_paused = true)]`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioSleep;

impl Sleeper for TokioSleep {
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(duration))
    }
}
