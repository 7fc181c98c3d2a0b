//! Turning a source's material into a `kube::Client` in memory, and learning its expiries.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use azure_core::credentials::TokenCredential;
use base64::Engine as _;
use kube::config::{AuthInfo, ExecConfig, KubeConfigOptions, Kubeconfig};
use secrecy::{ExposeSecret, SecretString};

use super::in_flight::InFlightLayer;
use super::rejection::{OnRejected, RejectionLayer};
use super::token_file::{TokenFile, TokenFileLayer, bearer};
use super::transport::{ConnectionCounters, Router, StackOptions};
use crate::telemetry::ClusterMetrics;
use crate::ttl::system_time_from_unix;
use crate::{AKS_SERVER_SCOPE, BuildError, ClusterMaterial, Expiries};

/// How a session authenticates to its cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuthKind {
    /// A client certificate and key (mTLS), kept in memory.
    Certificate,
    /// A bearer token written in the kubeconfig (or a token file it names).
    StaticToken,
    /// A kubelogin (AAD) exec user, served with a token from the pool's Azure credential.
    AadToken,
    /// Anything else kube supports (an auth provider, basic auth, no credentials). kube prefers
    /// an auth provider, then basic auth, to a token beside them: such a session is `Other`.
    Other,
}

/// Client settings applied to every session.
#[derive(Debug, Clone)]
pub(crate) struct ClientOptions {
    pub(crate) kube_retry: bool,
    pub(crate) connect_timeout: Option<Duration>,
    pub(crate) read_timeout: Option<Duration>,
    /// Whether a kubeconfig's `insecure-skip-tls-verify: true` is honoured (default: refused).
    pub(crate) accept_insecure_skip_tls_verify: bool,
    /// Requests in flight per session over HTTP/1.1 (per built client, shared by its clones).
    pub(crate) max_in_flight: usize,
    /// Build the session's own stack offering HTTP/2 (K8); `false`: kube's default stack.
    pub(crate) http2: bool,
    /// Requests in flight per session over HTTP/2 (`None`: the server's stream limit).
    pub(crate) max_streams: Option<usize>,
    /// HTTP/2 keep-alive PING interval and acknowledgement timeout (K10).
    pub(crate) keep_alive: (Duration, Duration),
    /// The bound on fetching a kubelogin user's AAD token.
    pub(crate) aad_token_timeout: Duration,
    /// The bound on one session's whole build (applied by the pool).
    pub(crate) build_timeout: Duration,
    /// The longest a request waits for a due re-read of the user's token file.
    pub(crate) token_file_timeout: Duration,
}

/// A built client and what is known about its credentials.
pub(crate) struct Built {
    pub(crate) client: kube::Client,
    pub(crate) auth: AuthKind,
    pub(crate) expiries: Expiries,
}

