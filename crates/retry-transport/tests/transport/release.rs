//! R1: a retrying request holds no slot and no connection while it sleeps.

use std::sync::Arc;
use std::time::Duration;

use retry_transport::RetryPolicy;
use testkit::ratelimit::{Answer, RateLimitServer};

use crate::common::{GatedSleeper, client, get, limits, until};

/// A 429 as real servers send it: with a short error body. (hyper hands a keep-alive connection
/// back to its pool before it reports the end of a body, so draining it makes the connection
/// reusable before the sleep.)
fn throttled() -> Answer {
    Answer::too_many(1).body_len(64)
}

// covers R1: while A sleeps, the server sees no request in flight, the client no slot in use,
// and B gets the only slot — on A's drained keep-alive connection.
#[tokio::test]
async fn a_sleeping_retry_holds_no_slot_and_no_connection() {
    let server = RateLimitServer::start().await.unwrap();
    server.script("/a", [throttled()]);
    let sleeper = GatedSleeper::new();
    let client = client(limits(1), RetryPolicy::default(), Arc::new(sleeper.clone()));

    let a = tokio::spawn({
        let (client, url) = (client.clone(), server.url("/a"));
        async move {
            let response = client.send(client.get(url.parse().unwrap())).await.unwrap();
            (
                response.status().as_u16(),
                response.bytes().await.unwrap().len(),
            )
        }
    });
    sleeper.wait_parked(1).await;

    // A is asleep: nothing held on either side.
    assert_eq!(client.stats().permits_in_use, 0);
    let server_side = server.stats();
    assert_eq!(server_side.in_flight, 0);
    assert_eq!(server_side.connections_opened, 1);
    assert_eq!(
        client.stats().drained,
        1,
        "the 429 body was drained, not dropped"
    );

    // B uses the one slot and A's connection while A sleeps.
    assert_eq!(get(&client, &server, "/b").await, (200, 2));
    assert_eq!(server.stats().connections_opened, 1);

    sleeper.open();
    assert_eq!(a.await.unwrap(), (200, 2));
    let stats = client.stats();
    assert_eq!(
        (stats.attempts, stats.retries.throttled, stats.pool_timeouts),
        (3, 1, 0)
    );
    assert_eq!(sleeper.requested(), [Duration::from_secs(1)]);
    assert_eq!(server.stats().connections_opened, 1);
    assert_eq!(server.stats().peak_in_flight, 1);
}

// covers R1, R4: N tasks on M < N slots, every first answer a 429 with Retry-After: 1 — all N
// reach their sleep at once (impossible if a sleeper held a slot), then all succeed, with no
// PoolTimeout and never more than M requests or connections at the server.
#[tokio::test]
async fn a_storm_of_429s_on_few_slots_all_succeed_without_pool_timeouts() {
    const N: usize = 40;
    const M: usize = 4;
    let server = RateLimitServer::start().await.unwrap();
    server.every_path_starts_with([throttled()]);
    server.set_default(Answer::ok(256));
    let sleeper = GatedSleeper::new();
    let client = client(limits(M), RetryPolicy::default(), Arc::new(sleeper.clone()));

    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let client = client.clone();
            let url = server.url(&format!("/item/{i}"));
            tokio::spawn(async move {
                let response = client.send(client.get(url.parse()?)).await?;
                let status = response.status().as_u16();
                let len = response.bytes().await?.len();
                anyhow::Ok((status, len))
            })
        })
        .collect();

    sleeper.wait_parked(N).await;
    assert_eq!(client.stats().permits_in_use, 0);
    let during = server.stats();
    assert_eq!(during.in_flight, 0);
    assert_eq!(during.requests_seen, N as u64);
    assert!(during.connections_opened <= M as u64, "{during:?}");

    sleeper.open();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), (200, 256));
    }
    let stats = client.stats();
    assert_eq!(stats.pool_timeouts, 0);
    assert_eq!(stats.retries.throttled, N as u64);
    assert_eq!(stats.drained, N as u64);
    let after = server.stats();
    assert_eq!(after.requests_seen, 2 * N as u64);
    assert!(after.peak_in_flight <= M as u64, "{after:?}");
    assert!(after.connections_opened <= M as u64, "{after:?}");
}

// covers R1: a retryable body over the drain limit is dropped with its connection, not read.
#[tokio::test]
async fn a_large_retryable_body_is_dropped_not_drained() {
    let server = RateLimitServer::start().await.unwrap();
    server.script(
        "/big",
        [Answer::status(503)
            .retry_after(testkit::ratelimit::RetryAfter::Seconds(1))
            .body_len(1 << 20)],
    );
    let sleeper = GatedSleeper::new();
    let client = client(
        limits(1).drain_limit(1024),
        RetryPolicy::default(),
        Arc::new(sleeper.clone()),
    );
    let task = tokio::spawn({
        let client = client.clone();
        let url = server.url("/big");
        async move {
            client
                .send(client.get(url.parse().unwrap()))
                .await
                .map(|r| r.status().as_u16())
        }
    });
    sleeper.wait_parked(1).await;
    assert_eq!(client.stats().permits_in_use, 0);
    assert_eq!((client.stats().drained, client.stats().discarded), (0, 1));
    // The dropped connection closes; nothing stays in flight at the server.
    until(&server, |s| s.in_flight == 0 && s.connections_open == 0).await;
    sleeper.open();
    assert_eq!(task.await.unwrap().unwrap(), 200);
    assert_eq!(server.stats().connections_opened, 2);
}
