//! R9–R11 (issue #17): protect the upstream from its own fleet — the retry budget, adaptive
//! client-side throttling and the per-host slot cap — through the public API, against
//! testkit's rate-limiting server on loopback. Everything is counted (requests the server saw,
//! connections it accepted, retries and give-ups in the client's stats), nothing is timed;
//! the budget's window is crossed in paused tokio time with no request in flight.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use retry_transport::{
    AdaptiveThrottle, Builder, Error, Limits, RetryBudget, RetryClient, RetryPolicy, Sleeper,
};
use testkit::ratelimit::{Answer, RateLimitServer};

/// Records every requested wait and returns at once.
#[derive(Debug, Default, Clone)]
struct Sleeps(Arc<Mutex<Vec<Duration>>>);

impl Sleeper for Sleeps {
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.0.lock().unwrap().push(duration);
        Box::pin(async {})
    }
}

fn builder(limits: Limits, budget: RetryBudget, sleeps: &Sleeps) -> Builder {
    Builder::with_limits(limits)
        .connect_timeout(None)
        .retry_budget(budget)
        .sleeper(Arc::new(sleeps.clone()))
}

/// A policy that would retry a 429 (almost) forever: only the budget stops it.
fn relentless() -> RetryPolicy {
    RetryPolicy::default().max_attempts(10_000)
}

/// A client whose budget allows `floor` retries per second over a `window`-second window
/// plus `ratio` of first attempts.
fn budgeted(ratio: f32, floor: u32, window: u64) -> (RetryClient, Sleeps) {
    let sleeps = Sleeps::default();
    let budget = RetryBudget::default()
        .ratio(ratio)
        .floor_per_second(floor)
        .window(Duration::from_secs(window));
    let client = builder(Limits::default(), budget, &sleeps)
        .policy(relentless())
        .build()
        .unwrap();
    (client, sleeps)
}

async fn throttled_server() -> RateLimitServer {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::too_many(0).body_len(16));
    server
}

/// GET `path` through `client`; the status (the body read, so the slot is free).
async fn status(client: &RetryClient, server: &RateLimitServer, path: &str) -> u16 {
    let response = client
        .send(client.get(server.url(path).parse().unwrap()))
        .await
        .expect("a response");
    let status = response.status().as_u16();
    response.bytes().await.unwrap();
    status
}

/// Requests the server saw while `f` ran.
async fn seen_during<F: Future>(server: &RateLimitServer, f: F) -> u64 {
    let before = server.stats().requests_seen;
    f.await;
    server.stats().requests_seen - before
}

/// Cross a budget window in paused tokio time (nothing is in flight; time then runs again).
async fn let_window_pass(window: Duration) {
    tokio::time::pause();
    tokio::time::advance(window + Duration::from_millis(1100)).await;
    tokio::time::resume();
}

// covers R9: the default budget is on, with the documented defaults.
#[test]
fn the_budget_is_on_by_default() {
    let client = RetryClient::builder().build().unwrap();
    let budget = client.retry_budget();
    assert!(budget.enabled);
    assert_eq!(
        (budget.ratio, budget.floor_per_second, budget.window),
        (0.2, 10, Duration::from_secs(10))
    );
}

// covers R9: the floor alone allows exactly floor × window retries, each first attempt adds
// exactly `ratio` of a retry, and everything spent comes back once the window has passed.
#[tokio::test]
async fn the_budget_allows_exactly_the_ratio_and_the_floor_and_refills() {
    let server = throttled_server().await;
    let (client, _) = budgeted(0.2, 1, 10);
    // Floor: 1/s × 10 s = 10 retries (plus 1 first attempt's 0.2, not yet a whole retry).
    assert_eq!(
        seen_during(&server, status(&client, &server, "/a")).await,
        11
    );
    let stats = client.stats();
    assert_eq!(stats.retries.throttled, 10);
    assert_eq!(stats.gave_up.retry_budget_exhausted, 1);

    // Ratio: 49 more first attempts (never retried) + the next one's = 50 × 0.2 = 10 retries.
    let once = client.with_policy(RetryPolicy::never());
    for i in 0..49 {
        assert_eq!(status(&once, &server, &format!("/once/{i}")).await, 429);
    }
    assert_eq!(
        seen_during(&server, status(&client, &server, "/b")).await,
        11
    );
    // Spent: the next request gets no retry at all.
    assert_eq!(
        seen_during(&server, status(&client, &server, "/c")).await,
        1
    );
    assert_eq!(client.stats().gave_up.retry_budget_exhausted, 3);

    // A window later everything spent has expired: the floor again.
    let_window_pass(Duration::from_secs(10)).await;
    assert_eq!(
        seen_during(&server, status(&client, &server, "/d")).await,
        11
    );
}

