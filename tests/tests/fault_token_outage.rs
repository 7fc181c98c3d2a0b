//! Fault suite: the token source is down for 5 virtual minutes while a valid token remains
//! (seed 004; SPEC T1, T3, T4). No caller fails or waits, refresh attempts are one per back-off,
//! and refresh resumes within one back-off of the source coming back. Virtual time throughout.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt as _;
use token_refresh::{Expiry, Fetched, RefreshConfig, TokenCache, TokenSource, TokenState};
use tokio::time::Instant;

/// A token source that can be switched down; counts every fetch and names tokens `t<n>`.
#[derive(Debug, Default)]
struct FlakySource {
    down: AtomicBool,
    fetches: AtomicU64,
    issued: AtomicU64,
}

impl TokenSource for FlakySource {
    type Token = String;
    type Error = std::io::Error;

    async fn fetch(&self) -> Result<Fetched<String>, std::io::Error> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        // A round trip to the identity endpoint.
        tokio::time::sleep(Duration::from_millis(50)).await;
        if self.down.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("identity endpoint: 503"));
        }
        let n = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(Fetched::new(
            format!("t{n}"),
            Expiry::In(Duration::from_secs(3600)),
        ))
    }
}

/// Step virtual time by `step`, letting spawned refreshes run.
async fn step(step: Duration) {
    tokio::time::advance(step).await;
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
}

// covers T1, T3, T4: 5 minutes of a dead token source inside the stale window cost nothing.
#[tokio::test(start_paused = true)]
async fn five_minutes_of_token_source_outage_fail_no_request() {
    let source = Arc::new(FlakySource::default());
    let backoff = Duration::from_secs(60);
    let cache = TokenCache::from_arc(
        source.clone(),
        RefreshConfig::default().jitter(0.0).backoff(backoff),
    );
    let start = Instant::now();
    assert_eq!(cache.token().await.unwrap(), "t1");

    // A 60 min token goes stale at +40 min (T2). The source dies just before that.
    step(Duration::from_secs(40 * 60 - 1)).await;
    assert_eq!(cache.state(), TokenState::Fresh);
    source.down.store(true, Ordering::SeqCst);
    let fetches_before = source.fetches.load(Ordering::SeqCst);

    // Five virtual minutes of traffic: 20 callers every second, each polled once, so any
    // caller that would have to wait shows up as `None`.
    let outage = Duration::from_secs(5 * 60);
    let outage_end = Instant::now() + outage;
    let (mut served, mut waited) = (0u64, 0u64);
    while Instant::now() < outage_end {
        step(Duration::from_secs(1)).await;
        for _ in 0..20 {
            match cache.token().now_or_never() {
                Some(Ok(token)) => {
                    assert_eq!(token, "t1");
                    served += 1;
                }
                Some(Err(error)) => panic!("a request failed during the outage: {error}"),
                None => waited += 1,
            }
        }
    }
    assert_eq!(waited, 0, "no caller may wait while a valid token remains");
    assert_eq!(served, 20 * 300);
    let outage_fetches = source.fetches.load(Ordering::SeqCst) - fetches_before;
    // One attempt when it went stale, then one per back-off (T4), never a storm (T3).
    let per_backoff = outage.as_secs() / backoff.as_secs() + 1;
    assert!(
        (1..=per_backoff).contains(&outage_fetches),
        "{outage_fetches} fetches in a 5 min outage with a 60 s back-off"
    );
    let stats = cache.stats();
    assert_eq!(stats.background_failed, outage_fetches);
    assert_eq!(
        stats.blocking_fetches, 1,
        "only the very first call blocked"
    );

    // The source comes back: the next attempt is at most one back-off away, and succeeds.
    source.down.store(false, Ordering::SeqCst);
    let back = Instant::now();
    let mut resumed_after = None;
    for _ in 0..(backoff.as_secs() + 5) {
        step(Duration::from_secs(1)).await;
        assert!(cache.token().now_or_never().is_some_and(|t| t.is_ok()));
        if cache.stats().background_succeeded == 1 {
            resumed_after = Some(back.elapsed());
            break;
        }
    }
    let resumed_after = resumed_after.expect("refresh resumed within one back-off");
    assert!(resumed_after <= backoff + Duration::from_secs(1));
    assert_eq!(cache.token().await.unwrap(), "t2");
    assert_eq!(cache.state(), TokenState::Fresh);
    println!(
        "token outage: {served} calls served, 0 waited, {outage_fetches} fetches in 300 s, \
         resumed {:?} after the source came back ({:?} virtual in all)",
        resumed_after,
        start.elapsed()
    );
}

// covers T1, T4: the same outage *past* the token's expiry fails calls with a typed error
// (nothing to serve), costs one fetch per call wave (single-flight), and recovers at once.
#[tokio::test(start_paused = true)]
async fn an_outage_that_outlives_the_token_fails_typed_and_recovers() {
    let source = Arc::new(FlakySource::default());
    let cache = TokenCache::from_arc(source.clone(), RefreshConfig::default().jitter(0.0));
    assert_eq!(cache.token().await.unwrap(), "t1");
    source.down.store(true, Ordering::SeqCst);
    // Past expiry (60 min) minus skew (40 s): the token is unusable.
    step(Duration::from_secs(3600)).await;
    let fetches = source.fetches.load(Ordering::SeqCst);
    let wave = futures::future::join_all((0..100).map(|_| cache.token())).await;
    assert!(
        wave.iter().all(Result::is_err),
        "every caller gets the error"
    );
    assert_eq!(
        source.fetches.load(Ordering::SeqCst) - fetches,
        1,
        "100 waiting callers share one blocking fetch"
    );
    source.down.store(false, Ordering::SeqCst);
    let wave = futures::future::join_all((0..100).map(|_| cache.token())).await;
    assert!(wave.iter().all(|t| t.as_deref().is_ok_and(|t| t == "t2")));
}
