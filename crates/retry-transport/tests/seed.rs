//! Seed 002 (workflows hung forever under HTTP 429) and SPEC R1–R8 through the public API
//! only: what the incident and the upstream fix's tests describe — the pool timeout's value and
//! its typed error, the transport limits (max connections 50, keep-alive connections 10 and
//! their 30 s expiry), a retry that releases its connection before it sleeps (the
//! `response.close()` before `retry.sleep()`), the exception-retry path without a response,
//! the "more retries" view that keeps the limits, the session reset (fresh pool, same limits,
//! the 401 refresh still once), concurrent 429s without a pool timeout — and, beyond the seed
//! (issue #16), no request waits forever on a peer that never answers.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use http::HeaderValue;
use retry_transport::{BoxError, Credential, Error, Limits, RetryClient, RetryPolicy, Sleeper};
use testkit::ratelimit::{Answer, RateLimitServer};
use tokio::sync::watch;
use tokio::time::Instant;

/// Records every wait and returns at once.
#[derive(Debug, Default)]
struct Record(Mutex<Vec<Duration>>);

impl Sleeper for Record {
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.0.lock().unwrap().push(duration);
        Box::pin(async {})
    }
}

/// Holds every retry in its sleep until the gate opens; counts sleepers.
#[derive(Debug)]
struct Gate {
    open: watch::Sender<bool>,
    asleep: watch::Sender<usize>,
}

#[derive(Debug)]
struct GateSleeper(Arc<Gate>);

impl Sleeper for GateSleeper {
    fn sleep(&self, _duration: Duration) -> BoxFuture<'static, ()> {
        let gate = Arc::clone(&self.0);
        Box::pin(async move {
            gate.asleep.send_modify(|n| *n += 1);
            let _ = gate.open.subscribe().wait_for(|open| *open).await;
            gate.asleep.send_modify(|n| *n -= 1);
        })
    }
}

fn defaults() -> Limits {
    Limits::from_env_with(|_| None)
}

fn client(limits: Limits, sleeper: Arc<dyn Sleeper>) -> RetryClient {
    RetryClient::builder()
        .limits(limits)
        .sleeper(sleeper)
        .connect_timeout(None)
        .build()
        .unwrap()
}

fn url(server: &RateLimitServer, path: &str) -> reqwest::Url {
    server.url(path).parse().unwrap()
}

async fn get(client: &RetryClient, server: &RateLimitServer, path: &str) -> u16 {
    let response = client.send(client.get(url(server, path))).await.unwrap();
    let status = response.status().as_u16();
    response.bytes().await.unwrap();
    status
}

// covers R4, seed 002 (httpx.Limits(max_connections=50, max_keepalive_connections=10,
// keepalive_expiry=30) and Timeout(pool=30)): the defaults, plus the read timeout of issue #16.
#[test]
fn seed002_default_limits_match_the_fix() {
    let limits = defaults();
    assert_eq!(limits.max_in_use, 50);
    assert_eq!(limits.max_idle_per_host, 10);
    assert_eq!(limits.idle_timeout, Duration::from_secs(30));
    assert_eq!(limits.acquire_timeout, Duration::from_secs(30));
    assert_eq!(limits.read_timeout, Duration::from_secs(60));
    let client = RetryClient::builder().limits(defaults()).build().unwrap();
    assert_eq!(client.limits(), &defaults());
}

// covers R4, seed 002 (pool=30.0: PoolTimeout within 30 s instead of waiting forever): every
// slot held → a typed PoolTimeout after exactly the acquire timeout, nothing sent; a "more
// retries" view (the seed's max_retries context manager) shares the same slots (R5).
#[tokio::test(start_paused = true)]
async fn seed002_a_full_pool_fails_with_a_typed_pool_timeout_after_30_s() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::ok(100).stall_body_after(1));
    let client = client(defaults().max_in_use(1), Arc::new(Record::default()));
    let held = client
        .send(client.get(url(&server, "/held")))
        .await
        .unwrap();
    let patient = client.with_policy(RetryPolicy::default().max_attempts(10));
    let started = Instant::now();
    let result = patient.send(patient.get(url(&server, "/next"))).await;
    assert!(
        matches!(result, Err(Error::PoolTimeout { max_in_use: 1, waited }) if waited == Duration::from_secs(30)),
        "{result:?}"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(30));
    assert_eq!(server.requests_on("/next"), 0);
    assert_eq!(
        client.policy(),
        &RetryPolicy::default(),
        "the view left the original alone"
    );
    drop(held);
    assert_eq!(client.stats().permits_in_use, 0);
}

// covers R1, R2, seed 002 (response.close() before retry.sleep(); Retry-After still read from
// the closed response): with one slot, a request asleep after a 429 holds no slot and no
// server request; another request uses the slot meanwhile; the sleep asked was Retry-After.
#[tokio::test]
async fn seed002_a_sleeping_retry_holds_no_slot() {
    let server = RateLimitServer::start().await.unwrap();
    server.script("/a", [Answer::too_many(7).body_len(32)]);
    server.set_default(Answer::ok(4));
    let gate = Arc::new(Gate {
        open: watch::Sender::new(false),
        asleep: watch::Sender::new(0),
    });
    let client = client(
        defaults().max_in_use(1),
        Arc::new(GateSleeper(gate.clone())),
    );
    let a = tokio::spawn({
        let (client, url) = (client.clone(), url(&server, "/a"));
        async move {
            client
                .send(client.get(url))
                .await
                .map(|r| r.status().as_u16())
        }
    });
    gate.asleep.subscribe().wait_for(|n| *n == 1).await.unwrap();
    assert_eq!(client.stats().permits_in_use, 0);
    assert_eq!(server.stats().in_flight, 0);
    assert_eq!(
        get(&client, &server, "/b").await,
        200,
        "B gets the only slot"
    );
    gate.open.send_replace(true);
    assert_eq!(a.await.unwrap().unwrap(), 200);
    assert_eq!(client.stats().retries.throttled, 1);
    assert_eq!(client.stats().pool_timeouts, 0);
}

