//! An API-key cache over shared storage that every instance behind a load balancer agrees
//! with, that a flood of bad keys cannot turn into a flood of store reads, and that never
//! holds a plaintext key.
//!
//! Seed incident 003: instances loaded the API-key table once at start, so an account created
//! on one instance got 401 on the others. The proposed fix (refresh on miss, a 30 s TTL, local
//! invalidation, a lock) cleared the table before reloading (readers saw it empty; a failed
//! read left it partial), let every distinct bad key trigger a full reload, and used raw keys
//! as map keys. Here:
//!
//! - [`KeyStore`]: one JSON [`KeyDocument`] of accounts and key *hashes*, loaded conditionally
//!   by version ("not modified" costs nothing) and written with a compare-and-swap on the
//!   version (so concurrent writers on different instances lose nothing). Implementations:
//!   `BlobStore` (Azure Blob over `blob-pool`: ETag → `If-None-Match`/304 on load,
//!   `If-Match`/412 on write; feature `azure`, on by default), [`FileStore`] (atomic replace,
//!   OS file lock) and [`MemoryStore`] (tests, benchmarks).
//! - [`ApiKeyCache`]: [`authenticate`](ApiKeyCache::authenticate) hashes the presented key
//!   (SHA-256; issued keys carry 256 random bits, see docs/apikey-cache.md) and compares in
//!   constant time; refresh on miss (one shared reload, rate-limited process-wide, unknown
//!   keys negatively cached in bounded memory), a TTL (default 30 s), local writes visible at
//!   once, new snapshots built on the side and swapped atomically, a failed reload keeps the
//!   previous snapshot, an optional background [`Watcher`]. Writes are checked against the
//!   store (an account or key another instance created is found), and every store call is
//!   bounded by a timeout (`load_timeout` 5 s, `write_timeout` 10 s): a hung store never
//!   hangs authentication — known keys answer from the previous snapshot, unknown keys get
//!   [`AuthError::Unavailable`] (503) within the load timeout.
//! - [`ApiKeyLayer`]: a tower/axum layer reading `x-api-key`, answering a JSON 401, and putting
//!   the [`Identity`] into request extensions.
//!
//! All time is [`tokio::time::Instant`]: tests run in paused virtual time.
//!
//! # Example
//!
//! ```
//! use apikey_cache::{ApiKeyCache, AuthError, CacheConfig, MemoryStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Two instances over one store (a FileStore or a Blob in production).
//! let store = MemoryStore::new();
//! let a = ApiKeyCache::new(store.clone(), CacheConfig::default());
//! let b = ApiKeyCache::new(store.clone(), CacheConfig::default());
//!
//! let account = a.create_account("acme", "Acme Ltd").await?;
//! let issued = a.issue_key(&account).await?;
//! // Show `issued.secret.expose()` to its owner once; only its hash is stored.
//! assert!(!format!("{issued:?}").contains(issued.secret.expose()));
//!
//! // The other instance knows it on the first try (an unknown key triggers one reload).
//! let identity = b.authenticate(issued.secret.expose()).await?;
//! assert_eq!(identity.account.as_str(), "acme");
//!
//! a.revoke_key(&issued.identity.key).await?;
//! assert!(matches!(a.authenticate(issued.secret.expose()).await, Err(AuthError::Revoked)));
//! # Ok(())
//! # }
//! ```

// The README's example compiles (and runs) as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod cache;
mod config;
mod document;
mod error;
mod key;
mod keyed;
mod layer;
mod migrate;
mod snapshot;
mod store;
mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use cache::{ApiKeyCache, CacheStats, Watcher};
pub use config::{
    CacheConfig, KEY_CAPACITY, KEY_IDLE_SECONDS, LOAD_TIMEOUT_MS, MISS_RELOAD_INTERVAL_MS,
    NEGATIVE_CAPACITY, NEGATIVE_TTL, POINT_READS_PER_SECOND, POLL_MS, REVALIDATE_SECONDS, TTL,
    WRITE_TIMEOUT_MS,
};
pub use document::{AccountRecord, DOCUMENT_FORMAT, KeyDocument, KeyRecord};
pub use error::{AuthError, BoxError, StoreError, WriteError};
pub use key::{
    AccountId, ApiKeySecret, CHECKED_KEY_LEN, Identity, IssuedKey, KEY_PREFIX, KeyHash, KeyId,
    MAX_KEY_LEN, has_valid_checksum,
};
pub use layer::{API_KEY_HEADER, ApiKeyLayer, ApiKeyService, rejection_response};
pub use migrate::{MIGRATE_CONCURRENCY, MigrateError, MigrateOptions, MigrationReport, migrate};
#[cfg(feature = "azure")]
pub use store::BlobStore;
pub use store::{
    Condition, FeedBatch, FeedCursor, FileStore, KeyStore, Layout, Loaded, MemoryStore,
    MemoryStoreCounts, Record, Version,
};
