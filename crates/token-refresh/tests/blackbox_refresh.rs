//! Black-box attacks on `token-refresh`, written only from SPEC T1–T12 / X, seed 004, the user
//! guide (docs/token-refresh.md) and the rustdoc of the public items. Each test asserts a
//! documented promise; a failing test is a defect (or a documented ambiguity, named as such).
//!
//! Everything runs in paused virtual time.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::FutureExt;
use time::{OffsetDateTime, UtcOffset};
use token_refresh::{
    BearerToken, Expiry, Fetched, RefreshConfig, RefreshError, StaleWindow, TokenCache,
    TokenSource, TokenState, VirtualClock,
};
use tokio::time::Instant;

const SEC: Duration = Duration::from_secs(1);
const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

// ---------------------------------------------------------------------------------------------
// A scripted identity endpoint.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
#[error("identity endpoint failed (recoverable={recoverable})")]
struct SrcErr {
    recoverable: bool,
}

#[derive(Debug, Clone, Copy)]
enum Step {
    /// After `delay`, a token valid for `ttl`.
    Ok { delay: Duration, ttl: Duration },
    /// At once, a token with this expiry.
    Exp(Expiry),
    /// Recoverable failure at once.
    Fail,
    /// Recoverable failure after a delay.
    FailAfter(Duration),
    /// Non-recoverable failure at once (T10).
    NonRec,
    /// The source panics.
    Panic,
    /// The source panics after a delay.
    PanicAfter(Duration),
    /// Never answers.
    Hang,
}

const fn ok(ttl: Duration) -> Step {
    Step::Ok {
        delay: Duration::ZERO,
        ttl,
    }
}

const fn slow(delay: Duration, ttl: Duration) -> Step {
    Step::Ok { delay, ttl }
}

/// Follows a script (one step per fetch, then repeats the last, unless overridden by `set`).
/// Token `n` is named `token-n` after the fetch that produced it.
#[derive(Debug)]
struct Script {
    steps: Mutex<VecDeque<Step>>,
    calls: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

struct InFlight<'a>(&'a Script);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Script {
    fn new(steps: impl IntoIterator<Item = Step>) -> Arc<Self> {
        Arc::new(Self {
            steps: Mutex::new(steps.into_iter().collect()),
            calls: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Replace the remaining script.
    fn set(&self, steps: impl IntoIterator<Item = Step>) {
        *self.steps.lock().unwrap() = steps.into_iter().collect();
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
    type Error = SrcErr;

    async fn fetch(&self) -> Result<Fetched<BearerToken>, SrcErr> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let _guard = InFlight(self);
        let token = BearerToken::new(format!("token-{n}"));
        match self.next() {
            Step::Ok { delay, ttl } => {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Ok(Fetched::new(token, Expiry::In(ttl)))
            }
            Step::Exp(expiry) => Ok(Fetched::new(token, expiry)),
            Step::Fail => Err(SrcErr { recoverable: true }),
            Step::FailAfter(delay) => {
                tokio::time::sleep(delay).await;
                Err(SrcErr { recoverable: true })
            }
            Step::NonRec => Err(SrcErr { recoverable: false }),
            Step::Panic => panic!("identity client bug (planted by the test)"),
            Step::PanicAfter(delay) => {
                tokio::time::sleep(delay).await;
                panic!("identity client bug (planted by the test)")
            }
            Step::Hang => std::future::pending().await,
        }
    }

    fn is_recoverable(&self, error: &SrcErr) -> bool {
        error.recoverable
    }
}

type Cache = TokenCache<Script>;

fn cache(script: &Arc<Script>, config: RefreshConfig) -> Cache {
    TokenCache::from_arc(script.clone(), config)
}

fn no_jitter() -> RefreshConfig {
    RefreshConfig::default().jitter(0.0)
}

fn preset() -> RefreshConfig {
    RefreshConfig::static_stability().jitter(0.0)
}

async fn settle() {
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
}

/// The secret a call gets without waiting at all (one poll).
fn at_once(cache: &Cache) -> String {
    cache
        .token()
        .now_or_never()
        .expect("served without waiting")
        .expect("a token")
        .secret()
        .to_string()
}

/// A call, with the virtual time it took.
async fn timed(cache: &Cache) -> (Result<String, RefreshError>, Duration) {
    let start = Instant::now();
    let result = cache.token().await.map(|t| t.secret().to_string());
    (result, start.elapsed())
}

/// Advance in 1 s steps, calling once per step, until the source is contacted again; returns
/// how many seconds that took (or `None` within `limit`).
async fn seconds_until_next_contact(cache: &Cache, script: &Script, limit: u64) -> Option<u64> {
    let before = script.calls();
    for s in 1..=limit {
        tokio::time::advance(SEC).await;
        let _ = cache.token().await;
        settle().await;
        if script.calls() > before {
            return Some(s);
        }
    }
    None
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime")
}

// ---------------------------------------------------------------------------------------------
// T1 / T2: states, thresholds, single-flight.
// ---------------------------------------------------------------------------------------------

// T2: the dynamic table at the boundaries (60 min → +40, 10 min → +5, 90 s → +45 s) and the
// 40 s skew.
#[tokio::test(start_paused = true)]
async fn t2_dynamic_window_boundaries() {
    for (ttl, stale_at) in [
        (60 * MIN, 40 * MIN),
        (10 * MIN, 5 * MIN),
        (90 * SEC, 45 * SEC),
    ] {
        let script = Script::new([ok(ttl)]);
        let c = cache(&script, no_jitter());
        assert_eq!(c.state(), TokenState::Empty);
        let start = Instant::now();
        c.token().await.unwrap();
        assert_eq!(c.state(), TokenState::Fresh, "ttl {ttl:?} just installed");
        tokio::time::advance(stale_at - SEC).await;
        assert_eq!(c.state(), TokenState::Fresh, "ttl {ttl:?} 1 s before stale");
        tokio::time::advance(2 * SEC).await;
        assert_eq!(c.state(), TokenState::Stale, "ttl {ttl:?} 1 s after stale");
        // Expired a skew (40 s) before expiry.
        let expired_at = start + ttl - 40 * SEC;
        tokio::time::advance((expired_at - Instant::now()) - SEC).await;
        assert_eq!(c.state(), TokenState::Stale, "ttl {ttl:?} 1 s before skew");
        tokio::time::advance(2 * SEC).await;
        assert_eq!(c.state(), TokenState::Expired, "ttl {ttl:?} within skew");
    }
}

// T1: a stale call never waits, even for a slow source; the background token arrives later.
#[tokio::test(start_paused = true)]
async fn t1_stale_call_never_waits_for_slow_source() {
    let script = Script::new([ok(HOUR), slow(20 * SEC, HOUR)]);
    let c = cache(&script, no_jitter());
    c.token().await.unwrap();
    tokio::time::advance(41 * MIN).await;
    assert_eq!(at_once(&c), "token-0");
    settle().await;
    for _ in 0..19 {
        tokio::time::advance(SEC).await;
        assert_eq!(at_once(&c), "token-0");
    }
    tokio::time::advance(2 * SEC).await;
    settle().await;
    assert_eq!(at_once(&c), "token-1");
    let s = c.stats();
    assert_eq!((s.background_started, s.background_succeeded), (1, 1));
    assert_eq!(s.waits, 1);
}

// T1: 1 000 concurrent cold callers share one fetch; all get the same token.
#[tokio::test(start_paused = true)]
async fn t1_thousand_cold_callers_one_fetch() {
    let script = Script::new([slow(2 * SEC, HOUR)]);
    let c = cache(&script, no_jitter());
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.token().await.map(|t| t.secret().to_string()) })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), "token-0");
    }
    assert_eq!(script.calls(), 1);
    let s = c.stats();
    assert_eq!(s.blocking_fetches, 1);
    assert_eq!(s.waits, 1000);
}

// T1 / RefreshError docs: a failed blocking refresh reaches every waiter and is not cached
// (seed default: no back-off for blocking failures).
#[tokio::test(start_paused = true)]
async fn t1_blocking_failure_reaches_every_waiter_and_is_not_cached() {
    let script = Script::new([Step::FailAfter(SEC), Step::Fail, ok(HOUR)]);
    let c = cache(&script, no_jitter());
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.token().await })
        })
        .collect();
    for t in tasks {
        let err = t
            .await
            .unwrap()
            .expect_err("the failure reaches every waiter");
        assert!(err.source_error::<SrcErr>().is_some(), "{err:?}");
        assert!(!err.is_non_recoverable() && !err.is_timeout());
    }
    assert_eq!(script.calls(), 1);
    assert!(c.token().await.is_err());
    assert_eq!(c.token().await.unwrap().secret(), "token-2");
    assert_eq!(
        script.calls(),
        3,
        "a recoverable blocking error is not cached"
    );
    assert_eq!(c.stats().blocking_failures, 2);
}

// T1: a token without expiry is fresh forever and never refreshed.
#[tokio::test(start_paused = true)]
async fn t1_never_expiring_token_is_fresh_forever() {
    let script = Script::new([Step::Exp(Expiry::Never)]);
    let c = cache(&script, no_jitter());
    let (tok, deadline) = c.token_and_deadline().await.unwrap();
    assert_eq!(tok.secret(), "token-0");
    assert_eq!(deadline, None);
    tokio::time::advance(Duration::from_secs(10 * 365 * 24 * 3600)).await;
    assert_eq!(c.state(), TokenState::Fresh);
    assert_eq!(at_once(&c), "token-0");
    assert_eq!(script.calls(), 1);
}

