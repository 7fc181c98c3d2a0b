//! Adversarial black-box tests for `token-refresh`, written from SPEC T1–T7 / X5, seed 004,
//! `docs/token-refresh.md` and the rustdoc of the public API only.
//!
//! Every behaviour test runs in paused virtual time; nothing sleeps for real.
#![allow(missing_docs, clippy::all, unreachable_pub)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::time::OffsetDateTime;
use futures::FutureExt;
use token_refresh::{
    BearerToken, CachingCredential, Expiry, Fetched, RefreshConfig, RefreshError, RefreshStats,
    StaleWindow, TokenCache, TokenSource, TokenState, VirtualClock, WallClock,
};
use tokio::sync::Semaphore;
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------
// Scripted fake source
// ---------------------------------------------------------------------------------------------

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}
fn mins(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("scripted failure of fetch #{0}")]
struct FakeError(usize);

#[derive(Debug, Clone)]
enum Outcome {
    Ok(Expiry),
    Err,
    Panic,
    Hang,
}

#[derive(Debug, Clone)]
struct Step {
    delay: Duration,
    gate: Option<Arc<Semaphore>>,
    outcome: Outcome,
}

impl Step {
    fn ok(lifetime: Duration) -> Self {
        Self::exp(Expiry::In(lifetime))
    }
    fn exp(e: Expiry) -> Self {
        Step {
            delay: Duration::ZERO,
            gate: None,
            outcome: Outcome::Ok(e),
        }
    }
    fn err() -> Self {
        Step {
            delay: Duration::ZERO,
            gate: None,
            outcome: Outcome::Err,
        }
    }
    fn panic() -> Self {
        Step {
            delay: Duration::ZERO,
            gate: None,
            outcome: Outcome::Panic,
        }
    }
    fn hang() -> Self {
        Step {
            delay: Duration::ZERO,
            gate: None,
            outcome: Outcome::Hang,
        }
    }
    fn after(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
    fn gated(mut self, g: &Arc<Semaphore>) -> Self {
        self.gate = Some(g.clone());
        self
    }
}

#[derive(Debug)]
struct Fake {
    script: Mutex<VecDeque<Step>>,
    default: Step,
    calls: AtomicUsize,
    started: Mutex<Vec<Instant>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    dropped_unfinished: AtomicUsize,
}

impl Fake {
    fn new(steps: Vec<Step>, default: Step) -> Arc<Self> {
        Arc::new(Fake {
            script: Mutex::new(steps.into()),
            default,
            calls: AtomicUsize::new(0),
            started: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            dropped_unfinished: AtomicUsize::new(0),
        })
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    fn started(&self) -> Vec<Instant> {
        self.started.lock().unwrap().clone()
    }
}

struct FlightGuard<'a> {
    fake: &'a Fake,
    finished: bool,
}
impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        self.fake.in_flight.fetch_sub(1, Ordering::SeqCst);
        if !self.finished {
            self.fake.dropped_unfinished.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn secret_for(n: usize) -> String {
    format!("SECRET-tok-{n}")
}

impl TokenSource for Fake {
    type Token = BearerToken;
    type Error = FakeError;

    async fn fetch(&self) -> Result<Fetched<BearerToken>, FakeError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        self.started.lock().unwrap().push(Instant::now());
        let step = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| self.default.clone());
        let now_in = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now_in, Ordering::SeqCst);
        let mut guard = FlightGuard {
            fake: self,
            finished: false,
        };
        if let Some(g) = &step.gate {
            g.acquire().await.unwrap().forget();
        }
        if !step.delay.is_zero() {
            tokio::time::sleep(step.delay).await;
        }
        let out = match step.outcome {
            Outcome::Ok(e) => Ok(Fetched::new(BearerToken::new(secret_for(n)), e)),
            Outcome::Err => Err(FakeError(n)),
            Outcome::Panic => {
                guard.finished = true;
                panic!("scripted panic in fetch #{n}")
            }
            Outcome::Hang => std::future::pending().await,
        };
        guard.finished = true;
        out
    }
}

fn id(t: &BearerToken) -> usize {
    t.secret().rsplit('-').next().unwrap().parse().unwrap()
}

fn cfg() -> RefreshConfig {
    RefreshConfig::default().jitter(0.0)
}

fn cache(steps: Vec<Step>, default: Step, config: RefreshConfig) -> (TokenCache<Fake>, Arc<Fake>) {
    let fake = Fake::new(steps, default);
    (TokenCache::from_arc(fake.clone(), config), fake)
}

async fn settle() {
    for _ in 0..64 {
        tokio::task::yield_now().await;
    }
}

/// A call that must not wait (fresh or stale).
#[track_caller]
fn now(c: &TokenCache<Fake>) -> usize {
    match c.token().now_or_never() {
        Some(Ok(t)) => id(&t),
        Some(Err(e)) => panic!("fresh/stale call returned an error: {e}"),
        None => panic!("a caller waited although the state was {:?}", c.state()),
    }
}

async fn blocking(c: &TokenCache<Fake>) -> usize {
    let r = tokio::time::timeout(secs(3601), c.token())
        .await
        .expect("blocking call hung");
    id(&r.expect("blocking refresh failed"))
}

/// Step one second at a time for `total`, calling `token()` each second (which must never wait
/// while the state is fresh/stale). Stops early (without calling) when the state is expired.
async fn walk(c: &TokenCache<Fake>, total: Duration) -> Vec<usize> {
    let end = Instant::now() + total;
    let mut ids = Vec::new();
    while Instant::now() < end {
        tokio::time::advance(secs(1)).await;
        match c.state() {
            TokenState::Fresh | TokenState::Stale => ids.push(now(c)),
            _ => break,
        }
        settle().await;
    }
    ids
}

