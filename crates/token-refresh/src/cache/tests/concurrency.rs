//! Many callers at once: one fetch, nobody waits when stale, nobody stranded (T1, T3, P10).

use super::*;
use crate::TokenState;

// covers T1 (P10): 1 000 concurrent callers on an expired token → one fetch, one token.
#[tokio::test(start_paused = true)]
async fn thousand_callers_on_an_expired_token_share_one_fetch() {
    let fake = Fake::new()
        .then(Duration::ZERO, Outcome::Ok(HOUR))
        .then(SEC, Outcome::Ok(HOUR));
    let cache = cache(&fake, config());
    assert_eq!(secret(&cache).await, "t0");
    tokio::time::advance(HOUR).await;
    assert_eq!(cache.state(), TokenState::Expired);
    let callers: Vec<_> = (0..1000)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { secret(&cache).await })
        })
        .collect();
    for caller in callers {
        assert_eq!(caller.await.expect("task"), "t1");
    }
    assert_eq!(fake.calls(), 2);
    let stats = cache.stats();
    assert_eq!((stats.blocking_fetches, stats.waits), (2, 1001));
}

// covers T1 (P10) on a multi-threaded runtime: callers that race past the state check while a
// refresh finishes still cause one fetch (the flight re-checks the cache first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_callers_on_two_threads_share_one_fetch() {
    let fake = Fake::gated();
    let cache = cache(&fake, config());
    let callers: Vec<_> = (0..1000)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { secret(&cache).await })
        })
        .collect();
    let all_waiting = async {
        while cache.stats().waits < 1000 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), all_waiting)
        .await
        .expect("every caller reached the refresh");
    // Enough permits that a second fetch would go through (and be counted), not hang.
    fake.gate.as_ref().expect("gated").add_permits(10);
    for caller in callers {
        assert_eq!(caller.await.expect("task"), "t0");
    }
    assert_eq!(fake.calls(), 1);
}

// covers T1, T3: during the stale window no caller waits, and 1 000 stale calls start one
// background refresh.
#[tokio::test(start_paused = true)]
async fn stale_callers_never_wait_and_start_one_background_refresh() {
    let fake = Fake::new()
        .then(Duration::ZERO, Outcome::Ok(HOUR))
        .then(10 * MIN, Outcome::Ok(HOUR));
    let cache = cache(&fake, config().load_timeout(HOUR));
    assert_eq!(secret(&cache).await, "t0");
    tokio::time::advance(40 * MIN).await;
    for _ in 0..1000 {
        assert_eq!(served_at_once(&cache), "t0");
    }
    let start = tokio::time::Instant::now();
    let callers: Vec<_> = (0..1000)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { (secret(&cache).await, start.elapsed()) })
        })
        .collect();
    for caller in callers {
        assert_eq!(
            caller.await.expect("task"),
            ("t0".to_string(), Duration::ZERO)
        );
    }
    let stats = cache.stats();
    assert_eq!((stats.stale_hits, stats.waits), (2000, 1));
    assert_eq!(stats.background_started, 1);
    assert_eq!(fake.calls(), 2);
    tokio::time::advance(10 * MIN).await;
    settle().await;
    assert_eq!(served_at_once(&cache), "t1");
}

// covers T1: a blocking caller cancelled mid-refresh does not strand the others, and does not
// restart the fetch either: the fetch belongs to no caller, so the waiters get its token when
// it lands, one fetch in all, within one load timeout of its start.
#[tokio::test(start_paused = true)]
async fn cancelled_blocking_caller_does_not_strand_the_others() {
    let fake = Fake::new().then(10 * SEC, Outcome::Ok(HOUR));
    let cache = cache(&fake, config());
    let leader = {
        let cache = cache.clone();
        tokio::spawn(async move { secret(&cache).await })
    };
    settle().await;
    let start = tokio::time::Instant::now();
    let waiters: Vec<_> = (0..10)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { (secret(&cache).await, start.elapsed()) })
        })
        .collect();
    settle().await;
    leader.abort();
    for waiter in waiters {
        assert_eq!(waiter.await.expect("task"), ("t0".to_string(), 10 * SEC));
    }
    assert_eq!(
        fake.calls(),
        1,
        "the fetch outlived the caller who started it"
    );
    assert!(leader.await.expect_err("aborted").is_cancelled());
}
