//! A bounded, time-limited set of key hashes recently found unknown.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::key::KeyHash;
use crate::telemetry::EntriesGauge;

/// Unknown keys remembered for `ttl`, at most `capacity` of them. Every entry lives exactly
/// `ttl`, so insertion order is expiry order: a FIFO queue gives O(1) expiry and eviction
/// (when full, the oldest goes first). Memory is bounded by `capacity` whatever an attacker
/// sends. A remembered key never shadows a real one: lookups check the snapshot first.
#[derive(Debug)]
pub(crate) struct NegativeCache {
    gauge: EntriesGauge,
    ttl: Duration,
    capacity: usize,
    expiries: HashMap<KeyHash, Instant>,
    order: VecDeque<(KeyHash, Instant)>,
}

impl NegativeCache {
    pub(crate) fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            gauge: EntriesGauge::default(),
            ttl,
            capacity,
            expiries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Report the entry count to `gauge` from now on.
    pub(crate) fn with_gauge(mut self, gauge: EntriesGauge) -> Self {
        self.gauge = gauge;
        self
    }

    pub(crate) fn contains(&self, hash: &KeyHash, now: Instant) -> bool {
        self.expiries.get(hash).is_some_and(|&until| until > now)
    }

    pub(crate) fn insert(&mut self, hash: KeyHash, now: Instant) {
        if self.capacity == 0 || self.ttl.is_zero() || self.contains(&hash, now) {
            return;
        }
        while let Some(&(oldest, until)) = self.order.front() {
            if until > now && self.order.len() < self.capacity {
                break;
            }
            self.order.pop_front();
            if self.expiries.get(&oldest) == Some(&until) {
                self.expiries.remove(&oldest);
            }
        }
        // The TTL is clamped to an hour by the config; at the end of `Instant`'s range the key
        // is simply not remembered (X5: no overflow).
        let Some(until) = now.checked_add(self.ttl) else {
            return;
        };
        self.expiries.insert(hash, until);
        self.order.push_back((hash, until));
        self.gauge.set(self.expiries.len());
    }

    /// Forget `hash` (a key issued since it was found unknown). Its queue slot expires on its
    /// own.
    pub(crate) fn remove(&mut self, hash: &KeyHash) {
        if self.expiries.remove(hash).is_some() {
            self.gauge.set(self.expiries.len());
        }
    }

    /// Forget everything (a gap in the change feed).
    pub(crate) fn clear(&mut self) {
        self.expiries.clear();
        self.order.clear();
        self.gauge.set(0);
    }

    pub(crate) fn len(&self) -> usize {
        self.expiries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // covers A5: entries expire, and memory stays bounded under a flood of distinct keys.
    #[tokio::test(start_paused = true)]
    async fn negative_cache_expires_and_stays_bounded() {
        let mut cache = NegativeCache::new(Duration::from_secs(10), 100);
        let now = Instant::now();
        let first = KeyHash::of("bad-0");
        cache.insert(first, now);
        assert!(cache.contains(&first, now));
        assert!(!cache.contains(&first, now + Duration::from_secs(10)));

        for i in 0..10_000 {
            cache.insert(KeyHash::of(&format!("bad-{i}")), now);
        }
        assert_eq!(cache.len(), 100);
        assert!(cache.order.len() <= 100);
        assert!(cache.contains(&KeyHash::of("bad-9999"), now), "newest kept");
        assert!(!cache.contains(&first, now), "oldest evicted first");

        // After the TTL everything expires and is purged by the next insert.
        let later = now + Duration::from_secs(11);
        cache.insert(KeyHash::of("late"), later);
        assert_eq!(cache.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn disabled_negative_cache_remembers_nothing() {
        let now = Instant::now();
        let mut off = NegativeCache::new(Duration::from_secs(10), 0);
        off.insert(KeyHash::of("x"), now);
        assert!(!off.contains(&KeyHash::of("x"), now));
        let mut zero_ttl = NegativeCache::new(Duration::ZERO, 10);
        zero_ttl.insert(KeyHash::of("x"), now);
        assert_eq!(zero_ttl.len(), 0);
    }
}
