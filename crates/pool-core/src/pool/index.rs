//! The capacity index kept beside the shards: entries ordered by eviction rank, split into an
//! open set and a protected set, and the ghosts of recently capacity-evicted keys.
//!
//! Every change to the shards' membership happens under the index lock (index first, then one
//! shard's write lock), so the two always agree. The hit path never takes it: a hit only stores
//! the slot's last-used time, and the index catches up lazily when an entry reaches the front of
//! an order (see [`Index::victim`] and [`Index::admit`]).
//!
//! The protected set is how a pool that is too small for its working set keeps a stable part of
//! it resident instead of thrashing (issue 23). A key earns protection by coming back after a
//! capacity eviction (its ghost is found), and protection only holds against such returning
//! keys: a key seen for the first time evicts the soonest deadline as before. Once at most `capacity - 1` keys are protected, a
//! returning key takes the place of the least recently used protected entry only if that entry
//! has not been used since the returning key's previous use — the reuse-distance test of LIRS.
//! In a cycle of `capacity + 1` keys every key returns at the same distance, so the protected
//! keys stay and two keys share the open slot (≈ 94 % hits instead of 0 %); when the working set
//! shifts, entries nobody uses any more lose the test against keys in use and age out, and a
//! returning key that needs room takes the place of such an entry first (see
//! [`Index::victim`]), so a working set that shrinks back under the capacity settles.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::Slot;

/// Stale last-use ranks refreshed per search at most: keeps one eviction or admission O(log n)
/// even when every entry was hit since it was indexed (the refreshes owed are paid a few per
/// call).
const REFRESH_LIMIT: usize = 8;

/// Open entries the hand of [`Index::take_left_behind`] looks at per call.
const SWEEP: usize = 8;

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
    /// For a protected entry: its key in [`Index::guarded_lru`] (last use as last indexed).
    lru: u64,
}

/// A capacity victim: what to remove from the shards.
pub(crate) struct Victim<K> {
    pub(crate) key: K,
    pub(crate) hash: u64,
    pub(crate) id: u64,
}

pub(crate) struct Index<K, V> {
    /// Entries without protection, in capacity order: capacity victims come from here.
    open: BTreeMap<Rank, Entry<K, V>>,
    /// Protected entries, in capacity order (for the expiry-margin rule).
    guarded: BTreeMap<Rank, Entry<K, V>>,
    /// Protected entries by (last use as last indexed, id): the least recently used first.
    guarded_lru: BTreeMap<(u64, u64), Rank>,
    ghosts: Ghosts,
    /// Where the sweep for open entries the working set left behind stopped (see
    /// [`Index::take_left_behind`]).
    open_hand: Option<Rank>,
    last_warning: Option<Instant>,
    /// Entries looked at by searches (tests bound the work of one eviction).
    #[cfg(test)]
    pub(crate) steps: usize,
}

impl<K: Clone, V> Index<K, V> {
    pub(crate) fn new() -> Self {
        Self {
            open: BTreeMap::new(),
            guarded: BTreeMap::new(),
            guarded_lru: BTreeMap::new(),
            ghosts: Ghosts::default(),
            open_hand: None,
            last_warning: None,
            #[cfg(test)]
            steps: 0,
        }
    }

    /// Index a new slot, protected or not (see [`Index::admit`]).
    pub(crate) fn insert(&mut self, key: K, hash: u64, slot: Arc<Slot<V>>, protect: bool) {
        let used = slot.last_used_ms();
        slot.indexed_use.store(used, Ordering::Relaxed);
        let rank = Rank::of(&slot);
        let entry = Entry {
            key,
            hash,
            slot,
            lru: used,
        };
        if protect {
            self.guarded_lru.insert((used, rank.id), rank);
            self.guarded.insert(rank, entry);
        } else {
            self.open.insert(rank, entry);
        }
    }

    pub(crate) fn remove(&mut self, slot: &Slot<V>) {
        let rank = Rank::of(slot);
        if self.open.remove(&rank).is_none()
            && let Some(entry) = self.guarded.remove(&rank)
        {
            self.guarded_lru.remove(&(entry.lru, rank.id));
        }
    }

    pub(crate) fn clear(&mut self) {
        self.open.clear();
        self.guarded.clear();
        self.guarded_lru.clear();
        self.ghosts.clear();
        self.open_hand = None;
    }

