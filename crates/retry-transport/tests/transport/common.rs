//! Shared helpers: sleepers that record or hold retries, a client factory, URLs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use retry_transport::{Limits, RetryClient, RetryPolicy, Sleeper};
use testkit::ratelimit::{RateLimitServer, ServerStats};
use tokio::sync::{Semaphore, watch};

/// Records every requested wait and returns at once.
#[derive(Debug, Default)]
pub(crate) struct RecordingSleeper {
    sleeps: Mutex<Vec<Duration>>,
}

impl RecordingSleeper {
    pub(crate) fn sleeps(&self) -> Vec<Duration> {
        self.sleeps.lock().unwrap().clone()
    }
}

impl Sleeper for RecordingSleeper {
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.sleeps.lock().unwrap().push(duration);
        Box::pin(async {})
    }
}

/// Holds every retry in its sleep until the test opens the gate, and tells how many are parked.
#[derive(Debug, Clone)]
pub(crate) struct GatedSleeper {
    gate: Arc<Semaphore>,
    parked: Arc<watch::Sender<usize>>,
    requested: Arc<Mutex<Vec<Duration>>>,
}

impl GatedSleeper {
    pub(crate) fn new() -> Self {
        Self {
            gate: Arc::new(Semaphore::new(0)),
            parked: Arc::new(watch::Sender::new(0)),
            requested: Arc::default(),
        }
    }

    /// Wait (at most 10 s of real time, then fail) until `n` retries sit in their sleep.
    pub(crate) async fn wait_parked(&self, n: usize) {
        let mut parked = self.parked.subscribe();
        let waited =
            tokio::time::timeout(Duration::from_secs(10), parked.wait_for(|p| *p >= n)).await;
        assert!(
            waited.is_ok(),
            "only {} of {n} retries reached their sleep",
            *self.parked.borrow()
        );
    }

    /// Let every sleeper (now and later) through.
    pub(crate) fn open(&self) {
        self.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    pub(crate) fn requested(&self) -> Vec<Duration> {
        self.requested.lock().unwrap().clone()
    }
}

impl Sleeper for GatedSleeper {
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.requested.lock().unwrap().push(duration);
        let this = self.clone();
        Box::pin(async move {
            this.parked.send_modify(|p| *p += 1);
            // The gate only ever gains permits; a closed gate is not possible here.
            if let Ok(permit) = this.gate.acquire().await {
                permit.forget();
            }
            this.parked.send_modify(|p| *p -= 1);
        })
    }
}

/// Defaults (not the environment's) with `max_in_use` slots.
pub(crate) fn limits(max_in_use: usize) -> Limits {
    Limits::from_env_with(|_| None).max_in_use(max_in_use)
}

/// A client without a connect timeout (no client timer competes with paused-time IO).
pub(crate) fn client(
    limits: Limits,
    policy: RetryPolicy,
    sleeper: Arc<dyn Sleeper>,
) -> RetryClient {
    RetryClient::builder()
        .limits(limits)
        .policy(policy)
        .sleeper(sleeper)
        .connect_timeout(None)
        .build()
        .expect("client builds")
}

pub(crate) fn url(server: &RateLimitServer, path: &str) -> reqwest::Url {
    server.url(path).parse().expect("valid url")
}

/// GET `path` and read the whole body: (status, body length).
pub(crate) async fn get(
    client: &RetryClient,
    server: &RateLimitServer,
    path: &str,
) -> (u16, usize) {
    let response = client
        .send(client.get(url(server, path)))
        .await
        .expect("a response");
    let status = response.status().as_u16();
    let body = response.bytes().await.expect("a body");
    (status, body.len())
}

/// Wait (at most 10 s of real time, then fail) until the server's counters satisfy `condition`.
pub(crate) async fn until(
    server: &RateLimitServer,
    condition: impl Fn(&ServerStats) -> bool,
) -> ServerStats {
    match tokio::time::timeout(Duration::from_secs(10), server.wait_until(condition)).await {
        Ok(stats) => stats,
        Err(_) => panic!("server never reached the condition: {:?}", server.stats()),
    }
}
