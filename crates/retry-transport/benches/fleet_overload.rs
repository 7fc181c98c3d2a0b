//! `cargo xtask bench fleet_overload` (issue #17): a fleet of clients against an upstream at
//! capacity — does retrying multiply the load and keep it down?
//!
//! testkit's rate-limiting server in capacity mode serves `CAPACITY` requests/s (token
//! bucket) and answers the excess `429` + `Retry-After: 1`. `CLIENTS` separate client
//! instances (as separate processes would have: nothing shared) each offer `RATE` requests/s,
//! open loop, for `OVERLOAD` seconds; then the capacity rises to 3× the offered load for
//! `RECOVERY` seconds. The same server runs every variant in turn:
//! ours (default: retry budget on), ours + adaptive throttling, ours without the budget,
//! reqwest-middleware 0.5 + reqwest-retry 0.9 (4 retries, its default exponential back-off;
//! it ignores `Retry-After`), and reqwest 0.13's own `reqwest::retry::for_host` (429/503
//! retryable, 4 retries per request, its default 20 % budget, no back-off).
//!
//! Per variant: amplification (requests the server saw during the overload ÷ requests the
//! callers sent during it), goodput (served ÷ capacity during the overload), p99 latency of
//! successful calls, failed calls (all phases: a non-2xx answer or an error), and recovery
//! (from the capacity rise to the first whole second with no rejection, in whole seconds).
//! The budget's bound on amplification is 1 + r + f ÷ (per-client rate).
//!
//! The phase lengths can be shortened with `FLEET_OVERLOAD_SECONDS` / `FLEET_RECOVERY_SECONDS`
//! (the rates never change); the run prints what it used.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::StatusCode;
use reqwest_middleware::ClientBuilder;
use reqwest_retry::RetryTransientMiddleware;
use reqwest_retry::policies::ExponentialBackoff;
use retry_transport::{AdaptiveThrottle, Limits, RetryBudget, RetryClient, RetryPolicy};
use testkit::bench::{Comparison, emit, percentile};
use testkit::ratelimit::{Answer, Capacity, RateLimitServer};
use tokio::sync::Mutex;
use tokio::time::{Instant, MissedTickBehavior};

const SCENARIO: &str = "fleet_overload";
const CAPACITY: f64 = 1000.0;
const CLIENTS: usize = 10;
const RATE: f64 = 200.0;
const RECOVERY_FACTOR: f64 = 3.0;

#[derive(Clone)]
enum Client {
    Ours(RetryClient),
    Middleware(reqwest_middleware::ClientWithMiddleware),
    Reqwest(reqwest::Client),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Variant {
    Ours,
    OursThrottling,
    OursNoBudget,
    ReqwestRetry,
    ReqwestOwn,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Ours => "ours (retry-transport, default: budget on)",
            Variant::OursThrottling => "ours + adaptive throttling",
            Variant::OursNoBudget => "ours without budget",
            Variant::ReqwestRetry => "reqwest-middleware 0.5 + reqwest-retry 0.9",
            Variant::ReqwestOwn => "reqwest 0.13 reqwest::retry::for_host",
        }
    }

    fn client(self, index: usize, host: &str) -> Client {
        let ours = |budget: RetryBudget, throttle: Option<AdaptiveThrottle>| {
            let mut builder = RetryClient::builder()
                .limits(Limits::from_env_with(|_| None))
                .policy(RetryPolicy::default())
                .retry_budget(budget);
            if let Some(throttle) = throttle {
                builder = builder.adaptive_throttle(throttle);
            }
            Client::Ours(builder.build().expect("client"))
        };
        match self {
            Variant::Ours => ours(RetryBudget::from_env_with(|_| None), None),
            Variant::OursThrottling => ours(
                RetryBudget::from_env_with(|_| None),
                Some(AdaptiveThrottle::default().seed(index as u64)),
            ),
            Variant::OursNoBudget => ours(RetryBudget::disabled(), None),
            Variant::ReqwestRetry => {
                let policy = ExponentialBackoff::builder().build_with_max_retries(4);
                Client::Middleware(
                    ClientBuilder::new(reqwest::Client::new())
                        .with(RetryTransientMiddleware::new_with_policy(policy))
                        .build(),
                )
            }
            Variant::ReqwestOwn => {
                let policy = reqwest::retry::for_host(host.to_string())
                    .max_retries_per_request(4)
                    .classify_fn(|req_rep| match req_rep.status() {
                        Some(StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) => {
                            req_rep.retryable()
                        }
                        _ => req_rep.success(),
                    });
                Client::Reqwest(
                    reqwest::Client::builder()
                        .retry(policy)
                        .build()
                        .expect("reqwest client"),
                )
            }
        }
    }
}