    /// If `hash` was capacity-evicted recently (the key came straight back: the pool is
    /// thrashing), the key's last use before that eviction. Forgets the ghost.
    pub(crate) fn returned(&mut self, hash: u64, capacity: usize) -> Option<u64> {
        self.ghosts.take(hash, capacity)
    }

    /// Whether a key coming back after a capacity eviction, last used at `previous_use`, is
    /// protected: yes while fewer than `capacity - 1` entries are (one place always stays open
    /// for new keys); otherwise only by taking the place of the least recently used protected
    /// entry, and only if that entry has not been used since `previous_use` (it then joins the
    /// open set and goes before any protected entry).
    pub(crate) fn admit(&mut self, previous_use: u64, capacity: usize) -> bool {
        let room = capacity.saturating_sub(1);
        if self.guarded.len() < room {
            return true;
        }
        if room == 0 {
            return false;
        }
        match self.least_recently_used_guarded() {
            Some((used, rank)) if used < previous_use => {
                if let Some(mut entry) = self.guarded.remove(&rank) {
                    self.guarded_lru.remove(&(entry.lru, rank.id));
                    entry.lru = 0;
                    self.open.insert(rank, entry);
                }
                true
            }
            _ => false,
        }
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
    ///   soonest deadline first, protected or not.
    /// - When the key being inserted came back after a capacity eviction (`returning`: its last
    ///   use before that eviction), an entry not used since that last use goes if one is found
    ///   ([`Index::take_left_behind`]: a key the working set left behind, whose reuse distance
    ///   is longer than the returning key's, so a working set that shrank back under the
    ///   capacity settles within a few rounds); otherwise the last open entry (under a uniform
    ///   TTL, the newest: in a cycle, the one needed last); with no open entry, the least
    ///   recently used protected one. Keys that keep coming back thus cycle through the open places while
    ///   the protected ones stay, and a cycle settles within a round instead of evicting the
    ///   next key needed.
    /// - A key seen for the first time is a new working set arriving, not a cycle: the
    ///   soonest-deadline entry goes whether protected or not, so a working set that moves on
    ///   replaces the old one in one round.
    ///
    /// O(log n): the orders are B-trees; last-use ranks are refreshed lazily (at most
    /// [`REFRESH_LIMIT`] re-ranks per call).
    pub(crate) fn victim(
        &mut self,
        now: Instant,
        margin: Duration,
        returning: Option<u64>,
        ghost_capacity: usize,
    ) -> Option<Victim<K>> {
        let soon = now.checked_add(margin).unwrap_or(now);
        let due = |map: &BTreeMap<Rank, Entry<K, V>>| {
            map.first_key_value()
                .and_then(|(rank, _)| rank.deadline)
                .filter(|deadline| *deadline <= soon)
        };
        let entry = match (due(&self.open), due(&self.guarded)) {
            (Some(open), Some(guarded)) if guarded < open => self.pop_guarded_first(),
            (None, Some(_)) => self.pop_guarded_first(),
            (Some(_), _) => self.open.pop_first().map(|(_, entry)| entry),
            (None, None) if let Some(previous_use) = returning => {
                match self.take_left_behind(previous_use) {
                    Some(entry) => Some(entry),
                    None => match self.open.pop_last() {
                        Some((_, entry)) => Some(entry),
                        None => self
                            .least_recently_used_guarded()
                            .and_then(|(_, rank)| self.take_guarded(&rank))
                            .or_else(|| self.pop_guarded_first()),
                    },
                }
            }
            (None, None) => {
                let open = self.soonest_open();
                let guarded = self.guarded.first_key_value().map(|(rank, _)| *rank);
                match (open, guarded) {
                    (Some(open), Some(guarded)) if guarded < open => self.take_guarded(&guarded),
                    (Some(open), _) => self.open.remove(&open),
                    (None, Some(guarded)) => self.take_guarded(&guarded),
                    (None, None) => None,
                }
            }
        }?;
        self.ghosts
            .push(entry.hash, entry.slot.last_used_ms(), ghost_capacity);
        Some(Victim {
            key: entry.key,
            hash: entry.hash,
            id: entry.slot.id,
        })
    }

    /// Take an entry the working set left behind: one not used since `previous_use` (a
    /// returning key's last use before its eviction), so its reuse distance is longer than the
    /// returning key's. A hand sweeps the open set [`SWEEP`] entries per call, wrapping around
    /// (so a left-behind entry anywhere in it is found within `open / SWEEP` calls), and the
    /// least recently used protected entry is checked (at most [`REFRESH_LIMIT`] re-ranks).
    /// O(log n) per call. In a cycle every other key was used since the returning key's
    /// previous use, so none is taken.
    fn take_left_behind(&mut self, previous_use: u64) -> Option<Entry<K, V>> {
        let after = self.open_hand.map_or(Bound::Unbounded, Bound::Excluded);
        let mut hand = None;
        let mut left_behind = None;
        for (rank, entry) in self
            .open
            .range((after, Bound::Unbounded))
            .chain(self.open.iter())
            .take(SWEEP.min(self.open.len()))
        {
            #[cfg(test)]
            {
                self.steps += 1;
            }
            hand = Some(*rank);
            if entry.slot.last_used_ms() < previous_use {
                left_behind = Some(*rank);
                break;
            }
        }
        self.open_hand = hand;
        if let Some(rank) = left_behind {
            return self.open.remove(&rank);
        }
        match self.least_recently_used_guarded() {
            Some((used, rank)) if used < previous_use => self.take_guarded(&rank),
            _ => None,
        }
    }

    fn pop_guarded_first(&mut self) -> Option<Entry<K, V>> {
        let rank = *self.guarded.first_key_value()?.0;
        self.take_guarded(&rank)
    }

    fn take_guarded(&mut self, rank: &Rank) -> Option<Entry<K, V>> {
        let entry = self.guarded.remove(rank)?;
        self.guarded_lru.remove(&(entry.lru, rank.id));
        Some(entry)
    }

    /// The rank of the soonest-deadline open entry, least recently used among equal deadlines.
    fn soonest_open(&mut self) -> Option<Rank> {
        for _ in 0..REFRESH_LIMIT {
            #[cfg(test)]
            {
                self.steps += 1;
            }
            let mut front = self.open.iter();
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
            let entry = self.open.remove(&rank)?;
            entry.slot.indexed_use.store(used, Ordering::Relaxed);
            self.open.insert(Rank::of(&entry.slot), entry);
        }
        self.open.first_key_value().map(|(rank, _)| *rank)
    }

    /// The least recently used protected entry's last use and rank, once its indexed last use
    /// is confirmed current; `None` when the search ran out of refreshes first (every entry met
    /// had been used since it was indexed: none of them is stale).
    fn least_recently_used_guarded(&mut self) -> Option<(u64, Rank)> {
        for _ in 0..REFRESH_LIMIT {
            #[cfg(test)]
            {
                self.steps += 1;
            }
            let (&(indexed, id), &rank) = self.guarded_lru.first_key_value()?;
            let entry = self.guarded.get_mut(&rank)?;
            let used = entry.slot.last_used_ms();
            if used == indexed {
                return Some((used, rank));
            }
            self.guarded_lru.pop_first();
            entry.lru = used;
            self.guarded_lru.insert((used, id), rank);
        }
        None
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.open.len() + self.guarded.len()
    }

    #[cfg(test)]
    pub(crate) fn protected(&self) -> usize {
        self.guarded.len()
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

/// Four ways of (key hash, the key's last use in ms when it was evicted).
#[derive(Clone, Copy, Default)]
#[repr(align(64))]
struct Bucket([(u64, u64); 4]);

/// The most ghost slots kept (1 MiB): in pools above 16 384 entries, thrashing is noticed for
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

    fn push(&mut self, hash: u64, last_used: u64, capacity: usize) {
        // 0 marks an empty way; a key hashing to 0 is simply never remembered.
        self.turn = self.turn.wrapping_add(1);
        let turn = self.turn;
        let bucket = self.bucket(hash, capacity);
        let way = bucket
            .0
            .iter()
            .position(|&(h, _)| h == hash)
            .or_else(|| bucket.0.iter().position(|&(h, _)| h == 0))
            .unwrap_or(turn % 4);
        bucket.0[way] = (hash, last_used);
    }

    fn take(&mut self, hash: u64, capacity: usize) -> Option<u64> {
        let bucket = self.bucket(hash, capacity);
        let way = bucket.0.iter().position(|&(h, _)| h == hash && hash != 0)?;
        let (_, last_used) = std::mem::take(&mut bucket.0[way]);
        Some(last_used)
    }

    fn clear(&mut self) {
        self.buckets.fill(Bucket::default());
    }
}
