//! Limits (R4) and the builder every construction path goes through (R5, R6).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use pool_core::Knob;

use crate::budget::RetryBudget;
use crate::error::Error;
use crate::hooks::{Credential, Sleeper, TokioSleep};
use crate::policy::RetryPolicy;
use crate::throttle::AdaptiveThrottle;

/// `RETRY_TRANSPORT_MAX_CONNECTIONS`: connection slots in use at once.
pub const MAX_CONNECTIONS: Knob<usize> = Knob::new("RETRY_TRANSPORT_MAX_CONNECTIONS", 50, 1, 4096);
/// `RETRY_TRANSPORT_MAX_CONNECTIONS_PER_HOST`: connection slots in use at once for one host
/// (host and port) — R11. The default, 4096, is clamped to `max_in_use` at build: no
/// per-host cap below the total until you set one.
pub const MAX_CONNECTIONS_PER_HOST: Knob<usize> =
    Knob::new("RETRY_TRANSPORT_MAX_CONNECTIONS_PER_HOST", 4096, 1, 4096);
/// `RETRY_TRANSPORT_MAX_IDLE_PER_HOST`: idle keep-alive connections kept per host.
pub const MAX_IDLE_PER_HOST: Knob<usize> =
    Knob::new("RETRY_TRANSPORT_MAX_IDLE_PER_HOST", 10, 0, 4096);
/// `RETRY_TRANSPORT_IDLE_TIMEOUT_SECONDS`: idle connections are closed after this long.
pub const IDLE_TIMEOUT_SECONDS: Knob<u64> =
    Knob::new("RETRY_TRANSPORT_IDLE_TIMEOUT_SECONDS", 30, 1, 3600);
/// `RETRY_TRANSPORT_ACQUIRE_TIMEOUT_SECONDS`: the longest wait for a connection slot.
pub const ACQUIRE_TIMEOUT_SECONDS: Knob<u64> =
    Knob::new("RETRY_TRANSPORT_ACQUIRE_TIMEOUT_SECONDS", 30, 1, 3600);

/// `RETRY_TRANSPORT_READ_TIMEOUT_SECONDS`: the longest wait for the next byte from the peer —
/// for the response head after the request is sent, then between body chunks. A peer that
/// never answers (black hole, half-open connection) fails the attempt with a timeout instead
/// of holding the request and its slot forever (seed 002).
pub const READ_TIMEOUT_SECONDS: Knob<u64> =
    Knob::new("RETRY_TRANSPORT_READ_TIMEOUT_SECONDS", 60, 1, 3600);

/// `RETRY_TRANSPORT_CREDENTIAL_TIMEOUT_SECONDS`: the longest wait for the credential hook's
/// `Authorization` value. A credential that never answers (a hung IMDS or identity endpoint)
/// fails the request with [`Error::CredentialTimeout`] instead of holding it forever.
pub const CREDENTIAL_TIMEOUT_SECONDS: Knob<u64> =
    Knob::new("RETRY_TRANSPORT_CREDENTIAL_TIMEOUT_SECONDS", 30, 1, 3600);

/// The longest value any of this crate's timeouts takes (1 hour): a longer one — up to
/// `Duration::MAX` — is clamped to it, so no `Instant + Duration` can overflow (X5).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// The longest time spent draining one retryable body before the sleep (longer is clamped).
const MAX_DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The pool limits reqwest lacks or leaves unbounded (R4).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Connection slots in use at once: requests in progress plus response bodies not yet read
    /// to the end or dropped. Default 50.
    pub max_in_use: usize,
    /// Connection slots in use at once for one host (host and port), R11: one slow or
    /// throttling host cannot take every slot. Same permit lifetime and acquire timeout as
    /// `max_in_use`. Default 4096, i.e. no cap below `max_in_use` (the limiter uses the smaller
    /// of the two; `stats().max_in_use_per_host` shows it); at least 1, at most 4096.
    pub max_in_use_per_host: usize,
    /// Idle keep-alive connections kept per host. Default 10.
    pub max_idle_per_host: usize,
    /// Idle connections are closed after this long: default 30 s, below the 60–75 s after
    /// which common servers and load balancers drop them.
    pub idle_timeout: Duration,
    /// The longest wait for a slot before [`Error::PoolTimeout`]. Default 30 s.
    pub acquire_timeout: Duration,
    /// A retryable response's body is read and discarded up to this many bytes before the
    /// sleep, so its connection can be reused; a longer body is dropped with its connection.
    /// Default 64 KiB.
    pub drain_limit: usize,
    /// The longest time spent draining one retryable body. Default 2 s; at most 60 s.
    pub drain_timeout: Duration,
    /// The longest wait for the next byte from the peer: for the response head (counted from
    /// the start of the attempt), then between body chunks. Default 60 s, at most
    /// [`MAX_TIMEOUT`]. A peer that never answers fails the attempt with a timeout
    /// ([`Error::Timeout`] once retries end) and releases its slot.
    pub read_timeout: Duration,
    /// The longest wait for the credential hook's `Authorization` value, before any slot is
    /// taken. Default 30 s, at most [`MAX_TIMEOUT`]; past it the request fails with
    /// [`Error::CredentialTimeout`].
    pub credential_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self::from_env_with(|_| None)
    }
}

