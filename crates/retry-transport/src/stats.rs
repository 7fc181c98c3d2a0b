//! Counters: attempts, retries by cause, give-ups (budget and throttling included), pool timeouts, permits in use.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a retry happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryCause {
    /// HTTP 429.
    Throttled,
    /// Another retryable status (502, 503, 504 by default).
    Unavailable,
    /// A transport error (connect, reset, timeout).
    Transport,
    /// HTTP 401 and a credential refresh (R7).
    Unauthorized,
}

/// Why retrying stopped while the outcome was still retryable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GiveUpReason {
    /// The attempts limit was reached.
    AttemptsExhausted,
    /// The next wait would end after the total time budget.
    BudgetExhausted,
    /// `Retry-After` asked for longer than the cap.
    RetryAfterOverCap,
    /// The request body is a stream that cannot be sent twice (R8).
    BodyNotCloneable,
    /// The partition's retry budget (R9) had no retry left.
    RetryBudgetExhausted,
    /// Adaptive throttling (R10) rejected the retry locally.
    Throttled,
}

/// Retries, by cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RetriesByCause {
    /// After a 429.
    pub throttled: u64,
    /// After another retryable status.
    pub unavailable: u64,
    /// After a transport error.
    pub transport: u64,
    /// After a 401 and a credential refresh.
    pub unauthorized: u64,
}

/// Give-ups, by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct GiveUps {
    /// Attempts exhausted.
    pub attempts_exhausted: u64,
    /// Time budget exhausted.
    pub budget_exhausted: u64,
    /// `Retry-After` over the cap.
    pub retry_after_over_cap: u64,
    /// A body that cannot be cloned.
    pub body_not_cloneable: u64,
    /// The retry budget (R9) was exhausted: the retryable response or error went back at once.
    pub retry_budget_exhausted: u64,
    /// Adaptive throttling (R10) rejected the retry locally.
    pub throttled: u64,
}

/// A snapshot of a [`RetryClient`](crate::RetryClient)'s counters (shared by every clone and
/// every [`with_policy`](crate::RetryClient::with_policy) view).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct TransportStats {
    /// Requests passed to `execute`.
    pub requests: u64,
    /// Attempts sent (first tries and retries).
    pub attempts: u64,
    /// Retries, by cause.
    pub retries: RetriesByCause,
    /// Retryable outcomes handed back because the policy said stop.
    pub gave_up: GiveUps,
    /// Requests that failed with [`Error::PoolTimeout`](crate::Error::PoolTimeout).
    pub pool_timeouts: u64,
    /// Attempts that ended in a timeout (read, connect or total per attempt), retried or not.
    pub timeouts: u64,
    /// Retryable responses whose body was drained before the sleep, so their connection went
    /// back to the keep-alive pool.
    pub drained: u64,
    /// Retryable responses dropped unread before the sleep (body over the drain limit or too
    /// slow), closing their connection.
    pub discarded: u64,
    /// First attempts rejected locally by adaptive throttling (R10) with
    /// [`Error::Throttled`](crate::Error::Throttled): nothing was sent.
    pub throttled: u64,
    /// Client rebuilds by `reset()`.
    pub resets: u64,
    /// Connection slots held right now (by requests in progress and unread response bodies).
    pub permits_in_use: usize,
    /// The connection-slot limit.
    pub max_in_use: usize,
    /// The per-host connection-slot limit (R11), as clamped (at most `max_in_use`).
    pub max_in_use_per_host: usize,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) attempts: AtomicU64,
    throttled: AtomicU64,
    unavailable: AtomicU64,
    transport: AtomicU64,
    unauthorized: AtomicU64,
    attempts_exhausted: AtomicU64,
    budget_exhausted: AtomicU64,
    retry_after_over_cap: AtomicU64,
    body_not_cloneable: AtomicU64,
    retry_budget_exhausted: AtomicU64,
    throttled_retries: AtomicU64,
    pub(crate) locally_rejected: AtomicU64,
    pub(crate) pool_timeouts: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) drained: AtomicU64,
    pub(crate) discarded: AtomicU64,
    pub(crate) resets: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn retry(&self, cause: RetryCause) {
        bump(match cause {
            RetryCause::Throttled => &self.throttled,
            RetryCause::Unavailable => &self.unavailable,
            RetryCause::Transport => &self.transport,
            RetryCause::Unauthorized => &self.unauthorized,
        });
    }

    pub(crate) fn gave_up(&self, reason: GiveUpReason) {
        bump(match reason {
            GiveUpReason::AttemptsExhausted => &self.attempts_exhausted,
            GiveUpReason::BudgetExhausted => &self.budget_exhausted,
            GiveUpReason::RetryAfterOverCap => &self.retry_after_over_cap,
            GiveUpReason::BodyNotCloneable => &self.body_not_cloneable,
            GiveUpReason::RetryBudgetExhausted => &self.retry_budget_exhausted,
            GiveUpReason::Throttled => &self.throttled_retries,
        });
    }

    pub(crate) fn snapshot(
        &self,
        permits_in_use: usize,
        max_in_use: usize,
        max_in_use_per_host: usize,
    ) -> TransportStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TransportStats {
            requests: get(&self.requests),
            attempts: get(&self.attempts),
            retries: RetriesByCause {
                throttled: get(&self.throttled),
                unavailable: get(&self.unavailable),
                transport: get(&self.transport),
                unauthorized: get(&self.unauthorized),
            },
            gave_up: GiveUps {
                attempts_exhausted: get(&self.attempts_exhausted),
                budget_exhausted: get(&self.budget_exhausted),
                retry_after_over_cap: get(&self.retry_after_over_cap),
                body_not_cloneable: get(&self.body_not_cloneable),
                retry_budget_exhausted: get(&self.retry_budget_exhausted),
                throttled: get(&self.throttled_retries),
            },
            pool_timeouts: get(&self.pool_timeouts),
            timeouts: get(&self.timeouts),
            drained: get(&self.drained),
            discarded: get(&self.discarded),
            throttled: get(&self.locally_rejected),
            resets: get(&self.resets),
            permits_in_use,
            max_in_use,
            max_in_use_per_host,
        }
    }
}
