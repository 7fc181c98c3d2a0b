//! R5, R6: `reset()` swaps in a fresh pool with the same configuration; nothing in flight is lost.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use retry_transport::{RetryClient, RetryPolicy};
use testkit::ratelimit::{Answer, RateLimitServer};

use crate::common::{RecordingSleeper, get, limits, until, url};

fn client_with_headers(max_in_use: usize, max_idle_per_host: usize) -> RetryClient {
    let mut headers = HeaderMap::new();
    headers.insert("authorization", HeaderValue::from_static("Bearer static"));
    RetryClient::builder()
        .limits(limits(max_in_use).max_idle_per_host(max_idle_per_host))
        .policy(RetryPolicy::default())
        .sleeper(Arc::new(RecordingSleeper::default()))
        .default_headers(headers)
        .connect_timeout(None)
        .build()
        .unwrap()
}

// covers R6: after reset the next request opens a new connection (a fresh pool), and still
// sends the configured default headers.
#[tokio::test]
async fn reset_starts_a_fresh_pool_with_the_same_configuration() {
    let server = RateLimitServer::start().await.unwrap();
    let client = client_with_headers(4, 4);
    get(&client, &server, "/1").await;
    get(&client, &server, "/2").await;
    assert_eq!(
        server.stats().connections_opened,
        1,
        "kept alive before the reset"
    );

    client.reset().unwrap();
    get(&client, &server, "/3").await;
    assert_eq!(server.stats().connections_opened, 2, "the old pool is gone");
    let log = server.requests();
    assert!(
        log.iter()
            .all(|r| r.authorization.as_deref() == Some("Bearer static"))
    );
    assert_eq!(client.stats().resets, 1);
}

// covers R5: the limits survive a reset — max_idle_per_host = 0 still keeps nothing, and
// the slot limit spans requests on the old and the new client.
#[tokio::test(start_paused = true)]
async fn reset_keeps_the_limits() {
    let server = RateLimitServer::start().await.unwrap();
    server.script("/held", [Answer::ok(1000).stall_body_after(1)]);
    let client = client_with_headers(1, 0);
    let held = client
        .send(client.get(url(&server, "/held")))
        .await
        .unwrap();
    client.reset().unwrap();
    let blocked = client.send(client.get(url(&server, "/after"))).await;
    assert!(
        blocked.unwrap_err().is_pool_timeout(),
        "the old client's slot still counts"
    );
    drop(held);
    get(&client, &server, "/a").await;
    get(&client, &server, "/b").await;
    assert_eq!(
        server.stats().connections_opened,
        3,
        "no idle connection kept after reset either"
    );
}

// covers R6: requests in flight during a reset finish on the old client; none is lost.
#[tokio::test(start_paused = true)]
async fn reset_under_load_loses_no_request() {
    const N: usize = 16;
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::ok(300).slow_body(100, Duration::from_secs(1)));
    let client = client_with_headers(2 * N, 2 * N);
    let spawn = |i: usize| {
        let client = client.clone();
        let url = server.url(&format!("/load/{i}"));
        tokio::spawn(async move {
            let response = client.send(client.get(url.parse()?)).await?;
            let status = response.status().as_u16();
            anyhow::Ok((status, response.bytes().await?.len()))
        })
    };
    let before: Vec<_> = (0..N).map(spawn).collect();
    until(&server, |s| s.in_flight == N as u64).await;
    client.reset().unwrap();
    let after: Vec<_> = (N..2 * N).map(spawn).collect();
    for task in before.into_iter().chain(after) {
        assert_eq!(task.await.unwrap().unwrap(), (200, 300));
    }
    assert_eq!(server.stats().requests_seen, 2 * N as u64);
    assert_eq!(client.stats().permits_in_use, 0);
    assert_eq!(client.stats().resets, 1);
}