impl Limits {
    /// The defaults, overridden by the `RETRY_TRANSPORT_*` environment variables (clamped).
    pub fn from_env() -> Self {
        Self::from_env_with(|name| std::env::var(name).ok())
    }

    /// Like [`Limits::from_env`], reading variables through `lookup` (for tests).
    pub fn from_env_with(lookup: impl Fn(&str) -> Option<String>) -> Self {
        Self {
            max_in_use: MAX_CONNECTIONS.read_with(&lookup),
            max_in_use_per_host: MAX_CONNECTIONS_PER_HOST.read_with(&lookup),
            max_idle_per_host: MAX_IDLE_PER_HOST.read_with(&lookup),
            idle_timeout: Duration::from_secs(IDLE_TIMEOUT_SECONDS.read_with(&lookup)),
            acquire_timeout: Duration::from_secs(ACQUIRE_TIMEOUT_SECONDS.read_with(&lookup)),
            drain_limit: 64 * 1024,
            drain_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(READ_TIMEOUT_SECONDS.read_with(&lookup)),
            credential_timeout: Duration::from_secs(CREDENTIAL_TIMEOUT_SECONDS.read_with(&lookup)),
        }
    }

    /// Set `max_in_use`.
    pub fn max_in_use(mut self, max: usize) -> Self {
        self.max_in_use = max;
        self
    }

    /// Set `max_in_use_per_host` (R11).
    pub fn max_in_use_per_host(mut self, max: usize) -> Self {
        self.max_in_use_per_host = max;
        self
    }

    /// Set `max_idle_per_host`.
    pub fn max_idle_per_host(mut self, max: usize) -> Self {
        self.max_idle_per_host = max;
        self
    }

    /// Set `idle_timeout`.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Set `acquire_timeout`.
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Set `drain_limit`.
    pub fn drain_limit(mut self, bytes: usize) -> Self {
        self.drain_limit = bytes;
        self
    }

    /// Set `drain_timeout`.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Set `read_timeout` (the same as [`Builder::read_timeout`]).
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// Set `credential_timeout`.
    pub fn credential_timeout(mut self, timeout: Duration) -> Self {
        self.credential_timeout = timeout;
        self
    }

    /// The limits as the client uses them: zero slots or a zero timeout is an
    /// [`Error::Config`]; values above a maximum are clamped to it (timeouts to
    /// [`MAX_TIMEOUT`], the drain timeout to 60 s, slots and idle connections to 4096, the
    /// knobs' ranges), so
    /// even `Duration::MAX` can never overflow a deadline (X5).
    fn checked(mut self) -> Result<Self, Error> {
        if self.max_in_use == 0 {
            return Err(Error::Config("max_in_use must be at least 1"));
        }
        self.max_in_use = self.max_in_use.min(MAX_CONNECTIONS.range().1);
        if self.max_in_use_per_host == 0 {
            return Err(Error::Config("max_in_use_per_host must be at least 1"));
        }
        // Kept as given up to 4096 (so `client.limits()` shows the default as is); the limiter
        // uses min(max_in_use_per_host, max_in_use).
        self.max_in_use_per_host = self
            .max_in_use_per_host
            .min(MAX_CONNECTIONS_PER_HOST.range().1);
        self.max_idle_per_host = self.max_idle_per_host.min(MAX_IDLE_PER_HOST.range().1);
        self.acquire_timeout = positive(self.acquire_timeout, "acquire_timeout must be positive")?;
        self.idle_timeout = positive(self.idle_timeout, "idle_timeout must be positive")?;
        self.read_timeout = positive(self.read_timeout, "read_timeout must be positive")?;
        self.credential_timeout = positive(
            self.credential_timeout,
            "credential_timeout must be positive",
        )?;
        self.drain_timeout = self.drain_timeout.min(MAX_DRAIN_TIMEOUT);
        Ok(self)
    }
}