/// Build a client from `material`. No file is written; TLS material goes to kube as bytes.
///
/// `on_rejected` makes what a 401 from the API server runs, given the AAD token (scope,
/// secret) the session was built with, if any (T11).
pub(crate) async fn build(
    material: ClusterMaterial,
    aad: Option<&Arc<dyn TokenCredential>>,
    options: &ClientOptions,
    counters: &Arc<ConnectionCounters>,
    metrics: ClusterMetrics,
    on_rejected: impl FnOnce(Option<(String, SecretString)>) -> OnRejected,
) -> Result<Built, BuildError> {
    let (mut kubeconfig, context, material_expiry) = material.into_parts();
    inline_files(&mut kubeconfig, context.as_deref()).await?;
    let select = KubeConfigOptions {
        context,
        ..KubeConfigOptions::default()
    };
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &select)
        .await
        .map_err(BuildError::Kubeconfig)?;
    // Nothing is run: kube's gcp auth-provider would run its `cmd-path` while the client is
    // built (exec plugins are refused below).
    if let Some(provider) = &config.auth_info.auth_provider
        && provider.config.contains_key("cmd-path")
    {
        return Err(BuildError::UnsupportedAuthProvider {
            name: provider.name.clone(),
        });
    }
    // kube reads an empty trust store from a CA without any CERTIFICATE block (plain text, a
    // key): every handshake would fail later, with an obscure TLS error.
    if config.root_cert.as_ref().is_some_and(Vec::is_empty) {
        return Err(BuildError::CertificateAuthority);
    }
    // Before any credential is fetched or sent: material from ARM or a file must not turn TLS
    // verification off unless the code that built the pool said so.
    if config.accept_invalid_certs {
        let server = config.cluster_url.host().unwrap_or_default().to_string();
        if !options.accept_insecure_skip_tls_verify {
            return Err(BuildError::InsecureSkipTlsVerify { server });
        }
        tracing::warn!(
            %server,
            "TLS verification is OFF for this Kubernetes session: the kubeconfig sets \
             insecure-skip-tls-verify and the pool accepts it"
        );
    }

    let mut expiries = Expiries {
        material_expires_at: material_expiry,
        ..Expiries::default()
    };
    expiries.cert_not_after = certificate_not_after(&config.auth_info).await?;
    let user = &mut config.auth_info;
    let mut aad_token = None;
    let auth = if sends_provider_or_basic(user) {
        // What kube sends is neither a token of ours nor an exec plugin's (which kube would
        // never run): a token beside it is not what the session is authenticated with.
        AuthKind::Other
    } else if user.token.is_some() || user.token_file.is_some() {
        // kube prefers an inline token (then a token file) over an exec plugin: so do we.
        expiries.token_expires_on = user
            .token
            .as_ref()
            .and_then(|token| jwt_expiry(token.expose_secret()));
        AuthKind::StaticToken
    } else if let Some(exec) = user.exec.take() {
        if !is_kubelogin(&exec) {
            return Err(BuildError::UnsupportedExecPlugin {
                command: exec.command.unwrap_or_default(),
            });
        }
        let credential = aad.ok_or(BuildError::NoAadCredential)?;
        let scope = server_scope(&exec);
        let after = options.aad_token_timeout;
        let token = tokio::time::timeout(after, credential.get_token(&[scope.as_str()], None))
            .await
            .map_err(|_| BuildError::AadTokenTimeout { after })?
            .map_err(BuildError::AadToken)?;
        user.token = Some(SecretString::from(token.token.secret().to_string()));
        aad_token = Some((scope, SecretString::from(token.token.secret().to_string())));
        // Through whole seconds and checked arithmetic: an `expires_on` in year 9999 or before
        // 1970 must not overflow (`SystemTime::from` adds with a plain `+`).
        expiries.token_expires_on = system_time_from_unix(token.expires_on.unix_timestamp());
        AuthKind::AadToken
    } else if expiries.cert_not_after.is_some() {
        AuthKind::Certificate
    } else {
        AuthKind::Other
    };

    let token_file = take_token_file(&mut config.auth_info, options.token_file_timeout).await?;
    check_tokens(&config.auth_info, auth)?;
    config.default_retry = options.kube_retry;
    config.connect_timeout = options.connect_timeout;
    config.read_timeout = options.read_timeout;
    if !crate::crypto_provider_ready() {
        return Err(BuildError::NoCryptoProvider);
    }
    let rejection = RejectionLayer::new(on_rejected(aad_token));
    let client = if options.http2 && config.proxy_url.is_none() {
        own_stack(&config, options, counters, metrics)?
            .with_layer(&rejection)
            .with_layer(&token_file)
            .build()
    } else {
        // kube's default stack: HTTP/1.1 (a proxy is configured, or HTTP/2 is off). One
        // semaphore per built client: the bound covers every clone of this session's client.
        kube::client::ClientBuilder::try_from(config)
            .map_err(BuildError::Client)?
            .with_layer(&InFlightLayer::new(options.max_in_flight))
            .with_layer(&rejection)
            .with_layer(&token_file)
            .build()
    };
    Ok(Built {
        client,
        auth,
        expiries,
    })
}

