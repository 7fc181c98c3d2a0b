//! Scenario `token_refresh`: 1 000 concurrent callers across a token's expiry edge.
//!
//! Each variant gets a token (lifetime 2 s, fetch latency 50 ms, skew 200 ms) at t = 0; then
//! 1 000 tasks call `token()` every 20 ms from t = 1.3 s to t = 2.3 s, across the point where
//! the token counts as expired (t = 1.8 s). Every call's latency is measured. Variants:
//!
//! - ours: `TokenCache` with a 500 ms stale window — refreshed in the background at t = 1.5 s;
//! - `naive_mutex_around_fetch`: a `tokio::sync::Mutex<Option<token>>` that fetches under the
//!   lock when the token is expired (the usual hand-written cache);
//! - `ours_without_stale_window`: `TokenCache` with `stale_duration(0)` — single-flight
//!   blocking refresh at expiry only, to show what the stale window itself is worth.
//!
//! Every variant refreshes exactly once in the window, so fetch counts are equal by design;
//! the difference is who waits. Real time, multi-threaded runtime (2 workers); each figure is
//! the median of 3 rounds. Run with `cargo xtask bench token_refresh`.
//!
//! Then the hit path alone (issue 19): `token()` on a fresh token, 1 and 2 threads, a cache
//! whose metrics are bound to a Prometheus recorder (metrics-exporter-prometheus) against the
//! same cache without one (budget: at most 1.25x). Median of 9 interleaved rounds.
//!
//! The same scenario then replays a 30-minute identity outage (see `support/outage.rs`): the
//! static-stability preset against the seed default and a naive cache, in virtual time —
//! calls failed and identity-endpoint contacts.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant as StdInstant};

#[path = "support/outage.rs"]
mod outage;

use testkit::bench::{Comparison, emit, median, percentile};
use token_refresh::{BearerToken, Expiry, Fetched, RefreshConfig, TokenCache, TokenSource};
use tokio::time::Instant;

const CALLERS: usize = 1000;
const TTL: Duration = Duration::from_millis(2000);
const FETCH_LATENCY: Duration = Duration::from_millis(50);
const SKEW: Duration = Duration::from_millis(200);
const STALE_WINDOW: Duration = Duration::from_millis(500);
const CALLS_FROM: Duration = Duration::from_millis(1300);
const CALLS_UNTIL: Duration = Duration::from_millis(2300);
const CALL_EVERY: Duration = Duration::from_millis(20);
const ROUNDS: usize = 3;

#[derive(Debug, Default)]
struct Endpoint {
    calls: AtomicUsize,
}

#[derive(Debug, thiserror::Error)]
#[error("never fails")]
struct Never;

impl TokenSource for Endpoint {
    type Token = BearerToken;
    type Error = Never;

    async fn fetch(&self) -> Result<Fetched<BearerToken>, Never> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(FETCH_LATENCY).await;
        Ok(Fetched::new(
            BearerToken::new(format!("token-{n}")),
            Expiry::In(TTL),
        ))
    }
}

/// The hand-written baseline: fetch under a lock when expired.
#[derive(Debug, Default)]
struct NaiveCache {
    source: Endpoint,
    slot: tokio::sync::Mutex<Option<(BearerToken, Instant)>>,
}

impl NaiveCache {
    async fn token(&self) -> BearerToken {
        let mut slot = self.slot.lock().await;
        if let Some((token, expired_at)) = &*slot
            && Instant::now() < *expired_at
        {
            return token.clone();
        }
        let fetched = self.source.fetch().await.expect("never fails");
        let expired_at = Instant::now() + TTL - SKEW;
        *slot = Some((fetched.token.clone(), expired_at));
        fetched.token
    }
}

/// What is measured: one of our caches, or the baseline.
#[derive(Debug)]
enum Subject {
    Ours(TokenCache<Endpoint>),
    Naive(NaiveCache),
}