// T1 docs: token_and_deadline gives the token's expiry as a monotonic deadline.
#[tokio::test(start_paused = true)]
async fn t1_token_and_deadline_is_the_expiry() {
    let script = Script::new([ok(HOUR)]);
    let c = cache(&script, no_jitter());
    let start = Instant::now();
    let (_, deadline) = c.token_and_deadline().await.unwrap();
    assert_eq!(deadline, Some(start + HOUR));
}

// ---------------------------------------------------------------------------------------------
// T3: one background refresh.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn t3_many_stale_callers_one_background_refresh() {
    let script = Script::new([ok(HOUR), slow(20 * SEC, HOUR)]);
    let c = cache(&script, no_jitter());
    c.token().await.unwrap();
    tokio::time::advance(40 * MIN + SEC).await;
    for _ in 0..19 {
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let c = c.clone();
                tokio::spawn(async move { c.token().now_or_never().map(|r| r.is_ok()) })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), Some(true), "stale callers never wait");
        }
        tokio::time::advance(SEC).await;
    }
    assert_eq!(
        script.calls(),
        2,
        "one background fetch however many stale callers"
    );
    assert_eq!(c.stats().background_started, 1);
    tokio::time::advance(2 * SEC).await;
    settle().await;
    assert_eq!(at_once(&c), "token-1");
    assert!(script.max_in_flight.load(Ordering::SeqCst) <= 1);
}

// T3 / failure behaviour: a hung background refresh is not doubled; it is abandoned at the
// load timeout (30 s), backs off 60 s, and the next one runs.
#[tokio::test(start_paused = true)]
async fn t3_hung_background_refresh_bounded_then_retried() {
    let script = Script::new([ok(HOUR), Step::Hang, ok(HOUR)]);
    let c = cache(&script, no_jitter());
    c.token().await.unwrap();
    tokio::time::advance(40 * MIN + SEC).await;
    assert_eq!(at_once(&c), "token-0");
    settle().await;
    for _ in 0..29 {
        tokio::time::advance(SEC).await;
        assert_eq!(at_once(&c), "token-0");
        settle().await;
    }
    assert_eq!(script.calls(), 2, "the hung refresh is not doubled");
    // Load timeout at +30 s, then one back-off (60 s) → a new refresh by +91 s.
    let s = seconds_until_next_contact(&c, &script, 120)
        .await
        .expect("background refresh resumes after timeout + back-off");
    assert!(
        (60..=62).contains(&s),
        "next background attempt {s} s after the load timeout, expected one back-off (60 s)"
    );
    settle().await;
    assert_eq!(at_once(&c), "token-2");
    let st = c.stats();
    assert_eq!(st.timeouts, 1);
    assert_eq!(st.background_failed, 1);
}

// ---------------------------------------------------------------------------------------------
// T4: the seed incident — failures never disable background refresh.
// ---------------------------------------------------------------------------------------------

// Five failed background refreshes in a row: each one costs one back-off, then a retry.
#[tokio::test(start_paused = true)]
async fn t4_repeated_background_failures_each_cost_one_backoff() {
    let script = Script::new([ok(HOUR), Step::Fail]);
    let c = cache(&script, no_jitter());
    c.token().await.unwrap();
    tokio::time::advance(40 * MIN + SEC).await;
    assert_eq!(at_once(&c), "token-0");
    settle().await;
    assert_eq!(script.calls(), 2);
    for round in 0..5 {
        let s = seconds_until_next_contact(&c, &script, 200)
            .await
            .unwrap_or_else(|| panic!("round {round}: background refresh disabled"));
        assert_eq!(s, 60, "round {round}: back-off is 60 s without jitter");
    }
    script.set([ok(HOUR)]);
    let s = seconds_until_next_contact(&c, &script, 200).await.unwrap();
    assert_eq!(s, 60);
    settle().await;
    assert_eq!(at_once(&c), "token-7");
    let st = c.stats();
    assert_eq!(st.background_failed, 6);
    assert_eq!(st.background_succeeded, 1);
    assert_eq!(st.waits, 1, "nobody waited in the stale window");
    assert_eq!(st.backoffs, 6);
}

// T4 + skew: a back-off never stretches a token past its expiry: in the last minute, callers
// wait for a blocking refresh once the token is within the skew.
#[tokio::test(start_paused = true)]
async fn t4_backoff_does_not_extend_token_past_skew() {
    let script = Script::new([ok(HOUR), Step::Fail, ok(HOUR)]);
    let c = cache(&script, no_jitter());
    c.token().await.unwrap();
    // Stale at +40 min; first stale call at 58:50 fails in the background → back-off to 59:50,
    // but the token counts as expired from 59:20.
    tokio::time::advance(58 * MIN + 50 * SEC).await;
    assert_eq!(at_once(&c), "token-0");
    settle().await;
    assert_eq!(c.stats().background_failed, 1);
    tokio::time::advance(31 * SEC).await; // 59:21
    assert_eq!(c.state(), TokenState::Expired);
    let (tok, _) = timed(&c).await;
    assert_eq!(
        tok.unwrap(),
        "token-2",
        "within the skew callers get a new token"
    );
}

// T4 / seed: a background fetch that panics counts as a failure; background refresh resumes.
#[tokio::test(start_paused = true)]
async fn t4_panicking_background_refresh_does_not_disable() {
    let script = Script::new([ok(HOUR), Step::Panic, ok(HOUR)]);
    let c = cache(&script, no_jitter());
    c.token().await.unwrap();
    tokio::time::advance(40 * MIN + SEC).await;
    assert_eq!(at_once(&c), "token-0");
    settle().await;
    assert_eq!(script.calls(), 2);
    // Keep calling once a second; within two back-offs a new background refresh must run.
    let s = seconds_until_next_contact(&c, &script, 130).await;
    assert!(
        s.is_some_and(|s| s <= 121),
        "after a panicking background refresh, refresh resumed after {s:?} s"
    );
    settle().await;
    assert_eq!(at_once(&c), "token-2");
    let st = c.stats();
    assert_eq!(st.background_lost, 1);
    assert_eq!(st.background_failed, 1);
}

// T4 / seed: the task that triggered the stale refresh being aborted does not stop the
// refresh (it is not that caller's).
#[tokio::test(start_paused = true)]
async fn t4_aborting_the_triggering_task_does_not_cancel_background_refresh() {
    let script = Script::new([ok(HOUR), slow(5 * SEC, HOUR)]);
    let c = cache(&script, no_jitter());
    c.token().await.unwrap();
    tokio::time::advance(40 * MIN + SEC).await;
    let c2 = c.clone();
    let task = tokio::spawn(async move {
        let _ = c2.token().await;
        std::future::pending::<()>().await;
    });
    settle().await;
    task.abort();
    let _ = task.await;
    tokio::time::advance(6 * SEC).await;
    settle().await;
    assert_eq!(at_once(&c), "token-1");
    assert_eq!(script.calls(), 2);
}

// T4 / guide "the runtime it was spawned on shuts down": the cache is shared between two
// runtimes (e.g. a static cache used by several #[tokio::test]s); the background refresh spawned
// on the first dies with it; the second must still refresh in the background.
#[test]
fn t4_background_refresh_killed_by_runtime_shutdown_does_not_disable() {
    let script = Script::new([ok(HOUR), Step::Hang, ok(HOUR)]);
    let rt_a = paused_runtime();
    let c = rt_a.block_on(async {
        let c = cache(&script, no_jitter());
        c.token().await.unwrap();
        tokio::time::advance(41 * MIN).await;
        assert_eq!(at_once(&c), "token-0");
        settle().await;
        c
    });
    assert_eq!(script.calls(), 2);
    drop(rt_a);
    let rt_b = paused_runtime();
    rt_b.block_on(async {
        // Runtime B's paused clock starts at about A's start: move past A's 41 min.
        tokio::time::advance(42 * MIN).await;
        assert_eq!(at_once(&c), "token-0");
        settle().await;
        let s = seconds_until_next_contact(&c, &script, 130).await;
        assert!(
            s.is_some_and(|s| s <= 121),
            "background refresh resumed after {s:?} s"
        );
        settle().await;
        assert_eq!(at_once(&c), "token-2");
        assert_eq!(c.stats().background_lost, 1);
    });
}

// Failure behaviour ("a flight every waiter abandoned is resumed by the next caller"): a
// blocking flight started on a runtime that then shut down must not panic or hang a caller on
// another runtime; the caller is bounded by one load timeout.
#[test]
fn t1_blocking_flight_abandoned_by_shut_down_runtime_does_not_break_next_runtime() {
    let script = Script::new([Step::Hang, ok(HOUR)]);
    let c = cache(&script, no_jitter());
    let rt_a = paused_runtime();
    rt_a.block_on(async {
        let c2 = c.clone();
        tokio::spawn(async move {
            let _ = c2.token().await;
        });
        settle().await;
    });
    assert_eq!(script.calls(), 1);
    drop(rt_a);
    let rt_b = paused_runtime();
    let c3 = c.clone();
    let joined = rt_b.block_on(async move {
        let start = Instant::now();
        let first = tokio::spawn({
            let c3 = c3.clone();
            async move { c3.token().await.map(|t| t.secret().to_string()) }
        })
        .await;
        let waited = start.elapsed();
        let second =
            tokio::spawn(async move { c3.token().await.map(|t| t.secret().to_string()) }).await;
        (first, waited, second)
    });
    let (first, waited, second) = joined;
    assert!(
        first.is_ok(),
        "a caller on a new runtime panicked joining a flight from a dead runtime: {first:?}"
    );
    assert!(waited <= 30 * SEC, "waited {waited:?}");
    assert_eq!(
        second.expect("no panic").expect("a token"),
        "token-1",
        "after the abandoned flight, a new fetch gives a token"
    );
}

// ---------------------------------------------------------------------------------------------
// T5: generation guard.
// ---------------------------------------------------------------------------------------------

