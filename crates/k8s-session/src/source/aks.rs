//! The AKS source: ARM `listClusterUserCredential` / `listClusterAdminCredential`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::TokenCredential;
use base64::Engine as _;
use kube::config::Kubeconfig;
use serde::Deserialize;
use url::Url;

use super::{ClusterCredentials, ClusterMaterial};
use crate::{CredentialsError, SessionKey};

/// The ARM scope the AKS source asks its credential for.
pub const ARM_SCOPE: &str = "https://management.azure.com/.default";

/// The scope of the AKS AAD server application (the `--server-id` kubelogin uses). Bearer
/// tokens for AAD-enabled clusters are requested for this scope.
pub const AKS_SERVER_SCOPE: &str = "6dae42f8-4368-4678-94ff-3960e28e3630/.default";

const DEFAULT_BASE_URL: &str = "https://management.azure.com";
const DEFAULT_API_VERSION: &str = "2024-05-01";
/// A credential response is a few KiB; anything far larger is not one.
const MAX_RESPONSE_BYTES: usize = 4 << 20;
/// The default bound on one credentials call (ARM token + POST + body).
pub const DEFAULT_ARM_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest bound a builder accepts; longer (up to `Duration::MAX`) is clamped to it.
pub(crate) const MAX_ARM_TIMEOUT: Duration = Duration::from_secs(3600);

/// Cluster material from Azure Resource Manager (K2): POST
/// `…/managedClusters/{name}/listClusterUserCredential` (or `listClusterAdminCredential` for
/// admin keys) with a bearer token from an Azure [`TokenCredential`], and the first kubeconfig
/// of the answer, decoded in memory.
///
/// User credentials of AAD-enabled clusters come back as kubelogin exec kubeconfigs; the pool
/// serves those with a token from its
/// [`aad_credential`](crate::SessionPoolBuilder::aad_credential) instead of running kubelogin.
///
/// ```no_run
/// use std::sync::Arc;
/// use azure_core::credentials::TokenCredential;
/// use k8s_session::AksSource;
///
/// fn source(credential: Arc<dyn TokenCredential>) -> Result<AksSource, Box<dyn std::error::Error>> {
///     Ok(AksSource::builder(credential)
///         .base_url("https://management.azure.com".parse()?)
///         .build()?)
/// }
/// ```
pub struct AksSource {
    credential: Arc<dyn TokenCredential>,
    http: reqwest::Client,
    base_url: Url,
    scope: String,
    api_version: String,
    timeout: Duration,
}

/// Builds an [`AksSource`].
pub struct AksSourceBuilder {
    credential: Arc<dyn TokenCredential>,
    http: Option<reqwest::Client>,
    base_url: Option<Url>,
    scope: String,
    api_version: String,
    timeout: Duration,
}

impl AksSource {
    /// Start building a source that authenticates to ARM with `credential` (for example
    /// token-refresh's adapter, or any `azure_identity` credential).
    pub fn builder(credential: Arc<dyn TokenCredential>) -> AksSourceBuilder {
        AksSourceBuilder {
            credential,
            http: None,
            base_url: None,
            scope: ARM_SCOPE.to_string(),
            api_version: DEFAULT_API_VERSION.to_string(),
            timeout: DEFAULT_ARM_TIMEOUT,
        }
    }

    fn url(&self, key: &SessionKey, operation: &str) -> Result<Url, CredentialsError> {
        let mut url = self.base_url.clone();
        url.path_segments_mut()
            .map_err(|()| CredentialsError::Config {
                reason: "the ARM base URL cannot have a path".into(),
            })?
            .pop_if_empty()
            .extend([
                "subscriptions",
                key.subscription_id(),
                "resourceGroups",
                key.resource_group(),
                "providers",
                "Microsoft.ContainerService",
                "managedClusters",
                key.cluster_name(),
                operation,
            ]);
        url.query_pairs_mut()
            .append_pair("api-version", &self.api_version);
        Ok(url)
    }
}

impl AksSourceBuilder {
    /// The ARM endpoint (default `https://management.azure.com`). Must be `https`, except on
    /// loopback (tests).
    #[must_use]
    pub fn base_url(mut self, url: Url) -> Self {
        self.base_url = Some(url);
        self
    }