/// K8: kube's layers (base URI, kube's retry when on, auth, extra headers) over the session's
/// [`Router`]: a hyper-util client offering HTTP/2 over a hyper-rustls connector made from
/// kube's own rustls configuration, and an HTTP/1.1 client for upgrades and fallbacks.
fn own_stack(
    config: &kube::Config,
    options: &ClientOptions,
    counters: &Arc<ConnectionCounters>,
    metrics: ClusterMetrics,
) -> Result<kube::client::ClientBuilder<impl OwnStack>, BuildError> {
    use kube::client::ConfigExt as _;
    let rustls = config.rustls_client_config().map_err(BuildError::Client)?;
    let server_name = match config.tls_server_name.as_deref() {
        Some(name) => Some(
            rustls::pki_types::ServerName::try_from(name.to_string()).map_err(|e| {
                BuildError::Client(kube::Error::RustlsTls(
                    kube::client::RustlsTlsError::InvalidServerName(e),
                ))
            })?,
        ),
        None => None,
    };
    let stack = StackOptions {
        connect_timeout: options.connect_timeout,
        read_timeout: options.read_timeout,
        keep_alive_interval: options.keep_alive.0,
        keep_alive_timeout: options.keep_alive.1,
        http1_in_flight: options.max_in_flight,
        h2_in_flight: options.max_streams,
    };
    let router = Router::new(rustls, server_name, &stack, Arc::clone(counters), metrics);
    let retry = config
        .default_retry
        .then(|| tower::retry::RetryLayer::new(kube::client::retry::RetryPolicy::server_retry()));
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(retry)
        .option_layer(config.auth_layer().map_err(BuildError::Client)?)
        .layer(config.extra_headers_layer().map_err(BuildError::Client)?)
        .service(router);
    Ok(kube::client::ClientBuilder::new(
        service,
        config.default_namespace.clone(),
    ))
}

/// What [`own_stack`] builds: a service kube's `ClientBuilder` accepts.
trait OwnStack:
    tower_service::Service<
        http::Request<kube::client::Body>,
        Response = http::Response<super::transport::StreamBody>,
        Error = tower::BoxError,
        Future: Send + 'static,
    > + Send
    + 'static
{
}

impl<S> OwnStack for S where
    S: tower_service::Service<
            http::Request<kube::client::Body>,
            Response = http::Response<super::transport::StreamBody>,
            Error = tower::BoxError,
            Future: Send + 'static,
        > + Send
        + 'static
{
}

/// The files the selected context's cluster and user name (the CA, the client certificate and
/// key), read here asynchronously and put in the kubeconfig as data: kube reads them with
/// blocking calls while it builds the client, and a file that never finishes reading (a FIFO,
/// a hung mount) would block the runtime's thread beyond any timeout. Data given inline wins,
/// as in kube. A selection kube cannot resolve is left to kube, which reports it. (A token
/// file is taken from kube altogether: [`take_token_file`].)
async fn inline_files(
    kubeconfig: &mut Kubeconfig,
    context: Option<&str>,
) -> Result<(), BuildError> {
    let Some(name) = context.or(kubeconfig.current_context.as_deref()) else {
        return Ok(());
    };
    let Some(selected) = kubeconfig
        .contexts
        .iter()
        .find(|named| named.name == name)
        .and_then(|named| named.context.clone())
    else {
        return Ok(());
    };
    let base64 = |bytes: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(bytes);
    if let Some(cluster) = kubeconfig
        .clusters
        .iter_mut()
        .find(|named| named.name == selected.cluster)
        .and_then(|named| named.cluster.as_mut())
        && cluster.certificate_authority_data.is_none()
        && let Some(path) = cluster.certificate_authority.take()
    {
        let bytes = read_file(path, |path, source| BuildError::ReadFile { path, source }).await?;
        cluster.certificate_authority_data = Some(base64(bytes));
    }
    let user = selected.user.as_ref().and_then(|name| {
        kubeconfig
            .auth_infos
            .iter_mut()
            .find(|named| &named.name == name)
            .and_then(|named| named.auth_info.as_mut())
    });
    if let Some(user) = user {
        if user.client_certificate_data.is_none()
            && let Some(path) = user.client_certificate.take()
        {
            let bytes = read_file(path, |path, source| BuildError::CertificateFile {
                path,
                source,
            })
            .await?;
            user.client_certificate_data = Some(base64(bytes));
        }
        if user.client_key_data.is_none()
            && let Some(path) = user.client_key.take()
        {
            let bytes =
                read_file(path, |path, source| BuildError::ReadFile { path, source }).await?;
            user.client_key_data = Some(SecretString::from(base64(bytes)));
        }
        // kube's error for key data that is not base64 names the offending byte: a byte of
        // the key. kube decodes it exactly so; refused here without saying more.
        if let Some(key) = &user.client_key_data
            && base64::engine::general_purpose::STANDARD
                .decode(key.expose_secret())
                .is_err()
        {
            return Err(BuildError::ClientKey);
        }
    }
    Ok(())
}

