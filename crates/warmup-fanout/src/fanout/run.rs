//! Running one read: permit, timeout, panic containment, outcome, duration.

use std::any::Any;
use std::error::Error as StdError;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::report::{Outcome, ReadReport};

/// A read's error, boxed.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// State shared by every read of one fan-out.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) default_timeout: Duration,
    pub(crate) started: Instant,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
}

impl Shared {
    pub(crate) fn new(max_in_flight: usize, default_timeout: Duration) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max_in_flight)),
            default_timeout,
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    pub(crate) fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Run one read under a global permit (and `group` permit first, if any), bounded by
    /// `timeout`. Never panics, whatever `make` or its future do.
    pub(crate) async fn run_one<T, F, Fut, E>(
        &self,
        name: &str,
        phase: u32,
        timeout: Option<Duration>,
        group: Option<&Semaphore>,
        make: F,
    ) -> (Option<T>, ReadReport)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Into<BoxError>,
    {
        // The group permit first, so a read waiting for its group holds no global permit.
        // `acquire` fails only on a closed semaphore, which never happens here: run unbounded.
        let _group_permit = match group {
            Some(sem) => sem.acquire().await.ok(),
            None => None,
        };
        let _permit = self.permits.acquire().await.ok();
        let _gauge = InFlight::enter(self);
        // Clamped again here: nothing reaches the timer above the maximum, however it was set.
        let timeout = super::clamp_timeout(timeout.unwrap_or(self.default_timeout));
        let start = Instant::now();

        let (value, outcome) = match std::panic::catch_unwind(AssertUnwindSafe(make)) {
            Err(panic) => (None, panicked(&*panic)),
            Ok(future) => {
                // Everything the read's own code can still run is inside the outer
                // `catch_unwind`: the future's `Drop` (when it is cut at its timeout, or after
                // it finished) and its error's `Display`, `source` and `Drop`.
                let run = async move {
                    match tokio::time::timeout(timeout, AssertUnwindSafe(future).catch_unwind())
                        .await
                    {
                        Err(_elapsed) => (None, Outcome::TimedOut { after: timeout }),
                        Ok(Err(panic)) => (None, panicked(&*panic)),
                        Ok(Ok(Err(error))) => (
                            None,
                            Outcome::Degraded {
                                reason: error_chain(&*error.into()),
                            },
                        ),
                        Ok(Ok(Ok(value))) => (Some(value), Outcome::Ok),
                    }
                };
                AssertUnwindSafe(run)
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|panic| (None, panicked(&*panic)))
            }
        };
        let duration = start.elapsed();
        if !outcome.is_ok() {
            tracing::warn!(read = name, phase, outcome = %outcome.describe(), "read degraded to its default");
        }
        let report = ReadReport {
            name: name.to_string(),
            phase,
            outcome,
            started_after: start.saturating_duration_since(self.started),
            duration,
        };
        (value, report)
    }
}

/// Counts a running read; keeps the peak.
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> Self {
        let now = shared.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        shared.peak.fetch_max(now, Ordering::Relaxed);
        Self(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

fn panicked(payload: &(dyn Any + Send)) -> Outcome {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_string());
    Outcome::Degraded {
        reason: format!("read panicked: {message}"),
    }
}

/// `outer: inner: innermost`, skipping a source whose text its parent already ends with.
pub(crate) fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}
