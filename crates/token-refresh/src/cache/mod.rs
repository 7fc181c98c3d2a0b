//! `TokenCache`: fresh → cached, stale → cached + one background refresh, expired → one
//! shared blocking refresh.

mod state;

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio::time::Instant;

use crate::config::RefreshConfig;
use crate::error::RefreshError;
use crate::source::{Fetched, TokenSource};
use crate::stats::{Counters, RefreshStats, bump};
pub use state::TokenState;
use state::{Background, Blocking, Outcome, State};

/// The blocking refresh every waiter polls.
type Flight<T> = Shared<BoxFuture<'static, Outcome<T>>>;

/// A token cache over a [`TokenSource`] that keeps serving through refresh failures.
///
/// [`TokenCache::token`]:
/// - **fresh** → the cached token;
/// - **stale** → the cached token, and one background refresh is spawned (callers never wait
///   for it; T1, T3). A background failure pushes the next attempt one back-off away and keeps
///   serving the current token (T4); a background result that finishes after a newer token was
///   installed is discarded (T5);
/// - **expired** (within the skew of expiry) or **empty** → every caller waits for one shared
///   blocking refresh (single-flight). Its error goes to every waiter and is not cached. The
///   fetch belongs to no caller: a waiter that gives up leaves it running for the others, so
///   impatient callers cannot restart it forever, and every waiter is bounded by one load
///   timeout from the fetch's start.
///
/// Cloning is cheap and shares the cache. When the last clone is dropped, a running background
/// refresh is aborted. Must be used inside a Tokio runtime with time enabled.
pub struct TokenCache<S: TokenSource> {
    inner: Arc<Inner<S>>,
}

struct Inner<S: TokenSource> {
    source: Arc<S>,
    config: RefreshConfig,
    state: Mutex<State<S::Token>>,
    counters: Counters,
}

impl<S: TokenSource> Clone for TokenCache<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<S: TokenSource> TokenCache<S> {
    /// A cache over `source`; nothing is fetched until the first call.
    pub fn new(source: S, config: RefreshConfig) -> Self {
        Self::from_arc(Arc::new(source), config)
    }

    /// A cache over a shared `source`.
    pub fn from_arc(source: Arc<S>, config: RefreshConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                source,
                config,
                state: Mutex::new(State::default()),
                counters: Counters::new(),
            }),
        }
    }

    /// A token: the cached one if it is fresh or stale, else the result of one blocking refresh
    /// shared with every concurrent caller.
    pub async fn token(&self) -> Result<S::Token, RefreshError> {
        self.token_and_deadline().await.map(|(token, _)| token)
    }

    /// Like [`TokenCache::token`], with the token's expiry as a monotonic deadline (`None`:
    /// never expires) — e.g. to bound the lifetime of a session built with it.
    pub async fn token_and_deadline(&self) -> Outcome<S::Token> {
        match self.inner.enter(Instant::now()) {
            Entered::Ready(outcome) => outcome,
            Entered::Flight(flight) => {
                let started = Instant::now();
                let outcome = flight.await;
                self.inner.counters.gauges.waited(started.elapsed());
                outcome
            }
        }
    }

    /// Where the cached token stands now.
    pub fn state(&self) -> TokenState {
        self.inner.lock().state(Instant::now())
    }

    /// Drop the cached token (e.g. after the server rejected it with a 401): the next call
    /// waits for a blocking refresh. A background refresh still running is aborted.
    pub fn invalidate(&self) {
        let mut state = self.inner.lock();
        state.current = None;
        state.generation += 1;
        if let Some(background) = state.background.take() {
            background.task.abort();
        }
        tracing::debug!(generation = state.generation, "token invalidated");
    }

    /// A server rejected `rejected` (a 401/403): if it is still the cached token, the next call
    /// takes the mandatory path — a blocking refresh — unless a back-off is running, in which
    /// case the source is not contacted until it ends (T11). If a newer token is already cached
    /// (another request saw the rejection first and the cache refreshed), nothing changes, so a
    /// burst of 401s for one token causes one refresh. Returns whether it matched.
    ///
    /// Matching is by identity (`PartialEq` of the token, e.g. [`BearerToken`](crate::BearerToken)'s
    /// secret); see [`TokenCache::invalidate_if`] for tokens without `PartialEq`.
    pub fn invalidate_token(&self, rejected: &S::Token) -> bool
    where
        S::Token: PartialEq,
    {
        self.invalidate_if(|cached| cached == rejected)
    }

    /// [`TokenCache::invalidate_token`] with the identity check given as a predicate on the
    /// cached token (e.g. `|t: &AccessToken| t.token.secret() == rejected_secret`). Nothing is
    /// logged about the token itself.
    pub fn invalidate_if(&self, rejected: impl FnOnce(&S::Token) -> bool) -> bool {
        let mut state = self.inner.lock();
        match state.current.as_mut() {
            Some(current) if rejected(&current.token) => {
                current.invalidated = true;
                bump(&self.inner.counters.invalidations);
                tracing::debug!(
                    generation = state.generation,
                    "cached token rejected: invalidated"
                );
                true
            }
            _ => {
                bump(&self.inner.counters.invalidations_ignored);
                tracing::debug!("rejected token is not the cached one: nothing to invalidate");
                false
            }
        }
    }

    /// The cache's counters.
    pub fn stats(&self) -> RefreshStats {
        self.inner.counters.snapshot()
    }

    /// The cache's configuration.
    pub fn config(&self) -> &RefreshConfig {
        &self.inner.config
    }

    /// The source the cache refreshes from.
    pub fn source(&self) -> &S {
        &self.inner.source
    }
}

