//! `cargo xtask bench retry_storm`: 200 requests, 10 connection slots, every first answer a
//! 429 with `Retry-After: 1` — ours against reqwest-middleware + reqwest-retry, in one run.
//!
//! Two baselines, because reqwest has no connection limit of its own:
//! - **unbounded**: reqwest-middleware 0.5 + reqwest-retry 0.9 over a plain reqwest 0.13 client.
//!   It holds each 429 (and its connection) through the sleep, so it needs a connection per
//!   request: compared on connections opened and wall time.
//! - **10 slots**: the same, plus a 10-slot limit with the same acquire timeout as ours, whose
//!   slot lives with the response — the seed-002 shape (a pool of 10 connections; the retry
//!   sleeps while holding the 429). Compared on pool timeouts and wall time.
//!
//! Both baselines wait exactly 1 s between attempts (reqwest-retry ignores `Retry-After`; its
//! back-off is set to 1 s without jitter so it waits what the server asked), and ours honours
//! `Retry-After: 1`. The theoretical minimum is 1 s plus the round trips the 10 slots must
//! serialise (2 × 200 / 10 round trips, at the median round-trip time measured in this run).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest_middleware::{ClientBuilder, Middleware, Next};
use reqwest_retry::RetryTransientMiddleware;
use reqwest_retry::policies::ExponentialBackoff;
use retry_transport::{Limits, RetryClient, RetryPolicy};
use testkit::bench::{Comparison, emit, median};
use testkit::ratelimit::{Answer, RateLimitServer};
use tokio::sync::Semaphore;

const SCENARIO: &str = "retry_storm";
const REQUESTS: usize = 200;
const SLOTS: usize = 10;
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// The slot wait both limited clients accept: 5× the Retry-After (the seed had 1×: 30 s each).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// What one run did.
#[derive(Debug, Default)]
struct Outcome {
    ok: usize,
    pool_timeouts: usize,
    other_failures: usize,
    connections_opened: u64,
    peak_in_flight: u64,
    wall: Duration,
}

async fn storm_server() -> RateLimitServer {
    let server = RateLimitServer::start().await.expect("bind loopback");
    // A 429 as real servers send it, with a short error body; then 1 KiB of payload.
    server.every_path_starts_with([Answer::too_many(RETRY_AFTER.as_secs()).body_len(64)]);
    server.set_default(Answer::ok(1024));
    server
}

async fn run_ours() -> Outcome {
    let server = storm_server().await;
    let client = RetryClient::builder()
        .limits(
            Limits::from_env_with(|_| None)
                .max_in_use(SLOTS)
                .max_idle_per_host(SLOTS)
                .acquire_timeout(ACQUIRE_TIMEOUT),
        )
        .policy(RetryPolicy::default())
        .build()
        .expect("client");
    let started = Instant::now();
    let tasks: Vec<_> = (0..REQUESTS)
        .map(|i| {
            let client = client.clone();
            let url = server.url(&format!("/ours/{i}"));
            tokio::spawn(async move {
                let response = client.send(client.get(url.parse().expect("url"))).await?;
                let ok = response.status().is_success();
                let _ = response.bytes().await;
                Ok::<bool, retry_transport::Error>(ok)
            })
        })
        .collect();
    let mut outcome = Outcome::default();
    for task in tasks {
        match task.await.expect("task") {
            Ok(true) => outcome.ok += 1,
            Err(e) if e.is_pool_timeout() => outcome.pool_timeouts += 1,
            _ => outcome.other_failures += 1,
        }
    }
    outcome.wall = started.elapsed();
    let stats = server.stats();
    outcome.connections_opened = stats.connections_opened;
    outcome.peak_in_flight = stats.peak_in_flight;
    outcome
}

