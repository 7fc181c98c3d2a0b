//! Configuration: a JSON file and environment variables over documented defaults.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pool_core::Knob;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::error::ConfigError;

/// `DASHBOARD_INSPECTOR_CAPACITY`: entries the inspector ring keeps.
pub const INSPECTOR_CAPACITY: Knob<usize> =
    Knob::new("DASHBOARD_INSPECTOR_CAPACITY", 100, 1, 10_000);
/// `DASHBOARD_UPSTREAM_MAX_CONNECTIONS`: upstream connection slots in use at once.
pub const UPSTREAM_MAX_CONNECTIONS: Knob<usize> =
    Knob::new("DASHBOARD_UPSTREAM_MAX_CONNECTIONS", 4, 1, 1024);
/// `DASHBOARD_UPSTREAM_ACQUIRE_TIMEOUT_MS`: the longest wait for an upstream slot.
pub const UPSTREAM_ACQUIRE_TIMEOUT_MS: Knob<u64> =
    Knob::new("DASHBOARD_UPSTREAM_ACQUIRE_TIMEOUT_MS", 5_000, 10, 600_000);
/// `DASHBOARD_UPSTREAM_MAX_ATTEMPTS`: attempts per upstream call (first try included).
pub const UPSTREAM_MAX_ATTEMPTS: Knob<u32> = Knob::new("DASHBOARD_UPSTREAM_MAX_ATTEMPTS", 5, 1, 20);

/// `DASHBOARD_HEADER_READ_TIMEOUT_MS`: how long a client may take to send a request's headers
/// (also how long an idle keep-alive connection stays open); then hyper closes the connection.
pub const HEADER_READ_TIMEOUT_MS: Knob<u64> =
    Knob::new("DASHBOARD_HEADER_READ_TIMEOUT_MS", 10_000, 10, 300_000);
/// `DASHBOARD_REQUEST_TIMEOUT_MS`: the longest a request may take from its headers to its
/// response head (reading the body included); then it is answered 503 `request_timeout`.
pub const REQUEST_TIMEOUT_MS: Knob<u64> =
    Knob::new("DASHBOARD_REQUEST_TIMEOUT_MS", 30_000, 10, 600_000);
/// `DASHBOARD_MAX_CONNECTIONS`: connections open at once; past it, new ones wait in the
/// listen backlog until one closes.
pub const MAX_CONNECTIONS: Knob<usize> = Knob::new("DASHBOARD_MAX_CONNECTIONS", 1024, 1, 65_536);
/// `DASHBOARD_BODY_LIMIT_BYTES`: the largest request body a handler reads (413 beyond).
pub const BODY_LIMIT_BYTES: Knob<usize> =
    Knob::new("DASHBOARD_BODY_LIMIT_BYTES", 64 * 1024, 1, 16 * 1024 * 1024);
/// `DASHBOARD_MAX_HEADER_BYTES`: the largest request head (request line and headers) hyper
/// reads; beyond it the answer is 431 and the connection is closed.
pub const MAX_HEADER_BYTES: Knob<usize> =
    Knob::new("DASHBOARD_MAX_HEADER_BYTES", 16 * 1024, 1024, 1024 * 1024);
/// The shortest admin token accepted (bytes, after trimming); shorter ones, and empty ones,
/// are a start-up error ([`ConfigError::AdminToken`]).
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// Which behaviours the dashboard runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Mode {
    /// The workspace's crates: pooled sessions and clients, fan-out, streaming inspector,
    /// retries that release their slot.
    #[default]
    Pooled,
    /// The behaviours the seeds replaced, for comparison: a client per call, serial warmup
    /// reads, a middleware buffering every body and capturing every request, retries that
    /// sleep holding their connection slot.
    Naive,
}

impl Mode {
    /// `pooled` or `naive`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pooled => "pooled",
            Self::Naive => "naive",
        }
    }
}

