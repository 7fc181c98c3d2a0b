//! `Inspector`: the shared handle to the ring, its layer, its counters and its filters.

use std::sync::{Arc, OnceLock, Weak};

use http::Method;

use crate::ring::{Counters, Ring, STRIPES, Spares, stripe};
use crate::telemetry::Metrics;
use crate::{Entry, FilterError, InspectorConfig, InspectorLayer, InspectorStats};

/// State shared by the layer, its services, in-flight captures and the handle.
///
/// Aligned to a cache line so that the `Arc`'s counts (written by every thread each time a
/// service is cloned for a request) do not share a line with the configuration every request
/// reads (issue #23: false sharing between two threads).
#[derive(Debug)]
#[repr(align(64))]
pub(crate) struct Shared {
    pub(crate) config: InspectorConfig,
    pub(crate) ring: Ring,
    pub(crate) counters: Counters,
    /// Evicted records' arenas, kept for reuse.
    pub(crate) spares: Spares,
    pub(crate) metrics: Metrics,
    /// The wall clock and the (tokio) monotonic clock read once, when the inspector was made: an
    /// entry's `started_at_unix_ms` is derived from its start instant, one clock read less per
    /// captured request.
    pub(crate) epoch: Epoch,
    /// The inspector's [`Shards`], one per thread stripe, reachable from any [`Shard`] (set
    /// once, by [`Inspector::new`]): a service cloned on another thread than the one its source
    /// was cloned on finds that thread's shard here. Weak: the shards hold the state.
    pub(crate) stripes: OnceLock<[Weak<Shard>; STRIPES]>,
}

impl Drop for Shared {
    /// The ring's gauges move by increments (summed over the inspectors of a process): this
    /// inspector's part is taken out of them when it goes.
    fn drop(&mut self) {
        let held = self.counters.snapshot(self.ring.capacity(), &self.spares);
        self.metrics.ring_entries.decrement(held.ring_len);
        self.metrics
            .ring_bytes
            .decrement(held.ring_bytes + held.ring_slot_bytes);
    }
}

impl Shared {
    /// The inspector's shard for `stripe`, while its shards live (they live as long as the
    /// inspector, a layer or a service a layer made; a clone that outlives them all keeps the
    /// shard it has).
    fn shard_for(&self, stripe: usize) -> Option<Arc<Shard>> {
        self.stripes.get()?[stripe].upgrade()
    }
}

/// One of the inspector's holds on [`Shared`], alone on its cache lines: the reference count of
/// its `Arc` is written only by the clones (and captures) of one thread stripe.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct Shard {
    shared: Arc<Shared>,
    /// The thread stripe whose clones and captures hold this shard.
    stripe: usize,
}

impl std::ops::Deref for Shard {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.shared
    }
}

impl Shard {
    /// A shard of its own (tests).
    #[cfg(test)]
    pub(crate) fn new(shared: Arc<Shared>) -> Arc<Self> {
        Arc::new(Self { shared, stripe: 0 })
    }

    /// A hold for this thread: this shard when this thread's stripe is its own, else the
    /// inspector's shard for this thread's stripe (this one if the shards are gone).
    fn here(self: &Arc<Self>) -> Arc<Self> {
        let here = stripe();
        if self.stripe == here {
            return Arc::clone(self);
        }
        self.shared
            .shard_for(here)
            .unwrap_or_else(|| Arc::clone(self))
    }
}

/// The inspector's shards: one [`Shard`] per thread stripe, each in an allocation of 256 bytes,
/// made once per inspector (by [`Inspector::new`]) and shared by its layers.
#[derive(Debug)]
pub(crate) struct Shards([Arc<Shard>; STRIPES]);

