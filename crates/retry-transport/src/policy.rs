//! The retry policy: which outcomes are retried for which methods, how long to wait, when to stop.

use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use http::{HeaderMap, Method, StatusCode};

use crate::retry_after::parse_retry_after;
use crate::stats::{GiveUpReason, RetryCause};

/// The longest wait any policy setting takes (24 hours): the budget, the `Retry-After` cap and
/// the back-off are clamped to it, so even `Duration::MAX` never overflows a sleep (X5).
pub const MAX_POLICY_WAIT: Duration = Duration::from_secs(24 * 3600);

/// Which request methods an outcome is retried for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Methods {
    /// Never retried.
    None,
    /// Only idempotent methods (RFC 9110 §9.2.2): GET, HEAD, OPTIONS, TRACE, PUT, DELETE.
    Idempotent,
    /// Every method, POST and PATCH included (for outcomes where the server did not act on
    /// the request: throttled, or the connection was never made).
    All,
}

impl Methods {
    /// Whether `method` is covered.
    pub fn allows(self, method: &Method) -> bool {
        match self {
            Methods::None => false,
            Methods::All => true,
            Methods::Idempotent => is_idempotent(method),
        }
    }
}

/// RFC 9110 §9.2.2.
pub(crate) fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// What to retry and how (R2, R3). See docs/retry-transport.md for the table of defaults.
///
/// ```
/// use std::time::Duration;
/// use http::StatusCode;
/// use retry_transport::{Methods, RetryPolicy};
///
/// let policy = RetryPolicy::default()
///     .retry_status(StatusCode::INTERNAL_SERVER_ERROR, Methods::Idempotent)
///     .max_attempts(3)
///     .budget(Duration::from_secs(20));
/// assert!(policy.status_methods(StatusCode::INTERNAL_SERVER_ERROR).is_some());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    statuses: Vec<(StatusCode, Methods)>,
    connect_errors: Methods,
    transport_errors: Methods,
    max_attempts: u32,
    budget: Duration,
    retry_after_cap: Duration,
    backoff_base: Duration,
    backoff_max: Duration,
    backoff_factor: f32,
}