/// Whether kube authenticates `user` with an auth provider or basic auth: kube's order is an
/// auth provider, then basic auth (a username and a password), an inline token, a token file,
/// an exec plugin.
fn sends_provider_or_basic(user: &AuthInfo) -> bool {
    user.auth_provider.is_some() || (user.username.is_some() && user.password.is_some())
}

/// A token file kube would send (its order: an auth provider, then basic auth, an inline token,
/// a token file, an exec plugin), taken from kube: read here, under the build's bound, and then
/// re-read asynchronously as it rotates by the [`TokenFileLayer`] (kube re-reads it with a
/// blocking call under a lock every request waits on). The user's exec plugin, which kube would
/// never run beside a token file, is dropped with it.
async fn take_token_file(
    user: &mut AuthInfo,
    wait: Duration,
) -> Result<TokenFileLayer, BuildError> {
    if sends_provider_or_basic(user) || user.token.is_some() {
        return Ok(TokenFileLayer::new(None));
    }
    let Some(path) = user.token_file.take() else {
        return Ok(TokenFileLayer::new(None));
    };
    user.exec = None;
    let bytes = read_file(path.clone(), |path, source| BuildError::ReadFile {
        path,
        source,
    })
    .await?;
    let header = bearer(&bytes).map_err(|_| BuildError::InvalidToken { what: "token file" })?;
    Ok(TokenFileLayer::new(Some(TokenFile::new(
        PathBuf::from(path),
        header,
        wait,
    ))))
}

/// The most a file named by a kubeconfig (a CA bundle, a certificate, a key, a token) may
/// hold: a public CA bundle is a few hundred KiB; `/dev/zero` must not fill the memory.
pub(crate) const MAX_FILE_BYTES: u64 = 4 << 20;

/// The bytes of the file at `path`, at most `MAX_FILE_BYTES` (read on tokio's blocking pool),
/// or `error`.
async fn read_file(
    path: String,
    error: impl FnOnce(PathBuf, std::io::Error) -> BuildError,
) -> Result<Vec<u8>, BuildError> {
    let path = PathBuf::from(path);
    match read_limited(&path, MAX_FILE_BYTES).await {
        Ok(bytes) => Ok(bytes),
        Err(source) => Err(error(path, source)),
    }
}

/// The bytes of the regular file at `path`, or an error: `InvalidInput` for anything else (a
/// FIFO, a device such as `/dev/zero`, a directory: opening a FIFO nobody writes blocks, and
/// the blocked thread would outlive any timeout), `InvalidData` if it holds more than `limit`.
pub(crate) async fn read_limited(path: &std::path::Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt as _;
    if !tokio::fs::metadata(path).await?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let file = tokio::fs::File::open(path).await?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).await?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the file holds more than {limit} bytes"),
        ));
    }
    Ok(bytes)
}

