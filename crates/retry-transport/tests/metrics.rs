//! The metrics a client records (issue 19), read back from `metrics`' debugging recorder:
//! OpenTelemetry HTTP-client series, retries by cause, give-ups by reason, connection slots,
//! driven through the public API against testkit's scripted server.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use retry_transport::{Error, Limits, RetryClient, RetryPolicy, Sleeper};
use testkit::metrics::{counter, gauge, histogram, recorded, recorded_real_time};
use testkit::ratelimit::{Answer, RateLimitServer, RetryAfter};

/// Returns at once: retries need no real or virtual sleep.
#[derive(Debug)]
struct NoSleep;

impl Sleeper for NoSleep {
    fn sleep(&self, _: Duration) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

fn client(limits: Limits, policy: RetryPolicy) -> RetryClient {
    RetryClient::builder()
        .limits(limits)
        .policy(policy)
        .sleeper(Arc::new(NoSleep))
        .connect_timeout(None)
        .build()
        .expect("client builds")
}

fn limits(max_in_use: usize) -> Limits {
    Limits::from_env_with(|_| None).max_in_use(max_in_use)
}

fn url(server: &RateLimitServer, path: &str) -> reqwest::Url {
    server.url(path).parse().expect("valid url")
}

const HOST: (&str, &str) = ("server.address", "127.0.0.1");

// covers R2 and issue 19: a 429 then a 200 is one send, two attempts, one retry with cause
// throttled; the slot is back once the body is read.
#[test]
fn throttled_then_ok_records_one_retry_with_cause_throttled() {
    let recorded = recorded_real_time(|| async {
        let server = RateLimitServer::start().await.expect("server");
        server.script(
            "/items",
            [Answer::status(429)
                .retry_after(RetryAfter::Seconds(1))
                .body_len(16)],
        );
        let client = client(limits(4), RetryPolicy::default());
        let response = client
            .send(client.get(url(&server, "/items")))
            .await
            .expect("response");
        assert_eq!(response.status(), 200);
        response.bytes().await.expect("body");
        assert_eq!(client.stats().retries.throttled, 1);
        (client, server)
    });
    let retries = |cause| counter(&recorded, "http.client.retries", &[HOST, ("cause", cause)]);
    assert_eq!(retries("throttled"), 1);
    assert_eq!(retries("unavailable"), 0);
    assert_eq!(counter(&recorded, "http.client.attempts", &[HOST]), 2);
    let durations = histogram(
        &recorded,
        "http.client.request.duration",
        &[
            ("http.request.method", "GET"),
            HOST,
            ("http.response.status_code", "200"),
        ],
    );
    assert_eq!(durations.len(), 1, "one send, however many attempts");
    assert_eq!(
        gauge(&recorded, "http.client.active_requests", &[HOST]),
        0.0
    );
    assert_eq!(
        gauge(&recorded, "http.client.slot.count", &[("state", "used")]),
        0.0
    );
    assert_eq!(
        gauge(&recorded, "http.client.slot.count", &[("state", "idle")]),
        4.0
    );
    assert_eq!(gauge(&recorded, "http.client.slot.max", &[]), 4.0);
    assert_eq!(
        gauge(&recorded, "http.client.slot.pending_requests", &[]),
        0.0
    );
    assert_eq!(
        histogram(&recorded, "http.client.slot.wait_time", &[]).len(),
        2,
        "one slot per attempt"
    );
    // R9: the default retry budget is on; the first attempt deposited, the retry withdrew.
    assert!(gauge(&recorded, "http.client.retry_budget.balance", &[HOST]) > 0.0);
}

// covers R3 and issue 19: a retryable status to the end gives up with reason
// attempts_exhausted, and the send's duration carries the status as `error.type`.
#[test]
fn unavailable_to_the_end_gives_up_with_attempts_exhausted() {
    let recorded = recorded_real_time(|| async {
        let server = RateLimitServer::start().await.expect("server");
        server.set_default(Answer::status(503).body_len(4));
        let client = client(limits(4), RetryPolicy::default().max_attempts(3));
        let response = client
            .send(client.get(url(&server, "/down")))
            .await
            .expect("response");
        assert_eq!(response.status(), 503);
        (client, server, response)
    });
    assert_eq!(
        counter(
            &recorded,
            "http.client.give_ups",
            &[HOST, ("reason", "attempts_exhausted")]
        ),
        1
    );
    assert_eq!(
        counter(
            &recorded,
            "http.client.retries",
            &[HOST, ("cause", "unavailable")]
        ),
        2
    );
    assert_eq!(counter(&recorded, "http.client.attempts", &[HOST]), 3);
    let labels = [
        ("http.request.method", "GET"),
        HOST,
        ("http.response.status_code", "503"),
        ("error.type", "503"),
    ];
    assert_eq!(
        histogram(&recorded, "http.client.request.duration", &labels).len(),
        1
    );
    // The unread 503 body holds its slot.
    assert_eq!(
        gauge(&recorded, "http.client.slot.count", &[("state", "used")]),
        1.0
    );
    assert_eq!(gauge(&recorded, "http.client.slot.host_used", &[HOST]), 1.0);
}

// covers R4 and issue 19: a request that finds every slot held by an unread body waits out
// the acquire timeout (5 s of virtual time): one slot timeout, 5 s of wait time, and the send
// fails with error.type pool_timeout.
#[test]
fn pool_timeout_records_wait_time_and_error_type() {
    let recorded = recorded(|| async {
        let server = RateLimitServer::start().await.expect("server");
        server.set_default(Answer::ok(1000).stall_body_after(10));
        let client = client(
            limits(1).acquire_timeout(Duration::from_secs(5)),
            RetryPolicy::default(),
        );
        let held = client
            .send(client.get(url(&server, "/held")))
            .await
            .expect("response");
        let blocked = client.send(client.get(url(&server, "/blocked"))).await;
        assert!(
            matches!(blocked, Err(Error::PoolTimeout { .. })),
            "{blocked:?}"
        );
        (client, server, held)
    });
    assert_eq!(counter(&recorded, "http.client.slot.timeouts", &[]), 1);
    let mut waits = histogram(&recorded, "http.client.slot.wait_time", &[]);
    waits.sort_by(f64::total_cmp);
    assert_eq!(waits, [0.0, 5.0]);
    let labels = [
        ("http.request.method", "GET"),
        HOST,
        ("error.type", "pool_timeout"),
    ];
    assert_eq!(
        histogram(&recorded, "http.client.request.duration", &labels),
        [5.0]
    );
    assert_eq!(
        gauge(&recorded, "http.client.slot.count", &[("state", "used")]),
        1.0
    );
    assert_eq!(
        gauge(&recorded, "http.client.slot.count", &[("state", "idle")]),
        0.0
    );
    assert_eq!(
        gauge(&recorded, "http.client.slot.pending_requests", &[]),
        0.0
    );
    assert_eq!(
        gauge(&recorded, "http.client.active_requests", &[HOST]),
        0.0
    );
}

// A dropped client takes its share of the slot gauges with it.
#[test]
fn dropped_client_leaves_the_slot_gauges() {
    let recorded = recorded_real_time(|| async {
        let kept = client(limits(3), RetryPolicy::default());
        drop(client(limits(5), RetryPolicy::default()));
        kept
    });
    assert_eq!(gauge(&recorded, "http.client.slot.max", &[]), 3.0);
    assert_eq!(
        gauge(&recorded, "http.client.slot.count", &[("state", "idle")]),
        3.0
    );
}
