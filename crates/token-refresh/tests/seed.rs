//! The seed-004 incident replayed through the public API: a network blip during a background
//! refresh must not leave callers without proactive refresh until expiry.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures::FutureExt;
use token_refresh::{BearerToken, Expiry, Fetched, RefreshConfig, TokenCache, TokenSource};

const MIN: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
#[error("connection reset by peer")]
struct Blip;

/// An identity endpoint whose availability the test switches.
#[derive(Debug, Default)]
struct Endpoint {
    calls: AtomicUsize,
    down: AtomicBool,
}

impl TokenSource for Endpoint {
    type Token = BearerToken;
    type Error = Blip;

    async fn fetch(&self) -> Result<Fetched<BearerToken>, Blip> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(Blip);
        }
        Ok(Fetched::new(
            BearerToken::new(format!("token-{n}")),
            Expiry::In(60 * MIN),
        ))
    }
}

async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

// covers T1, T4 (seed 004): a one-minute blip at the start of the stale window costs one
// back-off, not the rest of the token's life; no caller waits or sees an error meanwhile.
#[tokio::test(start_paused = true)]
async fn a_blip_during_background_refresh_costs_one_backoff() {
    let endpoint = Arc::new(Endpoint::default());
    let cache = TokenCache::from_arc(endpoint.clone(), RefreshConfig::default().jitter(0.0));
    let first = cache.token().await.expect("first token");
    assert_eq!(first.secret(), "token-0");

    // +40 min: stale; the endpoint is down for a minute.
    tokio::time::advance(40 * MIN).await;
    endpoint.down.store(true, Ordering::SeqCst);
    let served = cache
        .token()
        .now_or_never()
        .expect("no wait")
        .expect("token");
    assert_eq!(served.secret(), "token-0");
    settle().await;
    assert_eq!(cache.stats().background_failed, 1);

    // The blip ends. Calls during the back-off are served without refreshing.
    endpoint.down.store(false, Ordering::SeqCst);
    for _ in 0..59 {
        tokio::time::advance(Duration::from_secs(1)).await;
        let token = cache
            .token()
            .now_or_never()
            .expect("no wait")
            .expect("token");
        assert_eq!(token.secret(), "token-0");
    }
    assert_eq!(endpoint.calls.load(Ordering::SeqCst), 2);

    // +41 min: the back-off is over; the next call refreshes in the background and succeeds —
    // 19 minutes before expiry, where the seed's flag would have waited for expiry.
    tokio::time::advance(Duration::from_secs(1)).await;
    cache
        .token()
        .now_or_never()
        .expect("no wait")
        .expect("token");
    settle().await;
    let token = cache
        .token()
        .now_or_never()
        .expect("no wait")
        .expect("token");
    assert_eq!(token.secret(), "token-2");

    let stats = cache.stats();
    assert_eq!(stats.waits, 1, "only the very first call waited");
    assert_eq!(stats.blocking_failures, 0);
    assert_eq!(
        (stats.background_failed, stats.background_succeeded),
        (1, 1)
    );
    assert_eq!(stats.fetches(), 3);
}