impl Subject {
    fn new(name: &str) -> Self {
        let config = RefreshConfig::default().jitter(0.0).skew(SKEW);
        match name {
            "ours" => Self::Ours(TokenCache::new(
                Endpoint::default(),
                config.stale_duration(STALE_WINDOW),
            )),
            "ours_without_stale_window" => Self::Ours(TokenCache::new(
                Endpoint::default(),
                config.stale_duration(Duration::ZERO),
            )),
            _ => Self::Naive(NaiveCache::default()),
        }
    }

    async fn token(&self) -> BearerToken {
        match self {
            Self::Ours(cache) => cache.token().await.expect("never fails"),
            Self::Naive(cache) => cache.token().await,
        }
    }

    fn fetches(&self) -> usize {
        match self {
            Self::Ours(cache) => cache.source().calls.load(Ordering::SeqCst),
            Self::Naive(cache) => cache.source.calls.load(Ordering::SeqCst),
        }
    }
}

/// One round's figures for one subject.
#[derive(Debug, Default, Clone, Copy)]
struct Round {
    fetches: f64,
    total_wait_ms: f64,
    p99_us: f64,
    max_ms: f64,
    waited_over_1ms: f64,
}

async fn run_round(name: &str) -> Round {
    let subject = Arc::new(Subject::new(name));
    subject.token().await; // the token of t = 0
    let start = Instant::now();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|i| {
            let subject = subject.clone();
            tokio::spawn(async move {
                // Spread the callers over one call period.
                let offset = CALL_EVERY * (i % 20) as u32 / 20;
                tokio::time::sleep_until(start + CALLS_FROM + offset).await;
                let mut waits = Vec::new();
                while start.elapsed() < CALLS_UNTIL {
                    let t = StdInstant::now();
                    std::hint::black_box(subject.token().await);
                    waits.push(t.elapsed().as_secs_f64());
                    tokio::time::sleep(CALL_EVERY).await;
                }
                waits
            })
        })
        .collect();
    let mut waits = Vec::new();
    for task in tasks {
        waits.extend(task.await.expect("caller"));
    }
    let over = waits.iter().filter(|w| **w > 0.001).count();
    Round {
        fetches: (subject.fetches() - 1) as f64,
        total_wait_ms: waits.iter().sum::<f64>() * 1e3,
        p99_us: percentile(&mut waits, 99.0) * 1e6,
        max_ms: percentile(&mut waits, 100.0) * 1e3,
        waited_over_1ms: over as f64,
    }
}