impl<S: TokenSource> Inner<S> {
    fn lock(&self) -> MutexGuard<'_, State<S::Token>> {
        // No code that can panic runs under the lock (only arithmetic and clones of the
        // caller's token type), so a poisoned lock carries no broken invariant.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What a call gets now without waiting: a token (fresh, stale, or — during a back-off —
    /// the cached one), a cached non-recoverable error, or `Wait` for a blocking refresh.
    /// Starts the background refresh of a stale token (T1, T3).
    fn decide(self: &Arc<Self>, state: &mut State<S::Token>, now: Instant) -> Served<S::Token> {
        if state.background.as_ref().is_some_and(Background::is_lost) {
            self.background_lost(state, now);
        }
        let Some(current) = state.current.as_ref() else {
            return match state.cached_error(now) {
                Some(error) => {
                    bump(&self.counters.cached_errors);
                    Served::Error(error)
                }
                None => Served::Wait,
            };
        };
        let served = (current.token.clone(), current.expires_at);
        match current.state(now) {
            TokenState::Fresh => {
                bump(&self.counters.fresh_hits);
                Served::Token(served)
            }
            TokenState::Stale => {
                bump(&self.counters.stale_hits);
                self.counters.gauges.expires_in(
                    current
                        .expires_at
                        .map(|at| at.saturating_duration_since(now)),
                );
                if state.background.is_none()
                    && !state.backing_off(now)
                    && state.cached_error(now).is_none()
                {
                    self.start_background(state);
                }
                Served::Token(served)
            }
            TokenState::Expired | TokenState::Empty => {
                if let Some(error) = state.cached_error(now) {
                    bump(&self.counters.cached_errors);
                    return Served::Error(error);
                }
                // During a back-off the source is not contacted: the preset serves the cached
                // token even past its expiry (T8, T9); the seed default only holds back an
                // invalidation (T11), never a token that expired.
                let expired = current.expired_at.is_some_and(|at| now >= at);
                if state.backing_off(now) && (self.config.static_stability || !expired) {
                    bump(&self.counters.served_during_backoff);
                    if current.expires_at.is_some_and(|at| now >= at) {
                        bump(&self.counters.served_past_expiry);
                    }
                    return Served::Token(served);
                }
                Served::Wait
            }
        }
    }