    /// The HTTP client for ARM calls (default: a new `reqwest::Client` with the platform's
    /// roots). Pass one to trust a test CA or to share a connection pool.
    #[must_use]
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }

    /// The token scope for ARM (default [`ARM_SCOPE`]).
    #[must_use]
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = scope.into();
        self
    }

    /// The bound on one credentials call — the ARM token, the POST and its body (default
    /// [`DEFAULT_ARM_TIMEOUT`], 60 s; clamped into [1 ms, 1 h]). A hung identity endpoint or
    /// ARM fails the call with [`CredentialsError::Timeout`] instead of stalling every caller
    /// waiting on that session's build. The pool's
    /// [`build_timeout`](crate::SessionPoolBuilder::build_timeout) (150 s by default) bounds
    /// the whole build, this call included: raise it too to give this call more.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.clamp(Duration::from_millis(1), MAX_ARM_TIMEOUT);
        self
    }

    /// The ARM `api-version` (default `2024-05-01`).
    #[must_use]
    pub fn api_version(mut self, version: impl Into<String>) -> Self {
        self.api_version = version.into();
        self
    }

    /// The source. Fails on a non-https, non-loopback base URL or when the default HTTP client
    /// cannot be built.
    pub fn build(self) -> Result<AksSource, CredentialsError> {
        let base_url = match self.base_url {
            Some(url) => url,
            None => DEFAULT_BASE_URL
                .parse()
                .map_err(|_| CredentialsError::Config {
                    reason: "the default ARM URL does not parse".into(),
                })?,
        };
        let loopback = match base_url.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(name)) => name == "localhost",
            None => false,
        };
        if base_url.scheme() != "https" && !(base_url.scheme() == "http" && loopback) {
            return Err(CredentialsError::Config {
                reason: format!(
                    "ARM base URL must be https (bearer tokens are never sent in clear): {}",
                    base_url.scheme()
                ),
            });
        }
        if base_url.cannot_be_a_base() {
            return Err(CredentialsError::Config {
                reason: "the ARM base URL cannot have a path".into(),
            });
        }
        let http = match self.http {
            Some(http) => http,
            None => {
                if !crate::crypto_provider_ready() {
                    return Err(CredentialsError::Config {
                        reason: crate::NO_CRYPTO_PROVIDER.into(),
                    });
                }
                reqwest::Client::builder()
                    .build()
                    .map_err(|error| CredentialsError::Config {
                        reason: format!("building the default HTTP client failed: {error}"),
                    })?
            }
        };
        Ok(AksSource {
            credential: self.credential,
            http,
            base_url,
            scope: self.scope,
            api_version: self.api_version,
            timeout: self.timeout,
        })
    }
}

#[derive(Deserialize)]
struct CredentialResults {
    kubeconfigs: Option<Vec<CredentialResult>>,
}

#[derive(Deserialize)]
struct CredentialResult {
    value: Option<String>,
}

/// Decode ARM's `{"kubeconfigs":[{"name":..,"value":<base64 kubeconfig>}]}`.
fn parse_credential_results(body: &[u8]) -> Result<Kubeconfig, CredentialsError> {
    let malformed = |reason: &str| CredentialsError::MalformedResponse {
        reason: reason.to_string(),
    };
    let results: CredentialResults =
        serde_json::from_slice(body).map_err(|_| malformed("not a JSON credential list"))?;
    let value = results
        .kubeconfigs
        .unwrap_or_default()
        .into_iter()
        .find_map(|result| result.value)
        .ok_or_else(|| malformed("no kubeconfig in the credential list"))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|_| malformed("the kubeconfig value is not base64"))?;
    let text = String::from_utf8(bytes).map_err(|_| malformed("the kubeconfig is not UTF-8"))?;
    Kubeconfig::from_yaml(&text).map_err(|_| malformed("the kubeconfig is not a valid kubeconfig"))
}

#[async_trait::async_trait]
impl ClusterCredentials for AksSource {
    async fn credentials(&self, key: &SessionKey) -> Result<ClusterMaterial, CredentialsError> {
        let operation = operation(key).0;
        tokio::time::timeout(self.timeout, self.list_credentials(key))
            .await
            .unwrap_or(Err(CredentialsError::Timeout {
                operation,
                after: self.timeout,
            }))
    }
}

/// The ARM operation and the role it needs.
fn operation(key: &SessionKey) -> (&'static str, &'static str) {
    if key.is_admin() {
        ("listClusterAdminCredential", "Admin")
    } else {
        ("listClusterUserCredential", "User")
    }
}