// covers R9: with no budget left the retryable response comes back at once — no sleep, one
// request, one connection — and its slot is freed with its body like any response's.
#[tokio::test]
async fn an_exhausted_budget_returns_at_once_and_holds_no_slot() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::too_many(5).body_len(16));
    let sleeps = Sleeps::default();
    let client = builder(
        Limits::default().max_in_use(1),
        RetryBudget::default().ratio(0.0).floor_per_second(0),
        &sleeps,
    )
    .policy(relentless())
    .build()
    .unwrap();
    let response = client
        .send(client.get(server.url("/x").parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "5");
    assert!(sleeps.0.lock().unwrap().is_empty(), "no back-off sleep");
    let stats = server.stats();
    assert_eq!((stats.requests_seen, stats.connections_opened), (1, 1));
    assert_eq!(client.stats().gave_up.retry_budget_exhausted, 1);
    drop(response);
    assert_eq!(client.stats().permits_in_use, 0);
    // The only slot is free: the next request is sent (and also returned at once).
    assert_eq!(status(&client, &server, "/y").await, 429);

    // A transport error the policy would retry goes back at once too.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let error = client
        .send(client.get(format!("http://127.0.0.1:{closed}/").parse().unwrap()))
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::Transport { attempts: 1, .. }),
        "{error:?}"
    );
    assert!(sleeps.0.lock().unwrap().is_empty());
    assert_eq!(client.stats().gave_up.retry_budget_exhausted, 3);
    assert_eq!(client.stats().permits_in_use, 0);
}

// covers R9: partitions (hosts by default, or named ones) each have their own budget.
#[tokio::test]
async fn partitions_do_not_drain_each_other() {
    let a = throttled_server().await;
    let b = throttled_server().await;
    let (client, _) = budgeted(0.0, 1, 1);
    assert_eq!(seen_during(&a, status(&client, &a, "/1")).await, 2);
    assert_eq!(
        seen_during(&a, status(&client, &a, "/2")).await,
        1,
        "A spent"
    );
    assert_eq!(
        seen_during(&b, status(&client, &b, "/1")).await,
        2,
        "B untouched"
    );

    let tenant = client.with_partition("tenant-x");
    assert_eq!(
        tenant.partition_for(&a.url("/").parse().unwrap()),
        "tenant-x"
    );
    assert_eq!(
        seen_during(&a, status(&tenant, &a, "/3")).await,
        2,
        "own budget"
    );
    assert_eq!(seen_during(&a, status(&tenant, &a, "/4")).await, 1);
    assert_eq!(
        seen_during(&b, status(&client, &b, "/2")).await,
        1,
        "B spent"
    );
    let key = client.partition_for(&a.url("/").parse().unwrap());
    assert_eq!(key, format!("127.0.0.1:{}", a.addr().port()));
    assert_eq!(client.retry_budget_balance(&key), Some(0.0));
}

// covers R9: clones and `with_policy` views spend one shared budget.
#[tokio::test]
async fn clones_and_views_share_a_budget() {
    let server = throttled_server().await;
    let (client, _) = budgeted(0.0, 2, 1);
    let clone = client.clone();
    assert_eq!(seen_during(&server, status(&clone, &server, "/1")).await, 3);
    assert_eq!(
        seen_during(&server, status(&client, &server, "/2")).await,
        1
    );
    let view = client.with_policy(relentless().max_attempts(50));
    assert_eq!(seen_during(&server, status(&view, &server, "/3")).await, 1);
    assert_eq!(client.stats().gave_up.retry_budget_exhausted, 3);

    // Two separately built clients do not share (ten processes would not).
    let (other, _) = budgeted(0.0, 2, 1);
    assert_eq!(seen_during(&server, status(&other, &server, "/4")).await, 3);
}

