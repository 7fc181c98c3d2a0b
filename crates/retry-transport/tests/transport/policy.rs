//! R2, R3, R8 end to end: Retry-After forms, give-ups, transport errors, one-shot bodies.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use retry_transport::{Error, RetryClient, RetryPolicy};
use testkit::ratelimit::{Answer, RateLimitServer, RetryAfter};

use crate::common::{RecordingSleeper, client, limits, url};

fn recording(policy: RetryPolicy) -> (RetryClient, Arc<RecordingSleeper>) {
    let sleeper = Arc::new(RecordingSleeper::default());
    (client(limits(4), policy, sleeper.clone()), sleeper)
}

async fn status_of(client: &RetryClient, server: &RateLimitServer, path: &str) -> u16 {
    let response = client.send(client.get(url(server, path))).await.unwrap();
    response.status().as_u16()
}

fn throttled(retry_after: RetryAfter) -> Answer {
    Answer::status(429).retry_after(retry_after).body_len(16)
}

// covers R2: Retry-After as delta-seconds, an HTTP-date, a past date, garbage and a huge value.
#[tokio::test]
async fn retry_after_in_every_form() {
    let server = RateLimitServer::start().await.unwrap();
    let policy = RetryPolicy::default()
        .retry_after_cap(Duration::from_secs(60))
        .backoff(Duration::from_millis(100), 2.0, Duration::from_secs(1));
    let (client, sleeper) = recording(policy);

    server.script("/seconds", [throttled(RetryAfter::Seconds(7))]);
    assert_eq!(status_of(&client, &server, "/seconds").await, 200);
    assert_eq!(sleeper.sleeps(), [Duration::from_secs(7)]);

    server.script(
        "/date",
        [throttled(RetryAfter::In(Duration::from_secs(10)))],
    );
    assert_eq!(status_of(&client, &server, "/date").await, 200);
    // HTTP-dates have whole seconds: 10 s ahead reads as 9–10 s.
    let waited = sleeper.sleeps()[1];
    assert!(
        waited > Duration::from_secs(8) && waited <= Duration::from_secs(10),
        "{waited:?}"
    );

    let past = SystemTime::now() - Duration::from_secs(3600);
    server.script("/past", [throttled(RetryAfter::At(past))]);
    assert_eq!(status_of(&client, &server, "/past").await, 200);
    assert_eq!(
        sleeper.sleeps().len(),
        2,
        "a past date retries at once, without a sleep"
    );

    server.script("/garbage", [throttled(RetryAfter::Raw("in a bit".into()))]);
    assert_eq!(status_of(&client, &server, "/garbage").await, 200);
    assert!(
        sleeper.sleeps()[2] <= Duration::from_millis(100),
        "falls back to the back-off"
    );

    server.script("/huge", [throttled(RetryAfter::Seconds(86_400))]);
    let response = client
        .send(client.get(url(&server, "/huge")))
        .await
        .unwrap();
    assert_eq!(
        response.status().as_u16(),
        429,
        "over the cap: the 429 is returned"
    );
    assert_eq!(response.headers()["retry-after"], "86400");
    assert_eq!(server.requests_on("/huge"), 1);
    assert_eq!(sleeper.sleeps().len(), 3);

    let stats = client.stats();
    assert_eq!(stats.retries.throttled, 4);
    assert_eq!(stats.gave_up.retry_after_over_cap, 1);
}

// covers R2: bounded attempts — the last retryable response is returned.
#[tokio::test]
async fn attempts_are_bounded() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::status(503).retry_after(RetryAfter::Seconds(1)));
    let (client, sleeper) = recording(RetryPolicy::default().max_attempts(3));
    assert_eq!(status_of(&client, &server, "/down").await, 503);
    assert_eq!(server.requests_on("/down"), 3);
    assert_eq!(sleeper.sleeps().len(), 2);
    assert_eq!(client.stats().gave_up.attempts_exhausted, 1);
    assert_eq!(client.stats().retries.unavailable, 2);
}