/// Every bearer token kube would send must be a valid header value: kube's auth layer
/// (tower-http's `AddAuthorization`) panics on one that is not, as the client is built.
fn check_tokens(user: &AuthInfo, auth: AuthKind) -> Result<(), BuildError> {
    let valid = |token: &str| http::HeaderValue::from_str(&format!("Bearer {token}")).is_ok();
    if let Some(token) = &user.token
        && !valid(token.expose_secret())
    {
        let what = if auth == AuthKind::AadToken {
            "AAD token"
        } else {
            "token"
        };
        return Err(BuildError::InvalidToken { what });
    }
    let provider_tokens = user.auth_provider.iter().flat_map(|provider| {
        ["id-token", "access-token"]
            .into_iter()
            .filter_map(|field| provider.config.get(field))
    });
    for token in provider_tokens {
        if !valid(token) {
            return Err(BuildError::InvalidToken {
                what: "auth-provider token",
            });
        }
    }
    Ok(())
}

/// The `notAfter` of the user's client certificate (inline data or a file), if it has one.
async fn certificate_not_after(user: &AuthInfo) -> Result<Option<SystemTime>, BuildError> {
    let pem = if let Some(data) = &user.client_certificate_data {
        let compact: String = data.split_whitespace().collect();
        base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map_err(|_| BuildError::Certificate {
                reason: "client-certificate-data is not base64".into(),
            })?
    } else if let Some(path) = &user.client_certificate {
        // Not reached for a kubeconfig `inline_files` saw; kept for any other path.
        read_file(path.clone(), |path, source| BuildError::CertificateFile {
            path,
            source,
        })
        .await?
    } else {
        return Ok(None);
    };
    parse_not_after(&pem)
}

/// The `notAfter` of the first certificate in a PEM buffer (`None`: later than this platform's
/// clock can represent, i.e. no bound beyond the pool TTL).
pub(crate) fn parse_not_after(pem: &[u8]) -> Result<Option<SystemTime>, BuildError> {
    let invalid = |reason: &str| BuildError::Certificate {
        reason: reason.to_string(),
    };
    let pem = x509_parser::pem::Pem::iter_from_buffer(pem)
        .next()
        .ok_or_else(|| invalid("no PEM block"))?
        .map_err(|_| invalid("malformed PEM"))?;
    if pem.label != "CERTIFICATE" {
        return Err(invalid("the PEM block is not a CERTIFICATE"));
    }
    let cert = pem
        .parse_x509()
        .map_err(|_| invalid("malformed X.509 certificate"))?;
    Ok(system_time_from_unix(cert.validity().not_after.timestamp()))
}

/// The `exp` claim of a JWT, if `token` is one.
pub(crate) fn jwt_expiry(token: &str) -> Option<SystemTime> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    // A NumericDate: seconds since the epoch, possibly negative or fractional (RFC 7519).
    // Checked conversions throughout: `exp` is attacker-sized input.
    let exp = claims.get("exp")?;
    let seconds = match (exp.as_i64(), exp.as_u64(), exp.as_f64()) {
        (Some(seconds), _, _) => seconds,
        (None, Some(_), _) => i64::MAX, // beyond i64: far future
        // `as` saturates: ±huge → i64::MIN / i64::MAX.
        (None, None, Some(seconds)) if !seconds.is_nan() => seconds.floor() as i64,
        _ => return None,
    };
    system_time_from_unix(seconds)
}

/// Whether an exec user runs kubelogin (`kubelogin`, `/usr/local/bin/kubelogin`, `kubelogin.exe`).
fn is_kubelogin(exec: &ExecConfig) -> bool {
    let Some(command) = exec.command.as_deref() else {
        return false;
    };
    let name = command.rsplit(['/', '\\']).next().unwrap_or(command);
    let name = name.strip_suffix(".exe").unwrap_or(name);
    name.eq_ignore_ascii_case("kubelogin")
}

/// The token scope for a kubelogin user: `<--server-id>/.default`, or [`AKS_SERVER_SCOPE`].
fn server_scope(exec: &ExecConfig) -> String {
    let args = exec.args.as_deref().unwrap_or_default();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let value = if arg == "--server-id" {
            iter.next().map(String::as_str)
        } else {
            arg.strip_prefix("--server-id=")
        };
        if let Some(id) = value.map(str::trim).filter(|id| !id.is_empty()) {
            return format!("{id}/.default");
        }
    }
    AKS_SERVER_SCOPE.to_string()
}

#[cfg(test)]
mod tests;
