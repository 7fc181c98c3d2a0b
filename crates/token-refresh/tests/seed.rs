//! Seed 004 replayed through the public API: a failed background refresh must cost one timed
//! back-off, never the rest of the token's life. Written from the seed's write-up and its own
//! tests (cooldown without refresh, retry after the cooldown, late results never overwriting a
//! newer token, stale thresholds recomputed on every install) and SPEC T1–T6, X5.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use token_refresh::{
    BearerToken, Expiry, Fetched, RefreshConfig, TokenCache, TokenSource, TokenState,
};

const MIN: Duration = Duration::from_secs(60);
const SEC: Duration = Duration::from_secs(1);

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

/// What one fetch of a [`Script`] does.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// After `delay`, a token valid for `ttl`.
    Ok { delay: Duration, ttl: Duration },
    /// Fails at once.
    Fail,
    /// After `delay`, fails.
    FailAfter(Duration),
    /// Panics (a bug in the source, or in code it calls).
    Panic,
    /// Never answers.
    Hang,
}

/// An identity endpoint that follows a script, one step per fetch (then repeats the last);
/// token `n` is the `n`-th fetch, so a token going backwards shows as a lower number.
#[derive(Debug)]
struct Script {
    steps: Mutex<VecDeque<Step>>,
    calls: AtomicUsize,
}

