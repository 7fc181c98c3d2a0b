//! `BlobPoolStats`: the keyed pool's counters plus credentials, retires and the transport's.

use pool_core::PoolStats;
use retry_transport::TransportStats;

/// A snapshot of a [`BlobPool`](crate::BlobPool)'s counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BlobPoolStats {
    /// The keyed pool: entries, hits, misses, creations, evictions by cause (`owner_gone` for
    /// dropped credentials, `idle`, `reset`, `invalidated` …).
    pub pool: PoolStats,
    /// Credentials registered now (each with its own token cache).
    pub credentials: usize,
    /// Credential registrations ever made (each has a new, never reused id).
    pub registrations: u64,
    /// Registrations removed because their credential was dropped (B4).
    pub credentials_dropped: u64,
    /// Clients whose retire ran.
    pub clients_retired: u64,
    /// Tokens Azure Storage rejected (401, or 403 `AuthenticationFailed`) while they were still
    /// cached: each was invalidated in its credential's token cache (T11), and on a 403 the
    /// credential's clients were evicted so the next ones ask for a new token.
    pub tokens_rejected: u64,
    /// The shared retry-transport client: requests, attempts, retries, pool timeouts, slots.
    pub transport: TransportStats,
}

/// What one [`BlobPool::sweep`](crate::BlobPool::sweep) evicted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SweepReport {
    /// Clients of dropped credentials (cause `OwnerGone`).
    pub owner_gone: usize,
    /// Clients built from a registration that `reset` or `invalidate_credential` removed while
    /// they were being built (cause `Reset`).
    pub orphaned: usize,
    /// Clients idle for longer than the idle TTL (cause `Idle`).
    pub idle: usize,
}

impl SweepReport {
    /// Clients evicted, whatever the cause.
    pub fn total(&self) -> usize {
        self.owner_gone + self.orphaned + self.idle
    }
}