/// A slot limit for the baseline: acquired per attempt, carried by the response (as a pooled
/// connection is), so reqwest-retry keeps it through its sleep exactly as it keeps the 429.
#[derive(Debug)]
struct SlotLimit {
    slots: Arc<Semaphore>,
    timeouts: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl Middleware for SlotLimit {
    async fn handle(
        &self,
        request: reqwest::Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let acquire = Arc::clone(&self.slots).acquire_owned();
        let permit = match tokio::time::timeout(ACQUIRE_TIMEOUT, acquire).await {
            Ok(Ok(permit)) => permit,
            _ => {
                self.timeouts.fetch_add(1, Ordering::Relaxed);
                return Err(reqwest_middleware::Error::Middleware(anyhow::anyhow!(
                    "pool timeout"
                )));
            }
        };
        let mut response = next.run(request, extensions).await?;
        response.extensions_mut().insert(Arc::new(permit));
        Ok(response)
    }
}

async fn run_baseline(limited: bool) -> Outcome {
    let server = storm_server().await;
    let reqwest_client = reqwest::Client::builder().build().expect("reqwest client");
    let policy = ExponentialBackoff::builder()
        .retry_bounds(RETRY_AFTER, RETRY_AFTER)
        .jitter(reqwest_retry::Jitter::None)
        .build_with_max_retries(4);
    let timeouts = Arc::new(AtomicU64::new(0));
    let mut builder =
        ClientBuilder::new(reqwest_client).with(RetryTransientMiddleware::new_with_policy(policy));
    if limited {
        builder = builder.with(SlotLimit {
            slots: Arc::new(Semaphore::new(SLOTS)),
            timeouts: Arc::clone(&timeouts),
        });
    }
    let client = builder.build();
    let started = Instant::now();
    let tasks: Vec<_> = (0..REQUESTS)
        .map(|i| {
            let client = client.clone();
            let url = server.url(&format!("/baseline/{i}"));
            tokio::spawn(async move {
                let response = client.get(url).send().await?;
                let ok = response.status().is_success();
                let _ = response.bytes().await;
                Ok::<bool, reqwest_middleware::Error>(ok)
            })
        })
        .collect();
    let mut outcome = Outcome::default();
    for task in tasks {
        match task.await.expect("task") {
            Ok(true) => outcome.ok += 1,
            _ => outcome.other_failures += 1,
        }
    }
    outcome.pool_timeouts = timeouts.load(Ordering::Relaxed) as usize;
    outcome.other_failures -= outcome.pool_timeouts.min(outcome.other_failures);
    outcome.wall = started.elapsed();
    let stats = server.stats();
    outcome.connections_opened = stats.connections_opened;
    outcome.peak_in_flight = stats.peak_in_flight;
    outcome
}

/// The median time of one plain request on a warm connection.
async fn round_trip() -> Duration {
    let server = RateLimitServer::start().await.expect("bind loopback");
    server.set_default(Answer::ok(1024));
    let client = reqwest::Client::new();
    let mut samples = Vec::new();
    for i in 0..201 {
        let started = Instant::now();
        let response = client.get(server.url("/rtt")).send().await.expect("rtt");
        let _ = response.bytes().await;
        if i > 0 {
            samples.push(started.elapsed().as_secs_f64());
        }
    }
    Duration::from_secs_f64(median(&mut samples))
}

fn report(name: &str, outcome: &Outcome) {
    println!(
        "{name:<44} ok {:>3}  pool timeouts {:>3}  other failures {:>3}  connections {:>3}  peak in flight {:>3}  wall {:>6.3} s",
        outcome.ok,
        outcome.pool_timeouts,
        outcome.other_failures,
        outcome.connections_opened,
        outcome.peak_in_flight,
        outcome.wall.as_secs_f64()
    );
}

fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let rtt = round_trip().await;
        let ours = run_ours().await;
        let unbounded = run_baseline(false).await;
        let limited = run_baseline(true).await;
        let minimum = RETRY_AFTER + rtt.mul_f64((2 * REQUESTS / SLOTS) as f64);

        println!(
            "{REQUESTS} requests, {SLOTS} slots, first answer 429 Retry-After: {}s, acquire timeout {}s; median round trip {:.3} ms",
            RETRY_AFTER.as_secs(),
            ACQUIRE_TIMEOUT.as_secs(),
            rtt.as_secs_f64() * 1e3
        );
        report("ours (retry-transport)", &ours);
        report("reqwest-retry, unbounded reqwest pool", &unbounded);
        report("reqwest-retry, 10 slots held by response", &limited);
        println!("theoretical minimum {:.3} s", minimum.as_secs_f64());

        let unbounded_name = "reqwest-middleware 0.5 + reqwest-retry 0.9, reqwest 0.13 pool (no connection limit)";
        let limited_name = "reqwest-middleware 0.5 + reqwest-retry 0.9, 10 slots held by the response (seed-002 shape)";
        let row = |baseline_name: &str, metric, unit, ours: f64, baseline: f64| Comparison::lower_is_better(SCENARIO, baseline_name.to_string(), metric, unit, ours, baseline);
        emit(&[
            row(
                limited_name,
                "pool timeouts (200 requests, 10 slots)",
                "requests",
                ours.pool_timeouts as f64,
                limited.pool_timeouts as f64,
            ),
            row(
                limited_name,
                "wall time (200 requests, 10 slots)",
                "s",
                ours.wall.as_secs_f64(),
                limited.wall.as_secs_f64(),
            ),
            row(
                unbounded_name,
                "connections opened",
                "connections",
                ours.connections_opened as f64,
                unbounded.connections_opened as f64,
            ),
            row(
                unbounded_name,
                "wall time (200 requests)",
                "s",
                ours.wall.as_secs_f64(),
                unbounded.wall.as_secs_f64(),
            ),
            row(
                "theoretical minimum: Retry-After + 40 serialised round trips",
                "wall time vs minimum",
                "s",
                ours.wall.as_secs_f64(),
                minimum.as_secs_f64(),
            ),
        ]);
    });
}
