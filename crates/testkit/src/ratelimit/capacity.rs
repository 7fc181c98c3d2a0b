//! Capacity mode: a token bucket of C requests/s in front of the script; the excess gets 429 + `Retry-After` (or 503).

use std::time::Duration;

use tokio::time::Instant;

use super::Answer;

/// The longest timeline kept (one entry a second): a day.
const MAX_SECONDS: usize = 24 * 3600;

/// How much the server serves in capacity mode (see
/// [`RateLimitServer::set_capacity`](super::RateLimitServer::set_capacity)).
///
/// A token bucket: `per_second` tokens a second, at most `burst` saved up (default a tenth
/// of a second's worth, at least 1). A request that finds a token is *served* — it gets the
/// scripted answer (the default `200`) — and one that finds none is *rejected* with
/// `reject` (default `429` with `Retry-After: 1`; e.g. `Answer::status(503)` instead).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Capacity {
    /// Requests served per second (tokens added per second). Negative or NaN: 0.
    pub per_second: f64,
    /// Tokens saved up at most.
    pub burst: f64,
    /// The answer to a request over capacity.
    pub reject: Answer,
}

impl Capacity {
    /// `per_second` requests a second, a burst of a tenth of that (at least 1), excess
    /// answered `429` + `Retry-After: 1`.
    pub fn per_second(per_second: f64) -> Self {
        let per_second = if per_second.is_nan() {
            0.0
        } else {
            per_second.max(0.0)
        };
        Self {
            per_second,
            burst: (per_second / 10.0).max(1.0),
            reject: Answer::too_many(1),
        }
    }

    /// Set `burst` (at least 1).
    pub fn burst(mut self, burst: f64) -> Self {
        self.burst = if burst.is_nan() { 1.0 } else { burst.max(1.0) };
        self
    }

    /// Answer requests over capacity with `answer` (e.g. `Answer::status(503)`).
    pub fn reject_with(mut self, answer: Answer) -> Self {
        self.reject = answer;
        self
    }
}

/// Requests in capacity mode, in all or in one second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct CapacityCounts {
    /// Requests that arrived while capacity mode was on.
    pub seen: u64,
    /// Requests that found a token (and got the scripted answer).
    pub served: u64,
    /// Requests over capacity (answered with the `reject` answer).
    pub rejected: u64,
}

#[derive(Debug)]
pub(crate) struct CapacityState {
    capacity: Option<Capacity>,
    tokens: f64,
    refilled: Instant,
    origin: Instant,
    totals: CapacityCounts,
    timeline: Vec<CapacityCounts>,
}

impl CapacityState {
    pub(crate) fn new() -> Self {
        let now = Instant::now();
        Self {
            capacity: None,
            tokens: 0.0,
            refilled: now,
            origin: now,
            totals: CapacityCounts::default(),
            timeline: Vec::new(),
        }
    }

    /// Turn capacity mode on, change it (the bucket keeps its tokens, capped by the new
    /// burst) or turn it off.
    pub(crate) fn set(&mut self, capacity: Option<Capacity>) {
        let now = Instant::now();
        self.refill(now);
        match &capacity {
            Some(c) if self.capacity.is_none() => self.tokens = c.burst,
            Some(c) => self.tokens = self.tokens.min(c.burst),
            None => {}
        }
        self.capacity = capacity;
    }

    /// Zero the counters and start the timeline now.
    pub(crate) fn reset_counters(&mut self) {
        self.origin = Instant::now();
        self.totals = CapacityCounts::default();
        self.timeline.clear();
    }

    fn refill(&mut self, now: Instant) {
        if let Some(c) = &self.capacity {
            let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
            self.tokens = (self.tokens + elapsed * c.per_second).min(c.burst);
        }
        self.refilled = now;
    }

    /// A request arrived: `None` if capacity mode is off or it is served, else the answer
    /// for a request over capacity.
    pub(crate) fn admit(&mut self) -> Option<Answer> {
        self.capacity.as_ref()?;
        let now = Instant::now();
        self.refill(now);
        let served = self.tokens >= 1.0;
        if served {
            self.tokens -= 1.0;
        }
        let second = now.saturating_duration_since(self.origin).as_secs() as usize;
        let second = second.min(MAX_SECONDS - 1);
        if self.timeline.len() <= second {
            self.timeline.resize(second + 1, CapacityCounts::default());
        }
        for counts in [&mut self.totals, &mut self.timeline[second]] {
            counts.seen += 1;
            if served {
                counts.served += 1;
            } else {
                counts.rejected += 1;
            }
        }
        if served {
            None
        } else {
            self.capacity.as_ref().map(|c| c.reject.clone())
        }
    }

    pub(crate) fn totals(&self) -> CapacityCounts {
        self.totals
    }

    /// Per second since the counters were last reset, up to the last second with a request.
    pub(crate) fn timeline(&self) -> Vec<CapacityCounts> {
        self.timeline.clone()
    }

    pub(crate) fn since_origin(&self) -> Duration {
        Instant::now().saturating_duration_since(self.origin)
    }
}
