//! A token cache that keeps serving through refresh failures.
//!
//! Seed 004: a token cache disabled its background refresh after one failure, with a flag only
//! a blocking refresh at expiry could clear — so one network blip meant tens of minutes without
//! proactive refresh, then every caller waiting at expiry. The fix there was a 60 s back-off
//! and a generation guard; this crate does that and the rest of SPEC T1–T7:
//!
//! - [`TokenCache`] over any [`TokenSource`]: **fresh** → cached; **stale** → cached *and* one
//!   spawned background refresh (callers never wait); **expired** (within a skew, default 40 s,
//!   of expiry) or empty → one blocking refresh shared by every concurrent caller
//!   (single-flight: 1 000 callers, 1 fetch).
//! - The stale threshold is an absolute instant computed when a token is installed (dynamic:
//!   `expiry - min(ttl / 2, 20 min)`, or a legacy fixed `stale_duration`), with optional
//!   jitter so a fleet does not refresh in lock-step.
//! - A failed background refresh pushes the next one a back-off (default 60 s) away and keeps
//!   serving the current token; a background result that lands after a newer token was
//!   installed is discarded, and a slow blocking result never replaces a newer token either:
//!   tokens never go backwards. A hung fetch is bounded by a load timeout, and a background
//!   refresh that dies without reporting (a panicking source, a runtime shut down under it)
//!   counts as a failure too: the back-off, then a new one — never "refresh disabled for good".
//! - Every setter clamps (`Duration::MAX` included): no configuration value panics.
//! - Every expiry form (Azure's wall-clock `OffsetDateTime` in any offset, `SystemTime`, JWT
//!   Unix seconds, `expires_in`) is converted once, at install, to a [`tokio::time::Instant`]
//!   through an injectable [`WallClock`], so tests run in paused virtual time.
//! - [`CachingCredential`] implements `azure_core::credentials::TokenCredential` with one cache
//!   per scope set, over any source or wrapping an existing credential, so Azure SDK clients
//!   and the Kubernetes bearer path share one cache and one refresh per scope.
//!
//! # Example
//!
//! What an application writes: a [`TokenSource`] that calls the identity endpoint, one
//! [`TokenCache`] built at start-up and shared, and every request asking it for the token.
//!
//! ```
//! use std::time::Duration;
//! use token_refresh::{BearerToken, Expiry, Fetched, RefreshConfig, TokenCache, TokenSource};
//!
//! #[derive(Debug)]
//! struct Endpoint;
//!
//! impl TokenSource for Endpoint {
//!     type Token = BearerToken;
//!     type Error = std::io::Error;
//!
//!     async fn fetch(&self) -> Result<Fetched<BearerToken>, std::io::Error> {
//!         // Call your identity endpoint here; say when the token expires.
//!         Ok(Fetched::new(
//!             BearerToken::new("eyJ0eXAi..."),
//!             Expiry::In(Duration::from_secs(3600)),
//!         ))
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), token_refresh::RefreshError> {
//!     let cache = TokenCache::new(Endpoint, RefreshConfig::default());
//!     for _request in 0..3 {
//!         let token = cache.token().await?; // one fetch, then cached until stale
//!         let _header = format!("Bearer {}", token.secret());
//!     }
//!     assert_eq!(cache.stats().fetches(), 1);
//!     Ok(())
//! }
//! ```
//!
//! With the `azure` feature (on by default), [`CachingCredential`] puts the same cache in
//! front of any azure_core `TokenCredential`. Without it the crate needs neither azure_core
//! nor reqwest.
//!
//! # Testing
//!
//! Every deadline is a [`tokio::time::Instant`], so your tests can move through a token's life
//! in paused virtual time (tokio's `test-util` feature, in your dev-dependencies):
//!
//! ```
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::time::Duration;
//! use token_refresh::{BearerToken, Expiry, Fetched, RefreshConfig, TokenCache, TokenSource};
//!
//! #[derive(Debug, Default)]
//! struct Endpoint {
//!     calls: AtomicUsize,
//! }
//!
//! impl TokenSource for Endpoint {
//!     type Token = BearerToken;
//!     type Error = std::io::Error;
//!
//!     async fn fetch(&self) -> Result<Fetched<BearerToken>, std::io::Error> {
//!         let n = self.calls.fetch_add(1, Ordering::SeqCst);
//!         Ok(Fetched::new(
//!             BearerToken::new(format!("token-{n}")),
//!             Expiry::In(Duration::from_secs(3600)),
//!         ))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), token_refresh::RefreshError> {
//! // In your tests: #[tokio::test(start_paused = true)]
//! let cache = TokenCache::new(Endpoint::default(), RefreshConfig::default().jitter(0.0));
//! assert_eq!(cache.token().await?.secret(), "token-0"); // empty: one blocking fetch
//! assert_eq!(cache.token().await?.secret(), "token-0"); // fresh: cached
//!
//! // A 60 min token goes stale at +40 min: served at once, refreshed in the background.
//! tokio::time::advance(Duration::from_secs(41 * 60)).await;
//! assert_eq!(cache.token().await?.secret(), "token-0");
//! tokio::task::yield_now().await; // let the background refresh run
//! assert_eq!(cache.token().await?.secret(), "token-1");
//! assert_eq!(cache.stats().fetches(), 2);
//! # Ok(())
//! # }
//! ```

// The README's example compiles (and runs) as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(feature = "azure")]
mod azure;
mod cache;
mod clock;
mod config;
mod error;
mod source;
mod stats;
mod telemetry;

#[cfg(feature = "azure")]
pub use azure::{CachingCredential, CredentialSource};
pub use cache::{TokenCache, TokenState};
pub use clock::{Expiry, SystemClock, VirtualClock, WallClock};
pub use config::{JitterSource, RefreshConfig, StaleWindow};
pub use error::RefreshError;
pub use source::{BearerToken, Fetched, TokenSource};
pub use stats::RefreshStats;
