//! `kube::Client` sessions pooled per cluster, never outliving their credentials, with TLS
//! material kept in memory.
//!
//! Seed 001: every Kubernetes call built a new session, wrote the CA, client certificate and
//! key to temporary files and deleted them afterwards — 7+ TLS handshakes and ~14 temp-file
//! writes per dashboard tick per cluster, and no connection reuse. This crate is the fixed
//! form (SPEC K1–K7), built on pool-core's [`KeyedPool`](pool_core::KeyedPool):
//!
//! - [`SessionPool::session`] returns one pooled [`Session`] (a `kube::Client`, which keeps
//!   its connections alive between calls) per [`SessionKey`] = (subscription id, resource
//!   group, cluster name, admin) (K1).
//! - Cluster material comes from a [`ClusterCredentials`] source: [`AksSource`] (ARM
//!   `listClusterUserCredential` / `listClusterAdminCredential`) or [`KubeconfigSource`] (a
//!   file or an in-memory `Kubeconfig`). Material goes to kube as bytes: no file is ever
//!   written (K2). Kubelogin (AAD) users get a bearer token from an Azure
//!   [`TokenCredential`](azure_core::credentials::TokenCredential) for the AKS server scope
//!   ([`AKS_SERVER_SCOPE`]) instead of running a binary.
//! - A session's TTL is the pool TTL (`K8S_SESSION_POOL_TTL_SECONDS`, 300 s) clamped by the
//!   client certificate's `notAfter`, the material's expiry and the token's expiry minus 60 s
//!   ([`effective_ttl`], K3). A collapsed TTL gives a one-shot session that is never pooled
//!   (K4). At most `K8S_SESSION_POOL_MAX_ENTRIES` (32) sessions; overflow evicts the
//!   soonest-expiring (K5). Dropping a handle returns it to the pool (K6); retires run outside
//!   the pool's locks, `reset` isolates failures and `shutdown` never blocks on a held lock (K7).
//! - Sessions speak HTTP/2 (K8–K10): each builds its own stack (kube's auth, base-URI and
//!   header layers over hyper's HTTP/2 connection on a hyper-rustls connector made from kube's
//!   rustls configuration, ALPN `h2` and `http/1.1`) and multiplexes every call over **one** TLS
//!   connection, kept by the session itself; a cold burst waits for the one handshake, even on
//!   a multi-threaded runtime. A connection that carried no stream for 90 s is let go. The
//!   server's stream limit (100 on kube-apiserver) bounds requests in flight; HTTP/2 keep-alive
//!   replaces a stalled connection.
//!   Upgrade requests (exec, attach, port-forward) and servers that only speak HTTP/1.1 use an
//!   HTTP/1.1 client of the same session, at most `K8S_SESSION_MAX_IN_FLIGHT` (32, [1, 1024])
//!   requests in flight ([`SessionPoolBuilder::max_in_flight_per_session`]); more **wait** for
//!   a slot, they do not fail. A slot is held until the response body is read to the end or
//!   dropped. [`SessionPool::connection_stats`] counts connections and fallbacks; a proxy or
//!   [`SessionPoolBuilder::http2`]`(false)` keeps kube's default HTTP/1.1 stack.
//!
//! kube cannot swap a client's bearer token in place (its `Config` takes a static token, a
//! token file or an exec plugin), so a bearer session's deadline follows its token: the pool
//! builds a new client, with a fresh token, when the old token is 60 s from expiry.
//! A user's `tokenFile` is the exception: the session serves it itself, re-reading the file
//! asynchronously as it rotates (kube's own re-read is a blocking call under a lock), and a
//! request waits at most [`SessionPoolBuilder::token_file_timeout`] for a due re-read.
//!
//! The pool installs no rustls crypto provider: it uses the one the application installed,
//! else aws-lc-rs (feature `aws-lc-rs`, default); with the `ring` feature, install ring at
//! start-up. No provider at all is a typed error ([`BuildError::NoCryptoProvider`]).
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use k8s_openapi::api::core::v1::Pod;
//! use k8s_session::{AksSource, SessionKey, SessionPool};
//! use kube::Api;
//!
//! # async fn run(credential: Arc<dyn azure_core::credentials::TokenCredential>) -> Result<(), Box<dyn std::error::Error>> {
//! let source = AksSource::builder(credential.clone()).build()?;
//! let pool = SessionPool::builder(source)
//!     .aad_credential(credential) // for AAD-enabled clusters (kubelogin users)
//!     .build();
//!
//! let key = SessionKey::new("00000000-0000-0000-0000-000000000000", "rg-east", "aks-east");
//! for _tick in 0..3 {
//!     let session = pool.session(&key).await?; // built once, then a pool hit
//!     let pods: Api<Pod> = Api::namespaced(session.client().clone(), "default");
//!     let list = pods.list(&Default::default()).await?;
//!     println!("{} pods", list.items.len());
//! } // each handle returns to the pool here
//! assert_eq!(pool.stats().creations, 1);
//! # Ok(())
//! # }
//! ```

// The README's example compiles (and runs) as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod clock;
mod error;
mod key;
mod pool;
mod source;
mod telemetry;
#[cfg(test)]
mod testutil;
mod ttl;

pub use clock::{FixedClock, SystemClock, WallClock};
pub use error::{BuildError, CredentialsError, KubeconfigParseError, SessionError};
pub use key::SessionKey;
pub use pool::{
    AuthKind, ConnectionStats, DEFAULT_AAD_TOKEN_TIMEOUT, DEFAULT_BUILD_TIMEOUT,
    DEFAULT_TOKEN_FILE_TIMEOUT, MAX_ENTRIES_KNOB, MAX_IN_FLIGHT_KNOB, Session, SessionPool,
    SessionPoolBuilder, TTL_KNOB,
};
pub use source::{
    AKS_SERVER_SCOPE, ARM_SCOPE, AksSource, AksSourceBuilder, ClusterCredentials, ClusterMaterial,
    DEFAULT_ARM_TIMEOUT, KubeconfigSource,
};
pub use ttl::{EffectiveTtl, Expiries, TOKEN_EXPIRY_MARGIN, TtlBound, effective_ttl};

/// Whether kube and reqwest will find a rustls crypto provider. They read the one the
/// application installed; with the `aws-lc-rs` feature alone they fall back to aws-lc-rs
/// (reqwest per client; kube and rustls record it as the process default, their behaviour).
/// This crate never installs one: with no provider installed and none or both features on,
/// building fails with a typed error instead of their panic.
pub(crate) fn crypto_provider_ready() -> bool {
    (cfg!(feature = "aws-lc-rs") && !cfg!(feature = "ring"))
        || rustls::crypto::CryptoProvider::get_default().is_some()
}

/// What to do when [`crypto_provider_ready`] is false.
pub(crate) const NO_CRYPTO_PROVIDER: &str = "no rustls crypto provider installed: install one at start-up (e.g. `rustls::crypto::ring::default_provider().install_default()` with the `ring` feature), or use k8s-session's default `aws-lc-rs` feature alone";