/// `timeout` clamped to [`MAX_TIMEOUT`], or `Error::Config(zero)` if it is zero.
fn positive(timeout: Duration, zero: &'static str) -> Result<Duration, Error> {
    if timeout.is_zero() {
        return Err(Error::Config(zero));
    }
    Ok(timeout.min(MAX_TIMEOUT))
}

/// Extra reqwest settings, applied on every (re)build before the limits.
pub type Customize = Arc<dyn Fn(reqwest::ClientBuilder) -> reqwest::ClientBuilder + Send + Sync>;

/// Everything needed to build the reqwest client again, identically (R5, R6).
#[derive(Clone)]
pub(crate) struct ClientConfig {
    pub(crate) limits: Limits,
    pub(crate) connect_timeout: Option<Duration>,
    pub(crate) attempt_timeout: Option<Duration>,
    pub(crate) proxy: Option<reqwest::Proxy>,
    pub(crate) root_certs: Vec<reqwest::Certificate>,
    pub(crate) roots_only: bool,
    pub(crate) default_headers: HeaderMap,
    pub(crate) customize: Option<Customize>,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Default headers may carry secrets: only their names are shown.
        let header_names: Vec<_> = self.default_headers.keys().map(|k| k.as_str()).collect();
        f.debug_struct("ClientConfig")
            .field("limits", &self.limits)
            .field("connect_timeout", &self.connect_timeout)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("proxy", &self.proxy.is_some())
            .field("root_certs", &self.root_certs.len())
            .field("roots_only", &self.roots_only)
            .field("default_headers", &header_names)
            .field("customize", &self.customize.is_some())
            .finish()
    }
}

impl ClientConfig {
    /// Build a reqwest client: customizations first, then the limits, which always win (R5).
    pub(crate) fn build(&self) -> Result<reqwest::Client, Error> {
        // reqwest uses the rustls provider the application installed, else (feature `aws-lc-rs`)
        // aws-lc-rs for this client. Nothing is installed process-wide here; with neither,
        // reqwest would panic: a typed error instead.
        if !cfg!(feature = "aws-lc-rs") && rustls::crypto::CryptoProvider::get_default().is_none() {
            return Err(Error::Config(
                "no rustls crypto provider: enable retry-transport's `aws-lc-rs` feature, or install one at start-up (e.g. `rustls::crypto::ring::default_provider().install_default()` with the `ring` feature)",
            ));
        }
        let mut builder = reqwest::Client::builder();
        if let Some(customize) = &self.customize {
            builder = customize(builder);
        }
        if let Some(proxy) = &self.proxy {
            builder = builder.proxy(proxy.clone());
        }
        if self.roots_only {
            builder = builder.tls_certs_only(self.root_certs.iter().cloned());
        } else {
            for cert in &self.root_certs {
                builder = builder.add_root_certificate(cert.clone());
            }
        }
        if let Some(timeout) = self.connect_timeout {
            builder = builder.connect_timeout(timeout);
        }
        if let Some(timeout) = self.attempt_timeout {
            builder = builder.timeout(timeout);
        }
        builder
            // Redirects are answered, not followed: a hop would run on another host's
            // connection under the first host's slot, outside that host's cap (R11), retry
            // partition and credential. The Azure SDK's own reqwest client does the same.
            .redirect(reqwest::redirect::Policy::none())
            .read_timeout(self.limits.read_timeout)
            .default_headers(self.default_headers.clone())
            .pool_max_idle_per_host(self.limits.max_idle_per_host)
            .pool_idle_timeout(self.limits.idle_timeout)
            .build()
            .map_err(Error::Build)
    }
}

/// Builds a [`RetryClient`](crate::RetryClient). Start from [`RetryClient::builder`](crate::RetryClient::builder).
#[derive(Debug)]
pub struct Builder {
    pub(crate) config: ClientConfig,
    pub(crate) policy: RetryPolicy,
    pub(crate) credential: Option<Arc<dyn Credential>>,
    pub(crate) sleeper: Arc<dyn Sleeper>,
    pub(crate) retry_budget: RetryBudget,
    pub(crate) adaptive_throttle: Option<AdaptiveThrottle>,
}

impl Default for Builder {
    fn default() -> Self {
        Self::with_limits(Limits::from_env())
    }
}