// A late background success after an invalidation + blocking refresh is discarded.
#[tokio::test(start_paused = true)]
async fn t5_late_background_success_after_invalidate_is_discarded() {
    let script = Script::new([ok(HOUR), slow(10 * SEC, HOUR), ok(HOUR)]);
    let c = cache(&script, no_jitter());
    let t0 = c.token().await.unwrap();
    tokio::time::advance(40 * MIN + SEC).await;
    assert_eq!(at_once(&c), "token-0");
    settle().await;
    assert!(c.invalidate_token(&t0));
    let (tok, _) = timed(&c).await;
    assert_eq!(tok.unwrap(), "token-2");
    tokio::time::advance(11 * SEC).await;
    settle().await;
    assert_eq!(
        at_once(&c),
        "token-2",
        "a late background result overwrote a newer one"
    );
    let st = c.stats();
    assert!(
        st.background_discarded == 1 || st.background_succeeded == 0,
        "{st:?}"
    );
}

// A late background failure after a blocking refresh neither backs off nor re-stales the newer
// token.
#[tokio::test(start_paused = true)]
async fn t5_late_background_failure_does_not_touch_newer_token() {
    let script = Script::new([ok(HOUR), Step::FailAfter(10 * SEC), ok(HOUR), ok(HOUR)]);
    let c = cache(&script, no_jitter());
    let t0 = c.token().await.unwrap();
    tokio::time::advance(40 * MIN + SEC).await;
    assert_eq!(at_once(&c), "token-0");
    settle().await;
    assert!(c.invalidate_token(&t0));
    let installed = Instant::now();
    assert_eq!(c.token().await.unwrap().secret(), "token-2");
    tokio::time::advance(11 * SEC).await;
    settle().await;
    let st = c.stats();
    assert_eq!(st.background_failed, 0, "{st:?}");
    assert_eq!(
        st.backoffs, 0,
        "a discarded failure must not back off: {st:?}"
    );
    // token-2 is a 60 min token: fresh until +40 min from its install.
    tokio::time::advance(5 * MIN).await;
    assert_eq!(c.state(), TokenState::Fresh);
    assert_eq!(at_once(&c), "token-2");
    settle().await;
    assert_eq!(script.calls(), 3);
    tokio::time::advance((installed + 40 * MIN + SEC) - Instant::now()).await;
    assert_eq!(c.state(), TokenState::Stale);
    assert_eq!(at_once(&c), "token-2");
    settle().await;
    assert_eq!(
        script.calls(),
        4,
        "token-2's own stale window starts a refresh at once"
    );
}

// A late background success after expiry + blocking refresh is discarded (the seed's own case).
#[tokio::test(start_paused = true)]
async fn t5_late_background_success_after_expiry_blocking_refresh_is_discarded() {
    let script = Script::new([ok(HOUR), slow(25 * MIN, 2 * HOUR), ok(HOUR)]);
    let c = cache(&script, no_jitter().load_timeout(HOUR));
    c.token().await.unwrap();
    tokio::time::advance(40 * MIN + SEC).await;
    assert_eq!(at_once(&c), "token-0");
    settle().await;
    tokio::time::advance(19 * MIN + 30 * SEC).await; // 59:31: expired
    assert_eq!(c.state(), TokenState::Expired);
    assert_eq!(c.token().await.unwrap().secret(), "token-2");
    tokio::time::advance(6 * MIN).await; // the background result lands
    settle().await;
    assert_eq!(at_once(&c), "token-2");
    assert_eq!(c.stats().background_discarded, 1);
}

// invalidate() aborts a running background refresh; its result never appears.
#[tokio::test(start_paused = true)]
async fn t5_invalidate_aborts_background_refresh() {
    let script = Script::new([ok(HOUR), slow(10 * SEC, HOUR), ok(HOUR)]);
    let c = cache(&script, no_jitter());
    c.token().await.unwrap();
    tokio::time::advance(40 * MIN + SEC).await;
    assert_eq!(at_once(&c), "token-0");
    settle().await;
    c.invalidate();
    assert_eq!(c.state(), TokenState::Empty);
    assert_eq!(c.token().await.unwrap().secret(), "token-2");
    tokio::time::advance(20 * SEC).await;
    settle().await;
    assert_eq!(at_once(&c), "token-2");
}

// ---------------------------------------------------------------------------------------------
// T6: expiry forms and extreme values.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn t6_every_expiry_form_gives_the_same_deadline() {
    let wall = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
    let clock = VirtualClock::starting_at(wall);
    let now = Instant::now();
    let in_an_hour = wall + time::Duration::hours(1);
    let forms = [
        Expiry::On(in_an_hour),
        Expiry::On(in_an_hour.to_offset(UtcOffset::from_hms(2, 0, 0).unwrap())),
        Expiry::On(in_an_hour.to_offset(UtcOffset::from_hms(-9, -30, 0).unwrap())),
        Expiry::OnSystem(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_003_600)),
        Expiry::unix_seconds(1_700_003_600),
        Expiry::In(HOUR),
        Expiry::At(now + HOUR),
    ];
    for form in forms {
        let script = Script::new([Step::Exp(form)]);
        let c = cache(&script, no_jitter().wall_clock(clock));
        let (_, deadline) = c.token_and_deadline().await.unwrap();
        assert_eq!(deadline, Some(now + HOUR), "{form:?}");
        assert_eq!(form.deadline(now, &clock), Some(now + HOUR), "{form:?}");
    }
}

// T6 / X5: far past and far future expiries never panic; far-past tokens count as expired,
// far-future ones as fresh.
#[tokio::test(start_paused = true)]
async fn t6_extreme_expiries_never_panic() {
    let wall = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
    let clock = VirtualClock::starting_at(wall);
    let year_9999 = time::macros::datetime!(9999-12-31 23:59:59 UTC);
    let far_future = [
        Expiry::On(year_9999),
        Expiry::unix_seconds(i64::MAX),
        Expiry::unix_seconds(253_402_300_799), // 9999-12-31T23:59:59Z
        Expiry::In(Duration::MAX),
        Expiry::OnSystem(SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 40)),
    ];
    for form in far_future {
        let script = Script::new([Step::Exp(form)]);
        let c = cache(&script, no_jitter().wall_clock(clock));
        assert_eq!(c.token().await.unwrap().secret(), "token-0", "{form:?}");
        assert_eq!(c.state(), TokenState::Fresh, "{form:?}");
        tokio::time::advance(Duration::from_secs(1000 * 24 * 3600)).await;
        assert_eq!(c.state(), TokenState::Fresh, "{form:?} after 1000 days");
        assert_eq!(at_once(&c), "token-0");
    }
    let far_past = [
        Expiry::unix_seconds(i64::MIN),
        Expiry::unix_seconds(0),
        Expiry::unix_seconds(-1),
        Expiry::On(time::macros::datetime!(-9999-01-01 00:00:00 UTC)),
        Expiry::OnSystem(SystemTime::UNIX_EPOCH),
        Expiry::In(Duration::ZERO),
        Expiry::At(Instant::now()),
    ];
    for form in far_past {
        let script = Script::new([Step::Exp(form), ok(HOUR)]);
        let c = cache(&script, no_jitter().wall_clock(clock));
        let now = Instant::now();
        let (tok, deadline) = c.token_and_deadline().await.unwrap();
        assert_eq!(
            tok.secret(),
            "token-0",
            "{form:?}: the waiter gets the token"
        );
        assert!(
            deadline.is_some_and(|d| d <= now),
            "{form:?}: deadline {deadline:?} for an expired token"
        );
        assert_eq!(c.state(), TokenState::Expired, "{form:?}");
        assert_eq!(c.token().await.unwrap().secret(), "token-1", "{form:?}");
    }
}

// T6: Expiry::At in the past is clamped to now (the guide: "An expiry in the past is `now`").
#[tokio::test(start_paused = true)]
async fn t6_expiry_at_past_instant_is_now() {
    tokio::time::advance(HOUR).await;
    let now = Instant::now();
    let clock = VirtualClock::starting_at(OffsetDateTime::UNIX_EPOCH);
    assert_eq!(Expiry::At(now - MIN).deadline(now, &clock), Some(now));
    assert_eq!(
        Expiry::On(OffsetDateTime::UNIX_EPOCH - time::Duration::days(1)).deadline(now, &clock),
        Some(now)
    );
    assert_eq!(Expiry::Never.deadline(now, &clock), None);
}

// ---------------------------------------------------------------------------------------------
// T8 / T9: static-stability preset.
// ---------------------------------------------------------------------------------------------

#[test]
fn t8_tier_function_boundaries() {
    let ns = Duration::from_nanos(1);
    assert_eq!(StaleWindow::tier(Duration::ZERO), 5 * MIN);
    assert_eq!(StaleWindow::tier(20 * MIN), 5 * MIN);
    assert_eq!(StaleWindow::tier(20 * MIN + ns), 15 * MIN);
    assert_eq!(StaleWindow::tier(90 * MIN - ns), 15 * MIN);
    assert_eq!(StaleWindow::tier(90 * MIN), 60 * MIN);
    assert_eq!(StaleWindow::tier(Duration::MAX), 60 * MIN);
    let p = RefreshConfig::static_stability();
    assert!(p.is_static_stability());
    assert_eq!(p.stale_window_value(), StaleWindow::Tiered);
    assert_eq!(p.skew_value(), 60 * SEC, "the mandatory window is 60 s");
}