/// One call's outcome: `Some(latency)` if it succeeded (2xx).
async fn call(client: &Client, url: &str) -> (Option<Duration>, bool) {
    let started = Instant::now();
    let (ok, throttled) = match client {
        Client::Ours(c) => match c.send(c.get(url.parse().expect("url"))).await {
            Ok(r) => {
                let ok = r.status().is_success();
                (r.bytes().await.is_ok() && ok, false)
            }
            Err(e) => (false, e.is_throttled()),
        },
        Client::Middleware(c) => match c.get(url).send().await {
            Ok(r) => {
                let ok = r.status().is_success();
                (r.bytes().await.is_ok() && ok, false)
            }
            Err(_) => (false, false),
        },
        Client::Reqwest(c) => match c.get(url).send().await {
            Ok(r) => {
                let ok = r.status().is_success();
                (r.bytes().await.is_ok() && ok, false)
            }
            Err(_) => (false, false),
        },
    };
    (ok.then(|| started.elapsed()), throttled)
}

#[derive(Debug, Default)]
struct Outcome {
    sent_overload: u64,
    sent: u64,
    seen_overload: u64,
    served_overload: u64,
    seen: u64,
    failed: u64,
    throttled: u64,
    latencies: Vec<f64>,
    /// Seconds from the capacity rise to the first second with no rejection (`None`: never).
    recovery: Option<u64>,
    /// Ours only, summed over the clients: requests, attempts, retries refused by the budget.
    ours: Option<(u64, u64, u64)>,
}

impl Outcome {
    fn amplification(&self) -> f64 {
        self.seen_overload as f64 / self.sent_overload.max(1) as f64
    }

    fn goodput(&self, overload: Duration) -> f64 {
        self.served_overload as f64 / (CAPACITY * overload.as_secs_f64())
    }

    fn p99_ms(&mut self) -> f64 {
        percentile(&mut self.latencies, 99.0) * 1e3
    }
}

