//! `RefreshStats`: cheap counters of how calls were served and how refreshes ended.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of a cache's counters. Counters only grow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RefreshStats {
    /// Calls served a fresh token.
    pub fresh_hits: u64,
    /// Calls served a stale token without waiting (a background refresh was due or running).
    pub stale_hits: u64,
    /// Calls that had to wait for a blocking refresh (no token, or an expired one).
    pub waits: u64,
    /// Blocking refreshes that called the source (one per single-flight, however many waited).
    pub blocking_fetches: u64,
    /// Blocking refreshes that failed (error or timeout); their waiters got the error.
    pub blocking_failures: u64,
    /// Blocking refreshes whose token was not installed because, while they ran, a background
    /// refresh that started after them installed a newer one; their waiters got the newer
    /// token (tokens never go backwards).
    pub blocking_superseded: u64,
    /// Background refreshes started (T1, at most one at a time: T3).
    pub background_started: u64,
    /// Background refreshes whose token was installed.
    pub background_succeeded: u64,
    /// Background refreshes that failed and pushed the next one one back-off away (T4).
    pub background_failed: u64,
    /// Background refreshes that ended without a result: the fetch panicked, or the task was
    /// cancelled or its runtime shut down. Each is also counted in `background_failed` and,
    /// like any failure, backs off before the next background refresh (T4).
    pub background_lost: u64,
    /// Background results (success or failure) discarded because a newer token had been
    /// installed meanwhile (T5).
    pub background_discarded: u64,
    /// Fetches (either kind) abandoned at the load timeout.
    pub timeouts: u64,
}

impl RefreshStats {
    /// Every call the source received.
    pub fn fetches(&self) -> u64 {
        self.blocking_fetches + self.background_started
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) fresh_hits: AtomicU64,
    pub(crate) stale_hits: AtomicU64,
    pub(crate) waits: AtomicU64,
    pub(crate) blocking_fetches: AtomicU64,
    pub(crate) blocking_failures: AtomicU64,
    pub(crate) blocking_superseded: AtomicU64,
    pub(crate) background_started: AtomicU64,
    pub(crate) background_succeeded: AtomicU64,
    pub(crate) background_failed: AtomicU64,
    pub(crate) background_lost: AtomicU64,
    pub(crate) background_discarded: AtomicU64,
    pub(crate) timeouts: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn snapshot(&self) -> RefreshStats {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RefreshStats {
            fresh_hits: read(&self.fresh_hits),
            stale_hits: read(&self.stale_hits),
            waits: read(&self.waits),
            blocking_fetches: read(&self.blocking_fetches),
            blocking_failures: read(&self.blocking_failures),
            blocking_superseded: read(&self.blocking_superseded),
            background_started: read(&self.background_started),
            background_succeeded: read(&self.background_succeeded),
            background_failed: read(&self.background_failed),
            background_lost: read(&self.background_lost),
            background_discarded: read(&self.background_discarded),
            timeouts: read(&self.timeouts),
        }
    }
}