fn offsets(starts: &[Instant], t0: Instant) -> Vec<u64> {
    starts
        .iter()
        .map(|s| s.duration_since(t0).as_secs())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// T1 / T2: states and the stale-window table
// ---------------------------------------------------------------------------------------------

async fn check_table(
    lifetime: Duration,
    stale_at: Option<Duration>,
    expired_at: Duration,
    config: RefreshConfig,
) {
    let (c, fake) = cache(vec![], Step::ok(lifetime), config);
    assert_eq!(c.state(), TokenState::Empty);
    let t0 = Instant::now();
    assert_eq!(blocking(&c).await, 0);
    let first_change = stale_at.unwrap_or(expired_at);
    if !first_change.is_zero() {
        tokio::time::advance(first_change - secs(1)).await;
        assert_eq!(
            c.state(),
            TokenState::Fresh,
            "lifetime {lifetime:?}: not fresh at {:?}",
            t0.elapsed()
        );
        assert_eq!(now(&c), 0);
        settle().await;
        assert_eq!(fake.calls(), 1, "a fresh call fetched");
        tokio::time::advance(secs(1)).await;
    }
    if let Some(s) = stale_at {
        assert_eq!(
            c.state(),
            TokenState::Stale,
            "lifetime {lifetime:?}: not stale at {s:?}"
        );
        tokio::time::advance(expired_at - s - secs(1)).await;
        assert_eq!(
            c.state(),
            TokenState::Stale,
            "lifetime {lifetime:?}: not stale just before expiry"
        );
        tokio::time::advance(secs(1)).await;
    }
    assert_eq!(
        c.state(),
        TokenState::Expired,
        "lifetime {lifetime:?}: not expired at {:?}",
        t0.elapsed()
    );
    assert_eq!(fake.calls(), 1);
    assert_eq!(blocking(&c).await, 1);
}

#[tokio::test(start_paused = true)]
async fn dynamic_window_table_60min_10min_90s() {
    // SPEC T2: 60 min → stale at +40 min; 10 min → +5 min; 90 s → +45 s; expired skew (40 s) before.
    check_table(mins(60), Some(mins(40)), mins(60) - secs(40), cfg()).await;
    check_table(mins(10), Some(mins(5)), mins(10) - secs(40), cfg()).await;
    check_table(secs(90), Some(secs(45)), secs(50), cfg()).await;
    // 30 min → window min(15, 20) = 15 min; 3 h → window capped at 20 min.
    check_table(mins(30), Some(mins(15)), mins(30) - secs(40), cfg()).await;
    check_table(mins(180), Some(mins(160)), mins(180) - secs(40), cfg()).await;
    // 60 s: stale at 30 s but expired at 20 s → never stale.
    check_table(secs(60), None, secs(20), cfg()).await;
}

#[tokio::test(start_paused = true)]
async fn max_stale_window_knob_caps_the_window() {
    check_table(
        mins(60),
        Some(mins(55)),
        mins(60) - secs(40),
        cfg().max_stale_window(mins(5)),
    )
    .await;
    // cap 0 → window 0 → never stale, fresh until expired
    check_table(
        mins(60),
        None,
        mins(60) - secs(40),
        cfg().max_stale_window(Duration::ZERO),
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn legacy_fixed_stale_duration() {
    check_table(
        mins(60),
        Some(mins(55)),
        mins(60) - secs(40),
        cfg().stale_duration(mins(5)),
    )
    .await;
    // 0 → never stale
    check_table(
        mins(60),
        None,
        mins(60) - secs(40),
        cfg().stale_duration(Duration::ZERO),
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn skew_knob() {
    check_table(
        secs(90),
        Some(secs(45)),
        secs(90),
        cfg().skew(Duration::ZERO),
    )
    .await;
    check_table(mins(60), Some(mins(40)), mins(50), cfg().skew(mins(10))).await;
    // skew larger than the stale window → fresh straight to expired
    check_table(secs(90), None, secs(30), cfg().skew(secs(60))).await;
}

#[tokio::test(start_paused = true)]
async fn stale_window_larger_than_lifetime_is_stale_at_once() {
    for d in [mins(120), Duration::MAX] {
        let (c, fake) = cache(
            vec![],
            Step::ok(mins(60)).gated(&Arc::new(Semaphore::new(0))),
            cfg().stale_duration(d),
        );
        fake.script.lock().unwrap().push_back(Step::ok(mins(60)));
        assert_eq!(blocking(&c).await, 0);
        assert_eq!(c.state(), TokenState::Stale);
        for _ in 0..100 {
            assert_eq!(now(&c), 0);
        }
        settle().await;
        assert_eq!(fake.calls(), 2, "one background refresh only (T3)");
    }
}

#[tokio::test(start_paused = true)]
async fn token_shorter_than_skew_never_spins() {
    // Every token is expired on install: each call does one blocking fetch and returns.
    let (c, fake) = cache(vec![], Step::ok(secs(10)), cfg());
    for i in 0..5 {
        let r = tokio::time::timeout(secs(31), c.token())
            .await
            .expect("call hung");
        let _ = r; // the token (already expired) or an error — either way it returned
        assert!(
            fake.calls() <= 2 * (i + 1),
            "a call spun on the source: {} fetches",
            fake.calls()
        );
    }
    // Expiry in the past / zero.
    let (c, fake) = cache(vec![], Step::ok(Duration::ZERO), cfg());
    for _ in 0..5 {
        let _ = tokio::time::timeout(secs(31), c.token())
            .await
            .expect("call hung");
    }
    assert!(fake.calls() <= 10);
}

#[tokio::test(start_paused = true)]
async fn never_expiring_token_is_fresh_forever() {
    let (c, fake) = cache(vec![Step::exp(Expiry::Never)], Step::ok(mins(60)), cfg());
    assert_eq!(blocking(&c).await, 0);
    for _ in 0..20 {
        tokio::time::advance(Duration::from_secs(365 * 86_400)).await;
        assert_eq!(c.state(), TokenState::Fresh);
        assert_eq!(now(&c), 0);
        settle().await;
    }
    assert_eq!(fake.calls(), 1);
    let (t, dl) = c.token_and_deadline().now_or_never().unwrap().unwrap();
    assert_eq!(id(&t), 0);
    assert_eq!(dl, None);
}

#[tokio::test(start_paused = true)]
async fn token_and_deadline_is_the_expiry() {
    let (c, _fake) = cache(vec![], Step::ok(mins(60)), cfg());
    let t0 = Instant::now();
    let (t, dl) = c.token_and_deadline().await.unwrap();
    assert_eq!(id(&t), 0);
    assert_eq!(dl, Some(t0 + mins(60)));
}

#[tokio::test(start_paused = true)]
async fn stale_after_recomputed_on_every_install() {
    // 10 min → 60 min by a blocking refresh: stale moves to install + 40 min.
    let (c, _f) = cache(
        vec![Step::ok(mins(10)), Step::ok(mins(60))],
        Step::ok(mins(60)),
        cfg(),
    );
    assert_eq!(blocking(&c).await, 0);
    tokio::time::advance(mins(10) - secs(40)).await;
    assert_eq!(c.state(), TokenState::Expired);
    assert_eq!(blocking(&c).await, 1);
    tokio::time::advance(mins(40) - secs(1)).await;
    assert_eq!(c.state(), TokenState::Fresh);
    tokio::time::advance(secs(1)).await;
    assert_eq!(c.state(), TokenState::Stale);

    // 60 min → 90 s by a background refresh: stale at install + 45 s.
    let (c, f) = cache(
        vec![Step::ok(mins(60)), Step::ok(secs(90))],
        Step::hang(),
        cfg(),
    );
    assert_eq!(blocking(&c).await, 0);
    tokio::time::advance(mins(40)).await;
    assert_eq!(now(&c), 0);
    settle().await;
    assert_eq!(f.calls(), 2);
    assert_eq!(now(&c), 1);
    tokio::time::advance(secs(44)).await;
    assert_eq!(c.state(), TokenState::Fresh);
    tokio::time::advance(secs(1)).await;
    assert_eq!(c.state(), TokenState::Stale);

    // 60 min → 10 min (blocking)
    let (c, _f) = cache(
        vec![Step::ok(mins(60)), Step::ok(mins(10))],
        Step::ok(mins(60)),
        cfg(),
    );
    assert_eq!(blocking(&c).await, 0);
    tokio::time::advance(mins(60)).await;
    assert_eq!(blocking(&c).await, 1);
    tokio::time::advance(mins(5) - secs(1)).await;
    assert_eq!(c.state(), TokenState::Fresh);
    tokio::time::advance(secs(1)).await;
    assert_eq!(c.state(), TokenState::Stale);
}

// ---------------------------------------------------------------------------------------------
// T1: single-flight blocking refresh
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn single_flight_1000_callers_on_empty_cache() {
    let (c, fake) = cache(
        vec![Step::ok(mins(60)).after(secs(5))],
        Step::ok(mins(60)),
        cfg(),
    );
    let t0 = Instant::now();
    let hs: Vec<_> = (0..1000)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.token().await.map(|t| id(&t)) })
        })
        .collect();
    for h in hs {
        assert_eq!(h.await.unwrap().unwrap(), 0);
    }
    assert_eq!(fake.calls(), 1);
    assert_eq!(t0.elapsed(), secs(5));
    assert_eq!(c.stats().blocking_fetches, 1);
}

#[tokio::test(start_paused = true)]
async fn single_flight_1000_callers_on_expired_token() {
    let (c, fake) = cache(
        vec![Step::ok(secs(90)), Step::ok(mins(60)).after(secs(5))],
        Step::ok(mins(60)),
        cfg(),
    );
    assert_eq!(blocking(&c).await, 0);
    tokio::time::advance(secs(50)).await;
    assert_eq!(c.state(), TokenState::Expired);
    let hs: Vec<_> = (0..1000)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.token().await.map(|t| id(&t)) })
        })
        .collect();
    for h in hs {
        assert_eq!(h.await.unwrap().unwrap(), 1);
    }
    assert_eq!(fake.calls(), 2);
    assert!(fake.max_in_flight.load(Ordering::SeqCst) <= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_flight_1000_callers_multi_thread() {
    // The first token is expired on install; the second one is gated so that callers pile up.
    let gate = Arc::new(Semaphore::new(0));
    let (c, fake) = cache(
        vec![Step::ok(Duration::ZERO), Step::ok(mins(60)).gated(&gate)],
        Step::ok(mins(60)),
        cfg(),
    );
    let _ = c.token().await;
    assert_eq!(c.state(), TokenState::Expired);
    let hs: Vec<_> = (0..1000)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.token().await.map(|t| id(&t)) })
        })
        .collect();
    for _ in 0..100_000 {
        if c.stats().waits >= 1001 {
            break;
        }
        tokio::task::yield_now().await;
    }
    gate.add_permits(1);
    for h in hs {
        assert_eq!(h.await.unwrap().unwrap(), 1);
    }
    assert_eq!(
        fake.calls(),
        2,
        "single-flight broken on a multi-thread runtime"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_window_multi_thread_one_background_and_nobody_waits() {
    let gate = Arc::new(Semaphore::new(0));
    // stale_duration 2 h on 1 h tokens: every token is stale at install (real time is irrelevant).
    let (c, fake) = cache(
        vec![Step::ok(mins(60))],
        Step::ok(mins(60)).gated(&gate),
        cfg().stale_duration(mins(120)),
    );
    assert_eq!(c.token().await.map(|t| id(&t)).unwrap(), 0);
    let hs: Vec<_> = (0..1000)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                match c.token().now_or_never() {
                    Some(Ok(t)) => Ok(id(&t)),
                    Some(Err(e)) => Err(format!("error {e}")),
                    None => Err("waited in the stale window".to_string()),
                }
            })
        })
        .collect();
    for h in hs {
        assert_eq!(h.await.unwrap().unwrap(), 0);
    }
    for _ in 0..1000 {
        tokio::task::yield_now().await;
    }
    assert_eq!(fake.calls(), 2, "more than one background refresh (T3)");
    gate.add_permits(1);
    let mut seen = 0;
    for _ in 0..1_000_000 {
        seen = c.token().now_or_never().unwrap().map(|t| id(&t)).unwrap();
        if seen == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(seen, 1);
}

#[tokio::test(start_paused = true)]
async fn failed_blocking_refresh_reaches_every_waiter_and_is_not_cached() {
    let (c, fake) = cache(vec![Step::err().after(secs(5))], Step::ok(mins(60)), cfg());
    let hs: Vec<_> = (0..50)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.token().await })
        })
        .collect();
    for h in hs {
        let e = h.await.unwrap().unwrap_err();
        assert!(matches!(e, RefreshError::Source(_)), "{e:?}");
        assert_eq!(e.source_error::<FakeError>().map(|e| e.0), Some(0));
        assert!(!e.is_timeout());
        assert!(std::error::Error::source(&e).is_some());
    }
    assert_eq!(fake.calls(), 1);
    assert_eq!(blocking(&c).await, 1);
    assert_eq!(c.stats().blocking_failures, 1);
}

#[tokio::test(start_paused = true)]
async fn hung_blocking_refresh_is_bounded_by_load_timeout() {
    for (config, bound) in [
        (cfg(), secs(30)),
        (cfg().load_timeout(secs(2)), secs(2)),
        (cfg().load_timeout(Duration::MAX), secs(3600)),
        (cfg().load_timeout(Duration::ZERO), Duration::from_millis(1)),
    ] {
        let (c, _fake) = cache(vec![Step::hang()], Step::ok(mins(60)), config);
        let t0 = Instant::now();
        let r = tokio::time::timeout(secs(3602), c.token())
            .await
            .expect("a hung fetch was not bounded");
        let e = r.unwrap_err();
        assert!(e.is_timeout(), "{e:?}");
        assert!(
            t0.elapsed() <= bound,
            "waited {:?} > {bound:?}",
            t0.elapsed()
        );
        assert!(c.stats().timeouts >= 1);
        // not cached: next call fetches and succeeds
        assert_eq!(blocking(&c).await, 1);
    }
}

#[tokio::test(start_paused = true)]
async fn minimum_load_timeout_still_lets_an_immediate_fetch_through() {
    let (c, _f) = cache(
        vec![],
        Step::ok(mins(60)),
        cfg().load_timeout(Duration::ZERO),
    );
    assert_eq!(blocking(&c).await, 0);
}

#[tokio::test(start_paused = true)]
async fn blocking_refresh_not_held_hostage_by_hung_background_refresh() {
    // tok0 90 s: stale at 45 s, expired at 50 s. The background fetch hangs; the blocking one
    // at 50 s answers at once.
    let (c, fake) = cache(
        vec![Step::ok(secs(90)), Step::hang()],
        Step::ok(mins(60)),
        cfg(),
    );
    assert_eq!(blocking(&c).await, 0);
    tokio::time::advance(secs(45)).await;
    assert_eq!(now(&c), 0);
    settle().await;
    assert_eq!(fake.calls(), 2);
    tokio::time::advance(secs(5)).await;
    assert_eq!(c.state(), TokenState::Expired);
    let t0 = Instant::now();
    let r = tokio::time::timeout(secs(31), c.token())
        .await
        .expect("hung");
    assert_eq!(
        id(&r.expect("blocking refresh failed although the source answers")),
        2
    );
    assert!(t0.elapsed() <= secs(30));
}

