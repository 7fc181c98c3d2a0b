//! Cheap counters: striped atomics on the hit path, a plain snapshot struct for readers.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

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
    /// Misses that were served by another caller's creation (single-flight followers).
    pub coalesced: u64,
    /// Factory calls that produced a pooled value.
    pub creations: u64,
    /// Factory calls that failed.
    pub creation_failures: u64,
    /// Factory calls that produced a value that could not be pooled (P6).
    pub one_shots: u64,
    /// Evictions by cause.
    pub evictions: Evictions,
    /// Misses on keys that a capacity eviction had removed recently (among the last
    /// `max_entries` capacity evictions): the working set does not fit and the pool thrashes.
    /// While it does, capacity eviction keeps entries hit since insertion resident and a warning
    /// naming the capacity setting is logged once a minute.
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
    pub(crate) fn add(&self, n: u64) {
        self.stripes[stripe_index()]
            .0
            .fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }
}

/// The live counters behind [`PoolStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) hits: Striped,
    pub(crate) misses: Striped,
    pub(crate) coalesced: Striped,
    pub(crate) creations: Striped,
    pub(crate) creation_failures: Striped,
    pub(crate) one_shots: Striped,
    pub(crate) idle: Striped,
    pub(crate) expired: Striped,
    pub(crate) capacity: Striped,
    pub(crate) owner_gone: Striped,
    pub(crate) reset: Striped,
    pub(crate) invalidated: Striped,
    pub(crate) retire_failures: Striped,
    pub(crate) thrashing: Striped,
}

impl Counters {
    pub(crate) fn evicted(&self, cause: EvictionCause, n: usize) {
        let counter = match cause {
            EvictionCause::Idle => &self.idle,
            EvictionCause::Expired => &self.expired,
            EvictionCause::Capacity => &self.capacity,
            EvictionCause::OwnerGone => &self.owner_gone,
            EvictionCause::Reset => &self.reset,
            EvictionCause::Invalidated => &self.invalidated,
        };
        counter.add(n as u64);
    }

    pub(crate) fn snapshot(&self, entries: usize) -> PoolStats {
        PoolStats {
            entries,
            hits: self.hits.get(),
            misses: self.misses.get(),
            coalesced: self.coalesced.get(),
            creations: self.creations.get(),
            creation_failures: self.creation_failures.get(),
            one_shots: self.one_shots.get(),
            evictions: Evictions {
                idle: self.idle.get(),
                expired: self.expired.get(),
                capacity: self.capacity.get(),
                owner_gone: self.owner_gone.get(),
                reset: self.reset.get(),
                invalidated: self.invalidated.get(),
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