/// One monitored AKS cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ClusterConfig {
    /// The AKS cluster name (also its id in the dashboard's URLs).
    pub name: String,
    /// The Azure subscription id.
    pub subscription_id: String,
    /// The resource group.
    pub resource_group: String,
    /// The namespace the warmup jobs and pods live in.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Use admin credentials (`listClusterAdminCredential`) instead of user ones.
    #[serde(default)]
    pub admin: bool,
    /// The Azure Resource Manager endpoint; default `https://management.azure.com`.
    #[serde(default)]
    pub arm_base_url: Option<Url>,
    /// A PEM CA to trust for ARM (a local test endpoint); default: the platform's roots.
    #[serde(default)]
    pub arm_ca_pem: Option<String>,
}

fn default_namespace() -> String {
    "warmup".to_string()
}

impl ClusterConfig {
    /// A cluster in `subscription_id` / `resource_group` with the default namespace.
    pub fn new(
        name: impl Into<String>,
        subscription_id: impl Into<String>,
        resource_group: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            subscription_id: subscription_id.into(),
            resource_group: resource_group.into(),
            namespace: default_namespace(),
            admin: false,
            arm_base_url: None,
            arm_ca_pem: None,
        }
    }

    /// Set the warmup namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Talk to ARM at `url`, trusting `ca_pem` (local endpoints).
    pub fn arm(mut self, url: Url, ca_pem: Option<String>) -> Self {
        self.arm_base_url = Some(url);
        self.arm_ca_pem = ca_pem;
        self
    }
}

/// Blob storage: where submitted jobs (and, by default, the API-key document) live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StorageConfig {
    /// The account endpoint, e.g. `https://myaccount.blob.core.windows.net` or Azurite's
    /// path-style `https://127.0.0.1:10000/devstoreaccount1` (no trailing slash).
    pub endpoint: String,
    /// The container submitted jobs are written to. Default `blast-jobs`.
    #[serde(default = "default_jobs_container")]
    pub jobs_container: String,
    /// A PEM CA to trust (Azurite's); default: the platform's roots.
    #[serde(default)]
    pub ca_pem: Option<String>,
    /// The newest jobs kept in the jobs container; older ones are deleted as new ones arrive,
    /// so the storage card and the job listing cost the same after a day as after a minute.
    /// Default 200; clamped to 1..=1 000 (the most blobs the storage card counts), so the
    /// card's count is always exact.
    #[serde(default = "default_job_retention")]
    pub job_retention: usize,
}

fn default_jobs_container() -> String {
    "blast-jobs".to_string()
}

fn default_job_retention() -> usize {
    200
}

impl StorageConfig {
    /// Storage at `endpoint` with the default container.
    pub fn new(endpoint: impl Into<String>, ca_pem: Option<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            jobs_container: default_jobs_container(),
            ca_pem,
            job_retention: default_job_retention(),
        }
    }
}

/// Where the API-key document is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum KeyStoreConfig {
    /// The default: apikey-cache's keyed layout in the storage account (A10/A11): a blob per
    /// key record under `prefix`, created and revoked with conditions, and an append-blob
    /// change feed that carries revocations to every instance within one poll.
    KeyedBlob {
        /// The container. Default `dashboard`.
        container: String,
        /// The record-name prefix. Default `apikeys/`.
        prefix: String,
    },
    /// The keyed layout in a local directory (a file per record, a change-feed file).
    KeyedFile {
        /// The directory.
        dir: PathBuf,
    },
    /// A single JSON blob in the storage account (ETag-conditional reads and writes); fine
    /// to ~10k keys. `apikey-migrate` converts it to the keyed layout.
    Blob {
        /// The container.
        container: String,
        /// The blob name.
        blob: String,
    },
    /// A single local JSON file (one host, or a shared file system).
    File {
        /// The file's path.
        path: PathBuf,
    },
}

impl Default for KeyStoreConfig {
    fn default() -> Self {
        Self::KeyedBlob {
            container: "dashboard".to_string(),
            prefix: "apikeys/".to_string(),
        }
    }
}