impl Shards {
    /// The shards of `shared`, which is made to know them (once: a second call makes shards
    /// that `shared` does not know, which is still correct, only never looked up).
    pub(crate) fn new(shared: &Arc<Shared>) -> Arc<Self> {
        let shards = Self(std::array::from_fn(|stripe| {
            Arc::new(Shard {
                shared: Arc::clone(shared),
                stripe,
            })
        }));
        let _ = shared
            .stripes
            .set(std::array::from_fn(|i| Arc::downgrade(&shards.0[i])));
        Arc::new(shards)
    }
}

/// A service's hold on [`Shared`] (issue #23). axum, tower's `oneshot` and the bench clone a
/// service for every request, and each clone takes and drops a reference count: with one
/// `Arc`, that count was a cache line every thread wrote twice per request (and each capture
/// twice more, for its record). The service a layer makes (a root) holds the inspector's
/// [`Shards`]; a clone of it holds the shard of the thread that cloned it (the root's own count
/// is not touched), and a capture takes its record's hold the same way. A clone of a clone made
/// on another thread takes that thread's shard too: axum's server clones the service for a
/// connection on the thread that accepts it, and then for each request on whichever thread
/// runs the connection. Threads of different stripes write different counts.
#[derive(Debug)]
pub(crate) struct Handle(Hold);

#[derive(Debug)]
enum Hold {
    Root(Arc<Shards>),
    Clone(Arc<Shard>),
}

impl Handle {
    /// The root hold of a service a layer makes.
    pub(crate) fn root(shards: &Arc<Shards>) -> Self {
        Self(Hold::Root(Arc::clone(shards)))
    }

    /// A shard to read the state through: a clone's own, or the root's for this thread's
    /// stripe (no count taken).
    pub(crate) fn shard(&self) -> &Arc<Shard> {
        match &self.0 {
            Hold::Root(shards) => &shards.0[stripe()],
            Hold::Clone(shard) => shard,
        }
    }

    /// A hold on the state for this thread: a count taken on this thread's stripe's shard.
    pub(crate) fn hold(&self) -> Arc<Shard> {
        match &self.0 {
            Hold::Root(shards) => Arc::clone(&shards.0[stripe()]),
            Hold::Clone(shard) => shard.here(),
        }
    }
}

impl Clone for Handle {
    fn clone(&self) -> Self {
        Self(Hold::Clone(self.hold()))
    }
}

/// A wall-clock time and the monotonic instant read with it.
#[derive(Debug)]
pub(crate) struct Epoch {
    instant: tokio::time::Instant,
    unix_ms: u64,
}

impl Epoch {
    pub(crate) fn now() -> Self {
        Self {
            instant: tokio::time::Instant::now(),
            unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }
    }

    /// Milliseconds since the Unix epoch at `instant`.
    pub(crate) fn unix_ms(&self, instant: tokio::time::Instant) -> u64 {
        let since = instant.saturating_duration_since(self.instant).as_millis();
        self.unix_ms
            .saturating_add(u64::try_from(since).unwrap_or(u64::MAX))
    }
}

/// The inspector: make its [`layer`](Self::layer), read its ring and counters.
///
/// Cloning is cheap; every clone (and every layer made from it) shares one ring.
#[derive(Debug, Clone)]
pub struct Inspector {
    pub(crate) shared: Arc<Shared>,
    shards: Arc<Shards>,
}

impl Inspector {
    /// An inspector with `config`.
    ///
    /// With the feature `metrics` (default), its series are registered here, with the recorder
    /// installed at this point (none: nothing is recorded); see the guide's Metrics section.
    pub fn new(config: InspectorConfig) -> Self {
        let ring = Ring::new(config.capacity);
        let shared = Arc::new(Shared {
            config,
            ring,
            counters: Counters::default(),
            spares: Spares::default(),
            metrics: Metrics::new(),
            epoch: Epoch::now(),
            stripes: OnceLock::new(),
        });
        let shards = Shards::new(&shared);
        Self { shared, shards }
    }

