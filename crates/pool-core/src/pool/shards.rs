//! A sharded map of pool slots: one hash per lookup, read locks on the hit path, try-locks for
//! shutdown.
//!
//! Why not `DashMap`: shutdown must drain without blocking on a contended shard (P7), which
//! needs `try_write` on individual shards, and `DashMap` only exposes its shards behind its
//! unstable `raw-api`. The structure is the same (a `RwLock` per shard over a `hashbrown` table,
//! the shard picked from the hash), so the hit path costs what a `DashMap::get` costs.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};

use hashbrown::HashTable;

use super::Slot;

type Table<K, V> = HashTable<(K, Arc<Slot<V>>)>;

pub(crate) struct Shards<K, V> {
    shards: Box<[RwLock<Table<K, V>>]>,
    hasher: RandomState,
    shift: u32,
    len: AtomicUsize,
}

/// Result of a non-blocking drain of one shard.
pub(crate) enum TryDrain<V> {
    Drained(Vec<Arc<Slot<V>>>),
    Contended,
}

impl<K, V> Shards<K, V> {
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }
}

impl<K: Hash + Eq, V> Shards<K, V> {
    pub(crate) fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
        let count = (cores * 4).next_power_of_two().max(4);
        let shards = (0..count).map(|_| RwLock::new(HashTable::new())).collect();
        Self {
            shards,
            hasher: RandomState::new(),
            shift: usize::BITS - count.trailing_zeros(),
            len: AtomicUsize::new(0),
        }
    }

    pub(crate) fn hash(&self, key: &K) -> u64 {
        self.hasher.hash_one(key)
    }

    fn shard(&self, hash: u64) -> &RwLock<Table<K, V>> {
        // Skip the top 7 bits: hashbrown uses them for its control bytes.
        let index = ((hash as usize) << 7) >> self.shift;
        &self.shards[index]
    }

    pub(crate) fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Run `f` on the key's slot under the shard's read lock.
    pub(crate) fn with_slot<R>(
        &self,
        hash: u64,
        key: &K,
        f: impl FnOnce(&Arc<Slot<V>>) -> R,
    ) -> Option<R> {
        let shard = read(self.shard(hash));
        shard.find(hash, |(k, _)| k == key).map(|(_, slot)| f(slot))
    }

    /// Insert or replace; returns the replaced slot.
    pub(crate) fn insert(&self, hash: u64, key: K, slot: Arc<Slot<V>>) -> Option<Arc<Slot<V>>> {
        let mut shard = write(self.shard(hash));
        match shard.find_mut(hash, |(k, _)| *k == key) {
            Some(entry) => Some(std::mem::replace(&mut entry.1, slot)),
            None => {
                shard.insert_unique(hash, (key, slot), |(k, _)| self.hasher.hash_one(k));
                self.len.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Remove the key's slot if it is still the one with `id`.
    pub(crate) fn remove_if_id(&self, hash: u64, key: &K, id: u64) -> Option<Arc<Slot<V>>> {
        let mut shard = write(self.shard(hash));
        let entry = shard
            .find_entry(hash, |(k, slot)| k == key && slot.id == id)
            .ok()?;
        let ((_, slot), _) = entry.remove();
        self.len.fetch_sub(1, Ordering::Relaxed);
        Some(slot)
    }

    /// Remove every slot for which `pred` holds, one shard write lock at a time. `pred` must not
    /// panic (it is always pool code: user predicates go through [`Shards::select`]).
    pub(crate) fn drain_where(&self, mut pred: impl FnMut(&Slot<V>) -> bool) -> Vec<Arc<Slot<V>>> {
        let mut victims = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = write(shard);
            shard.retain(|(_, slot)| {
                if pred(slot) {
                    victims.push(slot.clone());
                    false
                } else {
                    true
                }
            });
        }
        self.len.fetch_sub(victims.len(), Ordering::Relaxed);
        victims
    }

    /// Keys and ids of the slots for which `pred` holds, under read locks only (so a panicking
    /// user predicate poisons nothing).
    pub(crate) fn select(&self, mut pred: impl FnMut(&K, &Slot<V>) -> bool) -> Vec<(K, u64, u64)>
    where
        K: Clone,
    {
        let mut found = Vec::new();
        for shard in self.shards.iter() {
            let shard = read(shard);
            for (key, slot) in shard.iter() {
                if pred(key, slot) {
                    found.push((key.clone(), self.hasher.hash_one(key), slot.id));
                }
            }
        }
        found
    }

    /// Drain one shard if its lock is free right now.
    pub(crate) fn try_drain(&self, index: usize) -> TryDrain<V> {
        let mut shard = match self.shards[index].try_write() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return TryDrain::Contended,
        };
        let drained: Vec<_> = shard.drain().map(|(_, slot)| slot).collect();
        self.len.fetch_sub(drained.len(), Ordering::Relaxed);
        TryDrain::Drained(drained)
    }

    #[cfg(test)]
    pub(crate) fn read_shard_of(&self, key: &K) -> RwLockReadGuard<'_, Table<K, V>> {
        read(self.shard(self.hash(key)))
    }

    /// Whether any shard lock is held right now (tests prove retire runs outside locks).
    pub(crate) fn any_locked(&self) -> bool {
        self.shards
            .iter()
            .any(|shard| matches!(shard.try_write(), Err(TryLockError::WouldBlock)))
    }
}

// No pool code panics while holding a shard lock, so a poisoned lock carries no broken invariant.
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}
