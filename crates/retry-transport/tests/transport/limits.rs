//! R4, R5: the slot limit, its acquire timeout, a slot's lifetime, idle connections.

use std::sync::Arc;
use std::time::Duration;

use retry_transport::{Error, RetryPolicy};
use testkit::ratelimit::{Answer, RateLimitServer};
use tokio::time::Instant;

use crate::common::{RecordingSleeper, client, get, limits, url};

fn plain(max_in_use: usize) -> retry_transport::RetryClient {
    client(
        limits(max_in_use).acquire_timeout(Duration::from_secs(5)),
        RetryPolicy::default(),
        Arc::new(RecordingSleeper::default()),
    )
}

// covers R4: every slot held by a stalled body → the next request fails with a typed
// PoolTimeout after the acquire timeout, instead of waiting forever.
#[tokio::test(start_paused = true)]
async fn acquire_timeout_fires_when_every_slot_is_held_by_a_slow_body() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::ok(1000).stall_body_after(10));
    let client = plain(2);
    let mut held = Vec::new();
    for i in 0..2 {
        let response = client
            .send(client.get(url(&server, &format!("/slow/{i}"))))
            .await
            .unwrap();
        held.push(response);
    }
    assert_eq!(client.stats().permits_in_use, 2);

    let started = Instant::now();
    let third = client.send(client.get(url(&server, "/third"))).await;
    let waited = started.elapsed();
    match third {
        Err(Error::PoolTimeout { waited, max_in_use }) => {
            assert_eq!((waited, max_in_use), (Duration::from_secs(5), 2));
        }
        other => panic!("expected PoolTimeout, got {other:?}"),
    }
    assert!(waited >= Duration::from_secs(5));
    assert_eq!(
        server.stats().requests_seen,
        2,
        "the third request never reached the server"
    );
    assert_eq!(client.stats().pool_timeouts, 1);

    // Dropping one stalled response frees its slot for the next request.
    drop(held.pop());
    assert_eq!(client.stats().permits_in_use, 1);
    server.script("/fourth", [Answer::ok(3)]);
    assert_eq!(get(&client, &server, "/fourth").await, (200, 3));
}

// covers R4: a slot lives exactly as long as the response body — not released at the head,
// released at the body's end (before the response is dropped), on drop, and on a body error.
#[tokio::test]
async fn a_slot_lives_as_long_as_the_body() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::ok(3 * 16 * 1024).slow_body(16 * 1024, Duration::from_millis(1)));
    let client = plain(4);

    let mut response = client
        .send(client.get(url(&server, "/read")))
        .await
        .unwrap();
    assert_eq!(client.stats().permits_in_use, 1, "held after the head");
    let mut read = 0;
    while let Some(chunk) = response.chunk().await.unwrap() {
        read += chunk.len();
        if read < 3 * 16 * 1024 {
            assert_eq!(client.stats().permits_in_use, 1, "held mid-body");
        }
    }
    assert_eq!(read, 3 * 16 * 1024);
    assert_eq!(
        client.stats().permits_in_use,
        0,
        "released at the end, response still alive"
    );
    drop(response);

    let unread = client
        .send(client.get(url(&server, "/drop")))
        .await
        .unwrap();
    assert_eq!(client.stats().permits_in_use, 1);
    drop(unread);
    assert_eq!(client.stats().permits_in_use, 0, "released on drop");

    server.script("/cut", [Answer::ok(1000).stall_body_after(10)]);
    let mut cut = client.send(client.get(url(&server, "/cut"))).await.unwrap();
    assert_eq!(cut.chunk().await.unwrap().map(|c| c.len()), Some(10));
    drop(server); // cuts the connection mid-body
    assert!(cut.chunk().await.is_err());
    assert_eq!(client.stats().permits_in_use, 0, "released on a body error");
}

#[tokio::test]
async fn an_empty_body_frees_its_slot_at_once() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::status(204));
    let client = plain(1);
    let response = client
        .send(client.get(url(&server, "/empty")))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);
    assert_eq!(client.stats().permits_in_use, 0);
    assert_eq!(
        response.url().path(),
        "/empty",
        "the wrapped response keeps its URL"
    );
}

// covers R5: a view with another policy shares the slots — it cannot escape the limit.
#[tokio::test(start_paused = true)]
async fn policy_views_share_the_slot_limit() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::ok(1000).stall_body_after(10));
    let client = plain(1);
    let patient = client.with_policy(RetryPolicy::default().max_attempts(10));
    let held = client
        .send(client.get(url(&server, "/held")))
        .await
        .unwrap();
    let blocked = patient.send(patient.get(url(&server, "/view"))).await;
    assert!(
        matches!(blocked, Err(Error::PoolTimeout { max_in_use: 1, .. })),
        "{blocked:?}"
    );
    assert_eq!(patient.stats().pool_timeouts, 1, "and the stats");
    assert_eq!(patient.limits(), client.limits());
    drop(held);
}

// covers R4: idle connections are kept per host up to the limit, and expire after idle_timeout.
#[tokio::test(start_paused = true)]
async fn idle_connections_are_reused_then_expire() {
    let server = RateLimitServer::start().await.unwrap();
    let client = client(
        limits(4).idle_timeout(Duration::from_secs(30)),
        RetryPolicy::default(),
        Arc::new(RecordingSleeper::default()),
    );
    get(&client, &server, "/1").await;
    tokio::time::advance(Duration::from_secs(20)).await;
    get(&client, &server, "/2").await;
    assert_eq!(
        server.stats().connections_opened,
        1,
        "reused within the idle timeout"
    );
    tokio::time::advance(Duration::from_secs(31)).await;
    get(&client, &server, "/3").await;
    assert_eq!(
        server.stats().connections_opened,
        2,
        "expired after the idle timeout"
    );

    let no_idle = crate::common::client(
        limits(4).max_idle_per_host(0),
        RetryPolicy::default(),
        Arc::new(RecordingSleeper::default()),
    );
    let server = RateLimitServer::start().await.unwrap();
    get(&no_idle, &server, "/1").await;
    get(&no_idle, &server, "/2").await;
    assert_eq!(
        server.stats().connections_opened,
        2,
        "max_idle_per_host = 0 keeps none"
    );
}