    /// The tower layer that records into this inspector. Its service takes and gives any
    /// [`http_body`] 1.x body, wrapped in an [`InspectBody`](crate::InspectBody).
    ///
    /// Its services hold the inspector's 8 shared handles (one per thread stripe, made with
    /// the inspector), so that their clones on different threads never write the same
    /// reference count.
    pub fn layer(&self) -> InspectorLayer {
        InspectorLayer::new(Arc::clone(&self.shards))
    }

    /// The same layer for axum (feature `axum`): requests and responses keep axum's `Body`, and
    /// only a captured exchange's bodies are wrapped, so a polling GET is handed on untouched
    /// (no body boxed on its way to the handler or back). Prefer it in an axum application,
    /// with `Router::layer` or around a `Router`. Its services hold the inspector's shared
    /// handles as [`layer`](Self::layer)'s do:
    ///
    /// ```
    /// use axum::{Router, routing::get};
    /// use request_inspector::{Inspector, InspectorConfig};
    ///
    /// let inspector = Inspector::new(InspectorConfig::new().polling_prefixes(["/api/monitor"])?);
    /// let app: Router = Router::new()
    ///     .route("/api/monitor/aks", get(|| async { "[]" }))
    ///     .layer(inspector.axum_layer());
    /// # Ok::<(), request_inspector::ConfigError>(())
    /// ```
    #[cfg(feature = "axum")]
    pub fn axum_layer(&self) -> crate::AxumInspectorLayer {
        crate::AxumInspectorLayer::new(Arc::clone(&self.shards))
    }

    /// Whether a request to `path` with `method` would be captured (I4): everything except a
    /// `GET` under a polling prefix; `None` counts as non-GET. See
    /// [`PollingPrefixes`](crate::PollingPrefixes) for the matching rule.
    pub fn should_capture(&self, path: &str, method: Option<&Method>) -> bool {
        self.shared.config.polling.should_capture(path, method)
    }

    /// The ring's entries, newest first.
    ///
    /// The handles are copied out slot by slot, each slot's lock held only to copy one (there is
    /// no lock over the whole ring), and the list is built after: a large ring does not hold up
    /// the requests being recorded. The list is a run of consecutive ids; once writers are
    /// quiet, exactly the newest `min(captured, capacity)` since the last [`clear`](Self::clear).
    pub fn entries(&self) -> Vec<Arc<Entry>> {
        self.shared.ring.entries(&self.shared.counters)
    }

    /// The entries `filter` keeps, newest first (copied as [`entries`](Self::entries) copies).
    pub fn entries_matching(&self, filter: &EntryFilter) -> Vec<Arc<Entry>> {
        let snapshot = self.shared.ring.snapshot(&self.shared.counters);
        snapshot
            .iter()
            .filter(|record| record.matches(filter))
            .take(filter.limit.unwrap_or(usize::MAX))
            .map(|record| Arc::new(record.to_entry()))
            .collect()
    }

    /// The counters, including the bytes the layer holds right now and at its peak. Reads
    /// atomics only: it takes no lock.
    pub fn stats(&self) -> InspectorStats {
        self.shared
            .counters
            .snapshot(self.shared.ring.capacity(), &self.shared.spares)
    }

    /// Empty the ring (its records are freed; its slots, 16 bytes per entry of capacity reached,
    /// are kept, as a `Vec` keeps its capacity) and free the arenas kept for reuse. Counters other
    /// than the byte counts are kept; ids go on from where they were. A capture finishing while
    /// the clear runs may land after it.
    pub fn clear(&self) {
        // A clear shrinks what is held: the peak is noted first (a read does it), or the bytes
        // held since the last finished capture would never count.
        let _ = self.stats();
        let _dropped = self
            .shared
            .ring
            .clear(&self.shared.counters, &self.shared.metrics);
        self.shared.spares.clear();
    }

    /// The configuration.
    pub fn config(&self) -> &InspectorConfig {
        &self.shared.config
    }

    /// The ring's capacity in entries.
    pub fn capacity(&self) -> usize {
        self.shared.ring.capacity()
    }
}