    /// A call: served at once, or the blocking refresh to wait for (the one in flight, or a new
    /// one: T1, single-flight).
    fn enter(self: &Arc<Self>, now: Instant) -> Entered<S::Token> {
        let mut state = self.lock();
        match self.decide(&mut state, now) {
            Served::Token(served) => return Entered::Ready(Ok(served)),
            Served::Error(error) => return Entered::Ready(Err(error)),
            Served::Wait => {}
        }
        bump(&self.counters.waits);
        if let Some(blocking) = &state.blocking
            && now < blocking.abandoned_after
        {
            return Entered::Flight(blocking.flight.clone());
        }
        if state.current.as_ref().is_some_and(|c| c.invalidated) {
            bump(&self.counters.invalidated_refreshes);
        }
        state.flights += 1;
        let id = state.flights;
        tracing::debug!(kind = "blocking", "token refresh started");
        let flight = blocking_fetch(
            Arc::downgrade(self),
            self.source.clone(),
            self.config.load_timeout,
            id,
        )
        .boxed()
        .shared();
        state.blocking = Some(Blocking {
            flight: flight.clone(),
            id,
            abandoned_after: now.checked_add(self.config.load_timeout).unwrap_or(now),
        });
        Entered::Flight(flight)
    }

    /// Start a back-off at `now` (a refresh failed): the source is not contacted until it ends,
    /// and the cached token goes stale again only then (T4, T8).
    fn start_backoff(&self, state: &mut State<S::Token>, now: Instant) -> Instant {
        let until = self.config.backoff_until(now);
        state.backoff_until = Some(until);
        if let Some(current) = state.current.as_mut() {
            current.stale_after = Some(until);
        }
        bump(&self.counters.backoffs);
        self.counters.gauges.backing_off();
        until
    }

    /// A token was installed: the back-off is over, and the expiry gauge moves.
    fn installed(&self, state: &State<S::Token>, now: Instant) {
        let left = state
            .current
            .as_ref()
            .and_then(|c| c.expires_at)
            .map(|at| at.saturating_duration_since(now));
        self.counters.gauges.installed(left);
    }

    /// Remember a non-recoverable error for a jittered 1–5 s (T10).
    fn cache_error(&self, state: &mut State<S::Token>, error: &RefreshError, now: Instant) {
        bump(&self.counters.non_recoverable);
        let until = now
            .checked_add(self.config.error_cache_for())
            .unwrap_or(now);
        state.cached_error = Some((error.clone(), until));
    }

    /// Whether a freshly fetched token arrives already inside the mandatory window (or
    /// expired): in the preset that counts as a failed refresh (T9).
    fn unusable(&self, fetched: &Fetched<S::Token>, now: Instant) -> bool {
        self.config.static_stability
            && fetched
                .expiry
                .deadline(now, &*self.config.wall_clock)
                .is_some_and(|at| at.checked_sub(self.config.skew).is_none_or(|at| at <= now))
    }