// covers R9 (the storm of tests/adversarial.rs `mixed_storm_on_few_slots`, budget on): 60
// requests each answered 429, 503, reset before a 200 want 180 retries within a second; the
// default budget allows at most 10/s × 10 s + 20 % × 60 = 112. Every slot comes back.
#[tokio::test]
async fn a_storm_is_held_to_the_default_budget() {
    let server = RateLimitServer::start().await.unwrap();
    server.every_path_starts_with([
        Answer::too_many(0).body_len(64),
        Answer::status(503),
        Answer::reset(),
    ]);
    server.set_default(Answer::ok(256));
    let sleeps = Sleeps::default();
    let client = builder(
        Limits::default()
            .max_in_use(3)
            .acquire_timeout(Duration::from_secs(20)),
        RetryBudget::default(),
        &sleeps,
    )
    .build()
    .unwrap();
    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let c = client.clone();
            let u = server.url(&format!("/m/{i}")).parse().unwrap();
            tokio::spawn(async move {
                let r = c.send(c.get(u)).await?;
                let _ = r.bytes().await;
                Ok::<_, Error>(())
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await.unwrap();
    }
    let stats = client.stats();
    let retries = stats.retries.throttled + stats.retries.unavailable + stats.retries.transport;
    assert!(retries <= 112, "{stats:?}");
    assert!(retries >= 100, "the floor alone allows 100: {stats:?}");
    assert!(stats.gave_up.retry_budget_exhausted > 0);
    assert_eq!(server.stats().requests_seen, 60 + retries);
    assert_eq!(stats.permits_in_use, 0);
    assert_eq!(stats.pool_timeouts, 0);
}

fn throttling(seed: u64, window: Duration) -> RetryClient {
    builder(
        Limits::default(),
        RetryBudget::disabled(),
        &Sleeps::default(),
    )
    .policy(RetryPolicy::never())
    .adaptive_throttle(AdaptiveThrottle::default().seed(seed).window(window))
    .build()
    .unwrap()
}

/// The SRE draws, replayed: how many of `n` requests a backend that accepts nothing sees
/// rejected locally, with K = 2 and fastrand seeded like the client's.
fn replay_rejections(seed: u64, n: u64) -> u64 {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n)
        .filter(|&requests| {
            let p = ((requests as f64) / (requests as f64 + 1.0)).max(0.0);
            rng.f64() < p
        })
        .count() as u64
}