async fn run(
    server: &RateLimitServer,
    variant: Variant,
    overload: Duration,
    recovery: Duration,
) -> Outcome {
    let host = server.addr().ip().to_string();
    let clients: Vec<Client> = (0..CLIENTS).map(|i| variant.client(i, &host)).collect();
    let ours: Vec<RetryClient> = clients
        .iter()
        .filter_map(|c| match c {
            Client::Ours(c) => Some(c.clone()),
            _ => None,
        })
        .collect();
    server.set_capacity(Some(Capacity::per_second(CAPACITY)));
    server.reset_capacity_counts();
    let origin = Instant::now();
    let rise = origin + overload;
    let end = rise + recovery;
    let sent_overload = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let throttled = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let mut generators = Vec::new();
    for (index, client) in clients.into_iter().enumerate() {
        let url = server.url(&format!("/fleet/{index}"));
        let (sent_overload, sent, failed, throttled, latencies) = (
            Arc::clone(&sent_overload),
            Arc::clone(&sent),
            Arc::clone(&failed),
            Arc::clone(&throttled),
            Arc::clone(&latencies),
        );
        generators.push(tokio::spawn(async move {
            // Offset each client inside the tick so arrivals are spread, not in lock-step.
            let period = Duration::from_secs_f64(1.0 / RATE);
            let first = origin + period.mul_f64(index as f64 / CLIENTS as f64);
            let mut ticks = tokio::time::interval_at(first, period);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
            let mut calls = Vec::new();
            loop {
                let tick = ticks.tick().await;
                if tick >= end {
                    break;
                }
                sent.fetch_add(1, Ordering::Relaxed);
                if tick < rise {
                    sent_overload.fetch_add(1, Ordering::Relaxed);
                }
                let client = client.clone();
                let url = url.clone();
                let (failed, throttled, latencies) = (
                    Arc::clone(&failed),
                    Arc::clone(&throttled),
                    Arc::clone(&latencies),
                );
                calls.push(tokio::spawn(async move {
                    match call(&client, &url).await {
                        (Some(latency), _) => latencies.lock().await.push(latency.as_secs_f64()),
                        (None, was_throttled) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            if was_throttled {
                                throttled.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }));
            }
            for call in calls {
                let _ = call.await;
            }
        }));
    }
    tokio::time::sleep_until(rise).await;
    server.set_capacity(Some(Capacity::per_second(
        RECOVERY_FACTOR * RATE * CLIENTS as f64,
    )));
    for generator in generators {
        let _ = generator.await;
    }
    let timeline = server.capacity_timeline();
    let overload_secs = overload.as_secs() as usize;
    let in_overload = &timeline[..overload_secs.min(timeline.len())];
    let recovered = timeline
        .iter()
        .enumerate()
        .skip(overload_secs)
        .find(|(_, second)| second.rejected == 0)
        .map(|(i, _)| (i - overload_secs) as u64);
    let latencies = std::mem::take(&mut *latencies.lock().await);
    Outcome {
        sent_overload: sent_overload.load(Ordering::Relaxed),
        sent: sent.load(Ordering::Relaxed),
        seen_overload: in_overload.iter().map(|s| s.seen).sum(),
        served_overload: in_overload.iter().map(|s| s.served).sum(),
        seen: server.capacity_counts().seen,
        failed: failed.load(Ordering::Relaxed),
        throttled: throttled.load(Ordering::Relaxed),
        latencies,
        recovery: recovered,
        ours: (!ours.is_empty()).then(|| {
            ours.iter()
                .map(RetryClient::stats)
                .fold((0, 0, 0), |(r, a, x), s| {
                    (
                        r + s.requests,
                        a + s.attempts,
                        x + s.gave_up.retry_budget_exhausted,
                    )
                })
        }),
    }
}

fn seconds(name: &str, default: u64) -> Duration {
    let secs = std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        .clamp(2, 600);
    Duration::from_secs(secs)
}

fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let overload = seconds("FLEET_OVERLOAD_SECONDS", 20);
    let recovery = seconds("FLEET_RECOVERY_SECONDS", 10);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let server = RateLimitServer::start().await.expect("bind loopback");
        server.set_default(Answer::ok(64));
        let budget = RetryBudget::from_env_with(|_| None);
        let bound = 1.0 + f64::from(budget.ratio) + f64::from(budget.floor_per_second) / RATE;
        println!(
            "capacity {CAPACITY}/s (excess 429 + Retry-After: 1); {CLIENTS} clients × {RATE}/s for {} s, then capacity {}/s for {} s; budget bound on amplification {bound:.3}",
            overload.as_secs(),
            RECOVERY_FACTOR * RATE * CLIENTS as f64,
            recovery.as_secs()
        );
        let mut results = Vec::new();
        for variant in [
            Variant::Ours,
            Variant::OursThrottling,
            Variant::OursNoBudget,
            Variant::ReqwestRetry,
            Variant::ReqwestOwn,
        ] {
            let mut outcome = run(&server, variant, overload, recovery).await;
            let p99 = outcome.p99_ms();
            println!(
                "{:<46} sent {:>6} (overload {:>6})  seen {:>6}  amplification {:.3}  goodput {:.3}  p99 ok {:>8.1} ms  failed {:>6} (throttled locally {:>6})  recovery {}",
                variant.name(),
                outcome.sent,
                outcome.sent_overload,
                outcome.seen,
                outcome.amplification(),
                outcome.goodput(overload),
                p99,
                outcome.failed,
                outcome.throttled,
                outcome
                    .recovery
                    .map_or_else(|| format!("none within {} s", recovery.as_secs()), |s| format!("{s} s")),
            );
            if let Some((requests, attempts, refused)) = outcome.ours {
                println!(
                    "{:<46} client side: requests {requests}, attempts {attempts}, retries refused by the budget {refused}",
                    ""
                );
            }
            results.push((variant, outcome, p99));
            // Let the server's keep-alive connections of this variant close before the next.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }

        let get = |v: Variant| {
            results
                .iter()
                .find(|(variant, _, _)| *variant == v)
                .expect("ran")
        };
        let (_, ours, ours_p99) = get(Variant::Ours);
        let recovery_of = |o: &Outcome| o.recovery.map_or(recovery.as_secs_f64(), |s| s as f64);
        let phases = format!(
            "{CLIENTS}×{RATE}/s vs {CAPACITY}/s for {} s, then {}/s for {} s",
            overload.as_secs(),
            RECOVERY_FACTOR * RATE * CLIENTS as f64,
            recovery.as_secs()
        );
        let mut rows = vec![Comparison::lower_is_better(SCENARIO, format!("budget bound 1 + r + f/rate = {bound:.2} ({phases})"), "amplification during overload (server requests ÷ caller requests)", "×", ours.amplification(), bound)];
        for baseline in [
            Variant::ReqwestRetry,
            Variant::ReqwestOwn,
            Variant::OursNoBudget,
            Variant::OursThrottling,
        ] {
            let (_, other, other_p99) = get(baseline);
            let name = format!("{} ({phases})", baseline.name());
            let row = |metric, unit, ours: f64, baseline: f64, lower_is_better| Comparison {
                scenario: SCENARIO,
                baseline_name: name.clone(),
                metric,
                unit,
                ours,
                baseline,
                lower_is_better,
            };
            rows.push(row(
                "amplification during overload (server requests ÷ caller requests)",
                "×",
                ours.amplification(),
                other.amplification(),
                true,
            ));
            rows.push(row(
                "goodput during overload (served ÷ capacity)",
                "fraction",
                ours.goodput(overload),
                other.goodput(overload),
                false,
            ));
            rows.push(row("p99 latency of successful calls", "ms", *ours_p99, *other_p99, true));
            rows.push(row(
                "failed calls (all phases)",
                "calls",
                ours.failed as f64,
                other.failed as f64,
                true,
            ));
            rows.push(row(
                "recovery: capacity rise to first second without rejections",
                "s",
                recovery_of(ours),
                recovery_of(other),
                true,
            ));
            if baseline == Variant::OursThrottling {
                rows.push(row(
                    "requests rejected locally (load shed, all phases)",
                    "requests",
                    0.0,
                    other.throttled as f64,
                    false,
                ));
            }
        }
        emit(&rows);
    });
}