// covers R2 (Retry-After honoured), R3, seed 002 (the exception-retry path: no response to
// close): a connection reset on a GET is retried with back-off and succeeds, no slot left.
#[tokio::test]
async fn seed002_transport_errors_are_retried_without_a_response() {
    let server = RateLimitServer::start().await.unwrap();
    server.script("/flaky", [Answer::reset(), Answer::too_many(2)]);
    server.set_default(Answer::ok(1));
    let sleeper = Arc::new(Record::default());
    let client = client(defaults().max_in_use(2), sleeper.clone());
    assert_eq!(get(&client, &server, "/flaky").await, 200);
    let stats = client.stats();
    assert_eq!((stats.retries.transport, stats.retries.throttled), (1, 1));
    assert_eq!(
        sleeper.0.lock().unwrap()[1],
        Duration::from_secs(2),
        "Retry-After"
    );
    assert_eq!(stats.permits_in_use, 0);
}

// covers R1, R4, seed 002 (integration: concurrent requests, 429 retry without PoolTimeout):
// 40 requests on 4 slots, every first answer a 429 → all 200, no pool timeout, ≤ 4 in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed002_a_429_storm_on_few_slots_completes_without_pool_timeouts() {
    let server = RateLimitServer::start().await.unwrap();
    server.every_path_starts_with([Answer::too_many(1).body_len(16)]);
    server.set_default(Answer::ok(8));
    let client = client(
        defaults()
            .max_in_use(4)
            .acquire_timeout(Duration::from_secs(30)),
        Arc::new(Record::default()),
    );
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let (client, url) = (client.clone(), url(&server, &format!("/item/{i}")));
            tokio::spawn(async move {
                let response = client.send(client.get(url)).await?;
                let status = response.status().as_u16();
                response.bytes().await?;
                Ok::<_, anyhow::Error>(status)
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), 200);
    }
    let stats = client.stats();
    assert_eq!((stats.pool_timeouts, stats.permits_in_use), (0, 0));
    assert_eq!(stats.retries.throttled, 40);
    assert!(server.stats().peak_in_flight <= 4);
}

/// Counts asks by their refresh flag.
#[derive(Debug, Default)]
struct Tokens {
    forced: AtomicU32,
    cached: AtomicU32,
}

impl Credential for Tokens {
    fn authorization(&self, refresh: bool) -> BoxFuture<'_, Result<HeaderValue, BoxError>> {
        let counter = if refresh { &self.forced } else { &self.cached };
        counter.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(HeaderValue::from_static("Bearer t")) })
    }
}

// covers R6, R7, seed 002 (reset_http_session: a fresh pool with the same limits and auth, the
// 401 flag reset): after reset() the same client opens a new connection, keeps its limits,
// and a 401 still refreshes once; the retries after the refresh use the cache.
#[tokio::test]
async fn seed002_reset_keeps_limits_and_auth_and_one_401_is_one_refresh() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::ok(2));
    let tokens = Arc::new(Tokens::default());
    let client = RetryClient::builder()
        .limits(defaults().max_in_use(3))
        .sleeper(Arc::new(Record::default()))
        .credential(tokens.clone())
        .connect_timeout(None)
        .build()
        .unwrap();
    assert_eq!(get(&client, &server, "/before").await, 200);
    client.reset().unwrap();
    server.script("/after", [Answer::status(401), Answer::status(503)]);
    assert_eq!(get(&client, &server, "/after").await, 200);
    assert_eq!(
        server.stats().connections_opened,
        2,
        "a fresh pool after reset"
    );
    assert_eq!(client.limits().max_in_use, 3);
    assert_eq!(
        tokens.forced.load(Ordering::SeqCst),
        1,
        "one 401, one refresh"
    );
    assert_eq!(tokens.cached.load(Ordering::SeqCst), 3);
    assert_eq!(client.stats().resets, 1);
}

// covers R (every request bounded by default), seed 002's "hanging indefinitely" (issue #16):
// a peer that accepts and reads the request but never answers ends a default-configured GET
// with Error::Timeout within the documented bound (budget 120 s + one 60 s attempt), and a
// POST after one 60 s attempt; slots released. Virtual time.
#[tokio::test(start_paused = true)]
async fn seed002_a_black_hole_never_hangs_a_default_client() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::hang());
    let client = RetryClient::builder().limits(defaults()).build().unwrap();
    let started = Instant::now();
    let get = tokio::time::timeout(
        Duration::from_secs(3600),
        client.send(client.get(url(&server, "/get"))),
    )
    .await
    .expect("hung");
    assert!(matches!(get, Err(Error::Timeout { .. })), "{get:?}");
    assert!(
        started.elapsed() <= Duration::from_secs(180),
        "{:?}",
        started.elapsed()
    );
    let started = Instant::now();
    let post = client
        .send(client.request(reqwest::Method::POST, url(&server, "/post")))
        .await;
    assert!(
        matches!(post, Err(Error::Timeout { attempts: 1, .. })),
        "{post:?}"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(60));
    assert_eq!(client.stats().permits_in_use, 0);
}
