//! Local backends for the workspace's tests, benchmarks and demo. Not published.
//!
//! Everything here listens on loopback only. Each backend sits behind a feature so a crate
//! compiles only the backends it tests against:
//!
//! | feature | module | what |
//! |---|---|---|
//! | (always) | [`bench`](mod@bench) | the JSON result line every `cargo xtask bench` scenario prints |
//! | (always, Unix) | [`fifo`] | named pipes: make one, wake a reader left blocked on it |
//! | `tls` | `tls` | an in-process CA and leaf certificates, rustls configs trusting only them |
//! | `azurite` | `azurite` | Azurite over HTTPS with `--oauth basic`, clients trusting its CA |
//! | `azure-credential` | `azurite` | `TestCredential`: a `TokenCredential` minting tokens Azurite and the ARM endpoint accept |
//! | `k8s` | `k8s` | an in-process Kubernetes API server (mTLS or bearer), fixtures, faults |
//! | `metrics` | `metrics` | run a test under a thread-local `metrics` debugging recorder, read series back by name and labels |
//! | `ratelimit` | `ratelimit` | a scripted rate-limiting HTTP server counting connections, with a capacity mode (token bucket of C req/s, excess 429 or 503, counted per second) |
//!
//! See docs/testing.md for how the suites use them.

#[cfg(any(feature = "azurite", feature = "azure-credential"))]
pub mod azurite;
pub mod bench;
#[cfg(unix)]
pub mod fifo;
#[cfg(feature = "k8s")]
pub mod k8s;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(feature = "ratelimit")]
pub mod ratelimit;
#[cfg(feature = "tls")]
pub mod tls;