    /// Spawn the one background refresh (T3). The task holds only a `Weak` to the cache, and
    /// the cache aborts it when dropped.
    fn start_background(self: &Arc<Self>, state: &mut State<S::Token>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::debug!("no Tokio runtime: background refresh skipped");
            return;
        };
        let generation = state.generation;
        bump(&self.counters.background_started);
        tracing::debug!(generation, kind = "background", "token refresh started");
        let cache = Arc::downgrade(self);
        let source = self.source.clone();
        let timeout = self.config.load_timeout;
        let task = runtime.spawn(async move {
            // Numbered as the source is called, not as the task is spawned (it may first run
            // after a blocking fetch started): the numbers must follow the source's order.
            let Some(fetched_as) = cache.upgrade().map(|cache| cache.lock().begin_fetch()) else {
                return;
            };
            let result = fetch(&*source, timeout).await;
            if let Some(cache) = cache.upgrade() {
                cache.finish_background(generation, fetched_as, result);
            }
        });
        state.background = Some(Background {
            task: task.abort_handle(),
            generation,
        });
    }

    /// The background refresh ended without a result (its fetch panicked, or its task was
    /// cancelled or its runtime shut down). Seed 004's failure was exactly this kind of
    /// refresh leaving a flag set for good; here it counts as a failed refresh (T4): a token
    /// of the generation it started from backs off, then the next stale call starts a new one.
    fn background_lost(&self, state: &mut State<S::Token>, now: Instant) {
        let Some(lost) = state.background.take() else {
            return;
        };
        bump(&self.counters.background_failed);
        bump(&self.counters.background_lost);
        if lost.generation != state.generation {
            tracing::warn!(
                kind = "background",
                "token refresh ended without a result (panicked or cancelled); a newer token \
                 was installed meanwhile"
            );
            return;
        }
        let retry_at = self.start_backoff(state, now);
        tracing::warn!(
            retry_in = ?retry_at.saturating_duration_since(now),
            kind = "background",
            "token refresh ended without a result (panicked or cancelled); serving the current \
             token and backing off"
        );
    }

    fn finish_background(
        &self,
        generation: u64,
        fetched_as: u64,
        result: Result<Fetched<S::Token>, RefreshError>,
    ) {
        let now = Instant::now();
        let mut state = self.lock();
        state.background = None;
        if result.as_ref().is_err_and(RefreshError::is_timeout) {
            bump(&self.counters.timeouts);
        }
        if state.generation != generation {
            // T5: a newer token was installed (or the token invalidated) meanwhile.
            bump(&self.counters.background_discarded);
            tracing::debug!(
                started_from = generation,
                current = state.generation,
                succeeded = result.is_ok(),
                kind = "background",
                "token refresh result discarded: a newer token was installed meanwhile"
            );
            return;
        }
        match result {
            Ok(fetched) if self.unusable(&fetched, now) => {
                bump(&self.counters.background_failed);
                bump(&self.counters.unusable_refreshes);
                let retry_at = self.start_backoff(&mut state, now);
                tracing::warn!(
                    retry_in = ?retry_at.saturating_duration_since(now),
                    kind = "background",
                    "refreshed token is already inside the mandatory window; serving the \
                     current token and backing off"
                );
            }
            Ok(fetched) => {
                let generation = state.install(fetched, fetched_as, now, &self.config);
                bump(&self.counters.background_succeeded);
                self.installed(&state, now);
                tracing::debug!(generation, kind = "background", "token refresh succeeded");
            }
            Err(error) if error.is_non_recoverable() => {
                bump(&self.counters.background_failed);
                self.cache_error(&mut state, &error, now);
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    kind = "background",
                    "token refresh failed with a non-recoverable error; no back-off"
                );
            }
            Err(error) => {
                bump(&self.counters.background_failed);
                let retry_at = self.start_backoff(&mut state, now);
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    retry_in = ?retry_at.saturating_duration_since(now),
                    kind = "background",
                    "token refresh failed; serving the current token and backing off"
                );
            }
        }
    }

    /// The cached token handed to the waiters of a failed blocking refresh (T9).
    fn serve_after_failure(
        &self,
        current: &state::Installed<S::Token>,
        now: Instant,
    ) -> (S::Token, Option<Instant>) {
        bump(&self.counters.blocking_served_cached);
        if current.expires_at.is_some_and(|at| now >= at) {
            bump(&self.counters.served_past_expiry);
        }
        (current.token.clone(), current.expires_at)
    }

    /// Install (or not) the result of blocking fetch `fetched_as` and say what its waiters get.
    ///
    /// `Refetch`: the cached token came from a *later* fetch and a server rejected it (T11), so
    /// this result — fetched before it — is no better: the same flight fetches again (at most
    /// [`MAX_REFETCHES`] times), instead of installing an older token.
    fn finish_blocking(
        &self,
        flight: u64,
        fetched_as: u64,
        result: Result<Fetched<S::Token>, RefreshError>,
        refetches: usize,
    ) -> Finished<S::Token> {
        let now = Instant::now();
        let mut state = self.lock();
        let ours = state.blocking.as_ref().is_some_and(|b| b.id == flight);
        let rejected_newer = state
            .current
            .as_ref()
            .is_some_and(|c| c.invalidated && c.fetched_as > fetched_as);
        if result.is_ok() && rejected_newer && ours && refetches < MAX_REFETCHES {
            if let Some(blocking) = state.blocking.as_mut() {
                blocking.abandoned_after = now.checked_add(self.config.load_timeout).unwrap_or(now);
            }
            tracing::debug!(
                kind = "blocking",
                "token refresh result older than a rejected token: fetching again"
            );
            return Finished::Refetch;
        }
        if ours {
            state.blocking = None;
        }
        Finished::Done(self.settle_blocking(&mut state, fetched_as, result, now))
    }

    /// What the waiters of blocking fetch `fetched_as` get, installing its token if it is one.
    fn settle_blocking(
        &self,
        state: &mut State<S::Token>,
        fetched_as: u64,
        result: Result<Fetched<S::Token>, RefreshError>,
        now: Instant,
    ) -> Outcome<S::Token> {
        match result {
            Ok(fetched) => {
                if let Some(newer) = state.newer_than(fetched_as, now) {
                    // While this fetch ran, a background refresh that started after it (from a
                    // token installed meanwhile) installed a newer token: keep that one and hand
                    // it to the waiters, so tokens never go backwards.
                    bump(&self.counters.blocking_superseded);
                    tracing::debug!(
                        kind = "blocking",
                        "token refresh result not installed: a newer token was installed meanwhile"
                    );
                    return Ok((newer.token.clone(), newer.expires_at));
                }
                if self.unusable(&fetched, now) && state.current.is_some() {
                    // T9: a token already inside the mandatory window is a failed refresh.
                    bump(&self.counters.blocking_failures);
                    bump(&self.counters.unusable_refreshes);
                    self.start_backoff(state, now);
                    tracing::warn!(
                        kind = "blocking",
                        "refreshed token is already inside the mandatory window; serving the \
                         cached token and backing off"
                    );
                    if let Some(current) = &state.current {
                        return Ok(self.serve_after_failure(current, now));
                    }
                }
                let token = fetched.token.clone();
                let generation = state.install(fetched, fetched_as, now, &self.config);
                let expires_at = state.current.as_ref().and_then(|c| c.expires_at);
                bump(&self.counters.blocking_succeeded);
                self.installed(state, now);
                tracing::debug!(generation, kind = "blocking", "token refresh succeeded");
                Ok((token, expires_at))
            }
            Err(error) => {
                bump(&self.counters.blocking_failures);
                if error.is_timeout() {
                    bump(&self.counters.timeouts);
                }
                if error.is_non_recoverable() {
                    // T10: at once to every waiter, no back-off, repeated for 1–5 s.
                    self.cache_error(state, &error, now);
                } else if self.config.static_stability && state.current.is_some() {
                    // T9: the request decides whether the cached token still works.
                    let retry_at = self.start_backoff(state, now);
                    tracing::warn!(
                        error = &error as &dyn std::error::Error,
                        retry_in = ?retry_at.saturating_duration_since(now),
                        kind = "blocking",
                        "token refresh failed; serving the cached token and backing off"
                    );
                    if let Some(current) = &state.current {
                        return Ok(self.serve_after_failure(current, now));
                    }
                }
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    kind = "blocking",
                    "token refresh failed; every waiter gets the error"
                );
                Err(error)
            }
        }
    }
}