// T8: the advisory window per tier, at the token lifetimes around the tier boundaries.
#[tokio::test(start_paused = true)]
async fn t8_preset_tiers_at_boundaries() {
    for (ttl, window) in [
        (20 * MIN, 5 * MIN),
        (20 * MIN + SEC, 15 * MIN),
        (89 * MIN + 59 * SEC, 15 * MIN),
        (90 * MIN, 60 * MIN),
        (6 * HOUR, 60 * MIN),
    ] {
        let script = Script::new([ok(ttl)]);
        let c = cache(&script, preset());
        c.token().await.unwrap();
        let stale_at = ttl - window;
        tokio::time::advance(stale_at - SEC).await;
        assert_eq!(
            c.state(),
            TokenState::Fresh,
            "ttl {ttl:?}: 1 s before advisory"
        );
        tokio::time::advance(2 * SEC).await;
        assert_eq!(
            c.state(),
            TokenState::Stale,
            "ttl {ttl:?}: 1 s into advisory"
        );
        // Mandatory window: 60 s before expiry.
        tokio::time::advance(ttl - stale_at - SEC - 62 * SEC).await;
        assert_eq!(
            c.state(),
            TokenState::Stale,
            "ttl {ttl:?}: 61 s before expiry"
        );
        tokio::time::advance(2 * SEC).await;
        assert_eq!(
            c.state(),
            TokenState::Expired,
            "ttl {ttl:?}: 59 s before expiry"
        );
    }
}

// T8: a configured window overrides the table.
#[tokio::test(start_paused = true)]
async fn t8_configured_window_overrides_tiers() {
    let script = Script::new([ok(6 * HOUR)]);
    let c = cache(&script, preset().stale_duration(2 * MIN));
    c.token().await.unwrap();
    tokio::time::advance(6 * HOUR - 2 * MIN - SEC).await;
    assert_eq!(c.state(), TokenState::Fresh);
    tokio::time::advance(2 * SEC).await;
    assert_eq!(c.state(), TokenState::Stale);
}

// T8 / T9: a 30-minute outage from the advisory window on: every call gets the cached token at
// once (advisory, mandatory, past expiry), the source is contacted at most once per 300 s, and
// once the source is back the cache recovers within one back-off (≤ 600 s).
#[tokio::test(start_paused = true)]
async fn t9_preset_serves_through_outage_and_recovers() {
    let script = Script::new([ok(HOUR), Step::Fail]);
    let c = cache(&script, RefreshConfig::static_stability());
    c.token().await.unwrap();
    tokio::time::advance(44 * MIN).await;
    let outage_start = Instant::now();
    let mut contacts = vec![];
    let mut last_calls = script.calls();
    while Instant::now() < outage_start + 30 * MIN {
        tokio::time::advance(5 * SEC).await;
        let (tok, waited) = timed(&c).await;
        assert_eq!(
            tok.as_deref().ok(),
            Some("token-0"),
            "outage call at +{:?}",
            Instant::now() - outage_start
        );
        assert!(waited <= SEC, "a call waited {waited:?} during the outage");
        settle().await;
        if script.calls() != last_calls {
            last_calls = script.calls();
            contacts.push(Instant::now());
        }
    }
    assert!(!contacts.is_empty());
    for pair in contacts.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= 300 * SEC && gap <= 605 * SEC,
            "contacts {gap:?} apart; expected a back-off in [300 s, 600 s]"
        );
    }
    assert!(contacts.len() <= 7, "{} contacts in 30 min", contacts.len());
    let st = c.stats();
    assert!(st.served_past_expiry > 0, "{st:?}");
    // Recovery.
    script.set([ok(HOUR)]);
    let back = Instant::now();
    loop {
        tokio::time::advance(5 * SEC).await;
        let tok = c.token().await.unwrap();
        settle().await;
        if tok.secret() != "token-0" {
            break;
        }
        let tok = at_once(&c);
        if tok != "token-0" {
            break;
        }
        assert!(
            Instant::now() - back <= 610 * SEC,
            "no recovery within one back-off"
        );
    }
}

// T9: with no cached token the error is returned (preset).
#[tokio::test(start_paused = true)]
async fn t9_preset_no_cached_token_returns_error() {
    let script = Script::new([Step::Fail]);
    let c = cache(&script, preset());
    let err = c.token().await.expect_err("nothing cached: the error");
    assert!(err.source_error::<SrcErr>().is_some(), "{err:?}");
}

// T9 (guide): a refreshed token already inside the mandatory window counts as a failed
// refresh: the cached token is served, the unusable one is not installed, a back-off starts.
#[tokio::test(start_paused = true)]
async fn t9_preset_unusable_refreshed_token_counts_as_failure() {
    let script = Script::new([ok(HOUR), ok(30 * SEC)]);
    let c = cache(&script, preset());
    c.token().await.unwrap();
    tokio::time::advance(59 * MIN + 10 * SEC).await; // mandatory window
    let (tok, _) = timed(&c).await;
    settle().await;
    assert_eq!(
        tok.unwrap(),
        "token-0",
        "the cached token, not the unusable one"
    );
    let st = c.stats();
    assert_eq!(st.unusable_refreshes, 1, "{st:?}");
    assert_eq!(st.backoffs, 1, "{st:?}");
    assert_eq!(script.calls(), 2);
    tokio::time::advance(30 * SEC).await;
    let (tok, waited) = timed(&c).await;
    assert_eq!(tok.unwrap(), "token-0");
    assert_eq!(waited, Duration::ZERO);
    assert_eq!(script.calls(), 2, "no contact during the back-off");
}

// T8: the preset back-off is uniform in [300 s, 600 s] — whatever the jitter samples (out-of-
// range samples are clamped, per `jitter_source`).
#[tokio::test(start_paused = true)]
async fn t8_preset_backoff_within_300_600_for_any_sample() {
    for sample in [0.0, 0.5, 0.999_999, 1.0, 7.0, -3.0, f64::NAN, f64::INFINITY] {
        let script = Script::new([ok(6 * HOUR), Step::Fail]);
        let c = cache(
            &script,
            RefreshConfig::static_stability().jitter_source(move || sample),
        );
        c.token().await.unwrap();
        tokio::time::advance(5 * HOUR + 10 * MIN).await; // advisory window (60 min tier)
        assert_eq!(at_once(&c), "token-0");
        settle().await;
        assert_eq!(script.calls(), 2, "sample {sample}");
        let s = seconds_until_next_contact(&c, &script, 700).await;
        assert!(
            s.is_some_and(|s| (300..=600).contains(&s)),
            "sample {sample}: next contact after {s:?} s, expected [300, 600]"
        );
    }
}

// T4 / guide: the seed default back-off is 60 s plus up to `jitter` of it (10 % default).
#[tokio::test(start_paused = true)]
async fn t4_seed_backoff_jitter_bounded() {
    for (jitter, sample, lo, hi) in [
        (0.1, 0.0, 60, 60),
        (0.1, 0.999_999, 60, 66),
        (0.5, 0.999_999, 60, 90),
        (0.5, 42.0, 60, 90),
        (0.5, f64::NAN, 60, 90),
        (5.0, 0.999_999, 60, 90), // fraction clamped to 0.5
    ] {
        let script = Script::new([ok(HOUR), Step::Fail]);
        let c = cache(
            &script,
            RefreshConfig::default()
                .jitter(jitter)
                .jitter_source(move || sample),
        );
        c.token().await.unwrap();
        tokio::time::advance(55 * MIN).await; // stale whatever the jitter
        assert_eq!(at_once(&c), "token-0");
        settle().await;
        assert_eq!(script.calls(), 2);
        let s = seconds_until_next_contact(&c, &script, 200).await;
        assert!(
            s.is_some_and(|s| (lo..=hi).contains(&s)),
            "jitter {jitter} sample {sample}: next contact after {s:?} s, expected [{lo}, {hi}]"
        );
    }
}

// T2: jitter shrinks the stale window by at most `jitter` of it — never makes a token stale
// earlier than the un-jittered threshold.
#[tokio::test(start_paused = true)]
async fn t2_stale_window_jitter_bounded() {
    for sample in [0.0, 0.5, 0.999_999, 3.0, -1.0, f64::NAN] {
        let script = Script::new([ok(HOUR)]);
        let c = cache(
            &script,
            RefreshConfig::default()
                .jitter(0.5)
                .jitter_source(move || sample),
        );
        c.token().await.unwrap();
        // window 20 min, shrinks by up to 10 min: stale somewhere in [40 min, 50 min].
        tokio::time::advance(40 * MIN - SEC).await;
        assert_eq!(c.state(), TokenState::Fresh, "sample {sample}");
        tokio::time::advance(10 * MIN + 2 * SEC).await;
        assert_eq!(c.state(), TokenState::Stale, "sample {sample}");
    }
}

// T12: the defaults are the seed's.
#[test]
fn t12_defaults_are_seed() {
    let d = RefreshConfig::default();
    assert!(!d.is_static_stability());
    assert_eq!(d.skew_value(), 40 * SEC);
    assert_eq!(d.backoff_value(), 60 * SEC);
    assert_eq!(d.load_timeout_value(), 30 * SEC);
    assert_eq!(
        d.stale_window_value(),
        StaleWindow::Dynamic { max: 20 * MIN }
    );
    assert!((d.jitter_value() - 0.1).abs() < 1e-9);
    let e = RefreshConfig::from_env_with(|_| None);
    assert!(!e.is_static_stability());
    assert_eq!(e.skew_value(), 40 * SEC);
    assert_eq!(
        e.stale_window_value(),
        StaleWindow::Dynamic { max: 20 * MIN }
    );
}

// T12: in the seed default a failed blocking refresh at expiry gives every waiter the error.
#[tokio::test(start_paused = true)]
async fn t12_seed_default_blocking_failure_at_expiry_is_an_error() {
    let script = Script::new([ok(HOUR), Step::Fail]);
    let c = cache(&script, no_jitter());
    c.token().await.unwrap();
    tokio::time::advance(59 * MIN + 30 * SEC).await;
    assert!(c.token().await.is_err());
}

