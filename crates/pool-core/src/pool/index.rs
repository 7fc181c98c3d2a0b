//! The capacity index kept beside the shards: entries ordered by eviction rank, the entries not
//! hit since insertion, and the ghosts of recently capacity-evicted keys.
//!
//! Every change to the shards' membership happens under the index lock (index first, then one
//! shard's write lock), so the two always agree. The hit path never takes it: a hit only stores
//! the slot's last-used time and hit flag, and the index catches up lazily when an entry reaches
//! the front of the order (see [`Index::victim`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::Slot;

/// Stale last-use ranks refreshed per victim search at most: keeps one eviction O(log n) even
/// when every entry was hit since it was indexed (the refreshes owed are paid a few per eviction).
const REFRESH_LIMIT: usize = 8;

/// Where an entry stands in the capacity order: soonest deadline first (none = never, last),
/// then least recently used (as last indexed), then oldest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    no_deadline: bool,
    deadline: Option<Instant>,
    last_used: u64,
    id: u64,
}

impl Rank {
    fn of<V>(slot: &Slot<V>) -> Self {
        Self {
            no_deadline: slot.deadline.is_none(),
            deadline: slot.deadline,
            last_used: slot.indexed_use.load(Ordering::Relaxed),
            id: slot.id,
        }
    }
}

struct Entry<K, V> {
    key: K,
    hash: u64,
    slot: Arc<Slot<V>>,
}

/// A capacity victim: what to remove from the shards.
pub(crate) struct Victim<K> {
    pub(crate) key: K,
    pub(crate) hash: u64,
    pub(crate) id: u64,
}

pub(crate) struct Index<K, V> {
    order: BTreeMap<Rank, Entry<K, V>>,
    /// Entries not hit since insertion, by id (insertion order). Entries hit since are removed
    /// lazily, when a search meets them.
    probation: BTreeMap<u64, Arc<Slot<V>>>,
    ghosts: Ghosts,
    last_warning: Option<Instant>,
    /// Entries looked at by victim searches (tests bound the work of one eviction).
    #[cfg(test)]
    pub(crate) steps: usize,
}

impl<K: Clone, V> Index<K, V> {
    pub(crate) fn new() -> Self {
        Self {
            order: BTreeMap::new(),
            probation: BTreeMap::new(),
            ghosts: Ghosts::default(),
            last_warning: None,
            #[cfg(test)]
            steps: 0,
        }
    }

    pub(crate) fn insert(&mut self, key: K, hash: u64, slot: Arc<Slot<V>>) {
        slot.indexed_use
            .store(slot.last_used_ms(), Ordering::Relaxed);
        self.probation.insert(slot.id, slot.clone());
        self.order
            .insert(Rank::of(&slot), Entry { key, hash, slot });
    }

    pub(crate) fn remove(&mut self, slot: &Slot<V>) {
        self.order.remove(&Rank::of(slot));
        self.probation.remove(&slot.id);
    }

    pub(crate) fn clear(&mut self) {
        self.order.clear();
        self.probation.clear();
        self.ghosts.clear();
    }

    /// Whether `hash` was capacity-evicted recently (the key came straight back: the pool is
    /// thrashing). Forgets the ghost.
    pub(crate) fn returned(&mut self, hash: u64, capacity: usize) -> bool {
        self.ghosts.take(hash, capacity)
    }

    /// Whether a thrashing warning is due (at most one a minute); records it if so.
    pub(crate) fn warning_due(&mut self, now: Instant) -> bool {
        const EVERY: Duration = Duration::from_secs(60);
        let due = self
            .last_warning
            .is_none_or(|last| now.saturating_duration_since(last) >= EVERY);
        if due {
            self.last_warning = Some(now);
        }
        due
    }

    /// Choose, remove from the index and remember as a ghost the next capacity victim.
    ///
    /// - An entry whose deadline is within `margin` of `now` (expired ones included) goes first,
    ///   soonest deadline first.
    /// - Otherwise, when the key being inserted (`incoming`) came straight back after a capacity
    ///   eviction (`thrashing`), the newest entry not hit since its insertion goes (never the
    ///   incoming one): evicted keys that keep coming back then cycle through a few slots while
    ///   the rest of the pool stays resident, instead of every key evicting the next one.
    /// - Otherwise (or when every entry was hit), the soonest deadline goes; ties go to the
    ///   least recently used, then the oldest.
    ///
    /// O(log n): the deadline order is a B-tree; the last-use tie-break is refreshed lazily (at
    /// most [`REFRESH_LIMIT`] re-ranks per call), and entries hit since insertion leave the
    /// probation list the first time a search meets them.
    pub(crate) fn victim(
        &mut self,
        now: Instant,
        margin: Duration,
        thrashing: bool,
        incoming: u64,
        ghost_capacity: usize,
    ) -> Option<Victim<K>> {
        let soon = now.checked_add(margin).unwrap_or(now);
        let head_soon = self
            .order
            .first_key_value()
            .and_then(|(rank, _)| rank.deadline)
            .is_some_and(|deadline| deadline <= soon);
        let chosen = if thrashing && !head_soon {
            self.newest_unhit(incoming)
        } else {
            None
        };
        let (rank, entry) = match chosen {
            Some(rank) => (rank, self.order.remove(&rank)?),
            // The front of the order: one descent of the tree, not a search and a removal.
            None => {
                self.soonest()?;
                self.order.pop_first()?
            }
        };
        if self
            .probation
            .first_key_value()
            .is_some_and(|(&id, _)| id == rank.id)
        {
            self.probation.pop_first();
        } else {
            self.probation.remove(&rank.id);
        }
        self.ghosts.push(entry.hash, ghost_capacity);
        Some(Victim {
            key: entry.key,
            hash: entry.hash,
            id: rank.id,
        })
    }

