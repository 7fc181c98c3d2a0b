//! The fixed-size ring of captured entries and the inspector's counters.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use crate::Entry;

/// Newest-first ring of entries. The lock is held only to push or to clone the `Arc`s out,
/// never across an `.await`.
#[derive(Debug)]
pub(crate) struct Ring {
    entries: Mutex<VecDeque<Arc<Entry>>>,
    capacity: usize,
}

impl Ring {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Arc<Entry>>> {
        // A panic elsewhere cannot leave the deque inconsistent: keep serving it.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Push the newest entry; the oldest ones beyond capacity are returned (dropped by the
    /// caller, outside the lock).
    pub(crate) fn push(&self, entry: Arc<Entry>, counters: &Counters) -> Vec<Arc<Entry>> {
        let added = entry.retained_bytes();
        let mut evicted = Vec::new();
        let mut entries = self.lock();
        entries.push_front(entry);
        while entries.len() > self.capacity {
            evicted.extend(entries.pop_back());
        }
        let removed: usize = evicted.iter().map(|e| e.retained_bytes()).sum();
        // Under the lock, so `ring_bytes` always matches the deque.
        counters.ring_bytes.fetch_add(added, Ordering::Relaxed);
        counters.ring_bytes.fetch_sub(removed, Ordering::Relaxed);
        drop(entries);
        counters
            .evicted
            .fetch_add(evicted.len() as u64, Ordering::Relaxed);
        evicted
    }

    /// The entries, newest first.
    pub(crate) fn snapshot(&self) -> Vec<Arc<Entry>> {
        self.lock().iter().cloned().collect()
    }

    pub(crate) fn clear(&self, counters: &Counters) -> Vec<Arc<Entry>> {
        let mut entries = self.lock();
        let all: Vec<_> = entries.drain(..).collect();
        counters.ring_bytes.store(0, Ordering::Relaxed);
        all
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }
}

/// Cheap atomic counters behind [`InspectorStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) captured: AtomicU64,
    pub(crate) passed_through: AtomicU64,
    pub(crate) unowned: AtomicU64,
    pub(crate) evicted: AtomicU64,
    pub(crate) truncated_bodies: AtomicU64,
    pub(crate) next_id: AtomicU64,
    pub(crate) in_flight_bytes: AtomicUsize,
    pub(crate) ring_bytes: AtomicUsize,
    pub(crate) peak_retained: AtomicUsize,
}

impl Counters {
    /// `n` more bytes held by an in-flight capture.
    pub(crate) fn hold(&self, n: usize) {
        if n == 0 {
            return;
        }
        let in_flight = self.in_flight_bytes.fetch_add(n, Ordering::Relaxed) + n;
        let total = in_flight + self.ring_bytes.load(Ordering::Relaxed);
        self.peak_retained.fetch_max(total, Ordering::Relaxed);
    }

    /// `n` bytes no longer held by an in-flight capture.
    pub(crate) fn release(&self, n: usize) {
        self.in_flight_bytes.fetch_sub(n, Ordering::Relaxed);
    }

    pub(crate) fn note_ring_peak(&self) {
        let total =
            self.in_flight_bytes.load(Ordering::Relaxed) + self.ring_bytes.load(Ordering::Relaxed);
        self.peak_retained.fetch_max(total, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, ring_len: usize) -> InspectorStats {
        let in_flight = self.in_flight_bytes.load(Ordering::Relaxed);
        let ring = self.ring_bytes.load(Ordering::Relaxed);
        InspectorStats {
            captured: self.captured.load(Ordering::Relaxed),
            passed_through: self.passed_through.load(Ordering::Relaxed),
            not_recorded_unowned: self.unowned.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
            truncated_bodies: self.truncated_bodies.load(Ordering::Relaxed),
            ring_len,
            in_flight_bytes: in_flight,
            ring_bytes: ring,
            retained_bytes: in_flight + ring,
            peak_retained_bytes: self.peak_retained.load(Ordering::Relaxed),
        }
    }
}

/// What the inspector has done and what it holds, counted (not estimated from RSS).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct InspectorStats {
    /// Exchanges recorded into the ring.
    pub captured: u64,
    /// Polling GETs passed through untouched (not buffered, not recorded).
    pub passed_through: u64,
    /// Requests not recorded because their owner was unknown (with
    /// [`InspectorConfig::require_owner`](crate::InspectorConfig::require_owner)): counted, not
    /// stored.
    pub not_recorded_unowned: u64,
    /// Entries pushed out of the ring by newer ones.
    pub evicted: u64,
    /// Bodies cut at the body limit.
    pub truncated_bodies: u64,
    /// Entries currently in the ring.
    pub ring_len: usize,
    /// Bytes held right now by captures still in flight (body copies and recorded headers).
    pub in_flight_bytes: usize,
    /// Bytes held by the entries in the ring ([`Entry::retained_bytes`] summed).
    pub ring_bytes: usize,
    /// `in_flight_bytes + ring_bytes`: the layer's own memory for captured data.
    pub retained_bytes: usize,
    /// The highest `retained_bytes` seen since the inspector was created.
    pub peak_retained_bytes: usize,
}
