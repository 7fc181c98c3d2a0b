//! Fault suite: a 429/503 storm on retry-transport whose `Retry-After` values are garbage, huge,
//! in the past, far-future dates or small (seed 002; SPEC R1, R2, R4). Every request ends in
//! bounded time with a response (never a hang, never a pool timeout while slots are free), no
//! sleep is longer than the cap, and no more requests are ever in flight than there are slots.
//!
//! Real time: the server is on real loopback sockets, and paused time would fire the acquire
//! timeouts of waiting tasks spuriously while IO is in flight (see docs/retry-transport.md).
//! The policy is scaled down (5 s budget, 1 s cap) so the storm takes seconds, not minutes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use retry_transport::{Builder, Limits, RetryClient, RetryPolicy, Sleeper, TokioSleep};
use testkit::ratelimit::{Answer, RateLimitServer, RetryAfter};
use tokio::time::Instant;

/// Sleeps for real (tokio) and records every delay the client asked for.
#[derive(Debug, Default)]
struct RecordingSleeper {
    delays: Mutex<Vec<Duration>>,
}

impl Sleeper for RecordingSleeper {
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.delays.lock().unwrap().push(duration);
        TokioSleep.sleep(duration)
    }
}

/// The `Retry-After` flavours of the storm, and what each request must end with.
fn script(kind: usize) -> (Vec<Answer>, u16) {
    let past = UNIX_EPOCH + Duration::from_secs(784_111_777);
    let throttled = |retry_after: RetryAfter| Answer::status(429).retry_after(retry_after);
    let unavailable = |retry_after: RetryAfter| Answer::status(503).retry_after(retry_after);
    match kind {
        // Garbage → the client's own back-off, then success.
        0 => (
            vec![
                throttled(RetryAfter::Raw("soon".into())),
                unavailable(RetryAfter::Raw("-5".into())),
                throttled(RetryAfter::Raw("1.5".into())),
            ],
            200,
        ),
        // Dates in the past → retry at once.
        1 => (
            vec![
                throttled(RetryAfter::At(past)),
                unavailable(RetryAfter::At(SystemTime::UNIX_EPOCH)),
            ],
            200,
        ),
        // Huge delta-seconds (overflows u64) → over the cap: the 429 is returned, no sleep.
        2 => (
            vec![throttled(RetryAfter::Raw("99999999999999999999999".into())); 8],
            429,
        ),
        // A date an hour away → over the cap: the 503 is returned.
        3 => (
            vec![unavailable(RetryAfter::In(Duration::from_secs(3600))); 8],
            503,
        ),
        // A small honest value → one real 1 s sleep, then success.
        4 => (vec![throttled(RetryAfter::Seconds(1))], 200),
        // Throttled forever with an invalid date → attempts run out, the last 429 is returned.
        5 => (
            vec![throttled(RetryAfter::Raw("Wed, 99 Foo 2020 25:61:61 GMT".into())); 8],
            429,
        ),
        // Zero → immediate retry.
        _ => (vec![unavailable(RetryAfter::Seconds(0)); 2], 200),
    }
}

const KINDS: usize = 7;