// covers R10: against a backend answering only 429, requests are rejected locally with the
// formula's probability — exactly the draws a seeded RNG makes — with `Error::Throttled`,
// and a rejected request never reaches the server, never opens a connection, takes no slot.
#[tokio::test]
async fn throttling_rejects_with_the_formulas_probability() {
    let server = throttled_server().await;
    let client = throttling(42, Duration::from_secs(120));
    let key = client.partition_for(&server.url("/").parse().unwrap());
    assert_eq!(client.throttle_probability(&key), Some(0.0));
    let mut rejected = 0;
    for i in 0..300 {
        let before = server.stats();
        match client
            .send(client.get(server.url(&format!("/t/{i}")).parse().unwrap()))
            .await
        {
            Ok(response) => {
                assert_eq!(response.status(), 429);
                response.bytes().await.unwrap();
            }
            Err(Error::Throttled {
                partition,
                probability,
            }) => {
                rejected += 1;
                assert_eq!(partition, key);
                let expected = i as f64 / (i as f64 + 1.0);
                assert!((probability - expected).abs() < 1e-12);
                let after = server.stats();
                assert_eq!(after.requests_seen, before.requests_seen, "not sent");
                assert_eq!(after.connections_opened, before.connections_opened);
                assert_eq!(client.stats().permits_in_use, 0);
            }
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(rejected, replay_rejections(42, 300));
    assert!(rejected > 250, "p → 300/301: {rejected}");
    assert_eq!(client.stats().throttled, rejected);
    assert_eq!(server.stats().requests_seen, 300 - rejected);
    assert!(client.throttle_probability(&key).unwrap() > 0.99);
}

// covers R10: once the backend accepts again the throttle lets everything through: accepts
// keep the probability at zero, and old rejections leave the window as it passes.
#[tokio::test]
async fn throttling_recovers_as_accepts_return() {
    let server = throttled_server().await;
    let client = throttling(7, Duration::from_secs(12));
    let key = client.partition_for(&server.url("/").parse().unwrap());
    for i in 0..100 {
        let _ = client
            .send(client.get(server.url(&format!("/t/{i}")).parse().unwrap()))
            .await;
    }
    assert!(client.throttle_probability(&key).unwrap() > 0.95);
    server.set_default(Answer::ok(16));
    let_window_pass(Duration::from_secs(12)).await;
    assert_eq!(client.throttle_probability(&key), Some(0.0));
    for i in 0..100 {
        assert_eq!(status(&client, &server, &format!("/ok/{i}")).await, 200);
    }
    assert_eq!(client.throttle_probability(&key), Some(0.0));

    // A backend accepting half its requests (K = 2) is never throttled.
    let throttled_before = client.stats().throttled;
    for i in 0..100 {
        server.script(
            &format!("/half/{i}"),
            [if i % 2 == 0 {
                Answer::too_many(0)
            } else {
                Answer::ok(16)
            }],
        );
        let _ = status(&client, &server, &format!("/half/{i}")).await;
    }
    assert_eq!(client.throttle_probability(&key), Some(0.0));
    assert_eq!(client.stats().throttled, throttled_before);
}

// covers R10: a retry the throttle rejects ends the retries: the 429 comes back, counted.
#[tokio::test]
async fn a_throttled_retry_returns_the_response() {
    let server = throttled_server().await;
    let client = builder(
        Limits::default(),
        RetryBudget::disabled(),
        &Sleeps::default(),
    )
    .policy(relentless())
    .adaptive_throttle(AdaptiveThrottle::default().seed(1))
    .build()
    .unwrap();
    // Retries until a draw rejects one: the probability rises with every 429.
    assert_eq!(status(&client, &server, "/r").await, 429);
    let stats = client.stats();
    assert_eq!(stats.gave_up.throttled, 1);
    assert_eq!(server.stats().requests_seen, stats.retries.throttled + 1);
}

// covers R11: the per-host cap holds while the total cap is larger, and another host still
// gets slots while one host's are all held. (Paused time: the 5 s acquire timeout passes at
// once; the stalled bodies' 60 s read timeout is later.)
#[tokio::test(start_paused = true)]
async fn the_per_host_cap_holds_with_a_larger_total_cap() {
    let slow = RateLimitServer::start().await.unwrap();
    slow.set_default(Answer::ok(1000).stall_body_after(10));
    let other = RateLimitServer::start().await.unwrap();
    other.set_default(Answer::ok(1000).stall_body_after(10));
    let client = builder(
        Limits::default()
            .max_in_use(4)
            .max_in_use_per_host(2)
            .acquire_timeout(Duration::from_secs(5)),
        RetryBudget::default(),
        &Sleeps::default(),
    )
    .build()
    .unwrap();
    assert_eq!(
        (
            client.stats().max_in_use,
            client.stats().max_in_use_per_host
        ),
        (4, 2)
    );
    let send = |server: &RateLimitServer, path: &str| {
        client.send(client.get(server.url(path).parse().unwrap()))
    };
    let held = vec![
        send(&slow, "/1").await.unwrap(),
        send(&slow, "/2").await.unwrap(),
    ];
    let slow_key = client.partition_for(&slow.url("/").parse().unwrap());
    assert_eq!(client.permits_in_use_for(&slow_key), 2);
    match send(&slow, "/3").await {
        Err(Error::PoolTimeout { max_in_use, .. }) => assert_eq!(max_in_use, 2),
        other => panic!("expected a per-host PoolTimeout, got {other:?}"),
    }
    assert_eq!(slow.stats().requests_seen, 2, "the third never left");
    assert_eq!(
        client.stats().permits_in_use,
        2,
        "the waiter held no total slot"
    );
    // The other host gets the two remaining slots.
    let more = vec![
        send(&other, "/1").await.unwrap(),
        send(&other, "/2").await.unwrap(),
    ];
    assert_eq!(client.stats().permits_in_use, 4);
    drop(held);
    assert_eq!(client.permits_in_use_for(&slow_key), 0);
    drop(more);
    assert_eq!(client.stats().permits_in_use, 0);

    // The default per-host cap is the total cap.
    let default = RetryClient::builder()
        .limits(Limits::default().max_in_use(7))
        .build()
        .unwrap();
    assert_eq!(default.stats().max_in_use_per_host, 7);
    let zero = Builder::with_limits(Limits::default().max_in_use_per_host(0)).build();
    assert!(matches!(zero, Err(Error::Config(_))));
}

// covers R10: a request rejected locally does not wait for a slot. With the only slot held by
// an unread response, admitted requests wait out the acquire timeout (PoolTimeout, in paused
// time) while rejected ones fail at once with Error::Throttled, having taken nothing.
#[tokio::test(start_paused = true)]
async fn a_throttled_request_takes_no_slot_and_does_not_wait_for_one() {
    let server = throttled_server().await;
    let client = builder(
        Limits::default()
            .max_in_use(1)
            .acquire_timeout(Duration::from_secs(5)),
        RetryBudget::disabled(),
        &Sleeps::default(),
    )
    .policy(RetryPolicy::never())
    .adaptive_throttle(AdaptiveThrottle::default().seed(3))
    .build()
    .unwrap();
    let send = |path: &str| client.send(client.get(server.url(path).parse().unwrap()));
    // Hold the only slot with a 429 whose body is not read.
    let held = send("/held").await.unwrap();
    assert_eq!(client.stats().permits_in_use, 1);
    let (mut rejected, mut timed_out) = (0, 0);
    for i in 0..20 {
        let started = tokio::time::Instant::now();
        match send(&format!("/t/{i}")).await {
            Err(Error::Throttled { .. }) => {
                rejected += 1;
                assert_eq!(started.elapsed(), Duration::ZERO, "no wait for a slot");
            }
            Err(Error::PoolTimeout { .. }) => {
                timed_out += 1;
                assert_eq!(started.elapsed(), Duration::from_secs(5));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(client.stats().permits_in_use, 1, "only the held response");
    }
    assert!(
        rejected > 0 && timed_out > 0,
        "{rejected} rejected, {timed_out} timed out"
    );
    assert_eq!(server.stats().requests_seen, 1, "nothing else was sent");
    assert_eq!(server.stats().connections_opened, 1);
    drop(held);
}