impl Builder {
    /// A builder with these limits (instead of the environment's).
    pub fn with_limits(limits: Limits) -> Self {
        Self {
            config: ClientConfig {
                limits,
                connect_timeout: Some(Duration::from_secs(10)),
                attempt_timeout: None,
                proxy: None,
                root_certs: Vec::new(),
                roots_only: false,
                default_headers: HeaderMap::new(),
                customize: None,
            },
            policy: RetryPolicy::default(),
            credential: None,
            sleeper: Arc::new(TokioSleep),
            retry_budget: RetryBudget::from_env(),
            adaptive_throttle: None,
        }
    }

    /// Replace the limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.config.limits = limits;
        self
    }

    /// Replace the retry policy.
    pub fn policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Connect timeout per attempt (default 10 s; `None`: none of its own — the attempt is
    /// still bounded by the read timeout, which counts from the start of the attempt). At most
    /// [`MAX_TIMEOUT`] (longer is clamped); zero is an [`Error::Config`] from `build()`.
    pub fn connect_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// Total timeout per attempt, body included (default: none — the read timeout bounds each
    /// wait for a byte, this bounds the whole attempt, e.g. against a peer that trickles a
    /// byte a minute). At most [`MAX_TIMEOUT`] (longer is clamped); zero is an
    /// [`Error::Config`] from `build()`.
    pub fn attempt_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.attempt_timeout = timeout;
        self
    }

    /// The longest wait for the next byte from the peer (default 60 s,
    /// `RETRY_TRANSPORT_READ_TIMEOUT_SECONDS`): sets [`Limits::read_timeout`] (a later
    /// [`Builder::limits`] replaces it). At most [`MAX_TIMEOUT`] (longer is clamped); zero is an
    /// [`Error::Config`] from `build()`. There is no "off": every request is bounded (seed 002).
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.config.limits.read_timeout = timeout;
        self
    }

    /// Send through this proxy.
    pub fn proxy(mut self, proxy: reqwest::Proxy) -> Self {
        self.config.proxy = Some(proxy);
        self
    }

    /// Trust this root certificate in addition to the built-in roots.
    pub fn add_root_certificate(mut self, cert: reqwest::Certificate) -> Self {
        self.config.root_certs.push(cert);
        self
    }

    /// Trust only these roots (e.g. a test CA).
    pub fn tls_certs_only(mut self, certs: impl IntoIterator<Item = reqwest::Certificate>) -> Self {
        self.config.root_certs = certs.into_iter().collect();
        self.config.roots_only = true;
        self
    }

    /// Headers sent with every request. Their values are marked sensitive, so no `Debug`
    /// output (ours or reqwest's) shows them.
    pub fn default_headers(mut self, mut headers: HeaderMap) -> Self {
        for value in headers.values_mut() {
            value.set_sensitive(true);
        }
        self.config.default_headers = headers;
        self
    }

    /// Any other reqwest setting (`no_gzip`, `http1_only` …), applied on every build and rebuild
    /// before the limits, which it cannot override; nor can it turn redirects back on (a 3xx is
    /// returned to the caller: see the guide's "Redirects").
    pub fn customize(
        mut self,
        customize: impl Fn(reqwest::ClientBuilder) -> reqwest::ClientBuilder + Send + Sync + 'static,
    ) -> Self {
        self.config.customize = Some(Arc::new(customize));
        self
    }

    /// Where `Authorization` comes from, refreshed once after a 401 (R7).
    pub fn credential(mut self, credential: Arc<dyn Credential>) -> Self {
        self.credential = Some(credential);
        self
    }

    /// How to wait between attempts (default [`TokioSleep`]).
    pub fn sleeper(mut self, sleeper: Arc<dyn Sleeper>) -> Self {
        self.sleeper = sleeper;
        self
    }

    /// The retry budget (R9; default on: 20 % of recent first attempts + 10/s over 10 s, per
    /// partition, from the `RETRY_TRANSPORT_BUDGET_*` environment variables).
    /// [`RetryBudget::disabled`] turns it off.
    pub fn retry_budget(mut self, budget: RetryBudget) -> Self {
        self.retry_budget = budget;
        self
    }

    /// Turn on adaptive client-side throttling (R10; off by default).
    pub fn adaptive_throttle(mut self, throttle: AdaptiveThrottle) -> Self {
        self.adaptive_throttle = Some(throttle);
        self
    }

    /// Build the client.
    pub fn build(mut self) -> Result<crate::RetryClient, Error> {
        self.config.limits = self.config.limits.checked()?;
        self.config.connect_timeout = self
            .config
            .connect_timeout
            .map(|t| positive(t, "connect_timeout must be positive"))
            .transpose()?;
        self.config.attempt_timeout = self
            .config
            .attempt_timeout
            .map(|t| positive(t, "attempt_timeout must be positive"))
            .transpose()?;
        crate::RetryClient::from_builder(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // covers R4: the defaults and their environment overrides, clamped, never panicking.
    #[test]
    fn limits_come_from_defaults_and_clamped_environment() {
        let defaults = Limits::from_env_with(|_| None);
        assert_eq!(defaults.max_in_use, 50);
        assert_eq!(defaults.max_idle_per_host, 10);
        assert_eq!(defaults.idle_timeout, Duration::from_secs(30));
        assert_eq!(defaults.acquire_timeout, Duration::from_secs(30));
        assert_eq!(defaults.read_timeout, Duration::from_secs(60));

        let env = Limits::from_env_with(|name| match name {
            "RETRY_TRANSPORT_MAX_CONNECTIONS" => Some("0".into()),
            "RETRY_TRANSPORT_MAX_IDLE_PER_HOST" => Some("lots".into()),
            "RETRY_TRANSPORT_IDLE_TIMEOUT_SECONDS" => Some("90".into()),
            "RETRY_TRANSPORT_ACQUIRE_TIMEOUT_SECONDS" => Some("999999".into()),
            "RETRY_TRANSPORT_READ_TIMEOUT_SECONDS" => Some("0".into()),
            _ => None,
        });
        assert_eq!(env.read_timeout, Duration::from_secs(1));
        assert_eq!(env.max_in_use, 1);
        assert_eq!(env.max_idle_per_host, 10);
        assert_eq!(env.idle_timeout, Duration::from_secs(90));
        assert_eq!(env.acquire_timeout, Duration::from_secs(3600));
    }

    #[test]
    fn invalid_limits_are_a_typed_error() {
        let zero = Builder::with_limits(Limits::default().max_in_use(0)).build();
        assert!(matches!(zero, Err(Error::Config(_))));
        let instant =
            Builder::with_limits(Limits::default().acquire_timeout(Duration::ZERO)).build();
        assert!(matches!(instant, Err(Error::Config(_))));
        for builder in [
            Builder::with_limits(Limits::default().read_timeout(Duration::ZERO)),
            Builder::with_limits(Limits::default()).connect_timeout(Some(Duration::ZERO)),
            Builder::with_limits(Limits::default()).attempt_timeout(Some(Duration::ZERO)),
        ] {
            assert!(matches!(builder.build(), Err(Error::Config(_))));
        }
    }

    // covers R (default read timeout), seed 002: the DEFAULT configuration — what
    // `RetryClient::builder()` and `RetryClient::new()` start from — carries a finite read
    // timeout, and so does the reqwest client built from it.
    #[test]
    fn the_default_configuration_has_a_finite_read_timeout() {
        let builder = Builder::with_limits(Limits::default());
        assert_eq!(builder.config.limits.read_timeout, Duration::from_secs(60));
        assert_eq!(
            READ_TIMEOUT_SECONDS.name(),
            "RETRY_TRANSPORT_READ_TIMEOUT_SECONDS"
        );
        assert_eq!(READ_TIMEOUT_SECONDS.range(), (1, 3600));
        let reqwest = builder.config.build().unwrap();
        assert!(
            format!("{reqwest:?}").contains("read_timeout: 60s"),
            "{reqwest:?}"
        );
    }

    // covers X5: Duration::MAX anywhere in the limits or the builder is clamped, never a panic.
    #[test]
    fn duration_max_is_clamped() {
        let limits = Limits::default()
            .idle_timeout(Duration::MAX)
            .acquire_timeout(Duration::MAX)
            .drain_timeout(Duration::MAX)
            .read_timeout(Duration::MAX)
            .max_in_use(usize::MAX)
            .checked()
            .unwrap();
        assert_eq!(limits.idle_timeout, MAX_TIMEOUT);
        assert_eq!(limits.acquire_timeout, MAX_TIMEOUT);
        assert_eq!(limits.read_timeout, MAX_TIMEOUT);
        assert_eq!(limits.drain_timeout, Duration::from_secs(60));
        assert_eq!(limits.max_in_use, 4096);
    }
}