// ---------------------------------------------------------------------------------------------
// T10: non-recoverable errors.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn t10_non_recoverable_at_once_cached_1_to_5_s() {
    let script = Script::new([Step::NonRec]);
    let c = cache(&script, RefreshConfig::default());
    let start = Instant::now();
    let err = c.token().await.expect_err("a bad secret");
    assert_eq!(start.elapsed(), Duration::ZERO, "at once");
    assert!(err.is_non_recoverable(), "{err:?}");
    assert!(err.source_error::<SrcErr>().is_some());
    assert_eq!(script.calls(), 1);
    // Repeated without contacting the source for at least 1 s.
    for _ in 0..9 {
        tokio::time::advance(Duration::from_millis(100)).await;
        let e = c
            .token()
            .now_or_never()
            .expect("a cached error is answered at once")
            .expect_err("cached");
        assert!(e.is_non_recoverable());
    }
    assert_eq!(script.calls(), 1);
    // ... and for at most 5 s.
    tokio::time::advance(4 * SEC + Duration::from_millis(200)).await;
    let _ = c.token().await;
    assert_eq!(script.calls(), 2, "cached for at most 5 s");
    let st = c.stats();
    assert_eq!(st.non_recoverable, 2);
    assert_eq!(st.cached_errors, 9);
    assert_eq!(st.backoffs, 0, "non-recoverable errors skip the back-off");
}

// T10 in the preset's mandatory window: the back-off (≥ 300 s) is skipped — the source is
// contacted again within the 1–5 s error caching.
#[tokio::test(start_paused = true)]
async fn t10_preset_non_recoverable_skips_backoff() {
    let script = Script::new([ok(HOUR), Step::NonRec]);
    let c = cache(&script, preset());
    c.token().await.unwrap();
    tokio::time::advance(59 * MIN + 20 * SEC).await;
    let (_r, waited) = timed(&c).await;
    assert_eq!(waited, Duration::ZERO);
    assert_eq!(script.calls(), 2);
    let s = seconds_until_next_contact(&c, &script, 30).await;
    assert!(
        s.is_some_and(|s| s <= 6),
        "non-recoverable must skip the 300 s back-off; next contact after {s:?} s"
    );
    assert_eq!(c.stats().backoffs, 0);
}

// T10 in the seed default's stale window (background): no 60 s back-off either.
#[tokio::test(start_paused = true)]
async fn t10_background_non_recoverable_skips_backoff() {
    let script = Script::new([ok(HOUR), Step::NonRec]);
    let c = cache(&script, no_jitter());
    c.token().await.unwrap();
    tokio::time::advance(41 * MIN).await;
    assert!(
        c.token().now_or_never().is_some(),
        "a stale call never waits"
    );
    settle().await;
    assert_eq!(script.calls(), 2);
    let s = seconds_until_next_contact(&c, &script, 90).await;
    assert!(
        s.is_some_and(|s| s <= 6),
        "non-recoverable must skip the 60 s back-off; next contact after {s:?} s"
    );
}

// ---------------------------------------------------------------------------------------------
// T11: invalidation.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn t11_invalidate_matching_vs_non_matching() {
    let script = Script::new([ok(HOUR)]);
    let c = cache(&script, no_jitter());
    let t0 = c.token().await.unwrap();
    assert!(!c.invalidate_token(&BearerToken::new("someone-else")));
    assert_eq!(at_once(&c), "token-0");
    assert!(c.invalidate_token(&t0));
    assert_ne!(c.state(), TokenState::Fresh);
    let t1 = c.token().await.unwrap();
    assert_eq!(t1.secret(), "token-1");
    // A late 401 for the old token changes nothing.
    assert!(!c.invalidate_token(&t0));
    assert!(!c.invalidate_if(|t| t.secret() == "token-0"));
    assert_eq!(at_once(&c), "token-1");
    assert_eq!(script.calls(), 2);
    let st = c.stats();
    assert_eq!(st.invalidations, 1);
    assert_eq!(st.invalidations_ignored, 3);
    assert_eq!(st.invalidated_refreshes, 1);
}

// T11: with nothing cached, an invalidation matches nothing.
#[tokio::test(start_paused = true)]
async fn t11_invalidate_empty_cache_is_ignored() {
    let script = Script::new([ok(HOUR)]);
    let c = cache(&script, no_jitter());
    assert!(!c.invalidate_token(&BearerToken::new("token-0")));
    assert!(!c.invalidate_if(|_| true));
    assert_eq!(c.stats().invalidations_ignored, 2);
}

// T11: a burst of 401s for one token from 100 concurrent requests causes one refresh.
#[tokio::test(start_paused = true)]
async fn t11_burst_of_rejections_one_refresh() {
    let script = Script::new([ok(HOUR), slow(SEC, HOUR)]);
    let c = cache(&script, no_jitter());
    let t0 = c.token().await.unwrap();
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let c = c.clone();
            let t0 = t0.clone();
            tokio::spawn(async move {
                // every request was sent with token-0 and comes back 401, spread over 2 s
                tokio::time::sleep(Duration::from_millis(i * 20)).await;
                c.invalidate_token(&t0);
                c.token().await.unwrap().secret().to_string()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), "token-1");
    }
    assert_eq!(script.calls(), 2, "one refresh for a burst of 401s");
    let st = c.stats();
    assert_eq!(st.invalidated_refreshes, 1, "{st:?}");
    assert_eq!(st.invalidations + st.invalidations_ignored, 100, "{st:?}");
}

// T11: invalidation during a back-off: served at once, source not contacted until the back-off
// ends, then the mandatory (blocking) path.
#[tokio::test(start_paused = true)]
async fn t11_invalidate_during_backoff() {
    let script = Script::new([ok(HOUR), Step::Fail, ok(HOUR)]);
    let c = cache(&script, no_jitter());
    let t0 = c.token().await.unwrap();
    tokio::time::advance(40 * MIN).await;
    assert_eq!(at_once(&c), "token-0");
    settle().await;
    assert_eq!(c.stats().background_failed, 1);
    tokio::time::advance(10 * SEC).await;
    assert!(c.invalidate_token(&t0));
    for _ in 0..49 {
        assert_eq!(at_once(&c), "token-0");
        tokio::time::advance(SEC).await;
    }
    assert_eq!(script.calls(), 2, "no contact during the back-off");
    assert!(c.stats().served_during_backoff > 0);
    tokio::time::advance(2 * SEC).await;
    let (tok, _) = timed(&c).await;
    assert_eq!(tok.unwrap(), "token-2");
    assert_eq!(c.stats().invalidated_refreshes, 1);
}

// T11: an invalidation racing an in-flight blocking refresh: the waiters get the new token and
// no second fetch happens.
#[tokio::test(start_paused = true)]
async fn t11_invalidate_racing_in_flight_blocking_refresh() {
    let script = Script::new([ok(HOUR), slow(5 * SEC, HOUR), ok(HOUR)]);
    let c = cache(&script, no_jitter());
    let t0 = c.token().await.unwrap();
    assert!(c.invalidate_token(&t0));
    let c2 = c.clone();
    let waiter = tokio::spawn(async move { c2.token().await.unwrap().secret().to_string() });
    settle().await;
    assert_eq!(script.calls(), 2);
    // A second 401 for the same token while the refresh is in flight.
    c.invalidate_token(&t0);
    let (tok, waited) = timed(&c).await;
    assert_eq!(tok.unwrap(), "token-1");
    assert!(waited <= 5 * SEC);
    assert_eq!(waiter.await.unwrap(), "token-1");
    assert_eq!(
        script.calls(),
        2,
        "a repeated 401 does not cause a second fetch"
    );
}

// invalidate() (plain) while a blocking refresh is in flight: its waiters still get a token
// (no hang, no error), bounded by the fetch.
#[tokio::test(start_paused = true)]
async fn t11_plain_invalidate_during_blocking_refresh_waiters_get_a_token() {
    let script = Script::new([slow(5 * SEC, HOUR), ok(HOUR)]);
    let c = cache(&script, no_jitter());
    let c2 = c.clone();
    let waiter = tokio::spawn(async move { timed(&c2).await });
    settle().await;
    c.invalidate();
    let (tok, waited) = waiter.await.unwrap();
    assert!(tok.is_ok(), "{tok:?}");
    assert!(waited <= 30 * SEC);
}

// ---------------------------------------------------------------------------------------------
// Bounded waits, cancellation, leaks.
// ---------------------------------------------------------------------------------------------

// Default config: a hung source never hangs a caller beyond the 30 s load timeout.
#[tokio::test(start_paused = true)]
async fn bounded_hung_source_default_timeout() {
    let script = Script::new([Step::Hang, ok(HOUR)]);
    let c = cache(&script, RefreshConfig::default());
    let (r, waited) = timed(&c).await;
    let err = r.expect_err("a timeout");
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(waited, 30 * SEC);
    assert_eq!(c.stats().timeouts, 1);
    assert_eq!(c.token().await.unwrap().secret(), "token-1");
}

// A waiter joining late is bounded by one load timeout from the fetch's start.
#[tokio::test(start_paused = true)]
async fn bounded_late_waiter_by_fetch_start() {
    let script = Script::new([Step::Hang]);
    let c = cache(&script, RefreshConfig::default());
    let c2 = c.clone();
    let first = tokio::spawn(async move { timed(&c2).await });
    settle().await;
    tokio::time::advance(20 * SEC).await;
    let (r, waited) = timed(&c).await;
    assert!(r.unwrap_err().is_timeout());
    assert!(waited <= 10 * SEC, "late waiter waited {waited:?}");
    let (r, waited) = first.await.unwrap();
    assert!(r.unwrap_err().is_timeout());
    assert_eq!(waited, 30 * SEC);
    assert_eq!(script.calls(), 1);
}