// covers R2: the total time budget, in tokio time with the real (paused) sleep.
#[tokio::test(start_paused = true)]
async fn the_time_budget_stops_retries_in_virtual_time() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(
        Answer::status(503)
            .retry_after(RetryAfter::Seconds(40))
            .body_len(8),
    );
    let client = RetryClient::builder()
        .limits(limits(2))
        .policy(RetryPolicy::default().budget(Duration::from_secs(60)))
        .connect_timeout(None)
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    assert_eq!(status_of(&client, &server, "/slow").await, 503);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(40) && elapsed < Duration::from_secs(80),
        "{elapsed:?}"
    );
    assert_eq!(
        server.requests_on("/slow"),
        2,
        "40 s more would pass the 60 s budget"
    );
    assert_eq!(client.stats().gave_up.budget_exhausted, 1);
}

// covers R3: a transport error after the request was sent is retried for GET, never for POST.
#[tokio::test]
async fn non_idempotent_post_is_not_retried_on_a_transport_error() {
    let server = RateLimitServer::start().await.unwrap();
    server.script("/post", [Answer::reset()]);
    server.script("/get", [Answer::reset()]);
    let (client, _) = recording(RetryPolicy::default());

    let post = client
        .send(
            client
                .request(reqwest::Method::POST, url(&server, "/post"))
                .body("order"),
        )
        .await;
    assert!(
        matches!(post, Err(Error::Transport { attempts: 1, .. })),
        "{post:?}"
    );
    assert_eq!(server.requests_on("/post"), 1);

    assert_eq!(status_of(&client, &server, "/get").await, 200);
    assert_eq!(server.requests_on("/get"), 2);
    assert_eq!(client.stats().retries.transport, 1);
    assert_eq!(client.stats().permits_in_use, 0);
}

// covers R3: a connect error (nothing was sent) is retried for every method, up to the limit.
#[tokio::test]
async fn connect_errors_are_retried_up_to_the_attempt_limit() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let (client, sleeper) = recording(RetryPolicy::default().max_attempts(3));
    let url: reqwest::Url = format!("http://{addr}/x").parse().unwrap();
    let result = client
        .send(client.request(reqwest::Method::POST, url).body("x"))
        .await;
    match result {
        Err(Error::Transport {
            attempts: 3,
            source,
        }) => assert!(source.is_connect()),
        other => panic!("expected a connect error after 3 attempts, got {other:?}"),
    }
    assert_eq!(sleeper.sleeps().len(), 2);
    assert_eq!(client.stats().permits_in_use, 0);
}

// covers R8: a streaming body is sent once, whatever the outcome.
#[tokio::test]
async fn a_body_that_cannot_be_cloned_is_sent_once() {
    let server = RateLimitServer::start().await.unwrap();
    server.script(
        "/stream",
        [Answer::status(503).retry_after(RetryAfter::Seconds(1))],
    );
    server.script("/stream-reset", [Answer::reset()]);
    let (client, sleeper) = recording(RetryPolicy::default());
    let streaming = || reqwest::Body::wrap(String::from("chunked payload"));

    let response = client
        .send(
            client
                .request(reqwest::Method::PUT, url(&server, "/stream"))
                .body(streaming()),
        )
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(server.requests_on("/stream"), 1);
    assert_eq!(server.requests()[0].body_len, 15);

    let failed = client
        .send(
            client
                .request(reqwest::Method::PUT, url(&server, "/stream-reset"))
                .body(streaming()),
        )
        .await;
    assert!(
        matches!(failed, Err(Error::Transport { attempts: 1, .. })),
        "{failed:?}"
    );
    assert_eq!(server.requests_on("/stream-reset"), 1);
    assert!(sleeper.sleeps().is_empty());
    assert_eq!(client.stats().gave_up.body_not_cloneable, 2);
}

// Bad input is a typed error, never a panic, and takes no slot.
#[tokio::test]
async fn a_request_that_cannot_be_built_is_a_typed_error() {
    let server = RateLimitServer::start().await.unwrap();
    let (client, _) = recording(RetryPolicy::default());
    let bad = client
        .get(url(&server, "/x"))
        .header("bad header name", "x");
    assert!(matches!(client.send(bad).await, Err(Error::Request(_))));
    assert_eq!(server.stats().requests_seen, 0);
    assert_eq!(client.stats().permits_in_use, 0);
}
