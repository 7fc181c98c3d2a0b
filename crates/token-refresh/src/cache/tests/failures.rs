//! Refresh failures: back-off, generation guard, shared errors, timeouts, abandonment (T4, T5).

use super::*;
use crate::{RefreshError, TokenState};

// covers T4: a failed background refresh keeps serving the token and backs off one back-off;
// calls during the back-off do not refresh; a call after it refreshes in the background.
#[tokio::test(start_paused = true)]
async fn failed_background_refresh_backs_off_then_retries() {
    let fake = Fake::new()
        .then(Duration::ZERO, Outcome::Ok(HOUR))
        .then(Duration::ZERO, Outcome::Fail);
    let cache = cache(&fake, config());
    assert_eq!(secret(&cache).await, "t0");
    tokio::time::advance(40 * MIN).await;
    assert_eq!(served_at_once(&cache), "t0");
    settle().await;
    assert_eq!(cache.stats().background_failed, 1);
    assert_eq!(cache.state(), TokenState::Fresh, "backing off");

    // covers T4: repeated calls during the back-off do not refresh.
    tokio::time::advance(59 * SEC).await;
    for _ in 0..100 {
        assert_eq!(served_at_once(&cache), "t0");
    }
    settle().await;
    assert_eq!(fake.calls(), 2);

    // covers T4: after the back-off the next call refreshes (in the background) and succeeds.
    tokio::time::advance(SEC).await;
    assert_eq!(cache.state(), TokenState::Stale);
    assert_eq!(served_at_once(&cache), "t0");
    settle().await;
    assert_eq!(served_at_once(&cache), "t2");
    assert_eq!(fake.calls(), 3);
    assert_eq!(cache.stats().background_succeeded, 1);
}

// covers T3, T4: a hung background fetch is bounded by the load timeout, never doubled, and
// its timeout backs off like any failure.
#[tokio::test(start_paused = true)]
async fn hung_background_refresh_times_out_and_backs_off() {
    let fake = Fake::new()
        .then(Duration::ZERO, Outcome::Ok(HOUR))
        .then(Duration::ZERO, Outcome::Hang);
    let cache = cache(&fake, config().load_timeout(10 * SEC));
    assert_eq!(secret(&cache).await, "t0");
    tokio::time::advance(40 * MIN).await;
    assert_eq!(served_at_once(&cache), "t0");
    settle().await; // the background fetch starts, and hangs
    for _ in 0..10 {
        tokio::time::advance(SEC).await;
        assert_eq!(served_at_once(&cache), "t0");
    }
    settle().await;
    let stats = cache.stats();
    assert_eq!((stats.background_started, stats.timeouts), (1, 1));
    assert_eq!(stats.background_failed, 1);
    assert_eq!(
        cache.state(),
        TokenState::Fresh,
        "backing off after the timeout"
    );
    assert_eq!(fake.calls(), 2);
}

// covers T5: a late background success does not overwrite the token of a blocking refresh.
#[tokio::test(start_paused = true)]
async fn late_background_success_does_not_overwrite_blocking_refresh() {
    let fake = Fake::new()
        .then(Duration::ZERO, Outcome::Ok(HOUR))
        .then(25 * MIN, Outcome::Ok(HOUR));
    let cache = cache(&fake, config().load_timeout(HOUR));
    assert_eq!(secret(&cache).await, "t0");
    tokio::time::advance(40 * MIN).await;
    assert_eq!(served_at_once(&cache), "t0"); // background "t1" lands at +65 min
    settle().await;
    tokio::time::advance(20 * MIN).await;
    assert_eq!(cache.state(), TokenState::Expired);
    assert_eq!(secret(&cache).await, "t2", "blocking refresh");
    tokio::time::advance(6 * MIN).await;
    settle().await;
    assert_eq!(served_at_once(&cache), "t2", "the late t1 was discarded");
    let stats = cache.stats();
    assert_eq!(
        (stats.background_discarded, stats.background_succeeded),
        (1, 0)
    );
    assert!(format!("{cache:?}").contains("background_refresh: false"));
}

// covers T5: a late background failure does not back off the newer token.
#[tokio::test(start_paused = true)]
async fn late_background_failure_does_not_back_off_newer_token() {
    let fake = Fake::new()
        .then(Duration::ZERO, Outcome::Ok(HOUR))
        .then(25 * MIN, Outcome::Fail);
    let cache = cache(&fake, config().load_timeout(HOUR));
    assert_eq!(secret(&cache).await, "t0");
    tokio::time::advance(40 * MIN).await;
    assert_eq!(served_at_once(&cache), "t0"); // background fails at +65 min
    settle().await;
    tokio::time::advance(20 * MIN).await;
    assert_eq!(secret(&cache).await, "t2", "blocking refresh at +60 min");
    tokio::time::advance(6 * MIN).await;
    settle().await;
    assert_eq!(cache.stats().background_discarded, 1);
    assert_eq!(cache.stats().background_failed, 0);
    // Had the failure applied, t2 would be stale from +66 min; it stays fresh until +100.
    tokio::time::advance(4 * MIN).await;
    assert_eq!(cache.state(), TokenState::Fresh);
    tokio::time::advance(30 * MIN - SEC).await;
    assert_eq!(cache.state(), TokenState::Fresh);
    tokio::time::advance(SEC).await;
    assert_eq!(cache.state(), TokenState::Stale);
}