/// The rate-limited upstream job API that `POST /api/blast/jobs` calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct UpstreamConfig {
    /// Base URL; jobs are POSTed to `{url}/submit/{job id}`.
    pub url: Url,
    /// Connection slots in use at once (`DASHBOARD_UPSTREAM_MAX_CONNECTIONS`, default 4).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// The longest wait for a slot, in ms (`DASHBOARD_UPSTREAM_ACQUIRE_TIMEOUT_MS`, default 5000).
    #[serde(default = "default_acquire_timeout_ms")]
    pub acquire_timeout_ms: u64,
    /// Attempts per call (`DASHBOARD_UPSTREAM_MAX_ATTEMPTS`, default 5).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

fn default_max_connections() -> usize {
    UPSTREAM_MAX_CONNECTIONS.default_value()
}
fn default_acquire_timeout_ms() -> u64 {
    UPSTREAM_ACQUIRE_TIMEOUT_MS.default_value()
}
fn default_max_attempts() -> u32 {
    UPSTREAM_MAX_ATTEMPTS.default_value()
}

impl UpstreamConfig {
    /// The upstream at `url` with default limits.
    pub fn new(url: Url) -> Self {
        Self {
            url,
            max_connections: default_max_connections(),
            acquire_timeout_ms: default_acquire_timeout_ms(),
            max_attempts: default_max_attempts(),
        }
    }

    /// The slot wait as a duration.
    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.acquire_timeout_ms)
    }
}

/// The admin token that guards `POST /api/admin/accounts`. Redacted in `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AdminToken(String);

impl AdminToken {
    /// Wrap a token.
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The token (to send it; never log it).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// Everything the dashboard needs to start. See docs/dashboard.md for the table of settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DashboardConfig {
    /// Listen address (`DASHBOARD_LISTEN`, default `127.0.0.1:8080`; port 0 picks one).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Pooled (default) or naive behaviours (`DASHBOARD_MODE`).
    #[serde(default)]
    pub mode: Mode,
    /// The monitored clusters.
    pub clusters: Vec<ClusterConfig>,
    /// Blob storage.
    pub storage: StorageConfig,
    /// The upstream job API.
    pub upstream: UpstreamConfig,
    /// Where API keys live.
    #[serde(default)]
    pub keys: KeyStoreConfig,
    /// Inspector ring capacity (`DASHBOARD_INSPECTOR_CAPACITY`, default 100).
    #[serde(default = "default_inspector_capacity")]
    pub inspector_capacity: usize,
    /// Token for `POST /api/admin/accounts` (`DASHBOARD_ADMIN_TOKEN`); `None` disables it.
    /// At least [`MIN_ADMIN_TOKEN_LEN`] bytes: an empty or shorter one is refused at start-up.
    #[serde(default)]
    pub admin_token: Option<AdminToken>,
    /// Header-read timeout in ms (`DASHBOARD_HEADER_READ_TIMEOUT_MS`, default 10 000).
    #[serde(default = "default_header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// Request timeout in ms (`DASHBOARD_REQUEST_TIMEOUT_MS`, default 30 000).
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Connections open at once (`DASHBOARD_MAX_CONNECTIONS`, default 1024).
    #[serde(default = "default_max_connections_in")]
    pub max_connections: usize,
    /// Largest request body in bytes (`DASHBOARD_BODY_LIMIT_BYTES`, default 64 KiB).
    #[serde(default = "default_body_limit_bytes")]
    pub body_limit_bytes: usize,
    /// Largest request head in bytes (`DASHBOARD_MAX_HEADER_BYTES`, default 16 KiB).
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
}

