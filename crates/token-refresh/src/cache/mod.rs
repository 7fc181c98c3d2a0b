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
                counters: Counters::default(),
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
        if let Some(served) = self.inner.serve_cached(Instant::now()) {
            return Ok(served);
        }
        bump(&self.inner.counters.waits);
        match self.inner.join_blocking(Instant::now()) {
            Joined::Installed(served) => Ok(served),
            Joined::Flight(flight) => flight.await,
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

    /// The cached token if it may be served now; starts a background refresh if it is stale.
    fn serve_cached(self: &Arc<Self>, now: Instant) -> Option<(S::Token, Option<Instant>)> {
        let mut state = self.lock();
        let current = state.current.as_ref()?;
        let phase = current.state(now);
        let served = (current.token.clone(), current.expires_at);
        match phase {
            TokenState::Fresh => bump(&self.counters.fresh_hits),
            TokenState::Stale => {
                bump(&self.counters.stale_hits);
                if state.background.as_ref().is_some_and(Background::is_lost) {
                    self.background_lost(&mut state, now);
                }
                // A lost refresh of this token backed off (it may be fresh again now); one of
                // an older token left nothing to back off from, so a new one starts at once.
                if state.background.is_none() && state.state(now) == TokenState::Stale {
                    self.start_background(&mut state);
                }
            }
            TokenState::Expired | TokenState::Empty => return None,
        }
        Some(served)
    }

    /// Spawn the one background refresh (T3). The task holds only a `Weak` to the cache, and
    /// the cache aborts it when dropped.
    fn start_background(self: &Arc<Self>, state: &mut State<S::Token>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::debug!("no Tokio runtime: background refresh skipped");
            return;
        };
        let generation = state.generation;
        let fetched_as = state.begin_fetch();
        bump(&self.counters.background_started);
        tracing::debug!(generation, kind = "background", "token refresh started");
        let cache = Arc::downgrade(self);
        let source = self.source.clone();
        let timeout = self.config.load_timeout;
        let task = runtime.spawn(async move {
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
        let retry_at = self.config.backoff_until(now);
        if let Some(current) = state.current.as_mut() {
            current.stale_after = Some(retry_at);
        }
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
            Ok(fetched) => {
                let generation = state.install(fetched, fetched_as, now, &self.config);
                bump(&self.counters.background_succeeded);
                tracing::debug!(generation, kind = "background", "token refresh succeeded");
            }
            Err(error) => {
                bump(&self.counters.background_failed);
                let retry_at = self.config.backoff_until(now);
                if let Some(current) = state.current.as_mut() {
                    current.stale_after = Some(retry_at);
                }
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    retry_in = ?retry_at.saturating_duration_since(now),
                    kind = "background",
                    "token refresh failed; serving the current token and backing off"
                );
            }
        }
    }

    /// A usable token installed meanwhile, or the blocking refresh to wait for: the one in
    /// flight, or a new one (T1, single-flight).
    fn join_blocking(self: &Arc<Self>, now: Instant) -> Joined<S::Token> {
        let mut state = self.lock();
        // Another flight may have installed a usable token between our check and this one.
        if let Some(current) = &state.current
            && current.state(now) != TokenState::Expired
        {
            return Joined::Installed((current.token.clone(), current.expires_at));
        }
        if let Some(blocking) = &state.blocking
            && now < blocking.abandoned_after
        {
            return Joined::Flight(blocking.flight.clone());
        }
        let fetched_as = state.begin_fetch();
        bump(&self.counters.blocking_fetches);
        tracing::debug!(kind = "blocking", "token refresh started");
        let flight = blocking_fetch(
            Arc::downgrade(self),
            self.source.clone(),
            self.config.load_timeout,
            fetched_as,
        )
        .boxed()
        .shared();
        state.blocking = Some(Blocking {
            flight: flight.clone(),
            fetched_as,
            abandoned_after: now.checked_add(self.config.load_timeout).unwrap_or(now),
        });
        Joined::Flight(flight)
    }

    /// Install (or not) the result of blocking fetch `fetched_as` and say what its waiters get.
    fn finish_blocking(
        &self,
        fetched_as: u64,
        result: Result<Fetched<S::Token>, RefreshError>,
    ) -> Outcome<S::Token> {
        let now = Instant::now();
        let mut state = self.lock();
        if state
            .blocking
            .as_ref()
            .is_some_and(|b| b.fetched_as == fetched_as)
        {
            state.blocking = None;
        }
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
                let token = fetched.token.clone();
                let generation = state.install(fetched, fetched_as, now, &self.config);
                let expires_at = state.current.as_ref().and_then(|c| c.expires_at);
                tracing::debug!(generation, kind = "blocking", "token refresh succeeded");
                Ok((token, expires_at))
            }
            Err(error) => {
                bump(&self.counters.blocking_failures);
                if error.is_timeout() {
                    bump(&self.counters.timeouts);
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

/// What a caller who found no usable token waits for.
enum Joined<T> {
    /// A usable token was installed meanwhile.
    Installed((T, Option<Instant>)),
    /// The blocking refresh in flight (joined or just started).
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
    fetched_as: u64,
) -> Outcome<S::Token> {
    let result = AssertUnwindSafe(fetch(&*source, timeout))
        .catch_unwind()
        .await
        .unwrap_or_else(|_| {
            tracing::warn!(kind = "blocking", "token source panicked while fetching");
            Err(RefreshError::SourcePanicked)
        });
    match cache.upgrade() {
        Some(cache) => cache.finish_blocking(fetched_as, result),
        // Unreachable in practice: a waiter polling this flight borrows the cache.
        None => Err(result.err().unwrap_or(RefreshError::SourcePanicked)),
    }
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
        Ok(Err(error)) => Err(RefreshError::Source(Arc::new(error))),
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