// Impatient callers (10 s deadlines) against a 15 s endpoint: one fetch, then a token.
#[tokio::test(start_paused = true)]
async fn bounded_impatient_callers_do_not_restart_the_fetch() {
    let script = Script::new([slow(15 * SEC, HOUR)]);
    let c = cache(&script, RefreshConfig::default());
    let start = Instant::now();
    let tok = loop {
        match tokio::time::timeout(10 * SEC, c.token()).await {
            Ok(r) => break r.unwrap(),
            Err(_) => assert!(start.elapsed() < 60 * SEC, "never got a token"),
        }
    };
    assert_eq!(tok.secret(), "token-0");
    assert_eq!(script.calls(), 1);
    assert!(start.elapsed() <= 20 * SEC);
}

// A panicking blocking fetch: every waiter gets SourcePanicked; the next call retries.
#[tokio::test(start_paused = true)]
async fn bounded_panicking_blocking_source() {
    let script = Script::new([Step::PanicAfter(SEC), ok(HOUR)]);
    let c = cache(&script, RefreshConfig::default());
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.token().await })
        })
        .collect();
    for t in tasks {
        let r = t.await.expect("the panic does not unwind through a caller");
        assert!(
            matches!(r, Err(RefreshError::SourcePanicked)),
            "{:?}",
            r.map(|_| ())
        );
    }
    assert_eq!(script.calls(), 1, "the five callers shared one fetch");
    assert_eq!(c.token().await.unwrap().secret(), "token-1");
}

// Dropping the cache during a background refresh releases the source.
#[tokio::test(start_paused = true)]
async fn leak_dropping_cache_releases_source_background() {
    let script = Script::new([ok(HOUR), Step::Hang]);
    let c = cache(&script, no_jitter());
    c.token().await.unwrap();
    tokio::time::advance(41 * MIN).await;
    assert_eq!(at_once(&c), "token-0");
    settle().await;
    drop(c);
    settle().await;
    assert_eq!(Arc::strong_count(&script), 1, "the source is released");
}

// Cancelled blocking callers and a dropped cache leak nothing (the source is released).
#[tokio::test(start_paused = true)]
async fn leak_cancelled_blocking_callers_and_dropped_cache_release_source() {
    let script = Script::new([Step::Hang]);
    let c = cache(&script, no_jitter());
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.token().await.map(|_| ()) })
        })
        .collect();
    settle().await;
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    drop(c);
    settle().await;
    assert_eq!(
        Arc::strong_count(&script),
        1,
        "an abandoned flight keeps the source alive after the cache is gone"
    );
}

// The source sees at most one blocking and one background fetch at a time, through a storm of
// callers across stale and expired states with a slow endpoint.
#[tokio::test(start_paused = true)]
async fn t3_source_never_sees_more_than_two_concurrent_fetches() {
    let script = Script::new([slow(3 * SEC, 2 * MIN)]);
    let c = cache(&script, no_jitter().skew(10 * SEC));
    let mut handles = vec![];
    for i in 0..600u64 {
        let c = c.clone();
        handles.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 500)).await;
            let _ = c.token().await;
            if i % 250 == 0 {
                c.invalidate_if(|_| true);
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    assert!(
        script.max_in_flight.load(Ordering::SeqCst) <= 2,
        "source saw {} concurrent fetches",
        script.max_in_flight.load(Ordering::SeqCst)
    );
    let st = c.stats();
    assert!(st.background_started > 0);
    assert_eq!(st.fetches(), script.calls() as u64, "stats agree: {st:?}");
}

// ---------------------------------------------------------------------------------------------
// Secrets.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn secrets_never_in_debug_or_display() {
    let secret = "s3cr3t-value-xyz";
    let token = BearerToken::new(secret);
    let fetched = Fetched::new(token.clone(), Expiry::In(HOUR));

    #[derive(Debug)]
    struct Fixed;
    impl TokenSource for Fixed {
        type Token = BearerToken;
        type Error = SrcErr;
        async fn fetch(&self) -> Result<Fetched<BearerToken>, SrcErr> {
            Ok(Fetched::new(
                BearerToken::new("s3cr3t-value-xyz"),
                Expiry::In(HOUR),
            ))
        }
    }
    let c = TokenCache::new(Fixed, RefreshConfig::default());
    let got = c.token().await.unwrap();
    let printed = format!(
        "{token:?} {token} {fetched:?} {c:?} {got:?} {got} {:?} {:?}",
        c.stats(),
        c.config()
    );
    assert!(!printed.contains(secret), "{printed}");
    assert!(!printed.contains("s3cr3t"), "{printed}");
}

// ---------------------------------------------------------------------------------------------
// X5 / configuration: clamped, never a panic.
// ---------------------------------------------------------------------------------------------

#[test]
fn x5_builder_extremes_are_clamped() {
    let c = RefreshConfig::default()
        .skew(Duration::MAX)
        .backoff(Duration::MAX)
        .load_timeout(Duration::MAX)
        .max_stale_window(Duration::MAX);
    assert_eq!(c.skew_value(), HOUR);
    assert_eq!(c.backoff_value(), HOUR);
    assert_eq!(c.load_timeout_value(), HOUR);
    assert_eq!(
        c.stale_window_value(),
        StaleWindow::Dynamic { max: 24 * HOUR }
    );
    let z = RefreshConfig::default()
        .skew(Duration::ZERO)
        .backoff(Duration::ZERO)
        .load_timeout(Duration::ZERO)
        .max_stale_window(Duration::ZERO);
    assert_eq!(z.skew_value(), Duration::ZERO);
    assert_eq!(z.backoff_value(), Duration::from_millis(1));
    assert_eq!(z.load_timeout_value(), Duration::from_millis(1));
    for f in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1.0, 2.0, 0.25] {
        let j = RefreshConfig::default().jitter(f).jitter_value();
        assert!((0.0..=0.5).contains(&j), "jitter({f}) → {j}");
    }
    // backoff_range: both clamped, max at least min.
    let _ = RefreshConfig::default().backoff_range(Duration::MAX, Duration::ZERO);
    let _ = RefreshConfig::default().backoff_range(Duration::ZERO, Duration::MAX);
    let _ = RefreshConfig::default().stale_duration(Duration::MAX);
    let _ = format!(
        "{:?}",
        RefreshConfig::default().stale_duration(Duration::MAX)
    );
}

// X5: extreme builder values used by a live cache never panic, and keep the promises.
#[tokio::test(start_paused = true)]
async fn x5_extreme_configs_in_use_never_panic() {
    let configs = [
        RefreshConfig::default()
            .skew(Duration::MAX)
            .backoff(Duration::MAX)
            .load_timeout(Duration::MAX)
            .max_stale_window(Duration::MAX)
            .stale_duration(Duration::MAX)
            .jitter(f64::NAN),
        RefreshConfig::default()
            .skew(Duration::ZERO)
            .backoff(Duration::ZERO)
            .load_timeout(Duration::ZERO)
            .max_stale_window(Duration::ZERO)
            .jitter(f64::INFINITY)
            .jitter_source(|| f64::NAN),
        RefreshConfig::static_stability()
            .backoff_range(Duration::MAX, Duration::ZERO)
            .stale_duration(Duration::MAX),
        RefreshConfig::static_stability().backoff_range(Duration::ZERO, Duration::ZERO),
    ];
    for config in configs {
        let dbg = format!("{config:?}");
        let script = Script::new([ok(Duration::MAX), Step::Fail, ok(30 * MIN), Step::Hang]);
        let c = cache(&script, config);
        for _ in 0..20 {
            let _ = tokio::time::timeout(2 * HOUR, c.token()).await;
            settle().await;
            tokio::time::advance(7 * MIN).await;
        }
        let _ = c.state();
        let _ = dbg;
    }
}

// Zero load timeout (clamped to 1 ms) against a 1 s source: a Timeout, not a panic or a hang.
#[tokio::test(start_paused = true)]
async fn x5_zero_load_timeout_is_a_timeout() {
    let script = Script::new([slow(SEC, HOUR)]);
    let c = cache(&script, no_jitter().load_timeout(Duration::ZERO));
    let (r, waited) = timed(&c).await;
    assert!(r.unwrap_err().is_timeout());
    assert!(waited <= Duration::from_millis(2), "waited {waited:?}");
}

// T2: the legacy fixed window; 0 → never stale; a window longer than the lifetime → stale at
// once (not a panic, not never).
#[tokio::test(start_paused = true)]
async fn t2_legacy_fixed_window() {
    let script = Script::new([ok(HOUR)]);
    let c = cache(&script, no_jitter().stale_duration(10 * MIN));
    c.token().await.unwrap();
    tokio::time::advance(50 * MIN - SEC).await;
    assert_eq!(c.state(), TokenState::Fresh);
    tokio::time::advance(2 * SEC).await;
    assert_eq!(c.state(), TokenState::Stale);

    let script = Script::new([ok(HOUR)]);
    let c = cache(&script, no_jitter().stale_duration(Duration::ZERO));
    c.token().await.unwrap();
    tokio::time::advance(59 * MIN + 19 * SEC).await;
    assert_eq!(c.state(), TokenState::Fresh, "0 → never stale");
    tokio::time::advance(2 * SEC).await;
    assert_eq!(c.state(), TokenState::Expired);

    let script = Script::new([ok(HOUR)]);
    let c = cache(&script, no_jitter().stale_duration(2 * HOUR));
    c.token().await.unwrap();
    assert_eq!(c.state(), TokenState::Stale);
}

// Dynamic window with cap 0: never stale, fresh until the skew.
#[tokio::test(start_paused = true)]
async fn t2_zero_stale_window_cap() {
    let script = Script::new([ok(HOUR)]);
    let c = cache(&script, no_jitter().max_stale_window(Duration::ZERO));
    c.token().await.unwrap();
    tokio::time::advance(59 * MIN).await;
    assert_eq!(c.state(), TokenState::Fresh);
    tokio::time::advance(30 * SEC).await;
    assert_eq!(c.state(), TokenState::Expired);
}

