//! A throttled upstream, run locally: `cargo run -p retry-transport --example throttled`.
//!
//! testkit's rate-limiting server (on loopback) answers the first two requests with 429 and
//! `Retry-After: 1`; the client waits the advised second each time, holding no connection
//! while it sleeps, and the third attempt succeeds. The client code is what an application
//! writes; only the server is a test fixture (testkit is not published, so this example is
//! not shipped in the crate's package).

use std::time::{Duration, Instant};

use retry_transport::{Limits, RetryClient, RetryPolicy};
use testkit::ratelimit::{Answer, RateLimitServer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = RateLimitServer::start().await?;
    server.script(
        "/items",
        [Answer::too_many(1), Answer::too_many(1), Answer::ok(64)],
    );

    let client = RetryClient::builder()
        .limits(
            Limits::default()
                .max_in_use(4)
                .acquire_timeout(Duration::from_secs(5)),
        )
        .policy(RetryPolicy::default().max_attempts(4))
        .build()?;

    let started = Instant::now();
    let response = client
        .send(client.get(server.url("/items").parse()?))
        .await?;
    let status = response.status();
    let body = response.bytes().await?; // the slot is released when the body is read
    println!(
        "{status} after {:.1?}: {} bytes",
        started.elapsed(),
        body.len()
    );
    println!(
        "server saw {} requests on /items",
        server.requests_on("/items")
    );
    println!("{:#?}", client.stats());
    Ok(())
}
