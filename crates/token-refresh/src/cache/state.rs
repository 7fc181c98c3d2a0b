//! The cache's mutable state: the installed token, its thresholds and its generation.

use futures::future::{BoxFuture, Shared};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::error::RefreshError;

use crate::config::RefreshConfig;
use crate::source::Fetched;

/// Where the cached token stands (T1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TokenState {
    /// No token yet (or it was invalidated): the next call waits for a blocking refresh.
    Empty,
    /// Served as is.
    Fresh,
    /// Served as is, and one background refresh is started (or already running).
    Stale,
    /// Within the skew of its expiry, or past it: callers wait for a blocking refresh.
    Expired,
}

/// A token as installed: thresholds are absolute instants, computed once (T2, T6).
pub(crate) struct Installed<T> {
    pub(crate) token: T,
    pub(crate) expires_at: Option<Instant>,
    /// `expires_at - skew`: from here on the token counts as expired.
    pub(crate) expired_at: Option<Instant>,
    /// From here on the token is stale; moved forward by a failed background refresh (T4).
    pub(crate) stale_after: Option<Instant>,
    /// The sequence number of the fetch that produced it (see [`State::begin_fetch`]).
    pub(crate) fetched_as: u64,
    /// A server rejected it (T11): it counts as expired — the next call takes the mandatory
    /// path — until a new token replaces it.
    pub(crate) invalidated: bool,
}

impl<T> Installed<T> {
    pub(crate) fn state(&self, now: Instant) -> TokenState {
        if self.invalidated || self.expired_at.is_some_and(|at| now >= at) {
            TokenState::Expired
        } else if self.stale_after.is_some_and(|at| now >= at) {
            TokenState::Stale
        } else {
            TokenState::Fresh
        }
    }
}

/// The one background refresh in flight (T3): its task, and the generation it started from.
pub(crate) struct Background {
    pub(crate) task: AbortHandle,
    pub(crate) generation: u64,
}

impl Background {
    /// Whether the task ended without reporting a result: it reports (and clears itself from
    /// the state) before it finishes, so a finished task still recorded here panicked, or was
    /// cancelled (e.g. its runtime shut down) before reporting.
    pub(crate) fn is_lost(&self) -> bool {
        self.task.is_finished()
    }
}

/// What a caller who waited gets: the token and its expiry as a monotonic deadline.
pub(crate) type Outcome<T> = Result<(T, Option<Instant>), RefreshError>;

/// The one blocking refresh in flight (T1). Its fetch is a shared future polled by every
/// waiter, so it does not belong to the caller who started it: a waiter that gives up (a
/// cancelled request) leaves the fetch running for the others, and its load timeout counts
/// from when the fetch started, not from each take-over.
pub(crate) struct Blocking<T> {
    pub(crate) flight: Shared<BoxFuture<'static, Outcome<T>>>,
    /// Which flight this is (its result clears it only if it is still the one in flight).
    pub(crate) id: u64,
    /// Past its load timeout: a flight still here then was abandoned by every waiter before it
    /// ended, and a new caller starts a fresh one instead of inheriting an expired deadline.
    pub(crate) abandoned_after: Instant,
}

pub(crate) struct State<T> {
    pub(crate) current: Option<Installed<T>>,
    /// Bumped by every install and invalidation; a background refresh remembers the generation
    /// it started from and is discarded if it changed (T5).
    pub(crate) generation: u64,
    /// The running background refresh, if any (T3).
    pub(crate) background: Option<Background>,
    /// The blocking refresh in flight, if any (T1).
    pub(crate) blocking: Option<Blocking<T>>,
    /// Fetches started so far: each fetch is numbered in the order it started, so a result can
    /// tell whether the installed token came from a later fetch (and is newer than it).
    pub(crate) fetches_started: u64,
    /// Blocking flights started so far (their ids).
    pub(crate) flights: u64,
    /// Until then the source is not contacted: a refresh failed (T4, T8).
    pub(crate) backoff_until: Option<Instant>,
    /// A non-recoverable error repeated to callers until the instant (T10).
    pub(crate) cached_error: Option<(RefreshError, Instant)>,
}

impl<T> Default for State<T> {
    fn default() -> Self {
        Self {
            current: None,
            generation: 0,
            background: None,
            blocking: None,
            fetches_started: 0,
            flights: 0,
            backoff_until: None,
            cached_error: None,
        }
    }
}

impl<T> State<T> {
    pub(crate) fn state(&self, now: Instant) -> TokenState {
        self.current
            .as_ref()
            .map_or(TokenState::Empty, |current| current.state(now))
    }

    /// Whether a back-off is running at `now`.
    pub(crate) fn backing_off(&self, now: Instant) -> bool {
        self.backoff_until.is_some_and(|until| now < until)
    }

    /// The non-recoverable error to repeat at `now`, if one is cached (T10).
    pub(crate) fn cached_error(&self, now: Instant) -> Option<RefreshError> {
        self.cached_error
            .as_ref()
            .filter(|(_, until)| now < *until)
            .map(|(error, _)| error.clone())
    }

    /// Number a fetch that starts now.
    pub(crate) fn begin_fetch(&mut self) -> u64 {
        self.fetches_started += 1;
        self.fetches_started
    }

    /// The installed token if it came from a fetch that started after fetch `fetched_as` and
    /// is not expired at `now`: a result of fetch `fetched_as` must not replace it.
    pub(crate) fn newer_than(&self, fetched_as: u64, now: Instant) -> Option<&Installed<T>> {
        self.current
            .as_ref()
            .filter(|c| c.fetched_as > fetched_as && c.state(now) != TokenState::Expired)
    }

    /// Install the token of fetch `fetched_as` at `now`: convert its expiry once (T6), compute
    /// its thresholds (T2) and start a new generation. Returns the new generation.
    pub(crate) fn install(
        &mut self,
        fetched: Fetched<T>,
        fetched_as: u64,
        now: Instant,
        config: &RefreshConfig,
    ) -> u64 {
        let expires_at = fetched.expiry.deadline(now, &*config.wall_clock);
        let expired_at = expires_at.map(|at| at.checked_sub(config.skew).unwrap_or(now));
        let stale_after = expires_at.and_then(|at| config.stale_after(now, at));
        self.current = Some(Installed {
            token: fetched.token,
            expires_at,
            expired_at,
            stale_after,
            fetched_as,
            invalidated: false,
        });
        self.backoff_until = None;
        self.cached_error = None;
        self.generation += 1;
        self.generation
    }
}