// Environment knobs: garbage → default, out of range → clamped, preset selected.
#[test]
fn x5_env_values_clamped_or_default() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        RefreshConfig::from_env_with(move |k| {
            pairs
                .iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        })
    };
    let c = env(&[
        ("TOKEN_REFRESH_SKEW_SECONDS", "abc"),
        ("TOKEN_REFRESH_BACKOFF_SECONDS", "-5"),
        (
            "TOKEN_REFRESH_LOAD_TIMEOUT_SECONDS",
            "99999999999999999999999",
        ),
        ("TOKEN_REFRESH_MAX_STALE_WINDOW_SECONDS", ""),
        ("TOKEN_REFRESH_JITTER_PERCENT", "1e3"),
        ("TOKEN_REFRESH_PRESET", "bogus"),
    ]);
    assert_eq!(c.skew_value(), 40 * SEC);
    assert_eq!(c.backoff_value(), 60 * SEC);
    assert!(c.load_timeout_value() == 30 * SEC || c.load_timeout_value() == 600 * SEC);
    assert_eq!(
        c.stale_window_value(),
        StaleWindow::Dynamic { max: 20 * MIN }
    );
    assert!((c.jitter_value() - 0.1).abs() < 1e-9);
    assert!(!c.is_static_stability());

    let c = env(&[
        ("TOKEN_REFRESH_SKEW_SECONDS", "5000"),
        ("TOKEN_REFRESH_BACKOFF_SECONDS", "0"),
        ("TOKEN_REFRESH_LOAD_TIMEOUT_SECONDS", "0"),
        ("TOKEN_REFRESH_MAX_STALE_WINDOW_SECONDS", "100000"),
        ("TOKEN_REFRESH_JITTER_PERCENT", "100"),
    ]);
    assert_eq!(c.skew_value(), HOUR);
    assert_eq!(c.backoff_value(), SEC);
    assert_eq!(c.load_timeout_value(), SEC);
    assert_eq!(
        c.stale_window_value(),
        StaleWindow::Dynamic {
            max: Duration::from_secs(86_400)
        }
    );
    assert!((c.jitter_value() - 0.5).abs() < 1e-9);

    let c = env(&[
        ("TOKEN_REFRESH_PRESET", "static-stability"),
        ("TOKEN_REFRESH_BACKOFF_SECONDS", "10"),
    ]);
    assert!(c.is_static_stability());
    assert_eq!(c.stale_window_value(), StaleWindow::Tiered);
    assert_eq!(c.backoff_value(), 10 * SEC, "set knobs override the preset");
    assert_eq!(c.skew_value(), 60 * SEC, "unset knobs keep the preset's");
}

// ---------------------------------------------------------------------------------------------
// T7: the Azure adapter.
// ---------------------------------------------------------------------------------------------

#[cfg(feature = "azure")]
mod azure {
    use super::*;
    use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
    use azure_core::error::ErrorKind;
    use azure_core::http::StatusCode;
    use token_refresh::CachingCredential;

    #[derive(Debug)]
    struct FakeCred {
        calls: AtomicUsize,
        status: Mutex<Option<StatusCode>>,
    }

    impl FakeCred {
        fn new() -> Arc<Self> {
            Arc::new(Self {
                calls: AtomicUsize::new(0),
                status: Mutex::new(None),
            })
        }
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    #[async_trait::async_trait]
    impl TokenCredential for FakeCred {
        async fn get_token(
            &self,
            scopes: &[&str],
            _options: Option<TokenRequestOptions<'_>>,
        ) -> azure_core::Result<AccessToken> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if let Some(status) = *self.status.lock().unwrap() {
                return Err(azure_core::Error::with_message(
                    ErrorKind::HttpResponse {
                        status,
                        error_code: Some("invalid_client".into()),
                        raw_response: None,
                    },
                    "token endpoint said no",
                ));
            }
            Ok(AccessToken::new(
                format!("az-secret-{n}-{}", scopes.join(",")),
                OffsetDateTime::now_utc() + time::Duration::hours(1),
            ))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn t7_one_fetch_per_scope_set() {
        let inner = FakeCred::new();
        let cc = CachingCredential::wrap(inner.clone(), RefreshConfig::default());
        let a = cc.get_token(&["b", "a"], None).await.unwrap();
        let b = cc.get_token(&["a", "b", "a"], None).await.unwrap();
        assert_eq!(a.token.secret(), b.token.secret());
        assert_eq!(inner.calls(), 1);
        assert_eq!(cc.scope_sets(), 1);
        let c = cc.access_token(&["c"]).await.unwrap();
        assert_ne!(c.token.secret(), a.token.secret());
        assert_eq!(inner.calls(), 2);
        assert_eq!(cc.scope_sets(), 2);
        // The bearer path and the SDK share the cache.
        let bearer = cc.cache_for(&["a", "b"]).token().await.unwrap();
        assert_eq!(bearer.token.secret(), a.token.secret());
        assert_eq!(inner.calls(), 2);
        // Invalidate through the credential.
        assert!(!cc.invalidate(&["a", "b"], &c));
        assert!(cc.invalidate(&["b", "a"], &a));
        let a2 = cc.get_token(&["a", "b"], None).await.unwrap();
        assert_ne!(a2.token.secret(), a.token.secret());
        assert_eq!(inner.calls(), 3);
        let printed = format!("{cc:?} {a:?} {:?}", cc.cache_for(&["a", "b"]));
        assert!(!printed.contains("az-secret"), "{printed}");
    }

