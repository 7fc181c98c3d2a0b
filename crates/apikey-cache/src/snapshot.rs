//! An immutable, fully built lookup table; reloads build a new one and swap the pointer.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::time::Instant;

use crate::document::KeyDocument;
use crate::key::{AccountId, Identity, KeyHash, KeyId};
use crate::store::Version;

/// The table built from one document. Never mutated after construction.
#[derive(Debug, Default)]
pub(crate) struct Table {
    /// Entries bucketed by the first 8 bytes of their hash; the full hash is compared in
    /// constant time.
    buckets: HashMap<u64, Vec<Entry>>,
    /// The document it was built from (local writes apply their change to it).
    pub(crate) document: KeyDocument,
    pub(crate) keys: usize,
    pub(crate) skipped: usize,
}

#[derive(Debug)]
struct Entry {
    hash: KeyHash,
    identity: Identity,
    revoked: bool,
}

/// What a lookup found.
#[derive(Debug)]
pub(crate) enum Lookup {
    Valid(Identity),
    Revoked,
    Missing,
}

impl Table {
    pub(crate) fn build(document: KeyDocument) -> Self {
        let mut buckets: HashMap<u64, Vec<Entry>> = HashMap::with_capacity(document.keys.len());
        let (mut keys, mut skipped) = (0, 0);
        for (key_id, record) in &document.keys {
            let Some(hash) = KeyHash::from_hex(&record.sha256) else {
                tracing::warn!(key_id, "skipping key record with an invalid sha256");
                skipped += 1;
                continue;
            };
            if !document.accounts.contains_key(&record.account) {
                tracing::warn!(key_id, "skipping key record whose account does not exist");
                skipped += 1;
                continue;
            }
            buckets.entry(hash.bucket()).or_default().push(Entry {
                hash,
                identity: Identity {
                    account: AccountId::new(record.account.as_str()),
                    key: KeyId::new(key_id.as_str()),
                },
                revoked: record.revoked_unix.is_some(),
            });
            keys += 1;
        }
        Self {
            buckets,
            document,
            keys,
            skipped,
        }
    }

    pub(crate) fn lookup(&self, hash: &KeyHash) -> Lookup {
        let Some(bucket) = self.buckets.get(&hash.bucket()) else {
            return Lookup::Missing;
        };
        for entry in bucket {
            if entry.hash.ct_eq(hash) {
                return if entry.revoked {
                    Lookup::Revoked
                } else {
                    Lookup::Valid(entry.identity.clone())
                };
            }
        }
        Lookup::Missing
    }
}

/// A table plus where it came from. Swapped as a whole (`Arc<Snapshot>`).
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub(crate) table: Arc<Table>,
    pub(crate) version: Option<Version>,
    /// When the store last confirmed this table (a load or a "not modified"); `None` before
    /// the first successful load.
    pub(crate) checked_at: Option<Instant>,
    /// Installs so far (for stats).
    pub(crate) generation: u64,
    /// Number of the load that produced or last confirmed this table (a write keeps the
    /// number of the load before it).
    pub(crate) load_gen: u64,
}

impl Snapshot {
    pub(crate) fn unloaded() -> Self {
        Self {
            table: Arc::new(Table::default()),
            version: None,
            checked_at: None,
            generation: 0,
            load_gen: 0,
        }
    }

    pub(crate) fn is_stale(&self, now: Instant, ttl: std::time::Duration) -> bool {
        self.checked_at
            .is_none_or(|checked| now.saturating_duration_since(checked) >= ttl)
    }
}