// covers T5 (the other direction): a slow blocking refresh does not overwrite a newer token
// that a background refresh, started after it, installed meanwhile; its waiters get the newer
// token. Found by the shuttle model in tests/tests/models/.
#[tokio::test(start_paused = true)]
async fn slow_blocking_refresh_does_not_overwrite_a_newer_background_token() {
    let fake = Fake::new()
        .then(Duration::ZERO, Outcome::Ok(HOUR)) // t0, stale at +40 min, expired at +59:20
        .then(25 * MIN, Outcome::Ok(10 * MIN)) // t1, background from +40, lands at +65
        .then(30 * MIN, Outcome::Ok(HOUR)) // t2, blocking from +60, lands at +90
        .then(MIN, Outcome::Ok(HOUR)); // t3, background from +70, lands at +71
    let cache = cache(&fake, config().load_timeout(HOUR));
    assert_eq!(secret(&cache).await, "t0");
    tokio::time::advance(40 * MIN).await;
    assert_eq!(served_at_once(&cache), "t0");
    settle().await;
    tokio::time::advance(20 * MIN).await;
    assert_eq!(cache.state(), TokenState::Expired);
    let waiter = tokio::spawn({
        let cache = cache.clone();
        async move { secret(&cache).await }
    });
    settle().await;
    tokio::time::advance(5 * MIN).await;
    settle().await;
    assert_eq!(
        served_at_once(&cache),
        "t1",
        "t1 landed while t2 was running"
    );
    tokio::time::advance(5 * MIN).await;
    assert_eq!(served_at_once(&cache), "t1"); // stale: background t3 starts after t2 did
    settle().await;
    tokio::time::advance(MIN).await;
    settle().await;
    assert_eq!(served_at_once(&cache), "t3");
    tokio::time::advance(19 * MIN).await;
    assert_eq!(
        waiter.await.expect("waiter"),
        "t3",
        "waiters get the newer token"
    );
    assert_eq!(served_at_once(&cache), "t3", "t2 was not installed over t3");
    let stats = cache.stats();
    assert_eq!((stats.blocking_fetches, stats.blocking_superseded), (2, 1));
    assert_eq!(stats.background_succeeded, 2);
}

// covers T1: a failed blocking refresh gives every waiter the typed error, is not cached,
// and the next call tries again.
#[tokio::test(start_paused = true)]
async fn blocking_failure_reaches_every_waiter_and_is_not_cached() {
    let fake = Fake::new().then(SEC, Outcome::Fail);
    let cache = cache(&fake, config());
    let waiters: Vec<_> = (0..50)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.token().await })
        })
        .collect();
    for waiter in waiters {
        let error = waiter.await.expect("task").expect_err("shared failure");
        assert!(matches!(error, RefreshError::Source(_)));
        assert!(error.source_error::<Down>().is_some());
        assert!(!error.is_timeout());
    }
    assert_eq!(fake.calls(), 1);
    assert_eq!(cache.stats().blocking_failures, 1);
    assert_eq!(cache.state(), TokenState::Empty);
    assert_eq!(secret(&cache).await, "t1", "the error was not cached");
}

// covers T1: a blocking fetch that hangs is bounded by the load timeout.
#[tokio::test(start_paused = true)]
async fn hung_blocking_fetch_is_bounded_by_the_load_timeout() {
    let fake = Fake::new().then(Duration::ZERO, Outcome::Hang);
    let cache = cache(&fake, config().load_timeout(5 * SEC));
    let start = tokio::time::Instant::now();
    let error = cache.token().await.expect_err("timeout");
    assert!(matches!(error, RefreshError::Timeout(t) if t == 5 * SEC));
    assert_eq!(start.elapsed(), 5 * SEC);
    assert!(error.to_string().contains("did not answer within 5s"));
    assert_eq!(cache.stats().timeouts, 1);
    assert_eq!(secret(&cache).await, "t1");
}

// A 401 path: invalidate drops the token, the running background refresh is abandoned, and
// the next call waits for a fresh one.
#[tokio::test(start_paused = true)]
async fn invalidate_forces_a_blocking_refresh() {
    let fake = Fake::new()
        .then(Duration::ZERO, Outcome::Ok(HOUR))
        .then(MIN, Outcome::Ok(HOUR));
    let cache = cache(&fake, config());
    assert_eq!(secret(&cache).await, "t0");
    tokio::time::advance(40 * MIN).await;
    assert_eq!(served_at_once(&cache), "t0");
    settle().await;
    assert_eq!(fake.calls(), 2, "background fetch running");
    cache.invalidate();
    assert_eq!(cache.state(), TokenState::Empty);
    assert_eq!(secret(&cache).await, "t2");
    tokio::time::advance(2 * MIN).await;
    settle().await;
    assert_eq!(served_at_once(&cache), "t2");
    assert_eq!(cache.stats().background_succeeded, 0);
}

// The background task holds only a Weak to the cache: dropping the cache aborts it and
// releases the source.
#[tokio::test(start_paused = true)]
async fn dropping_the_cache_abandons_the_background_refresh() {
    let fake = Fake::new()
        .then(Duration::ZERO, Outcome::Ok(HOUR))
        .then(10 * MIN, Outcome::Ok(HOUR));
    let cache = cache(&fake, config().load_timeout(HOUR));
    assert_eq!(secret(&cache).await, "t0");
    tokio::time::advance(40 * MIN).await;
    assert_eq!(served_at_once(&cache), "t0");
    settle().await;
    assert_eq!(Arc::strong_count(&fake), 3, "test, cache, background task");
    drop(cache);
    settle().await;
    assert_eq!(Arc::strong_count(&fake), 1, "background task aborted");
}