// ---------------------------------------------------------------------------------------------
// Cancellation of waiters
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn cancelled_blocking_leader_does_not_strand_waiters() {
    let (c, fake) = cache(
        vec![Step::ok(mins(60)).after(secs(10))],
        Step::ok(mins(60)).after(secs(10)),
        cfg(),
    );
    let mut leader = Box::pin(c.token());
    assert!(futures::poll!(leader.as_mut()).is_pending());
    settle().await;
    assert_eq!(fake.calls(), 1);
    let hs: Vec<_> = (0..10)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.token().await.map(|t| id(&t)) })
        })
        .collect();
    settle().await;
    tokio::time::advance(secs(3)).await;
    drop(leader);
    for h in hs {
        let r = tokio::time::timeout(secs(61), h)
            .await
            .expect("a waiter was stranded");
        r.unwrap()
            .expect("a waiter got an error after the leader was cancelled");
    }
    // Cancel everybody mid-refresh, then call again: must not wait forever.
    tokio::time::advance(mins(60)).await;
    assert_eq!(c.state(), TokenState::Expired);
    for _ in 0..3 {
        let mut f = Box::pin(c.token());
        assert!(futures::poll!(f.as_mut()).is_pending());
        drop(f);
        settle().await;
    }
    let r = tokio::time::timeout(secs(31), c.token())
        .await
        .expect("stranded after every waiter was cancelled");
    r.unwrap();
}

#[tokio::test(start_paused = true)]
async fn cancelled_spawned_waiters_do_not_strand_others() {
    let (c, _fake) = cache(vec![], Step::ok(mins(60)).after(secs(10)), cfg());
    let hs: Vec<_> = (0..20)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.token().await.map(|t| id(&t)) })
        })
        .collect();
    settle().await;
    // abort every other one, including the first (likely the leader)
    let mut keep = Vec::new();
    for (i, h) in hs.into_iter().enumerate() {
        if i % 2 == 0 {
            h.abort();
        } else {
            keep.push(h);
        }
    }
    for h in keep {
        let r = tokio::time::timeout(secs(61), h).await.expect("stranded");
        r.unwrap().unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// T1 / T3: stale window — nobody waits, one background refresh
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn stale_window_never_waits_and_starts_one_background_refresh() {
    let (c, fake) = cache(
        vec![Step::ok(mins(60)), Step::hang()],
        Step::ok(mins(60)),
        cfg(),
    );
    assert_eq!(blocking(&c).await, 0);
    tokio::time::advance(mins(41)).await;
    for _ in 0..1000 {
        assert_eq!(now(&c), 0);
    }
    settle().await;
    for _ in 0..29 {
        tokio::time::advance(secs(1)).await;
        assert_eq!(now(&c), 0);
        settle().await;
    }
    assert_eq!(fake.calls(), 2, "hung background refresh was doubled (T3)");
    assert_eq!(c.stats().background_started, 1);
    assert!(c.stats().stale_hits >= 1000);
}

#[tokio::test(start_paused = true)]
async fn stale_calls_from_1000_tasks_start_one_background_refresh() {
    let (c, fake) = cache(
        vec![Step::ok(mins(60)), Step::ok(mins(60)).after(secs(5))],
        Step::ok(mins(60)),
        cfg(),
    );
    assert_eq!(blocking(&c).await, 0);
    tokio::time::advance(mins(45)).await;
    let hs: Vec<_> = (0..1000)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.token().now_or_never().map(|r| r.map(|t| id(&t))) })
        })
        .collect();
    for h in hs {
        assert_eq!(h.await.unwrap().expect("waited").unwrap(), 0);
    }
    tokio::time::advance(secs(5)).await;
    settle().await;
    assert_eq!(now(&c), 1);
    assert_eq!(fake.calls(), 2);
    assert_eq!(c.stats().background_succeeded, 1);
}

// ---------------------------------------------------------------------------------------------
// T4: back-off, never "disabled until expiry" (seed 004)
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn test_repeated_calls_during_async_failure_cooldown_do_not_refresh() {
    let (c, fake) = cache(
        vec![Step::ok(mins(60)), Step::err()],
        Step::ok(mins(60)),
        cfg(),
    );
    assert_eq!(blocking(&c).await, 0);
    tokio::time::advance(mins(40)).await;
    assert_eq!(now(&c), 0);
    settle().await;
    assert_eq!(fake.calls(), 2);
    assert_eq!(c.stats().background_failed, 1);
    assert_eq!(
        c.state(),
        TokenState::Fresh,
        "docs: a failed background refresh → Fresh for one back-off"
    );
    for _ in 0..59 {
        tokio::time::advance(secs(1)).await;
        assert_eq!(now(&c), 0);
        settle().await;
    }
    assert_eq!(fake.calls(), 2, "a refresh started during the cooldown");
}

#[tokio::test(start_paused = true)]
async fn test_call_after_async_failure_cooldown_refreshes_token_async() {
    let (c, fake) = cache(
        vec![Step::ok(mins(60)), Step::err()],
        Step::ok(mins(60)),
        cfg(),
    );
    assert_eq!(blocking(&c).await, 0);
    tokio::time::advance(mins(40)).await;
    assert_eq!(now(&c), 0);
    settle().await;
    tokio::time::advance(secs(60)).await;
    assert_eq!(c.state(), TokenState::Stale);
    assert_eq!(now(&c), 0);
    settle().await;
    assert_eq!(fake.calls(), 3);
    assert_eq!(now(&c), 2);
}

#[tokio::test(start_paused = true)]
async fn repeatedly_failing_background_refresh_retries_every_backoff_until_expiry() {
    let (c, fake) = cache(vec![Step::ok(mins(60))], Step::err(), cfg());
    assert_eq!(blocking(&c).await, 0);
    let t0 = Instant::now();
    tokio::time::advance(mins(40) - secs(1)).await;
    let ids = walk(&c, mins(20)).await;
    assert!(ids.iter().all(|&i| i == 0));
    let starts = offsets(&fake.started()[1..], t0);
    assert_eq!(starts[0], 2400);
    for w in starts.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            (60..=61).contains(&gap),
            "gap between background attempts {gap}s: {starts:?}"
        );
    }
    assert!(
        starts.len() >= 19,
        "background refresh stopped retrying: {starts:?}"
    );
    // expired now: the blocking refresh fails too and the error reaches the caller
    assert_eq!(c.state(), TokenState::Expired);
    let e = c.token().await.unwrap_err();
    assert!(e.source_error::<FakeError>().is_some());
}

#[tokio::test(start_paused = true)]
async fn hung_background_refresh_times_out_backs_off_once_then_retries() {
    let (c, fake) = cache(
        vec![Step::ok(mins(60)), Step::hang()],
        Step::ok(mins(60)),
        cfg(),
    );
    assert_eq!(blocking(&c).await, 0);
    let t0 = Instant::now();
    tokio::time::advance(mins(40) - secs(1)).await;
    let ids = walk(&c, secs(200)).await;
    let starts = offsets(&fake.started()[1..], t0);
    assert!(
        starts.len() >= 2,
        "hung background refresh never retried: {starts:?}"
    );
    assert_eq!(starts[0], 2400);
    // timeout at 2430, back-off 60 s → next attempt at 2490
    assert!((2490..=2491).contains(&starts[1]), "{starts:?}");
    assert_eq!(*ids.last().unwrap(), 2);
    let s = c.stats();
    assert!(s.timeouts >= 1 && s.background_failed >= 1, "{s:?}");
}

#[tokio::test(start_paused = true)]
async fn panicking_background_refresh_is_retried_after_one_backoff() {
    let (c, fake) = cache(
        vec![
            Step::ok(mins(60)),
            Step::panic(),
            Step::panic(),
            Step::panic(),
        ],
        Step::ok(mins(60)),
        cfg(),
    );
    assert_eq!(blocking(&c).await, 0);
    let t0 = Instant::now();
    tokio::time::advance(mins(40) - secs(1)).await;
    let ids = walk(&c, mins(6)).await;
    let starts = offsets(&fake.started()[1..], t0);
    assert!(
        starts.len() >= 4,
        "panicking background refresh disabled refresh: {starts:?}"
    );
    for w in starts.windows(2) {
        let gap = w[1] - w[0];
        assert!((60..=62).contains(&gap), "gap {gap}s: {starts:?}");
    }
    assert_eq!(*ids.last().unwrap(), 4);
    assert!(c.stats().background_lost >= 3, "{:?}", c.stats());
}

#[test]
fn background_refresh_lost_to_runtime_shutdown_is_retried() {
    let (c, fake) = cache(
        vec![Step::ok(mins(60)), Step::hang()],
        Step::ok(mins(60)),
        cfg().stale_duration(mins(120)).backoff(secs(60)),
    );
    let rt_a = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt_a.block_on(async {
        assert_eq!(blocking(&c).await, 0);
        assert_eq!(now(&c), 0); // stale at once → background refresh spawned on runtime A
        settle().await;
    });
    assert_eq!(fake.calls(), 2);
    drop(rt_a); // the background task is cancelled with its runtime
    let rt_b = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt_b.block_on(async {
        let mut last = now(&c);
        settle().await;
        for _ in 0..200 {
            tokio::time::advance(secs(1)).await;
            last = now(&c);
            settle().await;
            if last != 0 {
                break;
            }
        }
        assert_ne!(
            last, 0,
            "background refresh never resumed after its runtime shut down"
        );
    });
    assert!(c.stats().background_lost >= 1);
}

// ---------------------------------------------------------------------------------------------
// T5: generation guard; tokens never go backwards
// ---------------------------------------------------------------------------------------------