/// The median of each figure over the rounds.
fn medians(rounds: &[Round]) -> Round {
    let pick = |f: fn(&Round) -> f64| median(&mut rounds.iter().map(f).collect::<Vec<_>>());
    Round {
        fetches: pick(|r| r.fetches),
        total_wait_ms: pick(|r| r.total_wait_ms),
        p99_us: pick(|r| r.p99_us),
        max_ms: pick(|r| r.max_ms),
        waited_over_1ms: pick(|r| r.waited_over_1ms),
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("runtime");
    let names = [
        "ours",
        "naive_mutex_around_fetch",
        "ours_without_stale_window",
    ];
    let mut rounds: Vec<Vec<Round>> = vec![Vec::new(); names.len()];
    for _ in 0..ROUNDS {
        // Interleave the subjects so machine noise hits each of them alike.
        for (i, name) in names.iter().enumerate() {
            rounds[i].push(runtime.block_on(run_round(name)));
        }
    }
    let figures: Vec<Round> = rounds.iter().map(|r| medians(r)).collect();
    for (name, r) in names.iter().zip(&figures) {
        println!(
            "token_refresh {name}: {} fetches, callers waited {:.1} ms in total, p99 {:.0} µs, \
             max {:.1} ms, {} calls waited > 1 ms",
            r.fetches, r.total_wait_ms, r.p99_us, r.max_ms, r.waited_over_1ms
        );
    }
    let ours = figures[0];
    let mut results = Vec::new();
    for (name, base) in names.iter().zip(&figures).skip(1) {
        let metrics: [(&'static str, &'static str, f64, f64); 5] = [
            (
                "fetches across the expiry edge",
                "fetches",
                ours.fetches,
                base.fetches,
            ),
            (
                "callers' total waiting time",
                "ms",
                ours.total_wait_ms,
                base.total_wait_ms,
            ),
            ("p99 call latency", "µs", ours.p99_us, base.p99_us),
            ("max call latency", "ms", ours.max_ms, base.max_ms),
            (
                "calls that waited > 1 ms",
                "calls",
                ours.waited_over_1ms,
                base.waited_over_1ms,
            ),
        ];
        for (metric, unit, o, b) in metrics {
            results.push(Comparison::lower_is_better(
                "token_refresh",
                (*name).to_string(),
                metric,
                unit,
                o,
                b,
            ));
        }
    }
    results.extend(hit_path(&runtime));
    let preset = outage::run("static_stability");
    for name in ["static_stability", "seed_default", "naive"] {
        let o = if name == "static_stability" {
            preset
        } else {
            outage::run(name)
        };
        println!(
            "token_refresh outage {name}: {} of {} calls failed, {} identity-endpoint contacts",
            o.failed, o.calls, o.contacts
        );
        if name == "static_stability" {
            continue;
        }
        let baseline_name = format!("outage: {name}");
        results.push(Comparison::lower_is_better(
            "token_refresh",
            baseline_name.clone(),
            "calls failed in a 30-min identity outage (1 000 callers, 720 000 calls)",
            "calls",
            preset.failed,
            o.failed,
        ));
        results.push(Comparison::lower_is_better(
            "token_refresh",
            baseline_name,
            "identity-endpoint contacts in the outage run",
            "fetches",
            preset.contacts,
            o.contacts,
        ));
    }
    emit(&results);
}

/// Calls per thread in one round of the hit-path comparison.
const HIT_CALLS: usize = 200_000;
/// Rounds of the hit-path comparison.
const HIT_ROUNDS: usize = 9;

/// A source whose token never expires: every call of the hit-path comparison is a fresh hit.
#[derive(Debug)]
struct Static;

impl TokenSource for Static {
    type Token = BearerToken;
    type Error = Never;

    async fn fetch(&self) -> Result<Fetched<BearerToken>, Never> {
        Ok(Fetched::never_expires(BearerToken::new("static")))
    }
}

/// ns per `token()` on a fresh token, on `threads` threads at once.
fn hit_round(cache: &TokenCache<Static>, threads: usize) -> f64 {
    let start = StdInstant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                for _ in 0..HIT_CALLS {
                    std::hint::black_box(
                        futures::executor::block_on(cache.token()).expect("fresh"),
                    );
                }
            });
        }
    });
    start.elapsed().as_nanos() as f64 / (HIT_CALLS * threads) as f64
}

/// The hit path with and without a Prometheus recorder bound to the cache's metrics.
fn hit_path(runtime: &tokio::runtime::Runtime) -> Vec<Comparison> {
    let config = || RefreshConfig::default().jitter(0.0);
    let plain = TokenCache::new(Static, config());
    // Handles bind when the cache is built: a local recorder is enough, nothing process-wide.
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let recorded = metrics::with_local_recorder(&recorder, || TokenCache::new(Static, config()));
    for cache in [&plain, &recorded] {
        runtime.block_on(cache.token()).expect("first token");
    }
    let mut results = Vec::new();
    for threads in [1, 2] {
        let (mut without, mut with) = (Vec::new(), Vec::new());
        for _ in 0..HIT_ROUNDS {
            without.push(hit_round(&plain, threads));
            with.push(hit_round(&recorded, threads));
        }
        let (without, with) = (median(&mut without), median(&mut with));
        println!(
            "token_refresh hit path threads={threads}: {without:.1} ns/op without a recorder, \
             {with:.1} ns/op with Prometheus (x{:.2})",
            with / without
        );
        let plural = if threads == 1 { "" } else { "s" };
        results.push(Comparison::lower_is_better("token_refresh", format!(
                "fresh-token hit without a metrics recorder, ours with Prometheus ({threads} thread{plural})"
            ), "hit latency", "ns/op", with, without));
    }
    assert!(
        handle.render().contains("token_calls"),
        "the recorder saw the cache's calls"
    );
    results
}
