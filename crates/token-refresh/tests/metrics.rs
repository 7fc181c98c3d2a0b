//! The metrics a token cache records (issue 19), read back from `metrics`' debugging recorder:
//! refreshes by mode and outcome, blocking waits and their duration, back-off, expiry,
//! invalidations, driven through the public API in virtual time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use testkit::metrics::{counter, gauge, histogram, recorded};
use token_refresh::{BearerToken, Expiry, Fetched, RefreshConfig, TokenCache, TokenSource};

#[derive(Debug, thiserror::Error)]
#[error("identity endpoint unavailable")]
struct Down;

/// Tokens `token-N` living 60 s, fetched in 100 ms; fails while `down` is set.
#[derive(Debug, Default)]
struct Endpoint {
    calls: AtomicUsize,
    down: AtomicBool,
}

impl TokenSource for Endpoint {
    type Token = BearerToken;
    type Error = Down;

    async fn fetch(&self) -> Result<Fetched<BearerToken>, Down> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        if self.down.load(Ordering::SeqCst) {
            return Err(Down);
        }
        Ok(Fetched::new(
            BearerToken::new(format!("token-{n}")),
            Expiry::In(Duration::from_secs(60)),
        ))
    }
}

/// Skew 10 s, stale window 20 s, back-off 5 s, no jitter: a 60 s token goes stale at 40 s and
/// must be refreshed at 50 s.
fn config() -> RefreshConfig {
    RefreshConfig::default()
        .skew(Duration::from_secs(10))
        .stale_duration(Duration::from_secs(20))
        .backoff(Duration::from_secs(5))
        .jitter(0.0)
}

// covers T1 and issue 19: 100 concurrent cold calls are one blocking refresh, 100 waits of
// 100 ms each, and a token with 60 s left.
#[test]
fn cold_callers_wait_for_one_blocking_refresh() {
    let recorded = recorded(|| async {
        let cache = TokenCache::new(Endpoint::default(), config());
        let calls = (0..100).map(|_| cache.token());
        let tokens = futures::future::join_all(calls).await;
        assert!(tokens.iter().all(Result::is_ok));
        assert_eq!(cache.stats().blocking_fetches, 1);
        cache.token().await.expect("fresh");
        cache
    });
    assert_eq!(
        counter(&recorded, "token.refresh.started", &[("mode", "blocking")]),
        1
    );
    assert_eq!(
        counter(
            &recorded,
            "token.refreshes",
            &[("mode", "blocking"), ("outcome", "ok")]
        ),
        1
    );
    assert_eq!(
        counter(&recorded, "token.calls", &[("outcome", "waited")]),
        100
    );
    assert_eq!(
        counter(&recorded, "token.calls", &[("outcome", "fresh")]),
        1
    );
    assert_eq!(histogram(&recorded, "token.wait.duration", &[]), [0.1; 100]);
    assert_eq!(gauge(&recorded, "token.expires_in", &[]), 60.0);
    assert_eq!(gauge(&recorded, "token.backoff.active", &[]), 0.0);
}

// covers T1, T4, T11 and issue 19: a stale call starts a background refresh; its failure
// starts a back-off (gauge 1); a later success clears it; a rejected token is invalidated once
// and a stale report is ignored.
#[test]
fn background_failure_backs_off_and_invalidations_are_counted() {
    let recorded = recorded(|| async {
        let endpoint = Arc::new(Endpoint::default());
        let cache = TokenCache::from_arc(endpoint.clone(), config());
        let first = cache.token().await.expect("token");
        endpoint.down.store(true, Ordering::SeqCst);
        tokio::time::advance(Duration::from_secs(41)).await;
        cache.token().await.expect("stale token served");
        // Let the background refresh fail.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(cache.stats().background_failed, 1);
        let backing_off = cache.stats().backoffs;
        assert_eq!(backing_off, 1);
        // Recovery: the back-off ends, the next stale call refreshes in the background.
        endpoint.down.store(false, Ordering::SeqCst);
        tokio::time::advance(Duration::from_secs(6)).await;
        cache.token().await.expect("stale token served");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(cache.stats().background_succeeded, 1);
        let current = cache.token().await.expect("fresh");
        assert!(cache.invalidate_token(&current));
        assert!(
            !cache.invalidate_token(&first),
            "an old token changes nothing"
        );
        cache
    });
    let refreshes = |mode, outcome| {
        counter(
            &recorded,
            "token.refreshes",
            &[("mode", mode), ("outcome", outcome)],
        )
    };
    assert_eq!(
        counter(
            &recorded,
            "token.refresh.started",
            &[("mode", "background")]
        ),
        2
    );
    assert_eq!(refreshes("background", "failed"), 1);
    assert_eq!(refreshes("background", "ok"), 1);
    assert_eq!(counter(&recorded, "token.backoffs", &[]), 1);
    assert_eq!(
        counter(&recorded, "token.calls", &[("outcome", "stale")]),
        2
    );
    assert_eq!(
        counter(&recorded, "token.invalidations", &[("outcome", "matched")]),
        1
    );
    assert_eq!(
        counter(&recorded, "token.invalidations", &[("outcome", "ignored")]),
        1
    );
    assert_eq!(gauge(&recorded, "token.backoff.active", &[]), 0.0);
    assert_eq!(gauge(&recorded, "token.expires_in", &[]), 60.0);
}

// covers T4 and issue 19: while a failed refresh's back-off runs, the gauge says so.
#[test]
fn backoff_gauge_is_one_while_backing_off() {
    let recorded = recorded(|| async {
        let endpoint = Arc::new(Endpoint::default());
        let cache = TokenCache::from_arc(endpoint.clone(), config());
        cache.token().await.expect("token");
        endpoint.down.store(true, Ordering::SeqCst);
        tokio::time::advance(Duration::from_secs(41)).await;
        cache.token().await.expect("stale token served");
        tokio::time::sleep(Duration::from_millis(200)).await;
        cache
    });
    assert_eq!(gauge(&recorded, "token.backoff.active", &[]), 1.0);
    // Seen by the stale call 41 s after the token came: 19 s left.
    assert_eq!(gauge(&recorded, "token.expires_in", &[]), 19.0);
}
