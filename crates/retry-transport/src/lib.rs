//! An HTTP client over reqwest that never hangs its pool.
//!
//! Seed 002: workflows hung forever under HTTP 429. The retry loop slept while it still held
//! the throttled response — and with it a connection slot — and the pool wait had no timeout,
//! so under a 429 storm every slot filled with sleepers and nothing could make progress. The
//! same shape is still in reqwest-retry and in the Azure SDK's own retry policy: both keep the
//! failed response alive for the whole back-off. And reqwest itself has no limit on the
//! connections in use at all.
//!
//! [`RetryClient`] fixes this by construction:
//!
//! - **A slot per request (R4).** At most `max_in_use` requests hold a connection at once. The
//!   slot is a semaphore permit acquired before sending and carried inside the response body:
//!   it is released when the body is read to the end, fails, or is dropped — not at the head.
//!   Waiting for a slot has a timeout (default 30 s) that fails with [`Error::PoolTimeout`].
//! - **No request waits forever (seed 002, issue #16).** A default read timeout (60 s without
//!   a byte, `RETRY_TRANSPORT_READ_TIMEOUT_SECONDS`, clamped to 1 s – 1 h) ends an attempt to
//!   a peer that never answers; idempotent requests are retried within the attempt and time
//!   budget, and the request ends with a typed [`Error::Timeout`], its slot released. Every
//!   duration a builder accepts, `Duration::MAX` included, is clamped or rejected: no panic.
//! - **A slot covers a connection, not a token fetch (R4).** The [`Credential`] is asked
//!   before the slot is acquired, so a slow token source holds no slot.
//! - **Release before sleep (R1).** A retryable response is drained (up to a small limit, so
//!   hyper returns the keep-alive connection to its pool) or dropped, and its slot released,
//!   *before* the back-off sleep. Nothing is held while sleeping.
//! - **A documented policy (R2, R3, R7, R8).** 429/502/503/504 and transport errors per method;
//!   `Retry-After` (seconds or HTTP-date) up to a cap — above it the response is returned;
//!   otherwise exponential back-off with full jitter; bounded attempts and a time budget; a 401
//!   refreshes the [`Credential`] once and retries (later retries of that send read the
//!   cache again); streaming bodies are sent once.
//! - **Same limits on every path (R5, R6).** [`RetryClient::with_policy`] shares the pool and
//!   the limit; [`RetryClient::reset`] rebuilds the reqwest client from the same configuration
//!   while requests in flight finish on the old one.
//! - **A retry budget, on by default (R9).** Retries may add at most 20 % of recent first
//!   attempts plus 10 retries/s over a 10 s window ([`RetryBudget`], `RETRY_TRANSPORT_BUDGET_*`),
//!   counted per partition — the host and port, or a name given with
//!   [`RetryClient::with_partition`] — and shared by every clone and view. Past it, the
//!   retryable response (or error) goes back at once, counted as
//!   [`GiveUpReason::RetryBudgetExhausted`]: a fleet of clients cannot multiply the load on an
//!   upstream that is already overloaded. The accounting is tower's `TpsBudget`, with its
//!   slot rotation fixed (see docs/retry-transport.md).
//! - **Adaptive client-side throttling, opt-in (R10).** [`AdaptiveThrottle`]: Google SRE's
//!   rule, reject locally with probability max(0, (requests − K·accepts) / (requests + 1)),
//!   K = 2 over a 2-minute window, per partition; a rejected request fails with
//!   [`Error::Throttled`] before it asks the credential, takes a slot or opens a connection.
//! - **A per-host cap (R11).** [`Limits::max_in_use_per_host`] beside `max_in_use`: the same
//!   body-lifetime permit and acquire timeout, so one slow host cannot take every slot.
//! - **Azure.** [`AzureTransport`] (feature `azure`, on by default) is an `azure_core`
//!   `HttpClient` over this client, with the SDK's own retries turned off.
//!
//! Why a loop and not a tower `Retry` layer: the order "drain, release the slot, then sleep"
//! must be visible and testable in one place, and the drain is async (tower's `Policy::retry`
//! sees the result only by reference). The back-off maths comes from `backon`.
//!
//! Every attempt runs in a `tracing` span `http_attempt` (attempt number, method, host, path —
//! never the query, which may carry a SAS token — and status). [`RetryClient::stats`] counts
//! attempts, retries by cause, give-ups (the budget and throttling included), local
//! rejections, pool timeouts and slots in use; [`RetryClient::retry_budget_balance`],
//! [`RetryClient::throttle_probability`] and [`RetryClient::permits_in_use_for`] look into one
//! partition or host. Budget exhaustion and local rejections are `debug` events with the
//! partition and the balance or probability.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use retry_transport::{Limits, RetryClient, RetryPolicy};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let client = RetryClient::builder()
//!     .limits(Limits::default().max_in_use(10).acquire_timeout(Duration::from_secs(5)))
//!     .policy(RetryPolicy::default().max_attempts(4))
//!     .build()?;
//! let url = "https://example.invalid/items".parse()?;
//! let response = client.send(client.get(url)).await?;
//! // The slot is released when the body has been read.
//! let body = response.bytes().await?;
//! println!("{} bytes; {:?}", body.len(), client.stats());
//! # Ok(())
//! # }
//! ```

// The README's example compiles (and runs) as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(feature = "azure")]
mod azure;
mod budget;
mod client;
mod config;
mod error;
mod hooks;
mod permit;
mod policy;
mod retry_after;
mod stats;
mod telemetry;
mod throttle;
#[cfg(feature = "token-refresh")]
mod token;

#[cfg(feature = "azure")]
pub use azure::AzureTransport;
pub use budget::{
    BUDGET_FLOOR_PER_SECOND, BUDGET_PERCENT, BUDGET_WINDOW_SECONDS, MAX_PARTITIONS, RetryBudget,
};
pub use client::RetryClient;
pub use config::{
    ACQUIRE_TIMEOUT_SECONDS, Builder, CREDENTIAL_TIMEOUT_SECONDS, Customize, IDLE_TIMEOUT_SECONDS,
    Limits, MAX_CONNECTIONS, MAX_CONNECTIONS_PER_HOST, MAX_IDLE_PER_HOST, MAX_TIMEOUT,
    READ_TIMEOUT_SECONDS,
};
pub use error::{BoxError, Error};
pub use hooks::{Credential, Sleeper, TokioSleep};
pub use policy::{MAX_POLICY_WAIT, Methods, RetryPolicy};
pub use retry_after::parse_retry_after;
pub use stats::{GiveUpReason, GiveUps, RetriesByCause, RetryCause, TransportStats};
pub use throttle::AdaptiveThrottle;
#[cfg(feature = "token-refresh")]
pub use token::TokenCacheCredential;
