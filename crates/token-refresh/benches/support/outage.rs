//! The outage part of scenario `token_refresh`: 1 000 callers across a 30-minute identity
//! outage that starts in the advisory window (T8, T9).
//!
//! A 30-minute token is installed at t = 0. Its refresh window opens at t = 15 min in both
//! modes (the preset's tier for a 30 min token is 15 min; the seed's dynamic window is
//! min(ttl/2, 20 min) = 15 min), and the identity endpoint goes down then, until t = 45 min:
//! every fetch fails after 50 ms (otherwise a fetch takes 50 ms). 1 000 callers each call
//! `token()` every 5 s from t = 0 to t = 60 min (720 000 calls). Virtual time
//! (a paused current-thread runtime): the figures are counts, exact and repeatable, not
//! timings. Subjects: the static-stability preset, the seed-004 default, and a naive cache
//! (fetch under a mutex when expired, errors to the caller).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use token_refresh::{BearerToken, Expiry, Fetched, RefreshConfig, TokenCache, TokenSource};
use tokio::time::Instant;

const CALLERS: usize = 1000;
const LIFETIME: Duration = Duration::from_secs(30 * 60);
const LATENCY: Duration = Duration::from_millis(50);
const OUTAGE_FROM: Duration = Duration::from_secs(15 * 60);
const OUTAGE_UNTIL: Duration = Duration::from_secs(45 * 60);
const RUN_FOR: Duration = Duration::from_secs(60 * 60);
const CALL_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
#[error("identity endpoint unavailable")]
struct Down;

/// The identity endpoint: down while `down` is set; counts every contact.
#[derive(Debug, Default)]
struct Endpoint {
    contacts: AtomicUsize,
    down: AtomicBool,
}

impl TokenSource for Endpoint {
    type Token = BearerToken;
    type Error = Down;

    async fn fetch(&self) -> Result<Fetched<BearerToken>, Down> {
        let n = self.contacts.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(LATENCY).await;
        if self.down.load(Ordering::SeqCst) {
            return Err(Down);
        }
        Ok(Fetched::new(
            BearerToken::new(format!("token-{n}")),
            Expiry::In(LIFETIME),
        ))
    }
}

/// The hand-written baseline: fetch under a lock when expired; errors go to the caller.
#[derive(Debug, Default)]
struct Naive {
    source: Endpoint,
    slot: tokio::sync::Mutex<Option<(BearerToken, Instant)>>,
}

impl Naive {
    async fn token(&self) -> Result<BearerToken, Down> {
        let mut slot = self.slot.lock().await;
        if let Some((token, expires_at)) = &*slot
            && Instant::now() < *expires_at
        {
            return Ok(token.clone());
        }
        let fetched = self.source.fetch().await?;
        *slot = Some((fetched.token.clone(), Instant::now() + LIFETIME));
        Ok(fetched.token)
    }
}

enum Subject {
    Cache(TokenCache<Endpoint>),
    Naive(Naive),
}

impl Subject {
    async fn ok(&self) -> bool {
        match self {
            Self::Cache(cache) => cache.token().await.is_ok(),
            Self::Naive(naive) => naive.token().await.is_ok(),
        }
    }

    fn endpoint(&self) -> &Endpoint {
        match self {
            Self::Cache(cache) => cache.source(),
            Self::Naive(naive) => &naive.source,
        }
    }
}

/// What one subject did through the outage.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outcome {
    /// Calls that got an error.
    pub(crate) failed: f64,
    /// Fetches the identity endpoint received (the first token included).
    pub(crate) contacts: f64,
    /// Calls in all.
    pub(crate) calls: f64,
}

/// Run one subject: `"static_stability"`, `"seed_default"` or `"naive"`.
pub(crate) fn run(name: &str) -> Outcome {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let subject = Arc::new(match name {
            "static_stability" => Subject::Cache(TokenCache::new(
                Endpoint::default(),
                RefreshConfig::static_stability(),
            )),
            "seed_default" => Subject::Cache(TokenCache::new(
                Endpoint::default(),
                RefreshConfig::default(),
            )),
            _ => Subject::Naive(Naive::default()),
        });
        let start = Instant::now();
        let outage = tokio::spawn({
            let subject = subject.clone();
            async move {
                tokio::time::sleep_until(start + OUTAGE_FROM).await;
                subject.endpoint().down.store(true, Ordering::SeqCst);
                tokio::time::sleep_until(start + OUTAGE_UNTIL).await;
                subject.endpoint().down.store(false, Ordering::SeqCst);
            }
        });
        let callers: Vec<_> = (0..CALLERS)
            .map(|i| {
                let subject = subject.clone();
                tokio::spawn(async move {
                    // Spread the callers over one call period.
                    let mut next = start + CALL_EVERY * (i as u32) / CALLERS as u32;
                    let (mut calls, mut failed) = (0u64, 0u64);
                    while next < start + RUN_FOR {
                        tokio::time::sleep_until(next).await;
                        calls += 1;
                        if !subject.ok().await {
                            failed += 1;
                        }
                        next += CALL_EVERY;
                    }
                    (calls, failed)
                })
            })
            .collect();
        let (mut calls, mut failed) = (0u64, 0u64);
        for caller in callers {
            let (c, f) = caller.await.expect("caller");
            calls += c;
            failed += f;
        }
        outage.await.expect("outage driver");
        Outcome {
            failed: failed as f64,
            contacts: subject.endpoint().contacts.load(Ordering::SeqCst) as f64,
            calls: calls as f64,
        }
    })
}