fn default_header_read_timeout_ms() -> u64 {
    HEADER_READ_TIMEOUT_MS.default_value()
}
fn default_request_timeout_ms() -> u64 {
    REQUEST_TIMEOUT_MS.default_value()
}
fn default_max_connections_in() -> usize {
    MAX_CONNECTIONS.default_value()
}
fn default_body_limit_bytes() -> usize {
    BODY_LIMIT_BYTES.default_value()
}
fn default_max_header_bytes() -> usize {
    MAX_HEADER_BYTES.default_value()
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_inspector_capacity() -> usize {
    INSPECTOR_CAPACITY.default_value()
}

impl DashboardConfig {
    /// A configuration with defaults for everything but the backends.
    pub fn new(
        clusters: Vec<ClusterConfig>,
        storage: StorageConfig,
        upstream: UpstreamConfig,
    ) -> Self {
        Self {
            listen: default_listen(),
            mode: Mode::default(),
            clusters,
            storage,
            upstream,
            keys: KeyStoreConfig::default(),
            inspector_capacity: default_inspector_capacity(),
            admin_token: None,
            header_read_timeout_ms: default_header_read_timeout_ms(),
            request_timeout_ms: default_request_timeout_ms(),
            max_connections: default_max_connections_in(),
            body_limit_bytes: default_body_limit_bytes(),
            max_header_bytes: default_max_header_bytes(),
        }
    }

    /// Check what a configuration from any source (file, environment, code) must satisfy:
    /// an admin token, when there is one, is at least [`MIN_ADMIN_TOKEN_LEN`] bytes (an empty
    /// one would let an empty `x-admin-token` in); the limits are clamped to their ranges.
    /// [`Dashboard::new`](crate::Dashboard::new) calls it too.
    pub fn validate(mut self) -> Result<Self, ConfigError> {
        if let Some(token) = &self.admin_token {
            let len = token.expose().trim().len();
            if len < MIN_ADMIN_TOKEN_LEN || len != token.expose().len() {
                return Err(ConfigError::AdminToken {
                    min: MIN_ADMIN_TOKEN_LEN,
                });
            }
        }
        self.header_read_timeout_ms = HEADER_READ_TIMEOUT_MS.clamp(self.header_read_timeout_ms);
        self.request_timeout_ms = REQUEST_TIMEOUT_MS.clamp(self.request_timeout_ms);
        self.max_connections = MAX_CONNECTIONS.clamp(self.max_connections);
        self.body_limit_bytes = BODY_LIMIT_BYTES.clamp(self.body_limit_bytes);
        self.max_header_bytes = MAX_HEADER_BYTES.clamp(self.max_header_bytes);
        self.inspector_capacity = INSPECTOR_CAPACITY.clamp(self.inspector_capacity);
        let upstream = &mut self.upstream;
        upstream.max_connections = UPSTREAM_MAX_CONNECTIONS.clamp(upstream.max_connections);
        upstream.acquire_timeout_ms =
            UPSTREAM_ACQUIRE_TIMEOUT_MS.clamp(upstream.acquire_timeout_ms);
        upstream.max_attempts = UPSTREAM_MAX_ATTEMPTS.clamp(upstream.max_attempts);
        self.storage.job_retention = self
            .storage
            .job_retention
            .clamp(1, crate::storage::CARD_COUNT_MAX);
        Ok(self)
    }

    /// The header-read timeout.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    /// The request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// Parse a JSON document (fields as in docs/dashboard.md; omitted ones take defaults).
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let config: Self = serde_json::from_str(text).map_err(ConfigError::Parse)?;
        config.validate()
    }

    /// Read and parse a JSON file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text)
    }

    /// Apply the `DASHBOARD_*` environment variables on top of this configuration.
    pub fn with_env(self) -> Result<Self, ConfigError> {
        self.with_lookup(|name| std::env::var(name).ok())
    }

    /// Apply overrides read through `lookup` (given a variable's name). Numeric knobs that do
    /// not parse log a warning and keep their default; an unparseable address or mode is an
    /// error, since guessing one would be worse.
    pub fn with_lookup(
        mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let set = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        if let Some(listen) = set("DASHBOARD_LISTEN") {
            self.listen = listen.trim().parse().map_err(|_| ConfigError::Invalid {
                name: "DASHBOARD_LISTEN",
                reason: "expected an address such as 127.0.0.1:8080",
            })?;
        }
        if let Some(mode) = set("DASHBOARD_MODE") {
            self.mode = match mode.trim() {
                "pooled" => Mode::Pooled,
                "naive" => Mode::Naive,
                _ => {
                    return Err(ConfigError::Invalid {
                        name: "DASHBOARD_MODE",
                        reason: "expected `pooled` or `naive`",
                    });
                }
            };
        }
        // Set but empty is a mistake, not "unset": it is refused like a short token.
        if let Some(token) = lookup("DASHBOARD_ADMIN_TOKEN") {
            // Trimmed like every `DASHBOARD_*` value (a secret mounted with a trailing newline):
            // a header value never carries surrounding whitespace, so only the trimmed token
            // could ever match. In a file or in code a padded token is refused (`validate`).
            self.admin_token = Some(AdminToken::new(token.trim()));
        }
        if set(INSPECTOR_CAPACITY.name()).is_some() {
            self.inspector_capacity = INSPECTOR_CAPACITY.read_with(&lookup);
        }
        if set(UPSTREAM_MAX_CONNECTIONS.name()).is_some() {
            self.upstream.max_connections = UPSTREAM_MAX_CONNECTIONS.read_with(&lookup);
        }
        if set(UPSTREAM_ACQUIRE_TIMEOUT_MS.name()).is_some() {
            self.upstream.acquire_timeout_ms = UPSTREAM_ACQUIRE_TIMEOUT_MS.read_with(&lookup);
        }
        if set(UPSTREAM_MAX_ATTEMPTS.name()).is_some() {
            self.upstream.max_attempts = UPSTREAM_MAX_ATTEMPTS.read_with(&lookup);
        }
        if set(HEADER_READ_TIMEOUT_MS.name()).is_some() {
            self.header_read_timeout_ms = HEADER_READ_TIMEOUT_MS.read_with(&lookup);
        }
        if set(REQUEST_TIMEOUT_MS.name()).is_some() {
            self.request_timeout_ms = REQUEST_TIMEOUT_MS.read_with(&lookup);
        }
        if set(MAX_CONNECTIONS.name()).is_some() {
            self.max_connections = MAX_CONNECTIONS.read_with(&lookup);
        }
        if set(BODY_LIMIT_BYTES.name()).is_some() {
            self.body_limit_bytes = BODY_LIMIT_BYTES.read_with(&lookup);
        }
        if set(MAX_HEADER_BYTES.name()).is_some() {
            self.max_header_bytes = MAX_HEADER_BYTES.read_with(&lookup);
        }
        self.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"{
        "clusters": [{"name": "aks-east", "subscription_id": "sub", "resource_group": "rg"}],
        "storage": {"endpoint": "https://acct.blob.core.windows.net"},
        "upstream": {"url": "https://jobs.example.invalid"}
    }"#;

    #[test]
    fn a_minimal_file_takes_the_documented_defaults() {
        let config = DashboardConfig::from_json(MINIMAL).unwrap();
        assert_eq!(config.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(config.mode, Mode::Pooled);
        assert_eq!(config.clusters[0].namespace, "warmup");
        assert!(!config.clusters[0].admin);
        assert_eq!(config.storage.jobs_container, "blast-jobs");
        assert_eq!(config.keys, KeyStoreConfig::default());
        assert_eq!(config.inspector_capacity, 100);
        assert_eq!(config.upstream.max_connections, 4);
        assert_eq!(config.upstream.acquire_timeout(), Duration::from_secs(5));
        assert_eq!(config.upstream.max_attempts, 5);
        assert!(config.admin_token.is_none());
    }

    #[test]
    fn environment_overrides_clamp_numbers_and_reject_bad_words() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let config = DashboardConfig::from_json(MINIMAL)
            .unwrap()
            .with_lookup(env(&[
                ("DASHBOARD_LISTEN", "127.0.0.1:0"),
                ("DASHBOARD_MODE", "naive"),
                ("DASHBOARD_INSPECTOR_CAPACITY", "999999"),
                ("DASHBOARD_UPSTREAM_MAX_ATTEMPTS", "many"),
                ("DASHBOARD_ADMIN_TOKEN", "s3cret-s3cret-s3cret"),
            ]))
            .unwrap();
        assert_eq!(config.listen.port(), 0);
        assert_eq!(config.mode, Mode::Naive);
        assert_eq!(config.inspector_capacity, 10_000, "clamped");
        assert_eq!(config.upstream.max_attempts, 5, "garbage keeps the default");
        assert_eq!(
            config.admin_token.as_ref().unwrap().expose(),
            "s3cret-s3cret-s3cret"
        );
        assert!(
            !format!("{config:?}").contains("s3cret"),
            "the admin token is redacted"
        );

        let err = DashboardConfig::from_json(MINIMAL)
            .unwrap()
            .with_lookup(env(&[("DASHBOARD_MODE", "fast")]))
            .unwrap_err();
        assert!(err.to_string().contains("DASHBOARD_MODE"), "{err}");
    }

    // Issue #24 finding 1: `"admin_token": ""` became `Some("")`, and an empty `x-admin-token`
    // then passed the compare. Empty, blank and short tokens are refused wherever they come
    // from. Failed before the fix (the file and the code path accepted them).
    #[test]
    fn empty_or_short_admin_tokens_are_refused_at_start() {
        for token in ["", "   ", "short", "fifteen-bytes!!", " padded-token-16b "] {
            let text = MINIMAL.replacen('{', &format!("{{\"admin_token\": {token:?},"), 1);
            assert!(
                matches!(
                    DashboardConfig::from_json(&text),
                    Err(ConfigError::AdminToken { min: 16 })
                ),
                "{token:?} from the file"
            );
            let env = |name: &str| (name == "DASHBOARD_ADMIN_TOKEN").then(|| token.to_string());
            let mut config = DashboardConfig::from_json(MINIMAL).unwrap();
            // The environment's value is trimmed first (the padded one is then fine there).
            let from_env = config.clone().with_lookup(env);
            assert_eq!(
                matches!(from_env, Err(ConfigError::AdminToken { .. })),
                token.trim().len() < MIN_ADMIN_TOKEN_LEN,
                "{token:?} from the environment"
            );
            config.admin_token = Some(AdminToken::new(token));
            assert!(config.validate().is_err(), "{token:?} from code");
        }
        let text = MINIMAL.replacen('{', r#"{"admin_token": "sixteen-bytes-ok","#, 1);
        assert!(DashboardConfig::from_json(&text).is_ok());
    }

    #[test]
    fn server_limits_have_documented_defaults_and_clamp() {
        let config = DashboardConfig::from_json(MINIMAL).unwrap();
        assert_eq!(config.header_read_timeout(), Duration::from_secs(10));
        assert_eq!(config.request_timeout(), Duration::from_secs(30));
        assert_eq!(config.max_connections, 1024);
        assert_eq!(config.body_limit_bytes, 64 * 1024);
        assert_eq!(config.max_header_bytes, 16 * 1024);
        let text = MINIMAL.replacen(
            '{',
            r#"{"header_read_timeout_ms": 18446744073709551615, "max_connections": 0,"#,
            1,
        );
        let config = DashboardConfig::from_json(&text).unwrap();
        assert_eq!(config.header_read_timeout(), Duration::from_secs(300));
        assert_eq!(config.max_connections, 1);
    }

    #[test]
    fn a_broken_file_is_a_typed_error() {
        assert!(matches!(
            DashboardConfig::from_json("{"),
            Err(ConfigError::Parse(_))
        ));
        assert!(matches!(
            DashboardConfig::from_file(Path::new("/nonexistent/dashboard.json")),
            Err(ConfigError::Read { .. })
        ));
    }
}