/// What a call gets without waiting.
enum Served<T> {
    /// A token to use now.
    Token((T, Option<Instant>)),
    /// A cached non-recoverable error (T10).
    Error(RefreshError),
    /// Nothing usable: wait for a blocking refresh.
    Wait,
}

/// How a call proceeds.
enum Entered<T> {
    /// Its outcome, at once.
    Ready(Outcome<T>),
    /// The blocking refresh to wait for (joined or just started).
    Flight(Flight<T>),
}

/// The blocking fetch as a `'static` future every waiter can poll: it holds the source and
/// only a `Weak` to the cache (the cache keeps the flight, so a strong one would be a cycle),
/// and turns a panicking source into [`RefreshError::SourcePanicked`] so that one bad fetch
/// neither unwinds through an unrelated caller nor poisons the shared future.
async fn blocking_fetch<S: TokenSource>(
    cache: Weak<Inner<S>>,
    source: Arc<S>,
    timeout: Duration,
    flight: u64,
) -> Outcome<S::Token> {
    for refetches in 0.. {
        // Numbered as the source is called (see `start_background`); the `Arc` is dropped
        // before the await: the cache keeps this flight, so holding it would be a cycle.
        let Some(fetched_as) = cache.upgrade().map(|cache| {
            bump(&cache.counters.blocking_fetches);
            cache.lock().begin_fetch()
        }) else {
            return Err(RefreshError::SourcePanicked);
        };
        let result = AssertUnwindSafe(fetch(&*source, timeout))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                tracing::warn!(kind = "blocking", "token source panicked while fetching");
                Err(RefreshError::SourcePanicked)
            });
        let Some(cache) = cache.upgrade() else {
            // Unreachable in practice: a waiter polling this flight borrows the cache.
            return Err(result.err().unwrap_or(RefreshError::SourcePanicked));
        };
        match cache.finish_blocking(flight, fetched_as, result, refetches) {
            Finished::Done(outcome) => return outcome,
            Finished::Refetch => {}
        }
    }
    unreachable!("the loop returns once refetches reach MAX_REFETCHES")
}

