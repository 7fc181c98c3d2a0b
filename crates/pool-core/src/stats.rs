//! Cheap counters: striped atomics on the hit path, a plain snapshot struct for readers, each
//! counter feeding its metric (see `telemetry`).

use std::borrow::Cow;
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::telemetry::{Counter, Gauge, Histogram, PoolMetrics, cause_index};

/// Why an entry left the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EvictionCause {
    /// Unused for longer than the idle TTL (P3).
    Idle,
    /// Its deadline passed (P2).
    Expired,
    /// The pool was full and it had the soonest deadline (P4).
    Capacity,
    /// What it was built for is gone, e.g. its credential was dropped (B4).
    OwnerGone,
    /// [`KeyedPool::reset`](crate::KeyedPool::reset) or shutdown (P7).
    Reset,
    /// Removed explicitly by [`KeyedPool::invalidate`](crate::KeyedPool::invalidate).
    Invalidated,
}

/// Evictions by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Evictions {
    /// See [`EvictionCause::Idle`].
    pub idle: u64,
    /// See [`EvictionCause::Expired`].
    pub expired: u64,
    /// See [`EvictionCause::Capacity`].
    pub capacity: u64,
    /// See [`EvictionCause::OwnerGone`].
    pub owner_gone: u64,
    /// See [`EvictionCause::Reset`].
    pub reset: u64,
    /// See [`EvictionCause::Invalidated`].
    pub invalidated: u64,
}

impl Evictions {
    /// All evictions, whatever the cause.
    pub fn total(&self) -> u64 {
        self.idle + self.expired + self.capacity + self.owner_gone + self.reset + self.invalidated
    }
}

/// A snapshot of a pool's counters (P9). Counters only grow; `entries` is the current size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Entries in the pool now.
    pub entries: usize,
    /// Lookups served from the pool.
    pub hits: u64,
    /// Lookups that found nothing usable and went to the single-flight creation path.
    pub misses: u64,
    /// Misses that were served by another caller's creation: single-flight followers, and a
    /// caller that found the value installed between its lookup and its turn to create.
    pub coalesced: u64,
    /// Factory calls that produced a pooled value.
    pub creations: u64,
    /// Factory calls that failed.
    pub creation_failures: u64,
    /// Factory calls that produced a value that could not be pooled (P6).
    pub one_shots: u64,
    /// Evictions by cause.
    pub evictions: Evictions,
    /// Misses on keys that a capacity eviction had removed recently (the pool remembers up to
    /// four victims per entry of capacity, at most 65 536: see the guide's "Thrashing"): the
    /// working set does not fit and the pool thrashes.
    /// While it does, capacity eviction keeps a protected subset of the returning keys
    /// resident and a warning naming the capacity setting is logged once a minute.
    pub thrashing: u64,
    /// Retires that returned an error, panicked, timed out or could not run.
    pub retire_failures: u64,
}

/// Number of stripes of a [`Striped`] counter: enough for the cores this runs on, each stripe on
/// its own cache line, so concurrent hits on different threads never write the same line.
const STRIPES: usize = 16;

#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

/// A counter striped by thread, for the hit path.
#[derive(Debug, Default)]
pub(crate) struct Striped {
    stripes: [Padded; STRIPES],
}

