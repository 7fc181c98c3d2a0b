//! A scripted fake source shared by the cache's behaviour tests.

mod concurrency;
mod failures;
mod states;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;

use super::TokenCache;
use crate::{BearerToken, Expiry, Fetched, RefreshConfig, TokenSource};

const SEC: Duration = Duration::from_secs(1);
const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// What one fetch of the fake does.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    /// A token valid for this long from when it is returned.
    Ok(Duration),
    /// A token without expiry.
    NoExpiry,
    /// An error.
    Fail,
    /// Never answers.
    Hang,
}

#[derive(Debug, thiserror::Error)]
#[error("identity endpoint unavailable")]
struct Down;

/// Fetch number `n` returns the token `t{n}` after the `n`-th planned delay and outcome
/// (default: at once, valid one hour). With a gate, each fetch first takes one permit.
#[derive(Debug, Default)]
struct Fake {
    calls: AtomicUsize,
    plans: Mutex<VecDeque<(Duration, Outcome)>>,
    gate: Option<Semaphore>,
}

impl Fake {
    fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn gated() -> Arc<Self> {
        Arc::new(Self {
            gate: Some(Semaphore::new(0)),
            ..Self::default()
        })
    }

    /// Plan the next unplanned fetch.
    fn then(self: &Arc<Self>, delay: Duration, outcome: Outcome) -> Arc<Self> {
        self.plans
            .lock()
            .expect("plans")
            .push_back((delay, outcome));
        self.clone()
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl TokenSource for Fake {
    type Token = BearerToken;
    type Error = Down;

    async fn fetch(&self) -> Result<Fetched<BearerToken>, Down> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let plan = self.plans.lock().expect("plans").pop_front();
        let (delay, outcome) = plan.unwrap_or((Duration::ZERO, Outcome::Ok(HOUR)));
        if let Some(gate) = &self.gate {
            gate.acquire().await.expect("gate open").forget();
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let token = BearerToken::new(format!("t{n}"));
        match outcome {
            Outcome::Ok(ttl) => Ok(Fetched::new(token, Expiry::In(ttl))),
            Outcome::NoExpiry => Ok(Fetched::never_expires(token)),
            Outcome::Fail => Err(Down),
            Outcome::Hang => std::future::pending().await,
        }
    }
}

/// Deterministic defaults for tests: no jitter.
fn config() -> RefreshConfig {
    RefreshConfig::default().jitter(0.0)
}

fn cache(fake: &Arc<Fake>, config: RefreshConfig) -> TokenCache<Fake> {
    TokenCache::from_arc(fake.clone(), config)
}

/// The secret of the token the cache serves now.
async fn secret(cache: &TokenCache<Fake>) -> String {
    cache.token().await.expect("a token").secret().to_string()
}

/// The token served without waiting at all: panics if the call would have to wait.
fn served_at_once(cache: &TokenCache<Fake>) -> String {
    use futures::FutureExt;
    cache
        .token()
        .now_or_never()
        .expect("served without waiting")
        .expect("a token")
        .secret()
        .to_string()
}

/// Let spawned tasks (a background refresh) run to their next await point, without moving
/// the clock.
async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}
