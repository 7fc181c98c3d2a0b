//! The small shared core of the workspace: a keyed pool of expensive clients that never hands
//! out an expired value, creates each key once however many callers miss at the same time, and
//! tears values down outside its locks.
//!
//! Every incident behind this workspace (see `SPEC.md`) is a pool that got one of these wrong: a
//! Blob client pool keyed by a recyclable identity and never evicted, a Kubernetes session pool
//! that retired sessions while holding its lock, a cache whose concurrent misses each went to
//! the backend. The pieces here are the parts those fixes have in common:
//!
//! - [`KeyedPool`]: get-or-create by key. The hit path takes only a shard *read* lock and never
//!   awaits while holding it; concurrent misses for one key share one factory call; misses for
//!   different keys never wait on each other. Each entry has a deadline (the pool TTL clamped by
//!   the deadline its factory reports), an idle time, and a capacity-eviction order (soonest
//!   deadline first, kept in an index beside the shards so an eviction is O(log n); while
//!   evicted keys keep coming straight back, entries in use stay resident instead, so a cycle
//!   one key longer than the capacity does not miss on every lookup).
//! - [`Retire`]: how a value is torn down. The pool calls it only after every lock is
//!   released, bounds it with a timeout, and isolates failures and panics.
//! - [`SingleFlight`]: deduplicates concurrent async loads by key; a cancelled leader hands
//!   over to a waiter instead of stranding it.
//! - [`Knob`]: a setting read from the environment with a default and a clamp range; garbage
//!   logs a warning and falls back to the default, it never panics.
//! - [`PoolStats`]: cheap atomic counters (hits, misses, creations, evictions by cause …).
//!
//! All time is [`tokio::time::Instant`], so tests drive it with
//! `#[tokio::test(start_paused = true)]` and `tokio::time::advance`.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use pool_core::{Created, KeyedPool, PoolConfig, Retire};
//!
//! #[derive(Debug)]
//! struct Client {
//!     endpoint: String,
//! }
//!
//! // Nothing to tear down beyond dropping it.
//! impl Retire for Client {}
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = KeyedPool::new(
//!     PoolConfig::default()
//!         .ttl(Duration::from_secs(300))
//!         .max_entries(32),
//! );
//!
//! let client = pool
//!     .get_or_create(&"east".to_string(), || async {
//!         // An expensive construction: TLS material, a token, a connection pool …
//!         Ok::<_, std::io::Error>(Created::new(Client { endpoint: "https://east".into() }))
//!     })
//!     .await?;
//! assert_eq!(client.endpoint, "https://east");
//!
//! // The second call is a hit: no factory call.
//! let again = pool.get(&"east".to_string()).expect("cached");
//! assert!(again.is_pooled());
//! assert_eq!(pool.stats().creations, 1);
//! # Ok(())
//! # }
//! ```

// The README's example compiles (and runs) as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod config;
mod knob;
mod pool;
mod retire;
mod single_flight;
mod stats;
mod task_flag;
mod telemetry;

pub use config::PoolConfig;
pub use knob::Knob;
pub use pool::{Created, KeyedPool, PoolError, Pooled, ShutdownReport};
pub use retire::{BoxError, Retire, RetireReport};
pub use single_flight::SingleFlight;
pub use stats::{EvictionCause, Evictions, PoolStats};
pub use task_flag::{Running, TaskFlag};