/// Which entries to return: by method, by status code or class, at most `limit`.
///
/// ```
/// use request_inspector::EntryFilter;
///
/// let filter = EntryFilter::parse(Some("post"), Some("4xx"))?.limit(10);
/// # let _ = filter;
/// # Ok::<(), request_inspector::FilterError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryFilter {
    method: Option<Method>,
    status: Option<StatusFilter>,
    owner: Option<String>,
    limit: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StatusFilter {
    Code(u16),
    /// 1 to 5: `1xx` … `5xx`.
    Class(u16),
}

impl EntryFilter {
    /// Keep everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parse the handler's query values: `method` is case-insensitive (`post` = `POST`);
    /// `status` is a code (`404`) or a class (`4xx`, `4XX`).
    pub fn parse(method: Option<&str>, status: Option<&str>) -> Result<Self, FilterError> {
        let mut filter = Self::new();
        if let Some(raw) = method.map(str::trim).filter(|m| !m.is_empty()) {
            let upper = raw.to_ascii_uppercase();
            filter.method = Some(Method::from_bytes(upper.as_bytes()).map_err(|_| {
                FilterError::InvalidMethod {
                    value: raw.to_string(),
                }
            })?);
        }
        if let Some(raw) = status.map(str::trim).filter(|s| !s.is_empty()) {
            filter.status = Some(parse_status(raw)?);
        }
        Ok(filter)
    }

    /// Keep only entries with this method.
    pub fn method(mut self, method: Method) -> Self {
        self.method = Some(method);
        self
    }

    /// Keep only entries with this status code.
    pub fn status(mut self, code: u16) -> Self {
        self.status = Some(StatusFilter::Code(code));
        self
    }

    /// Keep only entries recorded with this owner (see
    /// [`InspectorConfig::owner_from`](crate::InspectorConfig::owner_from)): serve each caller
    /// only its own requests.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// Return at most `n` entries (the newest).
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }

    /// Whether `entry` passes the method, status and owner filters.
    pub fn matches(&self, entry: &Entry) -> bool {
        self.matches_parts(
            entry.method.as_bytes(),
            entry.status,
            entry.owner.as_deref().map(str::as_bytes),
        )
    }

    /// [`matches`](Self::matches) on a record's fields, before any entry is made of it.
    pub(crate) fn matches_parts(
        &self,
        method: &[u8],
        status: Option<u16>,
        owner: Option<&[u8]>,
    ) -> bool {
        let method_ok = self
            .method
            .as_ref()
            .is_none_or(|m| m.as_str().as_bytes() == method);
        let status_ok = match self.status {
            None => true,
            Some(StatusFilter::Code(code)) => status == Some(code),
            Some(StatusFilter::Class(class)) => status.is_some_and(|s| s / 100 == class),
        };
        let owner_ok = self
            .owner
            .as_ref()
            .is_none_or(|o| owner == Some(o.as_bytes()));
        method_ok && status_ok && owner_ok
    }
}

