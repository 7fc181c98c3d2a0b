//! A token cache over a flaky identity endpoint, in real time (about 4 s):
//! `cargo run -p token-refresh --example refresh`.
//!
//! The endpoint issues 2-second tokens and fails every other refresh. Callers ask for the
//! token every 250 ms: they never wait while a token is stale (a background refresh runs), a
//! failed background refresh backs off instead of disabling refresh, and at expiry one
//! blocking fetch serves every caller.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use token_refresh::{BearerToken, Expiry, Fetched, RefreshConfig, TokenCache, TokenSource};

#[derive(Debug, Default)]
struct FlakyEndpoint {
    calls: AtomicU32,
}

impl TokenSource for FlakyEndpoint {
    type Token = BearerToken;
    type Error = std::io::Error;

    async fn fetch(&self) -> Result<Fetched<BearerToken>, std::io::Error> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await; // the network
        if n % 2 == 1 {
            return Err(std::io::Error::other("identity endpoint: HTTP 503"));
        }
        Ok(Fetched::new(
            BearerToken::new(format!("token-{n}")),
            Expiry::In(Duration::from_secs(2)),
        ))
    }
}

#[tokio::main]
async fn main() -> Result<(), token_refresh::RefreshError> {
    let config = RefreshConfig::default()
        .skew(Duration::from_millis(200))
        .backoff(Duration::from_millis(500));
    let cache = TokenCache::new(FlakyEndpoint::default(), config);
    let started = Instant::now();
    for _ in 0..16 {
        let asked = Instant::now();
        let token = cache.token().await?;
        println!(
            "{:>5} ms  {}  waited {:>3} ms  state {:?}",
            started.elapsed().as_millis(),
            token.secret(),
            asked.elapsed().as_millis(),
            cache.state(),
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!("{:?}", cache.stats());
    Ok(())
}