    // T7 / T10: a 5xx is a recoverable credential error, not cached; a 401 from the token
    // endpoint is non-recoverable and repeated for 1–5 s without calling the credential.
    #[tokio::test(start_paused = true)]
    async fn t7_t10_errors_through_the_adapter() {
        let inner = FakeCred::new();
        let cc = CachingCredential::wrap(inner.clone(), RefreshConfig::default());
        *inner.status.lock().unwrap() = Some(StatusCode::InternalServerError);
        let e = cc.get_token(&["s"], None).await.unwrap_err();
        assert_eq!(*e.kind(), ErrorKind::Credential, "{e:?}");
        let _ = cc.get_token(&["s"], None).await.unwrap_err();
        assert_eq!(inner.calls(), 2, "recoverable errors are not cached");

        *inner.status.lock().unwrap() = Some(StatusCode::Unauthorized);
        let e = cc.get_token(&["t"], None).await.unwrap_err();
        assert_eq!(*e.kind(), ErrorKind::Credential, "{e:?}");
        let e2 = cc.access_token(&["t"]).await.unwrap_err();
        assert!(e2.is_non_recoverable(), "{e2:?}");
        assert_eq!(inner.calls(), 3, "a 401 is cached 1–5 s");
        tokio::time::advance(5 * SEC + Duration::from_millis(10)).await;
        *inner.status.lock().unwrap() = None;
        let ok = cc.get_token(&["t"], None).await.unwrap();
        assert_eq!(inner.calls(), 4);
        let printed = format!("{e:?} {e} {e2:?} {e2} {ok:?}");
        assert!(!printed.contains("az-secret"), "{printed}");
    }
}

// ---------------------------------------------------------------------------------------------
// More attacks.
// ---------------------------------------------------------------------------------------------

// T9: in the preset a blocking refresh (mandatory window) that hangs is a failed refresh: the
// waiters are bounded by the load timeout and then get the cached token, not `Timeout`.
#[tokio::test(start_paused = true)]
async fn t9_preset_hung_mandatory_refresh_serves_cached_token() {
    let script = Script::new([ok(HOUR), Step::Hang]);
    let c = cache(&script, preset());
    c.token().await.unwrap();
    tokio::time::advance(59 * MIN + 10 * SEC).await;
    let (tok, waited) = timed(&c).await;
    assert!(waited <= 30 * SEC, "waited {waited:?}");
    assert_eq!(
        tok.as_deref().map_err(|e| e.to_string()),
        Ok("token-0"),
        "a timed-out refresh in the preset serves the cached token"
    );
    let st = c.stats();
    assert_eq!(st.timeouts, 1);
    assert_eq!(st.backoffs, 1);
    // Past expiry, during the back-off: served at once, no contact.
    tokio::time::advance(2 * MIN).await;
    let (tok, waited) = timed(&c).await;
    assert_eq!(tok.unwrap(), "token-0");
    assert_eq!(waited, Duration::ZERO);
    assert_eq!(script.calls(), 2);
    assert!(c.stats().served_past_expiry >= 1);
}

// T9: a background refresh in the advisory window that returns a token already inside the
// mandatory window is a failure: not installed, back-off of at least 300 s.
#[tokio::test(start_paused = true)]
async fn t9_preset_unusable_background_token_not_installed() {
    let script = Script::new([ok(6 * HOUR), ok(30 * SEC), ok(6 * HOUR)]);
    let c = cache(&script, preset());
    c.token().await.unwrap();
    tokio::time::advance(5 * HOUR + MIN).await;
    assert_eq!(at_once(&c), "token-0");
    settle().await;
    assert_eq!(script.calls(), 2);
    assert_eq!(
        at_once(&c),
        "token-0",
        "the unusable token is not installed"
    );
    tokio::time::advance(40 * SEC).await;
    assert_eq!(at_once(&c), "token-0");
    let st = c.stats();
    assert_eq!(st.unusable_refreshes, 1, "{st:?}");
    // The back-off (uniform in [300, 600] s, the preset's random jitter) began 40 s ago.
    let s = seconds_until_next_contact(&c, &script, 700).await;
    assert!(s.is_some_and(|s| (259..=561).contains(&s)), "{s:?}");
}

// T9 / T3: a hung background refresh in the preset: bounded by the load timeout, then backs off
// in [300, 600] s.
#[tokio::test(start_paused = true)]
async fn t9_preset_hung_background_refresh_backs_off() {
    let script = Script::new([ok(6 * HOUR), Step::Hang, ok(6 * HOUR)]);
    let c = cache(&script, preset());
    c.token().await.unwrap();
    tokio::time::advance(5 * HOUR + MIN).await;
    assert_eq!(at_once(&c), "token-0");
    settle().await;
    tokio::time::advance(30 * SEC).await;
    settle().await;
    assert_eq!(c.stats().timeouts, 1);
    let s = seconds_until_next_contact(&c, &script, 700).await;
    assert!(s.is_some_and(|s| (299..=600).contains(&s)), "{s:?}");
    settle().await;
    assert_eq!(at_once(&c), "token-2");
}

// T2: stale_after is recomputed from each installed token's own lifetime.
#[tokio::test(start_paused = true)]
async fn t2_stale_after_recomputed_per_token() {
    let script = Script::new([ok(10 * MIN), ok(HOUR), ok(90 * SEC)]);
    let c = cache(&script, no_jitter());
    let t0 = c.token().await.unwrap();
    tokio::time::advance(4 * MIN).await;
    assert!(c.invalidate_token(&t0));
    let t1 = c.token().await.unwrap();
    assert_eq!(t1.secret(), "token-1");
    tokio::time::advance(40 * MIN - SEC).await;
    assert_eq!(
        c.state(),
        TokenState::Fresh,
        "60 min token: fresh until +40"
    );
    tokio::time::advance(2 * SEC).await;
    assert_eq!(c.state(), TokenState::Stale);
    assert!(c.invalidate_token(&t1));
    assert_eq!(c.token().await.unwrap().secret(), "token-2");
    tokio::time::advance(44 * SEC).await;
    assert_eq!(
        c.state(),
        TokenState::Fresh,
        "90 s token: fresh until +45 s"
    );
    tokio::time::advance(2 * SEC).await;
    assert_eq!(c.state(), TokenState::Stale);
}

// T10: the 1–5 s caching holds whatever the jitter samples.
#[tokio::test(start_paused = true)]
async fn t10_non_recoverable_caching_bounds_for_any_sample() {
    for sample in [0.0, 0.999_999, 1.0, 9.0, -2.0, f64::NAN] {
        let script = Script::new([Step::NonRec]);
        let c = cache(
            &script,
            RefreshConfig::default().jitter_source(move || sample),
        );
        assert!(c.token().await.unwrap_err().is_non_recoverable());
        tokio::time::advance(Duration::from_millis(990)).await;
        assert!(c.token().await.unwrap_err().is_non_recoverable());
        assert_eq!(
            script.calls(),
            1,
            "sample {sample}: cached for at least 1 s"
        );
        tokio::time::advance(4 * SEC + Duration::from_millis(20)).await;
        assert!(c.token().await.unwrap_err().is_non_recoverable());
        assert_eq!(script.calls(), 2, "sample {sample}: cached for at most 5 s");
    }
}

// T6: a wall-clock expiry is converted at install, with the wall clock of that moment.
#[tokio::test(start_paused = true)]
async fn t6_wall_clock_expiry_converted_at_install() {
    let wall = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
    let clock = VirtualClock::starting_at(wall);
    let expires = wall + time::Duration::hours(1);
    let script = Script::new([Step::Exp(Expiry::On(expires))]);
    let c = cache(&script, no_jitter().wall_clock(clock));
    let start = Instant::now();
    tokio::time::advance(10 * MIN).await;
    let (_, deadline) = c.token_and_deadline().await.unwrap();
    assert_eq!(deadline, Some(start + HOUR));
    // 50 min left → window 20 min → stale at start + 40 min.
    tokio::time::advance(30 * MIN - SEC).await;
    assert_eq!(c.state(), TokenState::Fresh);
    tokio::time::advance(2 * SEC).await;
    assert_eq!(c.state(), TokenState::Stale);
}

/// Seconds from a failed background refresh (48 h token, stale window up to 24 h) to the next
/// contact, with the given config.
async fn backoff_after_background_failure(config: RefreshConfig, limit: u64) -> Option<u64> {
    let script = Script::new([ok(48 * HOUR), Step::Fail]);
    let c = cache(&script, config.max_stale_window(24 * HOUR));
    c.token().await.unwrap();
    tokio::time::advance(36 * HOUR).await;
    assert_eq!(at_once(&c), "token-0");
    settle().await;
    assert_eq!(script.calls(), 2);
    seconds_until_next_contact(&c, &script, limit).await
}

// T8 builder: backoff_range(min, max) on the seed default replaces "back-off + jitter" with a
// uniform draw in [min, max].
#[tokio::test(start_paused = true)]
async fn t8_backoff_range_builder_uniform() {
    let s = backoff_after_background_failure(
        RefreshConfig::default()
            .jitter_source(|| 0.999_999)
            .backoff_range(10 * SEC, 20 * SEC),
        700,
    )
    .await;
    assert!(s.is_some_and(|s| (10..=20).contains(&s)), "{s:?}");
}

// `backoff_range` doc: "both clamped into [1 ms, 1 h], and `max` to at least `min`" — so
// (500 s, 100 s) is the range [500 s, 500 s]: the back-off is exactly 500 s.
#[tokio::test(start_paused = true)]
async fn defect_backoff_range_with_max_below_min_exceeds_max() {
    let s = backoff_after_background_failure(
        RefreshConfig::default()
            .jitter_source(|| 0.999_999)
            .backoff_range(500 * SEC, 100 * SEC),
        700,
    )
    .await;
    assert!(
        s.is_some_and(|s| s == 500),
        "backoff_range(500 s, 100 s): next contact after {s:?} s, expected 500 s"
    );
}

// `backoff` doc: "clamped into [1 ms, 1 h], so a failed refresh is always retried within the
// hour"; the guide: "back-off and load timeout ≤ 1 h".
#[tokio::test(start_paused = true)]
async fn defect_max_backoff_with_jitter_retries_after_more_than_an_hour() {
    let s = backoff_after_background_failure(
        RefreshConfig::default()
            .backoff(Duration::MAX)
            .jitter_source(|| 0.999_999),
        4000,
    )
    .await;
    assert!(
        s.is_some_and(|s| s <= 3600),
        "backoff(Duration::MAX): failed refresh retried after {s:?} s, promised within the hour"
    );
}

// Env: TOKEN_REFRESH_BACKOFF_MAX_SECONDS on the seed preset → uniform in [backoff, max].
#[tokio::test(start_paused = true)]
async fn x5_env_backoff_max_applies() {
    let config = RefreshConfig::from_env_with(|k| match k {
        "TOKEN_REFRESH_BACKOFF_SECONDS" => Some("10".into()),
        "TOKEN_REFRESH_BACKOFF_MAX_SECONDS" => Some("20".into()),
        _ => None,
    })
    .jitter_source(|| 0.999_999);
    let script = Script::new([ok(HOUR), Step::Fail]);
    let c = cache(&script, config);
    c.token().await.unwrap();
    tokio::time::advance(50 * MIN).await;
    assert_eq!(at_once(&c), "token-0");
    settle().await;
    let s = seconds_until_next_contact(&c, &script, 700).await;
    assert!(s.is_some_and(|s| (10..=20).contains(&s)), "{s:?}");
}

// T8: the preset's advisory window is jittered by at most 10 % (it shrinks), never more.
#[tokio::test(start_paused = true)]
async fn t8_preset_advisory_jitter_bounded() {
    for sample in [0.0, 0.999_999, 5.0] {
        let script = Script::new([ok(HOUR)]);
        let c = cache(
            &script,
            RefreshConfig::static_stability().jitter_source(move || sample),
        );
        c.token().await.unwrap();
        tokio::time::advance(45 * MIN - SEC).await;
        assert_eq!(c.state(), TokenState::Fresh, "sample {sample}");
        tokio::time::advance(MIN + 32 * SEC).await; // 46:31
        assert_eq!(c.state(), TokenState::Stale, "sample {sample}");
    }
}

// T1 on a 2-worker runtime: 1 000 cold callers, one fetch (the fetch is held until every caller
// is waiting; no timers, no sleeps).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t1_multi_thread_cold_callers_one_fetch() {
    #[derive(Debug, Default)]
    struct Gated {
        calls: AtomicUsize,
        gate: tokio::sync::Notify,
        open: std::sync::atomic::AtomicBool,
    }
    impl TokenSource for Gated {
        type Token = BearerToken;
        type Error = SrcErr;
        async fn fetch(&self) -> Result<Fetched<BearerToken>, SrcErr> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            while !self.open.load(Ordering::SeqCst) {
                let notified = self.gate.notified();
                if self.open.load(Ordering::SeqCst) {
                    break;
                }
                notified.await;
            }
            Ok(Fetched::new(
                BearerToken::new(format!("token-{n}")),
                Expiry::In(HOUR),
            ))
        }
    }
    let src = Arc::new(Gated::default());
    let c = TokenCache::from_arc(src.clone(), RefreshConfig::default());
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.token().await.map(|t| t.secret().to_string()) })
        })
        .collect();
    let mut spins = 0u64;
    while c.stats().waits < 1000 {
        tokio::task::yield_now().await;
        spins += 1;
        assert!(
            spins < 10_000_000,
            "callers never all waited: {:?}",
            c.stats()
        );
    }
    src.open.store(true, Ordering::SeqCst);
    src.gate.notify_waiters();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), "token-0");
    }
    assert_eq!(src.calls.load(Ordering::SeqCst), 1);
}