/// tok0 lives 90 s (stale at 45 s, expired at 50 s). A background fetch starts at 45 s with the
/// given step; a blocking refresh at 50 s installs tok2 with `blocking_lifetime`.
async fn late_background(
    bg: Step,
    blocking_lifetime: Duration,
) -> (TokenCache<Fake>, Arc<Fake>, Instant) {
    let (c, fake) = cache(
        vec![Step::ok(secs(90)), bg, Step::ok(blocking_lifetime)],
        Step::ok(mins(60)),
        cfg(),
    );
    let t0 = Instant::now();
    assert_eq!(blocking(&c).await, 0);
    tokio::time::advance(secs(45)).await;
    assert_eq!(now(&c), 0);
    settle().await;
    assert_eq!(fake.calls(), 2);
    tokio::time::advance(secs(5)).await;
    assert_eq!(c.state(), TokenState::Expired);
    assert_eq!(blocking(&c).await, 2);
    (c, fake, t0)
}

#[tokio::test(start_paused = true)]
async fn late_background_success_does_not_overwrite_blocking_refresh() {
    let (c, _fake, t0) = late_background(Step::ok(mins(60)).after(secs(20)), mins(60)).await;
    tokio::time::advance(secs(20)).await;
    settle().await;
    assert_eq!(
        now(&c),
        2,
        "late background token overwrote the newer blocking one"
    );
    let (_, dl) = c.token_and_deadline().now_or_never().unwrap().unwrap();
    assert_eq!(dl, Some(t0 + secs(50) + mins(60)));
    assert_eq!(c.stats().background_discarded, 1);
}

async fn late_background_does_not_back_off(bg: Step) {
    let (c, fake, t0) = late_background(bg, secs(90)).await;
    // tok2 installed at 50 s: stale at 95 s. The late background result lands at 65 s / 75 s.
    let _ = walk(&c, secs(46)).await;
    let starts = offsets(&fake.started(), t0);
    assert_eq!(starts.len(), 4, "{starts:?}");
    assert_eq!(
        starts[3], 95,
        "the newer token's stale window was backed off by an older result: {starts:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn late_background_failure_does_not_back_off_newer_token() {
    late_background_does_not_back_off(Step::err().after(secs(20))).await;
}

#[tokio::test(start_paused = true)]
async fn late_background_timeout_does_not_back_off_newer_token() {
    late_background_does_not_back_off(Step::hang()).await;
}

#[tokio::test(start_paused = true)]
async fn late_lost_background_does_not_back_off_newer_token() {
    late_background_does_not_back_off(Step::panic().after(secs(20))).await;
}

#[tokio::test(start_paused = true)]
async fn invalidate_during_background_refresh() {
    let (c, fake) = cache(
        vec![
            Step::ok(mins(60)),
            Step::ok(mins(60)).after(secs(10)),
            Step::ok(mins(60)),
        ],
        Step::ok(mins(60)),
        cfg(),
    );
    assert_eq!(blocking(&c).await, 0);
    tokio::time::advance(mins(40)).await;
    assert_eq!(now(&c), 0);
    settle().await;
    assert_eq!(fake.calls(), 2);
    c.invalidate();
    assert_eq!(c.state(), TokenState::Empty);
    settle().await;
    assert!(
        c.token().now_or_never().is_none() || fake.calls() == 3,
        "invalidate: next call must refresh"
    );
    assert_eq!(blocking(&c).await, 2);
    tokio::time::advance(secs(10)).await;
    settle().await;
    assert_eq!(
        now(&c),
        2,
        "aborted background refresh installed an older token"
    );
    // the aborted older refresh backs nothing off: tok2 goes stale at +40 min and refreshes at once
    let t2 = Instant::now();
    tokio::time::advance(mins(40) - secs(10) - secs(1)).await;
    let _ = walk(&c, secs(5)).await;
    let starts = offsets(&fake.started(), t2);
    assert_eq!(starts.len(), 4, "{starts:?}");
    assert_eq!(starts[3], 40 * 60 - 10, "{starts:?}");
}

#[tokio::test(start_paused = true)]
async fn invalidate_during_blocking_refresh() {
    let (c, fake) = cache(
        vec![Step::ok(mins(60)).after(secs(10))],
        Step::ok(mins(60)),
        cfg(),
    );
    let a = {
        let c = c.clone();
        tokio::spawn(async move { c.token().await.map(|t| id(&t)) })
    };
    settle().await;
    c.invalidate();
    let b = {
        let c = c.clone();
        tokio::spawn(async move { c.token().await.map(|t| id(&t)) })
    };
    let ra = tokio::time::timeout(secs(31), a)
        .await
        .expect("hung")
        .unwrap()
        .unwrap();
    let rb = tokio::time::timeout(secs(31), b)
        .await
        .expect("hung")
        .unwrap()
        .unwrap();
    let rc = blocking(&c).await;
    assert!(
        ra <= rb && rb <= rc,
        "tokens went backwards: {ra} {rb} {rc}"
    );
    assert!(fake.calls() <= 3);
}

#[tokio::test(start_paused = true)]
async fn invalidate_on_empty_and_repeatedly_is_harmless() {
    let (c, _f) = cache(vec![], Step::ok(mins(60)), cfg());
    c.invalidate();
    c.invalidate();
    assert_eq!(blocking(&c).await, 0);
    c.invalidate();
    c.invalidate();
    assert_eq!(blocking(&c).await, 1);
}

// ---------------------------------------------------------------------------------------------
// Panics in the blocking path, drop of the cache
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn panicking_source_in_blocking_path_does_not_hang_or_poison() {
    let (c, _fake) = cache(
        vec![Step::panic().after(secs(5))],
        Step::ok(mins(60)),
        cfg(),
    );
    let hs: Vec<_> = (0..5)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.token().await.map(|t| id(&t)) })
        })
        .collect();
    let (mut panicked, mut errs, mut oks) = (0, 0, 0);
    for h in hs {
        let r = tokio::time::timeout(secs(31), h)
            .await
            .expect("a waiter hung after the source panicked");
        // Either the panic reached this caller or it got an error / a token; none may hang.
        match r {
            Err(e) => {
                assert_scripted_panic(e);
                panicked += 1
            }
            Ok(Err(_)) => errs += 1,
            Ok(Ok(_)) => oks += 1,
        }
    }
    println!(
        "blocking-path panic: {panicked} callers panicked, {errs} got an error, {oks} got a token"
    );
    // The cache is not poisoned: a later call works.
    let r = tokio::time::timeout(secs(31), c.token())
        .await
        .expect("hung after a panic");
    r.expect("cache broken after a panicking fetch");
    assert_eq!(c.state(), TokenState::Fresh);
}