/// How many times one blocking flight fetches again because its result was older than a
/// rejected token (T11); past it, the result is installed anyway.
const MAX_REFETCHES: usize = 2;

/// How a blocking fetch ends.
enum Finished<T> {
    /// What its waiters get.
    Done(Outcome<T>),
    /// Fetch again.
    Refetch,
}

impl<S: TokenSource> Drop for Inner<S> {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(background) = state.background.take() {
            background.task.abort();
        }
    }
}

/// One fetch, bounded by the load timeout.
async fn fetch<S: TokenSource>(
    source: &S,
    timeout: Duration,
) -> Result<Fetched<S::Token>, RefreshError> {
    match tokio::time::timeout(timeout, source.fetch()).await {
        Ok(Ok(fetched)) => Ok(fetched),
        Ok(Err(error)) if source.is_recoverable(&error) => {
            Err(RefreshError::Source(Arc::new(error)))
        }
        Ok(Err(error)) => Err(RefreshError::NonRecoverable(Arc::new(error))),
        Err(_) => Err(RefreshError::Timeout(timeout)),
    }
}

impl<S: TokenSource> fmt::Debug for TokenCache<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the token itself: only where it stands.
        let now = Instant::now();
        let state = self.inner.lock();
        let left = |at: Option<Instant>| at.map(|at| at.saturating_duration_since(now));
        let current = state.current.as_ref();
        f.debug_struct("TokenCache")
            .field("state", &state.state(now))
            .field("generation", &state.generation)
            .field("expires_in", &left(current.and_then(|c| c.expires_at)))
            .field("stale_in", &left(current.and_then(|c| c.stale_after)))
            .field(
                "background_refresh",
                &state.background.as_ref().is_some_and(|b| !b.is_lost()),
            )
            .field("stats", &self.inner.counters.snapshot())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