impl Script {
    fn new(steps: impl IntoIterator<Item = Step>) -> Arc<Self> {
        Arc::new(Self {
            steps: Mutex::new(steps.into_iter().collect()),
            calls: AtomicUsize::new(0),
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn next(&self) -> Step {
        let mut steps = self.steps.lock().unwrap();
        if steps.len() > 1 {
            steps.pop_front().unwrap()
        } else {
            *steps.front().expect("a script has a step")
        }
    }
}

impl TokenSource for Script {
    type Token = BearerToken;
    type Error = Blip;

    async fn fetch(&self) -> Result<Fetched<BearerToken>, Blip> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        match self.next() {
            Step::Ok { delay, ttl } => {
                tokio::time::sleep(delay).await;
                Ok(Fetched::new(
                    BearerToken::new(format!("token-{n}")),
                    Expiry::In(ttl),
                ))
            }
            Step::Fail => Err(Blip),
            Step::FailAfter(delay) => {
                tokio::time::sleep(delay).await;
                Err(Blip)
            }
            Step::Panic => panic!("identity client bug (planted by the test)"),
            Step::Hang => std::future::pending().await,
        }
    }
}

const fn ok(ttl: Duration) -> Step {
    Step::Ok {
        delay: Duration::ZERO,
        ttl,
    }
}

fn no_jitter() -> RefreshConfig {
    RefreshConfig::default().jitter(0.0)
}

/// The token a call gets without waiting (fresh or stale); panics if the call would wait.
fn served_at_once<S: TokenSource<Token = BearerToken>>(cache: &TokenCache<S>) -> String {
    cache
        .token()
        .now_or_never()
        .expect("a fresh or stale token is served without waiting")
        .expect("token")
        .secret()
        .to_string()
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

// covers T3, T4 (seed 004: "test_repeated_calls_during_async_failure_cooldown_do_not_refresh"):
// during the back-off after a failed background refresh, any number of calls neither refresh
// nor wait.
#[tokio::test(start_paused = true)]
async fn repeated_calls_during_the_failure_cooldown_do_not_refresh() {
    let source = Script::new([ok(60 * MIN), Step::Fail, ok(60 * MIN)]);
    let cache = TokenCache::from_arc(source.clone(), no_jitter());
    cache.token().await.expect("first token");
    tokio::time::advance(40 * MIN).await;
    assert_eq!(served_at_once(&cache), "token-0");
    settle().await;
    assert_eq!(cache.stats().background_failed, 1);
    for _ in 0..59 {
        for _ in 0..100 {
            assert_eq!(served_at_once(&cache), "token-0");
        }
        tokio::time::advance(SEC).await;
        settle().await;
    }
    assert_eq!(source.calls(), 2, "no fetch during the 60 s cooldown");
}

// covers T4 (seed 004: "test_call_after_async_failure_cooldown_refreshes_token_async"): once
// the cooldown is over, the next call starts a background refresh that installs a new token,
// and that call is served at once.
#[tokio::test(start_paused = true)]
async fn a_call_after_the_cooldown_refreshes_in_the_background() {
    let source = Script::new([ok(60 * MIN), Step::Fail, ok(60 * MIN)]);
    let cache = TokenCache::from_arc(source.clone(), no_jitter());
    cache.token().await.expect("first token");
    tokio::time::advance(40 * MIN).await;
    served_at_once(&cache);
    settle().await;
    tokio::time::advance(60 * SEC).await;
    assert_eq!(cache.state(), TokenState::Stale, "the cooldown is over");
    assert_eq!(served_at_once(&cache), "token-0");
    settle().await;
    assert_eq!(served_at_once(&cache), "token-2");
    assert_eq!(cache.state(), TokenState::Fresh);
    assert_eq!(cache.stats().waits, 1, "only the very first call waited");
}

// covers T5 (seed 004: "test_late_async_refresh_does_not_overwrite_blocking_refresh"): a slow
// background refresh that finishes after the token expired and a blocking refresh installed a
// newer token is discarded.
#[tokio::test(start_paused = true)]
async fn a_late_background_token_does_not_overwrite_a_blocking_refresh() {
    let source = Script::new([
        ok(60 * MIN),
        Step::Ok {
            delay: 25 * MIN,
            ttl: 60 * MIN,
        },
        ok(60 * MIN),
    ]);
    // A long load timeout so the background fetch outlives the token.
    let cache = TokenCache::from_arc(source.clone(), no_jitter().load_timeout(30 * MIN));
    cache.token().await.expect("first token");
    tokio::time::advance(40 * MIN).await;
    served_at_once(&cache); // background fetch 1 starts, takes 25 min
    settle().await;
    tokio::time::advance(20 * MIN).await; // +60 min: expired
    assert_eq!(cache.state(), TokenState::Expired);
    let blocking = cache.token().await.expect("blocking refresh");
    assert_eq!(blocking.secret(), "token-2");
    tokio::time::advance(5 * MIN).await; // the background fetch finishes now
    settle().await;
    assert_eq!(served_at_once(&cache), "token-2", "never the late token-1");
    assert_eq!(cache.stats().background_discarded, 1);
}

// covers T5 (seed 004's last commit: "Ignore async completions from older token generations"):
// a background refresh that *fails* after a blocking refresh installed a newer token must not
// push that token's stale threshold.
#[tokio::test(start_paused = true)]
async fn a_late_background_failure_does_not_back_off_a_newer_token() {
    let source = Script::new([
        ok(60 * MIN),
        Step::FailAfter(25 * MIN),
        ok(60 * MIN),
        ok(60 * MIN),
    ]);
    let cache = TokenCache::from_arc(source.clone(), no_jitter().load_timeout(30 * MIN));
    cache.token().await.expect("first token");
    tokio::time::advance(40 * MIN).await;
    served_at_once(&cache);
    settle().await;
    tokio::time::advance(20 * MIN).await;
    assert_eq!(cache.token().await.expect("blocking").secret(), "token-2");
    tokio::time::advance(5 * MIN).await; // the old background fetch fails now
    settle().await;
    // token-2 was installed at +60 min: stale at +100 min, whatever the late failure did.
    tokio::time::advance(35 * MIN - SEC).await;
    assert_eq!(cache.state(), TokenState::Fresh);
    tokio::time::advance(SEC).await;
    assert_eq!(
        cache.state(),
        TokenState::Stale,
        "not pushed by the late failure"
    );
    served_at_once(&cache);
    settle().await;
    assert_eq!(served_at_once(&cache), "token-3");
}

// covers T2 (seed 004: "test_stale_after_is_recomputed_after_blocking_refresh"): a token
// installed by a blocking refresh gets its own stale threshold from its own lifetime.
#[tokio::test(start_paused = true)]
async fn stale_after_is_recomputed_after_a_blocking_refresh() {
    let source = Script::new([ok(60 * MIN), ok(10 * MIN)]);
    let cache = TokenCache::from_arc(source.clone(), no_jitter().stale_duration(Duration::ZERO));
    cache.token().await.expect("first token");
    tokio::time::advance(60 * MIN).await;
    assert_eq!(cache.token().await.expect("second").secret(), "token-1");
    // Legacy window 0: never stale, expired 40 s (the skew) before its 10 min expiry.
    tokio::time::advance(9 * MIN + 19 * SEC).await;
    assert_eq!(cache.state(), TokenState::Fresh);
    tokio::time::advance(SEC).await;
    assert_eq!(cache.state(), TokenState::Expired);

    // The dynamic default: a 10 min token installed by a blocking refresh is stale at +5 min.
    let source = Script::new([ok(60 * MIN), ok(10 * MIN)]);
    let cache = TokenCache::from_arc(source.clone(), no_jitter());
    cache.token().await.expect("first token");
    tokio::time::advance(60 * MIN).await;
    cache.token().await.expect("second");
    tokio::time::advance(5 * MIN - SEC).await;
    assert_eq!(cache.state(), TokenState::Fresh);
    tokio::time::advance(SEC).await;
    assert_eq!(cache.state(), TokenState::Stale);
}

// covers T2 (seed 004: "test_stale_after_computation"): the dynamic window (60 min → stale at
// +40 min, 10 min → +5 min, 90 s → +45 s) and the legacy fixed window.
#[tokio::test(start_paused = true)]
async fn stale_after_follows_the_dynamic_and_legacy_windows() {
    for (ttl, config, stale_at) in [
        (60 * MIN, no_jitter(), 40 * MIN),
        (10 * MIN, no_jitter(), 5 * MIN),
        (90 * SEC, no_jitter(), 45 * SEC),
        (60 * MIN, no_jitter().stale_duration(5 * MIN), 55 * MIN),
    ] {
        let source = Script::new([ok(ttl)]);
        let cache = TokenCache::from_arc(source, config.skew(Duration::ZERO));
        cache.token().await.expect("token");
        tokio::time::advance(stale_at - SEC).await;
        assert_eq!(
            cache.state(),
            TokenState::Fresh,
            "{ttl:?} before {stale_at:?}"
        );
        tokio::time::advance(SEC).await;
        assert_eq!(cache.state(), TokenState::Stale, "{ttl:?} at {stale_at:?}");
    }
}

// covers T3, T4 (seed 004, issue #16 behaviour 4): a background fetch that *panics* is the
// seed's incident in another form — the task dies without reporting, and a cache that waits
// for its report never refreshes in the background again. It must count as a failed refresh:
// serve the token, back off, then refresh.
#[tokio::test(start_paused = true)]
async fn a_panicking_background_refresh_does_not_disable_background_refresh() {
    let source = Script::new([ok(60 * MIN), Step::Panic, ok(60 * MIN)]);
    let cache = TokenCache::from_arc(source.clone(), no_jitter());
    cache.token().await.expect("first token");
    tokio::time::advance(40 * MIN).await;
    assert_eq!(served_at_once(&cache), "token-0");
    settle().await; // the background fetch panics
    assert_eq!(source.calls(), 2);

    // The next call sees the refresh ended without a result: a failure, then the back-off.
    assert_eq!(served_at_once(&cache), "token-0");
    let stats = cache.stats();
    assert_eq!((stats.background_failed, stats.background_lost), (1, 1));
    tokio::time::advance(59 * SEC).await;
    assert_eq!(served_at_once(&cache), "token-0");
    settle().await;
    assert_eq!(source.calls(), 2, "backing off");

    // After the back-off, a new background refresh starts and succeeds: 19 min before expiry.
    tokio::time::advance(SEC).await;
    assert_eq!(served_at_once(&cache), "token-0");
    settle().await;
    assert_eq!(served_at_once(&cache), "token-2");
    assert_eq!(cache.stats().waits, 1, "no caller waited");
}

// covers T3, T4 (issue #16 behaviour 4): a background refresh whose runtime shuts down under it
// (a service restarting its runtime, a test harness) is cancelled without reporting; a later
// runtime using the same cache must be able to refresh in the background again.
#[test]
fn a_background_refresh_cancelled_by_runtime_shutdown_does_not_disable_background_refresh() {
    let source = Script::new([ok(60 * MIN), Step::Hang, ok(60 * MIN)]);
    // The token is stale as soon as it is installed (window = its whole life), so the second
    // call starts a background refresh.
    let config = no_jitter()
        .stale_duration(60 * MIN)
        .backoff(Duration::from_millis(1));
    let cache = TokenCache::from_arc(source.clone(), config);
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    first.block_on(async {
        cache.token().await.expect("first token");
        assert_eq!(cache.state(), TokenState::Stale);
        assert_eq!(served_at_once(&cache), "token-0");
        settle().await; // the background fetch hangs
    });
    drop(first); // cancels the hung background refresh without it reporting
    assert_eq!(source.calls(), 2);

    let second = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    second.block_on(async {
        assert_eq!(served_at_once(&cache), "token-0");
        assert_eq!(cache.stats().background_lost, 1);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(served_at_once(&cache), "token-0");
        settle().await;
        assert_eq!(source.calls(), 3, "a new background refresh ran");
        assert_eq!(served_at_once(&cache), "token-2");
    });
}

// covers T1, P10 (seed 004): the blocking path at expiry is single-flight — a hundred callers
// waiting on an expired token cause one fetch and all get its token.
#[tokio::test(start_paused = true)]
async fn callers_of_an_expired_token_share_one_blocking_refresh() {
    let source = Script::new([
        ok(60 * MIN),
        Step::Ok {
            delay: 2 * SEC,
            ttl: 60 * MIN,
        },
    ]);
    let cache = TokenCache::from_arc(source.clone(), no_jitter());
    cache.token().await.expect("first token");
    tokio::time::advance(60 * MIN).await;
    let calls = (0..100).map(|_| cache.token());
    let tokens = futures::future::join_all(calls).await;
    assert!(
        tokens
            .iter()
            .all(|t| t.as_ref().unwrap().secret() == "token-1")
    );
    assert_eq!(source.calls(), 2);
    assert_eq!(cache.stats().blocking_fetches, 2);
}

// covers X5 (issue #16 behaviour 7): no duration a user can configure panics, and a source
// that reports an absurd lifetime does not either.
#[tokio::test(start_paused = true)]
async fn extreme_durations_never_panic() {
    let configs = [
        RefreshConfig::default().skew(Duration::MAX),
        RefreshConfig::default().backoff(Duration::MAX),
        RefreshConfig::default().load_timeout(Duration::MAX),
        RefreshConfig::default().max_stale_window(Duration::MAX),
        RefreshConfig::default().stale_duration(Duration::MAX),
        RefreshConfig::default()
            .skew(Duration::MAX)
            .backoff(Duration::MAX)
            .load_timeout(Duration::ZERO)
            .max_stale_window(Duration::ZERO),
    ];
    for config in configs {
        for ttl in [Duration::ZERO, SEC, 60 * MIN, Duration::MAX] {
            let source = Script::new([ok(ttl), Step::Fail]);
            let cache = TokenCache::from_arc(source, config.clone());
            let _ = cache.token().await;
            for step in [SEC, 60 * MIN, 365 * 24 * 60 * MIN] {
                tokio::time::advance(step).await;
                let _ = cache.token().await;
                settle().await;
                let _ = cache.state();
                let _ = format!("{cache:?}");
            }
        }
    }
    // Clamped, not taken literally: a failed refresh is retried within the hour, a fetch is
    // bounded, and the skew cannot make every token expired forever.
    let clamped = RefreshConfig::default()
        .skew(Duration::MAX)
        .backoff(Duration::MAX)
        .load_timeout(Duration::MAX);
    assert_eq!(clamped.skew_value(), 60 * MIN);
    assert_eq!(clamped.backoff_value(), 60 * MIN);
    assert_eq!(clamped.load_timeout_value(), 60 * MIN);
}

// covers T4 with X5 defaults: a background fetch that never answers is bounded by the default
// load timeout and then backs off like any failure — it does not hold the one background slot
// for good.
#[tokio::test(start_paused = true)]
async fn a_hung_background_refresh_is_bounded_by_the_default_load_timeout() {
    let source = Script::new([ok(60 * MIN), Step::Hang, ok(60 * MIN)]);
    let cache = TokenCache::from_arc(source.clone(), no_jitter());
    cache.token().await.expect("first token");
    tokio::time::advance(40 * MIN).await;
    served_at_once(&cache);
    settle().await;
    tokio::time::advance(30 * SEC).await; // the default load timeout
    settle().await;
    let stats = cache.stats();
    assert_eq!((stats.timeouts, stats.background_failed), (1, 1));
    tokio::time::advance(60 * SEC).await; // the default back-off
    served_at_once(&cache);
    settle().await;
    assert_eq!(served_at_once(&cache), "token-2");
}