impl Default for RetryPolicy {
    /// 429 and 503 for every method; 502 and 504 for idempotent methods; connect errors for
    /// every method, other transport errors for idempotent ones; 5 attempts within 120 s;
    /// `Retry-After` honoured up to 60 s; otherwise full-jitter back-off from 200 ms, ×2, ≤ 10 s.
    fn default() -> Self {
        Self {
            statuses: vec![
                (StatusCode::TOO_MANY_REQUESTS, Methods::All),
                (StatusCode::SERVICE_UNAVAILABLE, Methods::All),
                (StatusCode::BAD_GATEWAY, Methods::Idempotent),
                (StatusCode::GATEWAY_TIMEOUT, Methods::Idempotent),
            ],
            connect_errors: Methods::All,
            transport_errors: Methods::Idempotent,
            max_attempts: 5,
            budget: Duration::from_secs(120),
            retry_after_cap: Duration::from_secs(60),
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            backoff_factor: 2.0,
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries (one attempt; the 401 refresh still applies).
    pub fn never() -> Self {
        Self {
            statuses: Vec::new(),
            connect_errors: Methods::None,
            transport_errors: Methods::None,
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// Retry `status` for `methods` (replaces any rule for that status; `Methods::None` removes it).
    pub fn retry_status(mut self, status: StatusCode, methods: Methods) -> Self {
        self.statuses.retain(|(s, _)| *s != status);
        if methods != Methods::None {
            self.statuses.push((status, methods));
        }
        self
    }

    /// Which methods connect errors (the request never reached the server) are retried for.
    pub fn connect_errors(mut self, methods: Methods) -> Self {
        self.connect_errors = methods;
        self
    }

    /// Which methods other transport errors (reset, timeout, closed mid-request) are retried for.
    pub fn transport_errors(mut self, methods: Methods) -> Self {
        self.transport_errors = methods;
        self
    }

    /// Attempts in all, the first included (at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The total time budget: no retry starts a sleep that would end after it. At most
    /// [`MAX_POLICY_WAIT`] (longer is clamped).
    pub fn budget(mut self, budget: Duration) -> Self {
        self.budget = budget.min(MAX_POLICY_WAIT);
        self
    }

    /// The longest `Retry-After` honoured. A longer one ends the retries and the response is
    /// returned to the caller as it is. At most [`MAX_POLICY_WAIT`] (longer is clamped).
    pub fn retry_after_cap(mut self, cap: Duration) -> Self {
        self.retry_after_cap = cap.min(MAX_POLICY_WAIT);
        self
    }

    /// Exponential back-off when there is no usable `Retry-After`: the n-th retry waits a
    /// uniformly random time in `[0, min(base × factor^(n-1), max)]` (full jitter). `base` and
    /// `max` are at most [`MAX_POLICY_WAIT`] (longer is clamped).
    pub fn backoff(mut self, base: Duration, factor: f32, max: Duration) -> Self {
        let base = base.min(MAX_POLICY_WAIT);
        let max = max.min(MAX_POLICY_WAIT);
        self.backoff_base = base;
        self.backoff_factor = if factor.is_finite() && factor >= 1.0 {
            factor
        } else {
            1.0
        };
        self.backoff_max = max.max(base);
        self
    }

    /// The methods `status` is retried for, if it is retryable.
    pub fn status_methods(&self, status: StatusCode) -> Option<Methods> {
        self.statuses
            .iter()
            .find(|(s, _)| *s == status)
            .map(|(_, m)| *m)
    }

    /// Attempts in all.
    pub fn attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The total time budget.
    pub fn total_budget(&self) -> Duration {
        self.budget
    }

    /// The `Retry-After` cap.
    pub fn cap(&self) -> Duration {
        self.retry_after_cap
    }

    /// A fresh back-off schedule for one request.
    pub(crate) fn schedule(&self) -> Schedule {
        Schedule {
            ceilings: ExponentialBuilder::default()
                .with_min_delay(self.backoff_base)
                .with_factor(self.backoff_factor)
                .with_max_delay(self.backoff_max)
                .without_max_times()
                .build(),
        }
    }

    /// The decision after a response with `status` to the `attempt`-th try (1-based).
    pub(crate) fn on_status(
        &self,
        ctx: &Attempt<'_>,
        status: StatusCode,
        headers: &HeaderMap,
        schedule: &mut Schedule,
    ) -> Decision {
        let Some(methods) = self.status_methods(status) else {
            return Decision::Done;
        };
        if !methods.allows(ctx.method) {
            return Decision::Done;
        }
        let cause = if status == StatusCode::TOO_MANY_REQUESTS {
            RetryCause::Throttled
        } else {
            RetryCause::Unavailable
        };
        let asked = headers
            .get(http::header::RETRY_AFTER)
            .and_then(|value| parse_retry_after(value, ctx.wall_now));
        let delay = match asked {
            Some(asked) if asked > self.retry_after_cap => {
                return Decision::GiveUp(GiveUpReason::RetryAfterOverCap);
            }
            Some(asked) => {
                // Keep the back-off schedule moving so a later retry without the header still grows.
                schedule.next_ceiling();
                asked
            }
            None => schedule.next_jittered(),
        };
        self.bounded(ctx, delay, cause)
    }

    /// The decision after a transport error on the `attempt`-th try.
    pub(crate) fn on_transport_error(
        &self,
        ctx: &Attempt<'_>,
        connect: bool,
        schedule: &mut Schedule,
    ) -> Decision {
        let methods = if connect {
            self.connect_errors
        } else {
            self.transport_errors
        };
        if !methods.allows(ctx.method) {
            return Decision::Done;
        }
        let delay = schedule.next_jittered();
        self.bounded(ctx, delay, RetryCause::Transport)
    }

    fn bounded(&self, ctx: &Attempt<'_>, delay: Duration, cause: RetryCause) -> Decision {
        if ctx.number >= self.max_attempts {
            return Decision::GiveUp(GiveUpReason::AttemptsExhausted);
        }
        if ctx.elapsed.saturating_add(delay) > self.budget {
            return Decision::GiveUp(GiveUpReason::BudgetExhausted);
        }
        Decision::Retry { delay, cause }
    }
}

/// Facts about the attempt that just finished.
#[derive(Debug)]
pub(crate) struct Attempt<'a> {
    pub(crate) method: &'a Method,
    /// 1-based.
    pub(crate) number: u32,
    /// Since the first attempt started (tokio time).
    pub(crate) elapsed: Duration,
    /// The wall clock, for `Retry-After` dates.
    pub(crate) wall_now: SystemTime,
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Not a retryable outcome for this method: hand it to the caller.
    Done,
    /// Retryable, but the policy says stop: hand it to the caller.
    GiveUp(GiveUpReason),
    /// Release everything, sleep `delay`, try again.
    Retry { delay: Duration, cause: RetryCause },
}

/// One request's back-off: backon computes the exponential ceilings; the wait is a uniformly
/// random fraction of the ceiling (full jitter, so a storm of clients spreads out).
#[derive(Debug)]
pub(crate) struct Schedule {
    ceilings: ExponentialBackoff,
}

impl Schedule {
    fn next_ceiling(&mut self) -> Duration {
        // `without_max_times`: the iterator never ends; ZERO is only a defensive fallback.
        self.ceilings.next().unwrap_or(Duration::ZERO)
    }

    fn next_jittered(&mut self) -> Duration {
        self.next_ceiling().mul_f64(fastrand::f64())
    }
}

#[cfg(test)]
mod tests;
