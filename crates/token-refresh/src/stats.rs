//! `RefreshStats`: cheap counters of how calls were served and how refreshes ended.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::telemetry::{self, CacheGauges, Counter};

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
    /// Back-offs started: after a failed refresh (background, or blocking in the
    /// static-stability preset) the source is not contacted until the back-off ends.
    pub backoffs: u64,
    /// Calls that would have waited for a blocking refresh (mandatory window, expired or
    /// invalidated token) and were served the cached token at once because a back-off was
    /// running (T8, T11).
    pub served_during_backoff: u64,
    /// Blocking refreshes that failed and whose waiters were served the cached token instead
    /// of the error (static-stability preset, T9).
    pub blocking_served_cached: u64,
    /// Calls served a token past its expiry (static-stability preset, T9): the request decides.
    pub served_past_expiry: u64,
    /// Refreshed tokens that arrived already inside the mandatory window (or expired); each
    /// counted as a failed refresh (static-stability preset, T9).
    pub unusable_refreshes: u64,
    /// Non-recoverable errors from the source (T10).
    pub non_recoverable: u64,
    /// Calls answered with a cached non-recoverable error, without contacting the source (T10).
    pub cached_errors: u64,
    /// `invalidate_if` / `invalidate_token` calls that matched the cached token (T11).
    pub invalidations: u64,
    /// `invalidate_if` / `invalidate_token` calls that did not match (a newer token was already
    /// cached, or none): nothing changed (T11).
    pub invalidations_ignored: u64,
    /// Blocking refreshes started because the cached token was invalidated (T11).
    pub invalidated_refreshes: u64,
}

impl RefreshStats {
    /// Every call the source received.
    pub fn fetches(&self) -> u64 {
        self.blocking_fetches + self.background_started
    }
}

#[derive(Debug)]
pub(crate) struct Counters {
    pub(crate) fresh_hits: Counted,
    pub(crate) stale_hits: Counted,
    pub(crate) waits: Counted,
    pub(crate) blocking_fetches: Counted,
    pub(crate) blocking_failures: Counted,
    pub(crate) blocking_superseded: Counted,
    pub(crate) background_started: Counted,
    pub(crate) background_succeeded: Counted,
    pub(crate) background_failed: Counted,
    pub(crate) background_lost: Counted,
    pub(crate) background_discarded: Counted,
    pub(crate) timeouts: Counted,
    pub(crate) backoffs: Counted,
    pub(crate) served_during_backoff: Counted,
    pub(crate) blocking_served_cached: Counted,
    pub(crate) served_past_expiry: Counted,
    pub(crate) unusable_refreshes: Counted,
    pub(crate) non_recoverable: Counted,
    pub(crate) cached_errors: Counted,
    pub(crate) invalidations: Counted,
    pub(crate) invalidations_ignored: Counted,
    pub(crate) invalidated_refreshes: Counted,
    /// Blocking refreshes whose token was installed (a metric only).
    pub(crate) blocking_succeeded: Counted,
    /// `token.expires_in`, `token.backoff.active`, `token.wait.duration`.
    pub(crate) gauges: CacheGauges,
}

/// A counter of [`RefreshStats`] and the metric it feeds.
#[derive(Debug)]
pub(crate) struct Counted {
    value: AtomicU64,
    metric: Counter,
}

impl Counted {
    fn new(metric: Counter) -> Self {
        Self {
            value: AtomicU64::new(0),
            metric,
        }
    }
}

pub(crate) fn bump(counter: &Counted) {
    counter.value.fetch_add(1, Ordering::Relaxed);
    counter.metric.add(1);
}

impl Counters {
    /// Counters registering their metrics with the installed recorder (if any).
    pub(crate) fn new() -> Self {
        let m = telemetry::counter;
        Self {
            fresh_hits: Counted::new(m("token.calls", &[("outcome", "fresh")])),
            stale_hits: Counted::new(m("token.calls", &[("outcome", "stale")])),
            waits: Counted::new(m("token.calls", &[("outcome", "waited")])),
            blocking_fetches: Counted::new(m("token.refresh.started", &[("mode", "blocking")])),
            blocking_failures: Counted::new(m(
                "token.refreshes",
                &[("mode", "blocking"), ("outcome", "failed")],
            )),
            blocking_superseded: Counted::new(m(
                "token.refreshes",
                &[("mode", "blocking"), ("outcome", "superseded")],
            )),
            background_started: Counted::new(m("token.refresh.started", &[("mode", "background")])),
            background_succeeded: Counted::new(m(
                "token.refreshes",
                &[("mode", "background"), ("outcome", "ok")],
            )),
            background_failed: Counted::new(m(
                "token.refreshes",
                &[("mode", "background"), ("outcome", "failed")],
            )),
            background_lost: Counted::new(m("token.refreshes.lost", &[])),
            background_discarded: Counted::new(m(
                "token.refreshes",
                &[("mode", "background"), ("outcome", "discarded")],
            )),
            timeouts: Counted::new(m("token.refresh.timeouts", &[])),
            backoffs: Counted::new(m("token.backoffs", &[])),
            served_during_backoff: Counted::new(m(
                "token.calls",
                &[("outcome", "served_during_backoff")],
            )),
            blocking_served_cached: Counted::new(m("token.served_cached_after_failure", &[])),
            served_past_expiry: Counted::new(m("token.served_past_expiry", &[])),
            unusable_refreshes: Counted::new(m("token.refreshes.unusable", &[])),
            non_recoverable: Counted::new(m("token.refresh.non_recoverable", &[])),
            cached_errors: Counted::new(m("token.calls", &[("outcome", "cached_error")])),
            invalidations: Counted::new(m("token.invalidations", &[("outcome", "matched")])),
            invalidations_ignored: Counted::new(m(
                "token.invalidations",
                &[("outcome", "ignored")],
            )),
            invalidated_refreshes: Counted::new(m("token.invalidated_refreshes", &[])),
            blocking_succeeded: Counted::new(m(
                "token.refreshes",
                &[("mode", "blocking"), ("outcome", "ok")],
            )),
            gauges: CacheGauges::new(),
        }
    }

    pub(crate) fn snapshot(&self) -> RefreshStats {
        let read = |c: &Counted| c.value.load(Ordering::Relaxed);
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
            backoffs: read(&self.backoffs),
            served_during_backoff: read(&self.served_during_backoff),
            blocking_served_cached: read(&self.blocking_served_cached),
            served_past_expiry: read(&self.served_past_expiry),
            unusable_refreshes: read(&self.unusable_refreshes),
            non_recoverable: read(&self.non_recoverable),
            cached_errors: read(&self.cached_errors),
            invalidations: read(&self.invalidations),
            invalidations_ignored: read(&self.invalidations_ignored),
            invalidated_refreshes: read(&self.invalidated_refreshes),
        }
    }
}