impl AksSource {
    /// One unbounded credentials call; [`ClusterCredentials::credentials`] bounds it.
    async fn list_credentials(
        &self,
        key: &SessionKey,
    ) -> Result<ClusterMaterial, CredentialsError> {
        let (operation, role) = operation(key);
        let url = self.url(key, operation)?;
        let token = self
            .credential
            .get_token(&[self.scope.as_str()], None)
            .await
            .map_err(CredentialsError::Token)?;
        let http = |source| CredentialsError::Http { operation, source };
        let mut response = self
            .http
            .post(url)
            .bearer_auth(token.token.secret())
            .header(reqwest::header::CONTENT_LENGTH, "0")
            .send()
            .await
            .map_err(http)?;
        match response.status().as_u16() {
            200..=299 => {}
            401 => return Err(CredentialsError::Unauthorized),
            403 => return Err(CredentialsError::Forbidden { operation, role }),
            404 => return Err(CredentialsError::ClusterNotFound { key: key.clone() }),
            status => return Err(CredentialsError::Status { operation, status }),
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(http)? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(CredentialsError::MalformedResponse {
                    reason: format!("larger than {MAX_RESPONSE_BYTES} bytes"),
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(ClusterMaterial::new(parse_credential_results(&body)?))
    }
}

impl fmt::Debug for AksSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AksSource")
            .field("base_url", &self.base_url.as_str())
            .field("scope", &self.scope)
            .field("api_version", &self.api_version)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for AksSourceBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AksSourceBuilder")
            .field("base_url", &self.base_url.as_ref().map(Url::as_str))
            .field("scope", &self.scope)
            .field("api_version", &self.api_version)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    const KUBECONFIG: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:6443\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n";

    fn reason(result: Result<Kubeconfig, CredentialsError>) -> String {
        match result {
            Err(CredentialsError::MalformedResponse { reason }) => reason,
            other => panic!("expected MalformedResponse, got {other:?}"),
        }
    }

    // covers K2: ARM's answer decodes in memory to a kubeconfig.
    #[test]
    fn parses_the_first_kubeconfig_of_the_credential_list() {
        let body = serde_json::json!({
            "kubeconfigs": [{"name": "clusterUser", "value": STANDARD.encode(KUBECONFIG)}]
        });
        let kubeconfig = parse_credential_results(body.to_string().as_bytes()).unwrap();
        assert_eq!(kubeconfig.current_context.as_deref(), Some("x"));
    }

    // covers K2: garbage from ARM is a typed error, never a panic.
    #[test]
    fn garbage_responses_are_typed_errors() {
        assert!(reason(parse_credential_results(b"<html>")).contains("JSON"));
        assert!(reason(parse_credential_results(b"{}")).contains("no kubeconfig"));
        assert!(
            reason(parse_credential_results(br#"{"kubeconfigs":[]}"#)).contains("no kubeconfig")
        );
        assert!(
            reason(parse_credential_results(
                br#"{"kubeconfigs":[{"value":"%%%"}]}"#
            ))
            .contains("base64")
        );
        let not_utf8 =
            serde_json::json!({"kubeconfigs": [{"value": STANDARD.encode([0xff, 0xfe])}]});
        assert!(
            reason(parse_credential_results(not_utf8.to_string().as_bytes())).contains("UTF-8")
        );
        let not_yaml =
            serde_json::json!({"kubeconfigs": [{"value": STANDARD.encode("clusters: 7: [")}]});
        assert!(
            reason(parse_credential_results(not_yaml.to_string().as_bytes()))
                .contains("kubeconfig")
        );
    }

    /// An identity endpoint that never answers.
    #[derive(Debug)]
    struct HungCredential;

    #[async_trait::async_trait]
    impl TokenCredential for HungCredential {
        async fn get_token(
            &self,
            _scopes: &[&str],
            _options: Option<azure_core::credentials::TokenRequestOptions<'_>>,
        ) -> azure_core::Result<azure_core::credentials::AccessToken> {
            std::future::pending().await
        }
    }

    /// A loopback "ARM" that accepts connections, reads, and never answers.
    async fn black_hole() -> Url {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        url.parse().unwrap()
    }

    // Issue #16 (no request waits forever with the defaults): a hung ARM endpoint or a hung
    // identity endpoint ends the credentials call with a typed timeout after the default 60 s,
    // instead of stalling every caller waiting on that session's build.
    #[tokio::test(start_paused = true)]
    async fn a_hung_arm_or_identity_endpoint_times_out_with_the_default_bound() {
        let key = SessionKey::new("sub", "rg", "aks");
        let forever = std::time::SystemTime::now() + Duration::from_secs(3600);
        let cases: [(Arc<dyn TokenCredential>, Url); 2] = [
            (
                Arc::new(crate::testutil::FakeCredential::new("t", forever)),
                black_hole().await,
            ),
            (Arc::new(HungCredential), black_hole().await),
        ];
        for (credential, url) in cases {
            let source = AksSource::builder(credential)
                .base_url(url)
                .build()
                .unwrap();
            let started = tokio::time::Instant::now();
            let error = source.credentials(&key).await.expect_err("nothing answers");
            assert!(
                matches!(
                    error,
                    CredentialsError::Timeout { operation: "listClusterUserCredential", after }
                        if after == DEFAULT_ARM_TIMEOUT
                ),
                "{error:?}"
            );
            assert_eq!(started.elapsed(), DEFAULT_ARM_TIMEOUT);
        }
        let clamped = AksSource::builder(Arc::new(HungCredential))
            .timeout(Duration::MAX)
            .build()
            .unwrap();
        assert_eq!(clamped.timeout, Duration::from_secs(3600));
    }
}