// covers R1, R2, R4: the storm ends in bounded time with zero pool timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_storm_is_bounded_and_never_times_out_the_pool() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::ok(256));
    let requests = 210;
    let mut expected = Vec::new();
    for i in 0..requests {
        let (answers, status) = script(i % KINDS);
        server.script(&format!("/item/{i}"), answers);
        expected.push(status);
    }
    let slots = 8;
    let (budget, cap) = (Duration::from_secs(5), Duration::from_secs(1));
    let sleeper = Arc::new(RecordingSleeper::default());
    let client: RetryClient = Builder::with_limits(
        Limits::default()
            .max_in_use(slots)
            .acquire_timeout(Duration::from_secs(20)),
    )
    .policy(
        RetryPolicy::default()
            .max_attempts(5)
            .budget(budget)
            .retry_after_cap(cap)
            .backoff(Duration::from_millis(10), 2.0, Duration::from_millis(200)),
    )
    .sleeper(sleeper.clone())
    // This storm is about R1, R2, R4 (every request ends, no pool timeout, sleeps capped): its
    // few hundred retries in a second are exactly what the default retry budget (R9) refuses,
    // which `crates/retry-transport/tests/fleet.rs` covers.
    .retry_budget(retry_transport::RetryBudget::disabled())
    .build()
    .unwrap();

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..requests {
        let client = client.clone();
        let url = server.url(&format!("/item/{i}")).parse().unwrap();
        tasks.spawn(async move {
            let begun = Instant::now();
            let response = client.send(client.get(url)).await;
            let status = match response {
                Ok(response) => {
                    let status = response.status().as_u16();
                    response.bytes().await.expect("the body arrives");
                    status
                }
                Err(error) => panic!("request {i} failed: {error}"),
            };
            (i, status, begun.elapsed())
        });
    }
    let mut slowest = Duration::ZERO;
    while let Some(joined) = tasks.join_next().await {
        let (i, status, took) = joined.unwrap();
        assert_eq!(status, expected[i], "request {i} (kind {})", i % KINDS);
        slowest = slowest.max(took);
    }
    let wall = started.elapsed();

    let stats = client.stats();
    assert_eq!(stats.pool_timeouts, 0, "no pool timeout with slots free");
    assert_eq!(stats.permits_in_use, 0, "every slot came back");
    let seen = server.stats();
    assert!(seen.peak_in_flight <= slots as u64, "{seen:?}");
    let delays = sleeper.delays.lock().unwrap().clone();
    let longest_sleep = delays.iter().max().copied().unwrap_or_default();
    assert!(longest_sleep <= cap, "a sleep of {longest_sleep:?} > cap");
    // Huge and far-future values are not slept on at all: they end the retries.
    assert_eq!(
        stats.gave_up.retry_after_over_cap,
        (0..requests)
            .filter(|i| i % KINDS == 2 || i % KINDS == 3)
            .count() as u64
    );
    // Every request ends within its budget plus one attempt (loose: 2 cores, debug build).
    assert!(
        slowest <= budget + Duration::from_secs(5),
        "slowest {slowest:?}"
    );
    println!(
        "retry storm: {requests} requests, {} attempts, {} sleeps (longest {longest_sleep:?}), \
         0 pool timeouts, peak {} in flight on {slots} slots, {} connections, slowest request \
         {slowest:?}, wall {wall:?}",
        stats.attempts,
        delays.len(),
        seen.peak_in_flight,
        seen.connections_opened,
    );
}

// covers R4: under the same storm, slots held by *readers* (bodies not yet read) are the only
// thing that can make a request wait; a storm alone never exhausts the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_on_one_slot_still_serves_everyone() {
    let server = RateLimitServer::start().await.unwrap();
    server.every_path_starts_with([
        Answer::status(429).retry_after(RetryAfter::Raw("garbage".into())),
        Answer::status(503).retry_after(RetryAfter::At(UNIX_EPOCH)),
    ]);
    server.set_default(Answer::ok(64));
    let client = Builder::with_limits(
        Limits::default()
            .max_in_use(1)
            .acquire_timeout(Duration::from_secs(20)),
    )
    .policy(
        RetryPolicy::default()
            .budget(Duration::from_secs(10))
            .backoff(Duration::from_millis(5), 2.0, Duration::from_millis(50)),
    )
    .build()
    .unwrap();
    let results = futures::future::join_all((0..50).map(|i| {
        let client = client.clone();
        let url = server.url(&format!("/one/{i}")).parse().unwrap();
        async move {
            let response = client.send(client.get(url)).await?;
            let status = response.status().as_u16();
            response.bytes().await?;
            Ok::<_, anyhow::Error>(status)
        }
    }))
    .await;
    for result in results {
        assert_eq!(result.unwrap(), 200);
    }
    assert_eq!(client.stats().pool_timeouts, 0);
    assert_eq!(server.stats().peak_in_flight, 1);
}