thread_local! {
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

fn stripe_index() -> usize {
    STRIPE.with(|cell| {
        let index = cell.get();
        if index != usize::MAX {
            return index;
        }
        let index = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
        cell.set(index);
        index
    })
}

impl Striped {
    /// Add `n`; returns this thread's stripe after the add.
    pub(crate) fn add(&self, n: u64) -> u64 {
        self.stripes[stripe_index()]
            .0
            .fetch_add(n, Ordering::Relaxed)
            .wrapping_add(n)
    }

    pub(crate) fn get(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }
}

/// A striped counter and the metric it feeds, added to together.
#[derive(Debug, Default)]
pub(crate) struct Counted {
    striped: Striped,
    metric: Counter,
}

impl Counted {
    fn new(metric: Counter) -> Self {
        Self {
            striped: Striped::default(),
            metric,
        }
    }

    pub(crate) fn add(&self, n: u64) {
        self.striped.add(n);
        self.metric.add(n);
    }

    pub(crate) fn get(&self) -> u64 {
        self.striped.get()
    }
}

/// Hits between two publications of one thread's hits to the metric.
const HIT_BATCH: u64 = 64;

/// The hit counter: the hit path adds to its stripe only; the metric receives the difference
/// since the last publication every [`HIT_BATCH`] hits of a stripe and on [`publish`]
/// (every miss and stats read), so a hit never writes a cache line shared with other threads.
///
/// [`publish`]: Self::publish
#[derive(Debug, Default)]
pub(crate) struct Hits {
    striped: Striped,
    published: AtomicU64,
    metric: Counter,
}

impl Hits {
    pub(crate) fn add(&self, n: u64) {
        let stripe = self.striped.add(n);
        if cfg!(feature = "metrics") && stripe.is_multiple_of(HIT_BATCH) {
            self.publish();
        }
    }

    pub(crate) fn get(&self) -> u64 {
        self.striped.get()
    }

    /// Hand the metric every hit counted since the last publication. Concurrent publications
    /// never count a hit twice: the published total only grows, and each adds what it raised.
    pub(crate) fn publish(&self) {
        if !cfg!(feature = "metrics") {
            return;
        }
        let total = self.striped.get();
        let before = self.published.fetch_max(total, Ordering::Relaxed);
        if total > before {
            self.metric.add(total - before);
        }
    }
}

/// The live counters behind [`PoolStats`], each feeding its metric.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) hits: Hits,
    pub(crate) misses: Counted,
    pub(crate) coalesced: Counted,
    pub(crate) creations: Counted,
    pub(crate) creation_failures: Counted,
    pub(crate) one_shots: Counted,
    /// Indexed by [`cause_index`].
    evictions: [Counted; 6],
    pub(crate) retire_failures: Counted,
    pub(crate) thrashing: Counted,
    /// `pool.entries`, moved by inserts and evictions.
    pub(crate) entries: Gauge,
    /// `pool.create.duration` of factory calls that succeeded.
    pub(crate) create_ok: Histogram,
    /// `pool.create.duration` of factory calls that failed.
    pub(crate) create_error: Histogram,
}

impl Counters {
    /// Counters whose metrics carry this pool name.
    pub(crate) fn new(name: Cow<'static, str>) -> Self {
        let m = PoolMetrics::new(name);
        Self {
            hits: Hits {
                metric: m.hits,
                ..Hits::default()
            },
            misses: Counted::new(m.misses),
            coalesced: Counted::new(m.coalesced),
            creations: Counted::new(m.creations),
            creation_failures: Counted::new(m.creation_failures),
            one_shots: Counted::new(m.one_shots),
            evictions: m.evictions.map(Counted::new),
            retire_failures: Counted::new(m.retire_failures),
            thrashing: Counted::new(m.thrashing),
            entries: m.entries,
            create_ok: m.create_ok,
            create_error: m.create_error,
        }
    }

    /// Count `n` entries leaving the pool for `cause`.
    pub(crate) fn evicted(&self, cause: EvictionCause, n: usize) {
        self.evictions[cause_index(cause)].add(n as u64);
        self.entries.sub(n);
    }

    fn eviction(&self, cause: EvictionCause) -> u64 {
        self.evictions[cause_index(cause)].get()
    }

    pub(crate) fn snapshot(&self, entries: usize) -> PoolStats {
        self.hits.publish();
        PoolStats {
            entries,
            hits: self.hits.get(),
            misses: self.misses.get(),
            coalesced: self.coalesced.get(),
            creations: self.creations.get(),
            creation_failures: self.creation_failures.get(),
            one_shots: self.one_shots.get(),
            evictions: Evictions {
                idle: self.eviction(EvictionCause::Idle),
                expired: self.eviction(EvictionCause::Expired),
                capacity: self.eviction(EvictionCause::Capacity),
                owner_gone: self.eviction(EvictionCause::OwnerGone),
                reset: self.eviction(EvictionCause::Reset),
                invalidated: self.eviction(EvictionCause::Invalidated),
            },
            thrashing: self.thrashing.get(),
            retire_failures: self.retire_failures.get(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn striped_counter_sums_across_threads() {
        let counter = std::sync::Arc::new(Striped::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let counter = counter.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        counter.add(1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(counter.get(), 4000);
    }
}