fn parse_status(raw: &str) -> Result<StatusFilter, FilterError> {
    let invalid = || FilterError::InvalidStatus {
        value: raw.to_string(),
    };
    let bytes = raw.as_bytes();
    if bytes.len() != 3 {
        return Err(invalid());
    }
    if bytes[1..].eq_ignore_ascii_case(b"xx") {
        return match bytes[0] {
            c @ b'1'..=b'5' => Ok(StatusFilter::Class(u16::from(c - b'0'))),
            _ => Err(invalid()),
        };
    }
    match raw.parse::<u16>() {
        Ok(code @ 100..=999) => Ok(StatusFilter::Code(code)),
        _ => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_filters_parse_codes_and_classes() {
        assert_eq!(parse_status("404").unwrap(), StatusFilter::Code(404));
        assert_eq!(parse_status("4xx").unwrap(), StatusFilter::Class(4));
        assert_eq!(parse_status("5XX").unwrap(), StatusFilter::Class(5));
        for bad in ["", "6xx", "0xx", "40", "4044", "abc", "-12", "099"] {
            assert!(parse_status(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            EntryFilter::parse(Some("GE T"), None),
            Err(FilterError::InvalidMethod { .. })
        ));
        assert_eq!(
            EntryFilter::parse(Some("delete"), None).unwrap(),
            EntryFilter::new().method(Method::DELETE)
        );
    }

    // Issue #23: a clone of a layer's service holds the shard of the thread that cloned it and
    // leaves the root's count alone; a clone of that clone keeps its shard on the same thread.
    // Each thread's count moves only on its own stripe's shard (a thread's stripe is given
    // round-robin, so the two threads may share one when other tests' threads took the stripes
    // between them).
    #[test]
    fn clones_count_on_their_threads_shard_and_leave_the_root_alone() {
        let inspector = Inspector::new(InspectorConfig::new());
        let shards = Arc::clone(&inspector.shards);
        let root = Handle::root(&shards);
        let roots = Arc::strong_count(&shards);
        let shared = Arc::strong_count(&inspector.shared);
        let clones: Vec<(usize, Handle, Handle)> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    scope.spawn(|| {
                        let clone = root.clone();
                        let again = clone.clone();
                        (stripe(), clone, again)
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        assert_eq!(
            Arc::strong_count(&shards),
            roots,
            "the root's count never moved"
        );
        assert_eq!(
            Arc::strong_count(&inspector.shared),
            shared,
            "nor the state's"
        );
        for (stripe, clone, again) in &clones {
            assert!(Arc::ptr_eq(clone.shard(), &shards.0[*stripe]));
            assert!(Arc::ptr_eq(again.shard(), clone.shard()));
        }
        for (i, shard) in shards.0.iter().enumerate() {
            let holders = clones.iter().filter(|(stripe, ..)| *stripe == i).count();
            assert_eq!(Arc::strong_count(shard), 1 + 2 * holders, "shard {i}");
        }
        drop(clones);
        assert!(shards.0.iter().all(|shard| Arc::strong_count(shard) == 1));
    }

    // Issue #23: a service cloned on one thread and used on another (axum's server clones it for
    // a connection on the accepting thread, then per request on the connection's thread) takes
    // the shard of the thread it is cloned on, and a capture's hold is taken there too; once
    // the inspector, its layers and their services are gone, a clone keeps the shard it has.
    #[test]
    fn a_clone_moved_to_another_thread_counts_on_that_threads_shard() {
        let inspector = Inspector::new(InspectorConfig::new());
        let shards = Arc::clone(&inspector.shards);
        let root = Handle::root(&shards);
        let spawn = |handle: Handle| {
            std::thread::spawn(move || {
                let here = stripe();
                let clone = handle.clone();
                let hold = handle.hold();
                (here, handle, clone, hold)
            })
            .join()
            .unwrap()
        };
        let (origin, moved) = (stripe(), root.clone());
        assert!(Arc::ptr_eq(moved.shard(), &shards.0[origin]));
        // A thread of another stripe (stripes are given round-robin: one of the next 8 threads).
        let mut moved = moved;
        let (here, moved, clone, hold) = loop {
            let (here, back, clone, hold) = spawn(moved);
            if here != origin {
                break (here, back, clone, hold);
            }
            moved = back;
        };
        assert!(Arc::ptr_eq(moved.shard(), &shards.0[origin]), "kept");
        assert!(Arc::ptr_eq(clone.shard(), &shards.0[here]), "this thread's");
        assert!(Arc::ptr_eq(&hold, &shards.0[here]));
        drop((clone, hold, root, shards, inspector));
        // Only `moved` holds the state now: its clones keep its shard.
        let (_, moved, clone, hold) = spawn(moved);
        assert!(Arc::ptr_eq(clone.shard(), moved.shard()));
        assert!(Arc::ptr_eq(&hold, moved.shard()));
        assert_eq!(Arc::strong_count(moved.shard()), 3);
    }
}
