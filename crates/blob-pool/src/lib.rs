//! A pool of Azure `BlobServiceClient`s keyed by credential identity and account endpoint,
//! whose clients go away when their credential does.
//!
//! Seed 000: a Python pool keyed its clients by `(id(credential), account)`. `id()` is an
//! address, recycled after garbage collection, so a new credential allocated where a dead one
//! lived was handed the dead credential's client — and its token cache. Nothing was ever
//! evicted either. This crate is the Rust fix, by construction (SPEC B1–B8):
//!
//! - **Identity that cannot be recycled (B2).** The first time the pool sees a credential
//!   (an `Arc<dyn TokenCredential>`) it registers it under a [`CredentialId`] drawn from a
//!   counter — never an address, never reused — and keys clients by (id, [`Endpoint`]). The
//!   registration finds the credential by its allocation address, and holds a `Weak` to that
//!   allocation: while a `Weak` exists the allocation is not freed, so no other credential can
//!   be at that address. Address reuse is impossible while a registration or a pooled client
//!   exists, and once both are gone the next credential at that address gets a new id.
//! - **Eviction when the credential is dropped (B4),** without keeping it alive: the pool holds
//!   only `Weak`s. Each [`BlobPool::client`] call checks up to 16 registrations (all of
//!   them when there are that few) and evicts the clients of dropped ones before it returns
//!   (cause `OwnerGone`); the background sweeper (every 60 s by default) checks all.
//! - **Last-used and idle TTL (B3, B5):** pool-core's `KeyedPool` records every hit;
//!   [`BlobPool::prune_idle`] and the sweeper retire clients idle for longer than 1800 s
//!   (`BLOB_SERVICE_POOL_IDLE_TTL_SECONDS`). [`BlobPool::reset`] forgets everything (B6).
//! - **One transport, one token refresh (B8).** Every client sends through one
//!   [`retry_transport::RetryClient`] (connection limit, pool-acquire timeout, retries that
//!   release the connection before sleeping) with the SDK's own retry policy off; every client
//!   of one credential shares one [`token_refresh::CachingCredential`] kept in its registration:
//!   one token fetch per credential and scope, however many clients and endpoints.
//! - **Azure and Azurite alike (B7):** [`Endpoint::azure`] for `https://{account}.blob.core.windows.net`,
//!   [`Endpoint::parse`] for path-style URLs such as Azurite's; the API version can be pinned
//!   with [`BlobPoolConfig::api_version`].
//!
//! See `docs/blob-pool.md` for the configuration table and failure behaviour.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use azure_core::credentials::TokenCredential;
//! use blob_pool::{BlobPool, Endpoint};
//!
//! # async fn example(credential: Arc<dyn TokenCredential>) -> Result<(), Box<dyn std::error::Error>> {
//! // e.g. credential = azure_identity::ManagedIdentityCredential::new(None)?
//! let pool = BlobPool::new()?;
//! let endpoint = Endpoint::azure("myaccount")?;
//!
//! let client = pool.client(&credential, &endpoint).await?; // built once
//! let properties = client.get_properties(None).await?;
//! # drop(properties);
//!
//! let again = pool.client(&credential, &endpoint).await?; // a hit: the same client
//! assert_eq!(again.credential_id(), client.credential_id());
//! assert_eq!(pool.stats().pool.creations, 1);
//!
//! drop((client, again, credential));
//! pool.evict_dropped().await; // or the next access / sweep: the client is gone
//! assert!(pool.is_empty());
//! # Ok(())
//! # }
//! ```

// The README's example compiles (and runs) as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod config;
mod endpoint;
mod error;
mod handle;
mod identity;
mod pool;
mod rejection;
mod stats;
mod telemetry;

pub use config::{BlobPoolConfig, IDLE_TTL_SECONDS, MAX_ENTRIES, SWEEP_SECONDS};
pub use endpoint::Endpoint;
pub use error::{BlobPoolError, is_authentication_failed};
pub use handle::PooledBlobClient;
pub use identity::CredentialId;
pub use pool::{BlobPool, BlobPoolBuilder, STORAGE_SCOPE, storage_transport};
pub use stats::{BlobPoolStats, SweepReport};

#[cfg(test)]
mod tests;