#[tokio::test(start_paused = true)]
async fn immediately_panicking_source_in_blocking_path() {
    let (c, _fake) = cache(
        vec![Step::panic(), Step::panic()],
        Step::ok(mins(60)),
        cfg(),
    );
    for _ in 0..2 {
        let c2 = c.clone();
        let h = tokio::spawn(async move { c2.token().await.map(|t| id(&t)) });
        let _ = tokio::time::timeout(secs(31), h).await.expect("hung");
    }
    assert!(
        tokio::time::timeout(secs(31), c.token())
            .await
            .expect("hung")
            .is_ok()
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_the_cache_aborts_background_refresh_and_releases_source() {
    let (c, fake) = cache(
        vec![Step::ok(mins(60)), Step::hang()],
        Step::ok(mins(60)),
        cfg(),
    );
    assert_eq!(blocking(&c).await, 0);
    let c2 = c.clone();
    tokio::time::advance(mins(41)).await;
    assert_eq!(now(&c), 0);
    settle().await;
    assert_eq!(fake.in_flight.load(Ordering::SeqCst), 1);
    drop(c);
    settle().await;
    assert_eq!(
        fake.in_flight.load(Ordering::SeqCst),
        1,
        "dropping one clone must not abort"
    );
    drop(c2);
    settle().await;
    assert_eq!(
        fake.in_flight.load(Ordering::SeqCst),
        0,
        "background fetch still running after drop"
    );
    assert_eq!(fake.dropped_unfinished.load(Ordering::SeqCst), 1);
    assert_eq!(Arc::strong_count(&fake), 1, "source not released");
}

#[tokio::test(start_paused = true)]
async fn dropping_the_cache_during_blocking_refresh_releases_source() {
    let (c, fake) = cache(vec![Step::hang()], Step::ok(mins(60)), cfg());
    let h = {
        let c = c.clone();
        tokio::spawn(async move { c.token().await.map(|t| id(&t)) })
    };
    settle().await;
    assert_eq!(fake.in_flight.load(Ordering::SeqCst), 1);
    drop(c);
    h.abort();
    let _ = h.await;
    settle().await;
    assert_eq!(fake.in_flight.load(Ordering::SeqCst), 0);
    assert_eq!(Arc::strong_count(&fake), 1, "source not released");
}

// ---------------------------------------------------------------------------------------------
// T6: expiry forms
// ---------------------------------------------------------------------------------------------

const BASE: i64 = 1_700_000_000;

fn wall(unix: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix).unwrap()
}

fn with_offset(t: OffsetDateTime, off: &str) -> OffsetDateTime {
    let o = azure_core::time::parse_rfc3339(&format!("2000-01-01T00:00:00{off}"))
        .unwrap()
        .offset();
    t.to_offset(o)
}

#[tokio::test(start_paused = true)]
async fn same_moment_in_every_form_gives_the_same_deadline() {
    let clock = VirtualClock::starting_at(wall(BASE));
    tokio::time::advance(secs(90)).await; // the clock moves with tokio's
    let now = Instant::now();
    let exp = wall(BASE + 90 + 3600);
    let want = Some(now + secs(3600));
    let forms = [
        Expiry::On(exp),
        Expiry::On(with_offset(exp, "+02:00")),
        Expiry::On(with_offset(exp, "+05:45")),
        Expiry::On(with_offset(exp, "-09:30")),
        Expiry::On(with_offset(exp, "+23:59")),
        Expiry::On(with_offset(exp, "-23:59")),
        Expiry::OnSystem(UNIX_EPOCH + Duration::from_secs((BASE + 90 + 3600) as u64)),
        Expiry::unix_seconds(BASE + 90 + 3600),
        Expiry::In(secs(3600)),
        Expiry::At(now + secs(3600)),
    ];
    for f in forms {
        assert_eq!(f.deadline(now, &clock), want, "{f:?}");
    }
    // sub-second precision survives the offset conversion
    let frac = exp + azure_core::time::Duration::milliseconds(500);
    assert_eq!(
        Expiry::On(with_offset(frac, "+05:45")).deadline(now, &clock),
        Some(now + Duration::from_millis(3_600_500))
    );
}

#[tokio::test(start_paused = true)]
async fn expiry_in_the_past_is_now_and_far_future_does_not_panic() {
    let clock = VirtualClock::starting_at(wall(BASE));
    let now = Instant::now();
    assert_eq!(Expiry::unix_seconds(0).deadline(now, &clock), Some(now));
    assert_eq!(Expiry::unix_seconds(-1).deadline(now, &clock), Some(now));
    assert_eq!(
        Expiry::unix_seconds(i64::MIN).deadline(now, &clock),
        Some(now)
    );
    assert_eq!(
        Expiry::unix_seconds(i64::MAX).deadline(now, &clock),
        None,
        "far future must be Never"
    );
    assert_eq!(
        Expiry::OnSystem(UNIX_EPOCH).deadline(now, &clock),
        Some(now)
    );
    assert_eq!(Expiry::On(wall(BASE - 1)).deadline(now, &clock), Some(now));
    assert_eq!(Expiry::In(Duration::ZERO).deadline(now, &clock), Some(now));
    assert_eq!(Expiry::At(now).deadline(now, &clock), Some(now));
    assert_eq!(Expiry::Never.deadline(now, &clock), None);
    // no panics, and not "in the past"
    for e in [
        Expiry::In(Duration::MAX),
        Expiry::In(Duration::from_secs(u64::MAX)),
        Expiry::In(Duration::from_secs(i64::MAX as u64)),
        Expiry::On(wall(253_402_300_799)), // 9999-12-31T23:59:59Z
        Expiry::On(with_offset(wall(253_402_300_799 - 86_400), "-23:59")),
        Expiry::unix_seconds(253_402_300_799),
        Expiry::unix_seconds(i64::MAX / 2),
        Expiry::OnSystem(UNIX_EPOCH + Duration::from_secs(1 << 40)),
        Expiry::At(now + Duration::from_secs(100 * 365 * 86_400)),
    ] {
        let d = e.deadline(now, &clock);
        assert!(
            d.map_or(true, |d| d > now + Duration::from_secs(86_400)),
            "{e:?} → {d:?}"
        );
    }
    // past forms in extreme clocks
    let early = VirtualClock::starting_at(wall(-377_705_116_800)); // year -9999
    let late = VirtualClock::starting_at(wall(253_402_300_799));
    for clock in [&early as &dyn WallClock, &late] {
        for e in [
            Expiry::unix_seconds(i64::MIN),
            Expiry::unix_seconds(i64::MAX),
            Expiry::unix_seconds(0),
            Expiry::OnSystem(UNIX_EPOCH),
            Expiry::On(wall(253_402_300_799)),
            Expiry::On(wall(-377_705_116_800)),
        ] {
            let _ = e.deadline(now, clock);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn monotonic_expiry_in_the_past_is_now() {
    // rustdoc of Expiry::deadline: "An expiry in the past is now." (the wall-clock forms do it)
    let clock = VirtualClock::starting_at(wall(BASE));
    tokio::time::advance(secs(3 * 86_400)).await;
    let now = Instant::now();
    let past = now - Duration::from_secs(86_400);
    assert_eq!(
        Expiry::unix_seconds(BASE - 86_400).deadline(now, &clock),
        Some(now)
    );
    assert_eq!(
        Expiry::At(past).deadline(now, &clock),
        Some(now),
        "Expiry::At(past) is not clamped to now"
    );
}

#[tokio::test(start_paused = true)]
async fn extreme_expiries_installed_in_a_cache_never_panic_or_hang() {
    let now0 = Instant::now();
    let mut forms = vec![
        Expiry::In(Duration::ZERO),
        Expiry::In(Duration::MAX),
        Expiry::At(now0),
        Expiry::At(now0 + Duration::from_secs(100 * 365 * 86_400)),
        Expiry::On(wall(253_402_300_799)),
        Expiry::On(wall(-377_705_116_800)),
        Expiry::On(wall(0)),
        Expiry::OnSystem(UNIX_EPOCH),
        Expiry::OnSystem(UNIX_EPOCH + Duration::from_secs(1 << 40)),
        Expiry::unix_seconds(i64::MIN),
        Expiry::unix_seconds(i64::MAX),
        Expiry::Never,
    ];
    for back in [86_400u64, 1 << 40, 1 << 62, i64::MAX as u64] {
        if let Some(p) = now0.checked_sub(Duration::from_secs(back)) {
            forms.push(Expiry::At(p));
        }
    }
    for e in forms {
        for config in [
            cfg(),
            RefreshConfig::default(),
            cfg().stale_duration(Duration::MAX),
            cfg().skew(Duration::MAX),
        ] {
            let config = config.wall_clock(VirtualClock::starting_at(wall(BASE)));
            let (c, _f) = cache(vec![], Step::exp(e), config);
            for step in [
                Duration::ZERO,
                secs(1),
                mins(60),
                Duration::from_secs(50 * 365 * 86_400),
            ] {
                tokio::time::advance(step).await;
                let _ = c.state();
                let r = tokio::time::timeout(secs(3601), c.token_and_deadline()).await;
                assert!(r.is_ok(), "{e:?}: a call hung");
                settle().await;
                let _ = format!("{c:?}");
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn far_future_wall_clock_expiry_is_cached_not_refetched() {
    let config = cfg().wall_clock(VirtualClock::starting_at(wall(BASE)));
    let (c, fake) = cache(
        vec![Step::exp(Expiry::On(wall(253_402_300_799)))],
        Step::ok(mins(60)),
        config,
    );
    assert_eq!(blocking(&c).await, 0);
    tokio::time::advance(Duration::from_secs(100 * 365 * 86_400)).await;
    assert_eq!(c.state(), TokenState::Fresh);
    assert_eq!(now(&c), 0);
    settle().await;
    assert_eq!(fake.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn wall_clock_expiry_with_odd_offset_uses_injected_clock() {
    let exp = with_offset(wall(BASE + 3600), "+05:45");
    let config = cfg().wall_clock(VirtualClock::starting_at(wall(BASE)));
    let (c, _f) = cache(vec![Step::exp(Expiry::On(exp))], Step::ok(mins(60)), config);
    assert_eq!(blocking(&c).await, 0);
    tokio::time::advance(mins(40) - secs(1)).await;
    assert_eq!(c.state(), TokenState::Fresh);
    tokio::time::advance(secs(1)).await;
    assert_eq!(c.state(), TokenState::Stale);
    tokio::time::advance(mins(20) - secs(41)).await;
    assert_eq!(c.state(), TokenState::Stale);
    tokio::time::advance(secs(1)).await;
    assert_eq!(c.state(), TokenState::Expired);
}

// ---------------------------------------------------------------------------------------------
// X5: configuration — clamps, NaN, Duration::MAX
// ---------------------------------------------------------------------------------------------

#[test]
fn setters_clamp_as_documented() {
    let d = RefreshConfig::default();
    assert_eq!(d.skew_value(), secs(40));
    assert_eq!(d.backoff_value(), secs(60));
    assert_eq!(d.load_timeout_value(), secs(30));
    assert_eq!(
        d.stale_window_value(),
        StaleWindow::Dynamic { max: mins(20) }
    );
    assert_eq!(d.jitter_value(), 0.1);

    assert_eq!(d.clone().skew(Duration::MAX).skew_value(), secs(3600));
    assert_eq!(d.clone().skew(Duration::ZERO).skew_value(), Duration::ZERO);
    assert_eq!(
        d.clone().backoff(Duration::ZERO).backoff_value(),
        Duration::from_millis(1)
    );
    assert_eq!(d.clone().backoff(Duration::MAX).backoff_value(), secs(3600));
    assert_eq!(
        d.clone().load_timeout(Duration::ZERO).load_timeout_value(),
        Duration::from_millis(1)
    );
    assert_eq!(
        d.clone().load_timeout(Duration::MAX).load_timeout_value(),
        secs(3600)
    );
    assert_eq!(
        d.clone()
            .max_stale_window(Duration::MAX)
            .stale_window_value(),
        StaleWindow::Dynamic {
            max: Duration::from_secs(86_400)
        }
    );
    assert_eq!(
        d.clone()
            .stale_duration(Duration::ZERO)
            .stale_window_value(),
        StaleWindow::Fixed(Duration::ZERO)
    );
    let _ = d.clone().stale_duration(Duration::MAX).stale_window_value();
    for j in [
        -1.0,
        0.0,
        0.5,
        0.7,
        2.0,
        1e308,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::MIN_POSITIVE,
        -0.0,
    ] {
        let v = d.clone().jitter(j).jitter_value();
        assert!((0.0..=0.5).contains(&v), "jitter({j}) → {v}");
    }
}

#[test]
fn jitter_nan_is_clamped() {
    let v = RefreshConfig::default().jitter(f64::NAN).jitter_value();
    assert!(
        (0.0..=0.5).contains(&v),
        "jitter(NaN) → {v} (doc: clamped into [0, 0.5])"
    );
}

#[test]
fn env_knobs_clamp_and_default() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        RefreshConfig::from_env_with(move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    };
    let c = env(&[
        ("TOKEN_REFRESH_SKEW_SECONDS", "99999999"),
        ("TOKEN_REFRESH_BACKOFF_SECONDS", "0"),
        ("TOKEN_REFRESH_LOAD_TIMEOUT_SECONDS", "100000"),
        ("TOKEN_REFRESH_MAX_STALE_WINDOW_SECONDS", "99999999"),
        ("TOKEN_REFRESH_JITTER_PERCENT", "90"),
    ]);
    assert_eq!(c.skew_value(), secs(3600));
    assert_eq!(c.backoff_value(), secs(1));
    assert_eq!(c.load_timeout_value(), secs(600));
    assert_eq!(
        c.stale_window_value(),
        StaleWindow::Dynamic { max: secs(86_400) }
    );
    assert_eq!(c.jitter_value(), 0.5);
    let c = env(&[
        ("TOKEN_REFRESH_SKEW_SECONDS", "abc"),
        ("TOKEN_REFRESH_BACKOFF_SECONDS", ""),
        (
            "TOKEN_REFRESH_LOAD_TIMEOUT_SECONDS",
            "99999999999999999999999999",
        ),
        ("TOKEN_REFRESH_MAX_STALE_WINDOW_SECONDS", "NaN"),
        ("TOKEN_REFRESH_JITTER_PERCENT", "1e9"),
    ]);
    assert_eq!(c.skew_value(), secs(40));
    assert_eq!(c.backoff_value(), secs(60));
    let lt = c.load_timeout_value();
    assert!(lt == secs(30) || lt == secs(600), "{lt:?}");
    assert_eq!(
        c.stale_window_value(),
        StaleWindow::Dynamic { max: mins(20) }
    );
    assert_eq!(c.jitter_value(), 0.1);
    let c = env(&[
        ("TOKEN_REFRESH_LOAD_TIMEOUT_SECONDS", "0"),
        ("TOKEN_REFRESH_SKEW_SECONDS", "0"),
    ]);
    assert_eq!(c.load_timeout_value(), secs(1));
    assert_eq!(c.skew_value(), Duration::ZERO);
    let c = env(&[]);
    assert_eq!(c.backoff_value(), secs(60));
}

/// A caller may see the source's own (scripted) panic; any other panic is the crate's.
fn assert_scripted_panic(e: tokio::task::JoinError) {
    assert!(e.is_panic(), "{e:?}");
    let p = e.into_panic();
    let msg = p
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(msg.contains("scripted panic"), "the crate panicked: {msg}");
}

/// A whole life cycle (install, stale, failures, back-off, expiry) under a config.
async fn life_cycle(config: RefreshConfig) {
    let bound = config.load_timeout_value() + secs(1);
    let (c, _f) = cache(
        vec![
            Step::ok(mins(60)),
            Step::err(),
            Step::panic(),
            Step::hang(),
            Step::ok(secs(90)),
            Step::err(),
        ],
        Step::ok(mins(60)),
        config,
    );
    for _ in 0..(4 * 60) {
        tokio::time::advance(secs(30)).await;
        let st = c.state();
        if matches!(st, TokenState::Fresh | TokenState::Stale) {
            assert!(c.token().now_or_never().is_some(), "waited in {st:?}");
        } else {
            let c2 = c.clone();
            let h = tokio::spawn(async move { c2.token().await.map(|_| ()) });
            let r = tokio::time::timeout(bound, h).await;
            match r {
                Err(_) => panic!("blocking call not bounded by the load timeout"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => assert_scripted_panic(e),
            }
        }
        settle().await;
        let _ = format!("{c:?} {:?}", c.stats());
    }
}

#[tokio::test(start_paused = true)]
async fn every_setter_at_zero_and_max_never_panics() {
    let setters: Vec<fn(RefreshConfig, Duration) -> RefreshConfig> = vec![
        |c, d| c.skew(d),
        |c, d| c.backoff(d),
        |c, d| c.load_timeout(d),
        |c, d| c.max_stale_window(d),
        |c, d| c.stale_duration(d),
    ];
    for (i, set) in setters.iter().enumerate() {
        for d in [
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::MAX,
            Duration::from_secs(u64::MAX / 2),
        ] {
            let _ = i;
            life_cycle(set(cfg(), d)).await;
            life_cycle(set(RefreshConfig::default().jitter(0.5), d)).await;
        }
    }
    // everything at MAX at once
    life_cycle(
        RefreshConfig::default()
            .skew(Duration::MAX)
            .backoff(Duration::MAX)
            .load_timeout(Duration::MAX)
            .max_stale_window(Duration::MAX)
            .jitter(f64::INFINITY),
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn weird_jitter_samples_never_panic() {
    for s in [
        0.0,
        0.999_999_999,
        1.0,
        5.0,
        -3.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::MAX,
        f64::MIN,
    ] {
        life_cycle(
            RefreshConfig::default()
                .jitter(0.5)
                .jitter_source(move || s),
        )
        .await;
    }
}

#[tokio::test(start_paused = true)]
async fn nan_jitter_sample_never_panics() {
    life_cycle(
        RefreshConfig::default()
            .jitter(0.5)
            .jitter_source(|| f64::NAN),
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn nan_jitter_fraction_never_panics() {
    life_cycle(RefreshConfig::default().jitter(f64::NAN)).await;
}

/// Stale instant (seconds after install) and back-off (seconds) of a 60 min token under `config`.
async fn measure_stale_and_backoff(config: RefreshConfig) -> (u64, u64) {
    let (c, fake) = cache(
        vec![Step::ok(mins(60)), Step::err()],
        Step::ok(mins(60)),
        config,
    );
    let t0 = Instant::now();
    assert_eq!(blocking(&c).await, 0);
    tokio::time::advance(mins(30)).await;
    while c.state() == TokenState::Fresh {
        tokio::time::advance(secs(1)).await;
    }
    assert_eq!(c.state(), TokenState::Stale);
    let stale = t0.elapsed().as_secs();
    let _ = walk(&c, secs(200)).await;
    let st = offsets(&fake.started(), t0);
    assert!(st.len() >= 3, "{st:?}");
    (stale, st[2] - st[1])
}

#[tokio::test(start_paused = true)]
async fn jitter_bounds() {
    // Window shrinks by up to `fraction` (refresh starts later), back-off grows by up to it.
    for s in [0.0, 0.25, 0.5, 0.999_999, 1.0, 7.0, -7.0, f64::INFINITY] {
        let (stale, backoff) =
            measure_stale_and_backoff(cfg().jitter(0.5).jitter_source(move || s)).await;
        assert!(
            (2400..=3000).contains(&stale),
            "sample {s}: stale at {stale}s"
        );
        assert!(
            (60..=91).contains(&backoff),
            "sample {s}: back-off {backoff}s"
        );
    }
    for _ in 0..10 {
        let (stale, backoff) = measure_stale_and_backoff(RefreshConfig::default()).await;
        assert!(
            (2400..=2520).contains(&stale),
            "default jitter: stale at {stale}s"
        );
        assert!(
            (60..=67).contains(&backoff),
            "default jitter: back-off {backoff}s"
        );
    }
    let (stale, backoff) = measure_stale_and_backoff(cfg()).await;
    assert_eq!((stale, backoff), (2400, 60));
}

// ---------------------------------------------------------------------------------------------
// Invariants under a long pseudo-random schedule
// ---------------------------------------------------------------------------------------------

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

async fn soak(seed: u64) {
    let mut rng = Lcg(seed);
    let mut steps = Vec::new();
    for _ in 0..400 {
        let lifetime = [secs(90), mins(10), mins(60), secs(45)][(rng.next() % 4) as usize];
        let delay = secs([0, 0, 1, 5, 20, 40][(rng.next() % 6) as usize]);
        let s = match rng.next() % 10 {
            0 | 1 => Step::err(),
            2 => Step::hang(),
            _ => Step::ok(lifetime),
        };
        steps.push(s.after(delay));
    }
    let (c, fake) = cache(
        steps,
        Step::ok(mins(60)),
        RefreshConfig::default().jitter_source(move || 0.37),
    );
    let seen: Arc<Mutex<Vec<usize>>> = Arc::default();
    let mut handles = Vec::new();
    let mut prev = RefreshStats::default();
    for tick in 0..(6 * 60 * 12) {
        tokio::time::advance(secs(5)).await;
        let st = c.state();
        if matches!(st, TokenState::Fresh | TokenState::Stale) {
            match c.token().now_or_never() {
                Some(Ok(t)) => seen.lock().unwrap().push(id(&t)),
                other => panic!(
                    "seed {seed} tick {tick}: {st:?} call did not return a token at once: {other:?}"
                ),
            }
        }
        for _ in 0..(rng.next() % 3) {
            let c = c.clone();
            let seen = seen.clone();
            let bound = c.config().load_timeout_value();
            handles.push(tokio::spawn(async move {
                let t0 = Instant::now();
                let r = c.token().await;
                let waited = t0.elapsed();
                if let Ok(t) = &r {
                    seen.lock().unwrap().push(id(t));
                }
                assert!(waited <= bound, "a caller waited {waited:?} > load timeout");
            }));
        }
        settle().await;
        let s = c.stats();
        for (a, b) in [
            (prev.fresh_hits, s.fresh_hits),
            (prev.stale_hits, s.stale_hits),
            (prev.waits, s.waits),
            (prev.blocking_fetches, s.blocking_fetches),
            (prev.background_started, s.background_started),
            (prev.background_failed, s.background_failed),
            (prev.timeouts, s.timeouts),
        ] {
            assert!(a <= b, "a counter went down: {prev:?} → {s:?}");
        }
        prev = s;
        assert!(
            fake.max_in_flight.load(Ordering::SeqCst) <= 2,
            "more than one blocking + one background fetch"
        );
    }
    tokio::time::advance(mins(2)).await;
    for h in handles {
        h.await.expect("a caller panicked");
    }
    let seen = seen.lock().unwrap();
    for w in seen.windows(2) {
        assert!(
            w[0] <= w[1],
            "seed {seed}: tokens went backwards: {} then {}",
            w[0],
            w[1]
        );
    }
}

#[tokio::test(start_paused = true)]
async fn soak_invariants_seed_1() {
    soak(1).await;
}

#[tokio::test(start_paused = true)]
async fn soak_invariants_seed_2() {
    soak(0xdead_beef).await;
}

#[tokio::test(start_paused = true)]
async fn soak_invariants_seed_3() {
    soak(42).await;
}

// ---------------------------------------------------------------------------------------------
// Secrets never in Debug / Display
// ---------------------------------------------------------------------------------------------

fn assert_no_secret(s: &str) {
    assert!(!s.contains("SECRET"), "secret leaked: {s}");
}

#[tokio::test(start_paused = true)]
async fn secrets_never_reach_debug() {
    let t = BearerToken::new("SECRET-x");
    assert_no_secret(&format!("{t:?} {t} {t:#?}"));
    let f = Fetched::new(BearerToken::new("SECRET-y"), Expiry::In(secs(1)));
    assert_no_secret(&format!("{f:?} {f:#?}"));
    let a = AccessToken::new("SECRET-azure", wall(BASE));
    let fa = Fetched::from(a.clone());
    assert_no_secret(&format!("{fa:?} {fa:#?}"));
    let fa = Fetched::new(a, Expiry::Never);
    assert_no_secret(&format!("{fa:?}"));

    let (c, _f) = cache(
        vec![Step::ok(secs(90)), Step::ok(mins(60)).after(secs(3))],
        Step::ok(mins(60)),
        cfg(),
    );
    assert_no_secret(&format!("{c:?}"));
    assert_eq!(blocking(&c).await, 0);
    assert_no_secret(&format!("{c:?} {c:#?}"));
    tokio::time::advance(secs(46)).await;
    assert_eq!(now(&c), 0);
    settle().await;
    assert_no_secret(&format!("{c:?} {c:#?}")); // stale, refresh running
    tokio::time::advance(secs(10)).await;
    assert_no_secret(&format!("{c:?} {:?} {:?}", c.stats(), c.config()));
    let e = RefreshError::Timeout(secs(1));
    assert_no_secret(&format!("{e:?} {e}"));
}

// ---------------------------------------------------------------------------------------------
// T7: the Azure adapter
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct FakeCredential {
    calls: AtomicUsize,
    scopes: Mutex<Vec<Vec<String>>>,
    lifetime: i64,
    fail: Mutex<VecDeque<bool>>,
    delay: Duration,
    offset: &'static str,
    clock: VirtualClock,
}

impl FakeCredential {
    fn with(
        clock: VirtualClock,
        lifetime: i64,
        delay: Duration,
        offset: &'static str,
    ) -> Arc<Self> {
        Arc::new(FakeCredential {
            calls: AtomicUsize::new(0),
            scopes: Mutex::new(Vec::new()),
            lifetime,
            fail: Mutex::new(VecDeque::new()),
            delay,
            offset,
            clock,
        })
    }
}

#[async_trait::async_trait]
impl TokenCredential for FakeCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        self.scopes
            .lock()
            .unwrap()
            .push(scopes.iter().map(|s| s.to_string()).collect());
        let fail = self.fail.lock().unwrap().pop_front().unwrap_or(false);
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if fail {
            return Err(azure_core::Error::with_message(
                azure_core::error::ErrorKind::Io,
                "endpoint down",
            ));
        }
        // expires_on in the (virtual) wall clock, with an odd offset
        let exp = with_offset(
            self.clock.now() + azure_core::time::Duration::seconds(self.lifetime),
            self.offset,
        );
        Ok(AccessToken::new(secret_for(n), exp))
    }
}

fn start_wall() -> VirtualClock {
    VirtualClock::starting_at(wall(BASE))
}

fn az_id(t: &AccessToken) -> usize {
    t.token
        .secret()
        .rsplit('-')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn caching_credential_one_fetch_per_scope_set() {
    let clock = start_wall();
    let inner = FakeCredential::with(clock, 3600, Duration::ZERO, "+05:30");
    let cred = CachingCredential::wrap(inner.clone(), cfg().wall_clock(clock));
    let a = cred.get_token(&["b", "a"], None).await.unwrap();
    let b = cred.get_token(&["a", "b", "a"], None).await.unwrap();
    assert_eq!(az_id(&a), 0);
    assert_eq!(az_id(&b), 0);
    assert_eq!(inner.calls.load(Ordering::SeqCst), 1);
    assert_eq!(cred.scope_sets(), 1);
    assert_eq!(
        inner.scopes.lock().unwrap()[0],
        vec!["a".to_string(), "b".to_string()]
    );
    let c = cred.get_token(&["c"], None).await.unwrap();
    assert_eq!(az_id(&c), 1);
    assert_eq!(cred.scope_sets(), 2);
    // cache_for shares the same cache as get_token
    let cache = cred.cache_for(&["a", "b"]);
    assert_eq!(az_id(&cache.token().await.unwrap()), 0);
    assert_eq!(az_id(&cred.access_token(&["a", "b"]).await.unwrap()), 0);
    assert_eq!(inner.calls.load(Ordering::SeqCst), 2);
    // empty scope set: no panic
    let _ = cred.get_token(&[], None).await;
    assert_no_secret(&format!("{cred:?} {cred:#?} {cache:?}"));
}

#[tokio::test(start_paused = true)]
async fn caching_credential_single_flight_and_stale_while_refresh() {
    let clock = start_wall();
    let inner = FakeCredential::with(clock, 3600, secs(2), "-09:30");
    let cred = Arc::new(CachingCredential::wrap(
        inner.clone(),
        cfg().wall_clock(clock),
    ));
    let hs: Vec<_> = (0..200)
        .map(|_| {
            let cred = cred.clone();
            tokio::spawn(async move { cred.get_token(&["s"], None).await.map(|t| az_id(&t)) })
        })
        .collect();
    let t0 = Instant::now();
    for h in hs {
        assert_eq!(h.await.unwrap().unwrap(), 0);
    }
    assert_eq!(inner.calls.load(Ordering::SeqCst), 1);
    assert_eq!(t0.elapsed(), secs(2));
    // installed at +2 s with 60 min left: stale at +2 s + 40 min (the odd offset must not shift it)
    tokio::time::advance(mins(40) - secs(1)).await;
    let cache = cred.cache_for(&["s"]);
    assert_eq!(cache.state(), TokenState::Fresh);
    tokio::time::advance(secs(1)).await;
    assert_eq!(cache.state(), TokenState::Stale);
    let t = cred
        .get_token(&["s"], None)
        .now_or_never()
        .expect("adapter waited in the stale window")
        .unwrap();
    assert_eq!(az_id(&t), 0);
    settle().await; // let the background refresh start its 2 s fetch
    tokio::time::advance(secs(2)).await;
    settle().await;
    assert_eq!(
        az_id(
            &cred
                .get_token(&["s"], None)
                .now_or_never()
                .unwrap()
                .unwrap()
        ),
        1
    );
    assert_eq!(inner.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn caching_credential_errors_are_credential_kind_and_not_cached() {
    let clock = start_wall();
    let inner = FakeCredential::with(clock, 3600, Duration::ZERO, "+05:30");
    inner.fail.lock().unwrap().push_back(true);
    let cred = CachingCredential::wrap(inner.clone(), cfg().wall_clock(clock));
    let e = cred.get_token(&["s"], None).await.unwrap_err();
    assert_eq!(*e.kind(), azure_core::error::ErrorKind::Credential, "{e:?}");
    assert_no_secret(&format!("{e:?} {e}"));
    let t = cred.get_token(&["s"], None).await.unwrap();
    assert_eq!(az_id(&t), 1);
    assert_eq!(inner.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn caching_credential_expired_token_from_inner_does_not_hang() {
    let clock = start_wall();
    let inner = FakeCredential::with(clock, -86_400, Duration::ZERO, "+05:30"); // already expired a day ago
    let cred = CachingCredential::wrap(inner.clone(), cfg().wall_clock(clock));
    for _ in 0..3 {
        let r = tokio::time::timeout(secs(31), cred.get_token(&["s"], None)).await;
        assert!(r.is_ok(), "hung");
    }
    assert!(inner.calls.load(Ordering::SeqCst) <= 6);
}

#[derive(Debug)]
struct AzSource {
    n: Arc<AtomicUsize>,
}
impl TokenSource for AzSource {
    type Token = AccessToken;
    type Error = FakeError;
    async fn fetch(&self) -> Result<Fetched<AccessToken>, FakeError> {
        let n = self.n.fetch_add(1, Ordering::SeqCst);
        Ok(Fetched::new(
            AccessToken::new(secret_for(n), wall(BASE)),
            Expiry::In(mins(60)),
        ))
    }
}

#[tokio::test(start_paused = true)]
async fn caching_credential_new_with_factory() {
    let n = Arc::new(AtomicUsize::new(0));
    let made: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
    let (n2, made2) = (n.clone(), made.clone());
    let cred = CachingCredential::new(cfg(), move |scopes: &[String]| {
        made2.lock().unwrap().push(scopes.to_vec());
        AzSource { n: n2.clone() }
    });
    for _ in 0..5 {
        let _ = cred.get_token(&["z", "y", "z"], None).await.unwrap();
    }
    assert_eq!(
        made.lock().unwrap().clone(),
        vec![vec!["y".to_string(), "z".to_string()]]
    );
    assert_eq!(n.load(Ordering::SeqCst), 1);
    assert_no_secret(&format!("{cred:?}"));
}

// ---------------------------------------------------------------------------------------------
// More T2 / T4 / T5 corners
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn slow_blocking_refresh_does_not_overwrite_newer_background_token() {
    // docs: "a blocking refresh that finishes after a background refresh *started later* has
    // installed a newer token does not overwrite it — its waiters get the newer token".
    let (c, fake) = cache(
        vec![
            Step::ok(secs(90)),                  // #0 at 0: stale 45, expired 50
            Step::ok(secs(90)).after(secs(6)),   // #1 background at 45 → installed at 51 (stale 96)
            Step::ok(mins(60)).after(secs(100)), // #2 blocking at 50 → answers at 150
            Step::ok(mins(60)),                  // #3 background at 96
        ],
        Step::ok(mins(60)),
        cfg().load_timeout(mins(10)),
    );
    let t0 = Instant::now();
    assert_eq!(blocking(&c).await, 0);
    tokio::time::advance(secs(45)).await;
    assert_eq!(now(&c), 0);
    settle().await;
    tokio::time::advance(secs(5)).await;
    assert_eq!(c.state(), TokenState::Expired);
    let waiter = {
        let c = c.clone();
        tokio::spawn(async move { c.token().await.map(|t| id(&t)) })
    };
    settle().await;
    assert_eq!(fake.calls(), 3);
    tokio::time::advance(secs(1)).await;
    settle().await;
    // tok1 installed at 51 by the background refresh
    assert_eq!(c.state(), TokenState::Fresh);
    let _ = walk(&c, secs(46)).await; // to 97: tok1 stale at 96 → background #3
    assert_eq!(offsets(&fake.started(), t0), vec![0, 45, 50, 96]);
    settle().await;
    assert_eq!(now(&c), 3);
    tokio::time::advance(secs(60)).await; // #2 answers at 150
    settle().await;
    let w = waiter.await.unwrap().unwrap();
    assert!(w == 1 || w == 3, "the blocking waiter got token {w}");
    assert_eq!(
        now(&c),
        3,
        "a slow blocking refresh overwrote a newer background token"
    );
    assert!(
        c.stats().blocking_superseded >= 1 || w == 1,
        "{:?}",
        c.stats()
    );
}

#[tokio::test(start_paused = true)]
async fn background_token_with_earlier_expiry_is_installed() {
    // Seed 004: the guard is a generation, not an expiry comparison (TTL policy may shrink).
    let (c, _f) = cache(
        vec![Step::ok(mins(60)), Step::ok(mins(5))],
        Step::ok(mins(60)),
        cfg(),
    );
    assert_eq!(blocking(&c).await, 0);
    tokio::time::advance(mins(40)).await;
    assert_eq!(now(&c), 0);
    settle().await;
    assert_eq!(
        now(&c),
        1,
        "a newer token with an earlier expiry was discarded"
    );
    let t = Instant::now();
    tokio::time::advance(Duration::from_millis(150_000 - 1000)).await;
    assert_eq!(c.state(), TokenState::Fresh);
    tokio::time::advance(secs(1)).await;
    assert_eq!(
        c.state(),
        TokenState::Stale,
        "stale_after not recomputed from the new 5 min token"
    );
    let _ = t;
}

#[tokio::test(start_paused = true)]
async fn stale_after_uses_ttl_left_at_install_not_at_fetch_start() {
    // SPEC T2: ttl = expiry - now, computed when the token is installed.
    let t0 = Instant::now();
    let (c, _f) = cache(
        vec![Step::exp(Expiry::At(t0 + mins(10))).after(mins(4))],
        Step::ok(mins(60)),
        cfg().load_timeout(mins(10)),
    );
    assert_eq!(blocking(&c).await, 0);
    assert_eq!(t0.elapsed(), mins(4));
    // 6 min left at install → window 3 min → stale at 7 min
    tokio::time::advance(mins(3) - secs(1)).await;
    assert_eq!(c.state(), TokenState::Fresh);
    tokio::time::advance(secs(1)).await;
    assert_eq!(c.state(), TokenState::Stale);
}

#[tokio::test(start_paused = true)]
async fn backoff_longer_than_remaining_life_still_blocks_at_expiry() {
    let (c, fake) = cache(
        vec![Step::ok(mins(60)), Step::err(), Step::ok(mins(60))],
        Step::ok(mins(60)),
        cfg().backoff(Duration::MAX),
    );
    assert_eq!(blocking(&c).await, 0);
    let t0 = Instant::now();
    tokio::time::advance(mins(40)).await;
    assert_eq!(now(&c), 0);
    settle().await;
    let ids = walk(&c, mins(20)).await;
    assert!(ids.iter().all(|&i| i == 0));
    assert_eq!(fake.calls(), 2, "a refresh started during the back-off");
    assert_eq!(c.state(), TokenState::Expired);
    assert_eq!(t0.elapsed(), mins(60) - secs(40));
    assert_eq!(
        blocking(&c).await,
        2,
        "the back-off suppressed the blocking refresh at expiry"
    );
    // the new token's window is its own, not the old back-off
    tokio::time::advance(mins(40) - secs(1)).await;
    assert_eq!(c.state(), TokenState::Fresh);
    tokio::time::advance(secs(1)).await;
    assert_eq!(c.state(), TokenState::Stale);
    assert_eq!(now(&c), 2);
    settle().await;
    assert_eq!(fake.calls(), 4);
}

#[tokio::test(start_paused = true)]
async fn background_refresh_to_never_expiring_token() {
    let (c, fake) = cache(
        vec![Step::ok(mins(60)), Step::exp(Expiry::Never)],
        Step::ok(mins(60)),
        cfg(),
    );
    assert_eq!(blocking(&c).await, 0);
    tokio::time::advance(mins(45)).await;
    assert_eq!(now(&c), 0);
    settle().await;
    assert_eq!(now(&c), 1);
    tokio::time::advance(Duration::from_secs(10 * 365 * 86_400)).await;
    assert_eq!(c.state(), TokenState::Fresh);
    assert_eq!(now(&c), 1);
    settle().await;
    assert_eq!(fake.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn virtual_clock_at_the_end_of_time_does_not_panic_the_cache() {
    let config = cfg().wall_clock(VirtualClock::starting_at(wall(253_402_300_799 - 10)));
    let (c, _f) = cache(
        vec![
            Step::exp(Expiry::On(wall(253_402_300_799))),
            Step::exp(Expiry::unix_seconds(0)),
        ],
        Step::exp(Expiry::On(wall(253_402_300_799))),
        config,
    );
    for _ in 0..5 {
        tokio::time::advance(mins(60)).await;
        let c2 = c.clone();
        let h = tokio::spawn(async move { c2.token().await.map(|_| ()) });
        match tokio::time::timeout(secs(31), h).await.expect("hung") {
            Ok(_) => {}
            Err(e) => panic!("the cache panicked with a wall clock near year 9999: {e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_thread_stress_stale_path_never_waits_and_never_goes_backwards() {
    let (c, fake) = cache(vec![], Step::ok(mins(60)), cfg().stale_duration(mins(120)));
    assert_eq!(c.token().await.map(|t| id(&t)).unwrap(), 0);
    let hs: Vec<_> = (0..8)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                let mut last = 0;
                for _ in 0..2000 {
                    let t = match c.token().now_or_never() {
                        Some(Ok(t)) => id(&t),
                        other => {
                            return Err(format!("stale call did not return at once: {other:?}"));
                        }
                    };
                    if t < last {
                        return Err(format!("went backwards {last} → {t}"));
                    }
                    last = t;
                    tokio::task::yield_now().await;
                }
                Ok(last)
            })
        })
        .collect();
    for h in hs {
        h.await.unwrap().unwrap();
    }
    assert!(
        fake.max_in_flight.load(Ordering::SeqCst) <= 1,
        "two background refreshes at once"
    );
    let s = c.stats();
    assert_eq!(s.blocking_fetches, 1);
    assert!(fake.calls() as u64 <= s.background_started + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_thread_invalidate_storm_never_deadlocks() {
    let (c, _fake) = cache(vec![], Step::ok(mins(60)), cfg());
    let inv = {
        let c = c.clone();
        tokio::spawn(async move {
            for _ in 0..2000 {
                c.invalidate();
                tokio::task::yield_now().await;
            }
        })
    };
    let hs: Vec<_> = (0..4)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                for _ in 0..500 {
                    c.token().await.unwrap();
                }
            })
        })
        .collect();
    // a hang guard, not a sleep: finishes as soon as the work is done
    tokio::time::timeout(Duration::from_secs(60), async {
        inv.await.unwrap();
        for h in hs {
            h.await.unwrap();
        }
    })
    .await
    .expect("deadlock between invalidate() and token()");
}

// ---------------------------------------------------------------------------------------------
// "a caller waits at most one load timeout (30 s) for a token, however the identity endpoint
// misbehaves (hangs, resets, panics)" — docs/token-refresh.md, Failure behaviour
// ---------------------------------------------------------------------------------------------

async fn waiters_wait_at_most_one_load_timeout(
    steps: Vec<Step>,
    cancel_leader_at: Option<Duration>,
) -> Vec<Duration> {
    let (c, _fake) = cache(steps, Step::hang(), cfg());
    let t0 = Instant::now();
    let leader = {
        let c = c.clone();
        tokio::spawn(async move { c.token().await.map(|t| id(&t)) })
    };
    settle().await;
    let hs: Vec<_> = (0..4)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let r = c.token().await.map(|t| id(&t));
                (r, t.elapsed())
            })
        })
        .collect();
    settle().await;
    if let Some(at) = cancel_leader_at {
        tokio::time::advance(at).await;
        leader.abort();
    }
    let mut waited = Vec::new();
    for h in hs {
        match tokio::time::timeout(mins(10), h)
            .await
            .expect("a waiter hung for 10 min")
        {
            Ok((_, w)) => waited.push(w),
            Err(e) => {
                assert_scripted_panic(e);
                waited.push(t0.elapsed());
            }
        }
    }
    waited
}

#[tokio::test(start_paused = true)]
async fn waiters_bounded_by_one_load_timeout_when_the_source_panics_late() {
    // fetch #0 panics after 29 s; the take-over fetch hangs.
    let waited =
        waiters_wait_at_most_one_load_timeout(vec![Step::panic().after(secs(29))], None).await;
    for w in &waited {
        assert!(
            *w <= secs(30),
            "a waiter waited {w:?} (> one load timeout): {waited:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn waiters_bounded_by_one_load_timeout_when_every_fetch_panics_late() {
    // Every fetch panics after 29 s: each panic reaches one caller, the next one takes over.
    let (c, _fake) = cache(vec![], Step::panic().after(secs(29)), cfg());
    let hs: Vec<_> = (0..5)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let r = std::panic::AssertUnwindSafe(c.token()).catch_unwind().await;
                (r.is_err(), t.elapsed())
            })
        })
        .collect();
    let mut waited = Vec::new();
    for h in hs {
        let (_panicked, w) = tokio::time::timeout(mins(10), h)
            .await
            .expect("hung")
            .unwrap();
        waited.push(w);
    }
    for w in &waited {
        assert!(
            *w <= secs(30),
            "a caller waited {w:?} (> one load timeout) before its result: {waited:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn slow_endpoint_with_impatient_callers_still_delivers_a_token() {
    // The endpoint answers in 15 s (well inside the 30 s load timeout). Callers give up after
    // 10 s (a typical request deadline) and arrive every 5 s. With one shared refresh, the
    // fetch started at 0 s answers at 15 s and every later caller is served.
    let (c, fake) = cache(vec![], Step::ok(mins(60)).after(secs(15)), cfg());
    let hs: Vec<_> = (0..24)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                tokio::time::sleep(secs(5 * i)).await;
                tokio::time::timeout(secs(10), c.token())
                    .await
                    .ok()
                    .and_then(|r| r.ok())
                    .is_some()
            })
        })
        .collect();
    let mut served = 0;
    for h in hs {
        served += h.await.unwrap() as usize;
    }
    assert!(
        served > 0,
        "no caller ever got a token; the source was called {} times, none allowed to finish",
        fake.calls()
    );
}

#[tokio::test(start_paused = true)]
async fn waiters_bounded_by_one_load_timeout_when_the_leader_is_cancelled() {
    let waited = waiters_wait_at_most_one_load_timeout(vec![Step::hang()], Some(secs(29))).await;
    for w in &waited {
        assert!(
            *w <= secs(30),
            "a waiter waited {w:?} (> one load timeout): {waited:?}"
        );
    }
}
