//! Issue #16, seed 002: no request waits forever on a peer that never answers, with defaults;
//! X5: no duration a builder accepts can panic.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use retry_transport::{Error, Limits, Methods, RetryClient, RetryPolicy};
use testkit::ratelimit::{Answer, RateLimitServer};
use tokio::time::Instant;

use crate::common::{RecordingSleeper, get, limits, url};

/// Longer than any bound the defaults allow: reaching it means the request hung.
const HUNG: Duration = Duration::from_secs(3600);

/// A client with the defaults and no environment (the same as `RetryClient::builder()` when no
/// `RETRY_TRANSPORT_*` variable is set).
fn default_client() -> RetryClient {
    RetryClient::builder()
        .limits(Limits::from_env_with(|_| None))
        .build()
        .unwrap()
}

// covers R (default read timeout), seed 002: a black-hole peer (accepts, reads the request,
// never answers) ends a default-configured GET with a typed timeout within the documented
// bound — read timeout 60 s per attempt, retried (GET is idempotent) while the 120 s budget
// allows — in virtual time, its slot released.
#[tokio::test(start_paused = true)]
async fn a_default_client_gives_up_on_a_black_hole() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::hang());
    let client = default_client();
    let started = Instant::now();
    let result = tokio::time::timeout(HUNG, client.send(client.get(url(&server, "/void"))))
        .await
        .expect("the request hung: no default timeout bounds it");
    let waited = started.elapsed();
    match result {
        Err(Error::Timeout { attempts, source }) => {
            assert!(source.is_timeout());
            assert_eq!(
                attempts, 2,
                "60 s + 60 s leaves no retry inside the 120 s budget"
            );
        }
        other => panic!("expected Error::Timeout, got {other:?}"),
    }
    // Two attempts of 60 s each and one back-off sleep (≤ 200 ms) between them.
    assert!(
        waited >= Duration::from_secs(120) && waited <= Duration::from_secs(121),
        "{waited:?}"
    );
    let stats = client.stats();
    assert_eq!((stats.timeouts, stats.retries.transport), (2, 1));
    assert_eq!(stats.permits_in_use, 0);
    assert_eq!(server.requests_on("/void"), 2);
}

// covers R3 with the read timeout: a POST is not idempotent, so its read timeout is not
// retried (the server may have acted): one attempt, 60 s, a typed timeout.
#[tokio::test(start_paused = true)]
async fn a_post_to_a_black_hole_times_out_once_and_is_not_retried() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::hang());
    let client = default_client();
    let started = Instant::now();
    let result = client
        .send(
            client
                .request(reqwest::Method::POST, url(&server, "/orders"))
                .body("{}"),
        )
        .await;
    assert!(
        matches!(result, Err(Error::Timeout { attempts: 1, .. })),
        "{result:?}"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(60));
    assert_eq!(server.requests_on("/orders"), 1);
    assert_eq!(client.stats().permits_in_use, 0);
}

// covers R4 + the read timeout, real IO: with one slot, a request to a black hole times out
// after its (short, configured) read timeout and releases the slot: the next request gets it
// and succeeds. (Real time: the wait is the 200 ms timeout itself, not a sleep.)
#[tokio::test]
async fn a_timed_out_request_releases_its_slot() {
    let hole = RateLimitServer::start().await.unwrap();
    hole.set_default(Answer::hang());
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::ok(7));
    let client = RetryClient::builder()
        .limits(limits(1).acquire_timeout(Duration::from_secs(5)))
        .read_timeout(Duration::from_millis(200))
        .policy(RetryPolicy::never())
        .build()
        .unwrap();
    let result = client.send(client.get(url(&hole, "/void"))).await;
    let error = result.expect_err("a black hole cannot answer");
    assert!(error.is_timeout(), "{error:?}");
    assert_eq!(client.stats().permits_in_use, 0);
    assert_eq!(get(&client, &server, "/next").await, (200, 7));
    assert_eq!(client.stats().pool_timeouts, 0);
}

// covers the read timeout between body chunks: a body that stalls mid-way fails the read
// after the read timeout (a reqwest timeout error) and releases the slot.
#[tokio::test(start_paused = true)]
async fn a_body_that_stalls_fails_after_the_read_timeout() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::ok(1000).stall_body_after(10));
    let client = RetryClient::builder()
        .limits(limits(1))
        .read_timeout(Duration::from_secs(5))
        .connect_timeout(None)
        .build()
        .unwrap();
    let response = client
        .send(client.get(url(&server, "/stalls")))
        .await
        .unwrap();
    assert_eq!(client.stats().permits_in_use, 1);
    let error = response.bytes().await.expect_err("the body stalls");
    assert!(error.is_timeout(), "{error:?}");
    assert_eq!(client.stats().permits_in_use, 0);
}

// covers X5: Duration::MAX for every duration the limits, the builder and the policy accept
// builds a client and sends requests without a panic (clamped, not overflowed): a retry after
// a 503 (back-off from the clamped maximum), a huge Retry-After (over the clamped cap: the 429
// is returned), a plain 200.
#[tokio::test]
async fn duration_max_everywhere_builds_and_sends_without_panicking() {
    let server = RateLimitServer::start().await.unwrap();
    server.script("/flaky", [Answer::status(503)]);
    server.script(
        "/throttled",
        [Answer::status(429).header("retry-after", "99999999999999999999999")],
    );
    server.set_default(Answer::ok(2));
    let sleeper = Arc::new(RecordingSleeper::default());
    let client = RetryClient::builder()
        .limits(
            limits(4)
                .idle_timeout(Duration::MAX)
                .acquire_timeout(Duration::MAX)
                .drain_timeout(Duration::MAX)
                .read_timeout(Duration::MAX),
        )
        .read_timeout(Duration::MAX)
        .connect_timeout(Some(Duration::MAX))
        .attempt_timeout(Some(Duration::MAX))
        .policy(
            RetryPolicy::default()
                .budget(Duration::MAX)
                .retry_after_cap(Duration::MAX)
                .backoff(Duration::MAX, f32::MAX, Duration::MAX)
                .retry_status(StatusCode::INTERNAL_SERVER_ERROR, Methods::All),
        )
        .sleeper(sleeper.clone())
        .build()
        .expect("Duration::MAX is clamped, not rejected");
    assert_eq!(client.limits().read_timeout, retry_transport::MAX_TIMEOUT);
    assert_eq!(get(&client, &server, "/flaky").await, (200, 2));
    assert_eq!(get(&client, &server, "/throttled").await, (429, 0));
    assert_eq!(get(&client, &server, "/plain").await, (200, 2));
    assert!(
        sleeper
            .sleeps()
            .iter()
            .all(|d| *d <= retry_transport::MAX_POLICY_WAIT),
        "{:?}",
        sleeper.sleeps()
    );
    assert_eq!(client.stats().gave_up.retry_after_over_cap, 1);
    // reset() rebuilds from the same clamped configuration.
    client.reset().unwrap();
    assert_eq!(get(&client, &server, "/plain").await, (200, 2));

    // The same through the real tokio sleep: a clamped back-off is a valid (if long) sleep,
    // not an overflow; the policy's budget turns it down or it sleeps in paused time.
    let policy = RetryPolicy::default().budget(Duration::MAX);
    assert_eq!(policy.total_budget(), retry_transport::MAX_POLICY_WAIT);
}