    /// The rank of the soonest-deadline entry, least recently used among equal deadlines.
    fn soonest(&mut self) -> Option<Rank> {
        for _ in 0..REFRESH_LIMIT {
            #[cfg(test)]
            {
                self.steps += 1;
            }
            let mut front = self.order.iter();
            let (rank, entry) = front.next()?;
            let used = entry.slot.last_used_ms();
            // Last use only orders equal deadlines: re-rank only when the next entry ties.
            let ties = front
                .next()
                .is_some_and(|(next, _)| next.deadline == rank.deadline);
            if used == rank.last_used || !ties {
                return Some(*rank);
            }
            let rank = *rank;
            let entry = self.order.remove(&rank)?;
            entry.slot.indexed_use.store(used, Ordering::Relaxed);
            self.order.insert(Rank::of(&entry.slot), entry);
        }
        self.order.first_key_value().map(|(rank, _)| *rank)
    }

    /// The rank of the newest entry not hit since insertion, other than `incoming`.
    fn newest_unhit(&mut self, incoming: u64) -> Option<Rank> {
        let mut skipped_incoming = None;
        let found = loop {
            #[cfg(test)]
            {
                self.steps += 1;
            }
            let Some((&id, slot)) = self.probation.last_key_value() else {
                break None;
            };
            if id == incoming {
                skipped_incoming = self.probation.pop_last();
                continue;
            }
            if slot.was_hit() {
                self.probation.pop_last();
                continue;
            }
            break Some(Rank::of(slot));
        };
        if let Some((id, slot)) = skipped_incoming {
            self.probation.insert(id, slot);
        }
        found
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }
}

/// Hashes of recently capacity-evicted keys: a table of 4-way buckets (one per entry of
/// capacity, rounded up to a power of two, at most [`MAX_GHOSTS`] slots), a full bucket
/// forgetting its oldest-written way. One cache line per push or lookup; a lost ghost only hides
/// one thrashing signal, and two keys are confused only if they share a whole 64-bit hash.
#[derive(Default)]
struct Ghosts {
    buckets: Vec<Bucket>,
    turn: usize,
}

#[derive(Clone, Copy, Default)]
#[repr(align(32))]
struct Bucket([u64; 4]);

/// The most ghost slots kept (512 KiB): in pools above 16 384 entries, thrashing is noticed for
/// keys that come back within tens of thousands of capacity evictions, not a whole capacity's.
const MAX_GHOSTS: usize = 1 << 16;

impl Ghosts {
    fn bucket(&mut self, hash: u64, capacity: usize) -> &mut Bucket {
        let size = capacity.clamp(1, MAX_GHOSTS / 4).next_power_of_two();
        if self.buckets.len() != size {
            self.buckets = vec![Bucket::default(); size];
        }
        // The hash's low bits pick the shard; mix so ghosts of one shard spread over the table.
        let mixed = hash.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        &mut self.buckets[(mixed as usize) & (size - 1)]
    }

    fn push(&mut self, hash: u64, capacity: usize) {
        // 0 marks an empty way; a key hashing to 0 is simply never remembered.
        self.turn = self.turn.wrapping_add(1);
        let turn = self.turn;
        let bucket = self.bucket(hash, capacity);
        if bucket.0.contains(&hash) {
            return;
        }
        let way = bucket.0.iter().position(|&h| h == 0).unwrap_or(turn % 4);
        bucket.0[way] = hash;
    }

    fn take(&mut self, hash: u64, capacity: usize) -> bool {
        let bucket = self.bucket(hash, capacity);
        match bucket.0.iter().position(|&h| h == hash && hash != 0) {
            Some(way) => {
                bucket.0[way] = 0;
                true
            }
            None => false,
        }
    }

    fn clear(&mut self) {
        self.buckets.fill(Bucket::default());
    }
}
