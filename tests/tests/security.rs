//! Security checks across the crates (SPEC A6, I5, K2, T7, R6, B7; style rule "secrets never
//! reach Debug, Display or logs"):
//!
//! - no `Debug`/`Display` of a public type, no error (with its whole source chain) and no log
//!   line at TRACE level carries a token, key, client key, API key or SAS signature, while
//!   every crate runs its secret-handling paths (fetch, refresh, 401, retry, capture, build);
//! - TLS verification cannot be turned off by accident: every option that touches trust is
//!   listed and checked against a server whose CA is not trusted;
//! - no temp files: building sessions and clients writes nothing under `std::env::temp_dir()`
//!   and holds nothing open there.

mod support;

use std::io::Write as _;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use apikey_cache::{API_KEY_HEADER, ApiKeyCache, CacheConfig, MemoryStore};
use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::time::OffsetDateTime;
use blob_pool::{BlobPool, Endpoint};
use futures::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Request};
use k8s_session::{AksSource, BuildError, KubeconfigSource, SessionError, SessionKey, SessionPool};
use request_inspector::{Inspector, InspectorConfig};
use retry_transport::{BoxError, Credential, RetryClient};
use testkit::k8s::{K8sServer, KubeAuth, build_kubeconfig};
use testkit::ratelimit::{Answer, RateLimitServer};
use token_refresh::{
    BearerToken, CachingCredential, Expiry, Fetched, RefreshConfig, TokenCache, TokenSource,
};
use tower::{Layer as _, ServiceExt as _};

// ---------------------------------------------------------------------------------------------
// Log capture: one TRACE subscriber for the whole binary, writing into a shared buffer.

fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer: Arc<Mutex<Vec<u8>>> = Arc::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::FULL)
            .with_writer(move || LogWriter(writer.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        buffer
    })
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().write(bytes)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn captured_logs() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap()).into_owned()
}

/// Fails if `text` contains any of `secrets`.
fn assert_clean(what: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "{what} carries a secret ({secret:?}):\n{text}"
        );
    }
}

/// `Debug`, pretty `Debug`, and the error's `Display` chain.
fn error_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = format!("{error:?}\n{error:#?}\n");
    let mut next = Some(error);
    while let Some(e) = next {
        text.push_str(&format!("{e}\n"));
        next = e.source();
    }
    text
}

// ---------------------------------------------------------------------------------------------
// Secret-carrying fakes.

const TOKEN: &str = "tok-SECRET-4d1f9e";
const AZURE_TOKEN: &str = "azure-SECRET-8c2b71";
const HEADER_SECRET: &str = "hdr-SECRET-77e0aa";
const REFRESHED_HEADER: &str = "hdr-SECRET-refreshed-5b";
const SAS: &str = "sas-SECRET-55f1c3";
const K8S_TOKEN: &str = "k8s-SECRET-99ab04";

#[derive(Debug)]
struct SecretSource;

impl TokenSource for SecretSource {
    type Token = BearerToken;
    type Error = std::io::Error;
    async fn fetch(&self) -> Result<Fetched<BearerToken>, std::io::Error> {
        Ok(Fetched::new(
            BearerToken::new(TOKEN),
            Expiry::In(Duration::from_secs(120)),
        ))
    }
}

#[derive(Debug)]
struct SecretAzureCredential;

#[async_trait::async_trait]
impl TokenCredential for SecretAzureCredential {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        Ok(AccessToken::new(
            AZURE_TOKEN,
            OffsetDateTime::now_utc() + azure_core::time::Duration::hours(1),
        ))
    }
}

/// A retry-transport credential hook handing out a secret header, another one on refresh.
#[derive(Debug)]
struct HeaderCredential;

impl Credential for HeaderCredential {
    fn authorization(&self, refresh: bool) -> BoxFuture<'_, Result<HeaderValue, BoxError>> {
        let value = if refresh {
            REFRESHED_HEADER
        } else {
            HEADER_SECRET
        };
        Box::pin(async move {
            let mut value = HeaderValue::from_str(&format!("Bearer {value}"))?;
            value.set_sensitive(true);
            Ok(value)
        })
    }
}

// covers T7 and the style rule: token-refresh's types and logs.
#[tokio::test]
async fn token_refresh_never_prints_a_token() {
    logs();
    let cache = TokenCache::new(SecretSource, RefreshConfig::default());
    let token = cache.token().await.unwrap();
    assert_eq!(token.secret(), TOKEN);
    let fetched = SecretSource.fetch().await.unwrap();
    let credential =
        CachingCredential::wrap(Arc::new(SecretAzureCredential), RefreshConfig::default());
    let access = credential
        .get_token(&["scope/.default"], None)
        .await
        .unwrap();
    assert_eq!(access.token.secret(), AZURE_TOKEN);
    cache.invalidate();
    let _ = cache.token().await.unwrap();
    let text = format!(
        "{cache:?}{cache:#?}{token:?}{token}{fetched:?}{credential:?}{credential:#?}{access:?}{:?}",
        cache.stats()
    );
    assert_clean("token-refresh Debug/Display", &text, &[TOKEN, AZURE_TOKEN]);
    assert_clean("logs", &captured_logs(), &[TOKEN, AZURE_TOKEN]);
}

// covers R6, R7: retry-transport's builder, client, errors (a SAS token in the URL) and logs,
// through a 401 refresh, retries and a transport error.
#[tokio::test]
async fn retry_transport_never_prints_a_credential_or_a_sas_signature() {
    logs();
    let server = RateLimitServer::start().await.unwrap();
    // Scripts are keyed by path and query.
    let query = format!("?sig={SAS}&sv=2024");
    server.script(
        &format!("/auth{query}"),
        [Answer::status(401), Answer::ok(8)],
    );
    server.script(
        &format!("/throttled{query}"),
        [Answer::too_many(0), Answer::ok(8)],
    );
    server.script(
        &format!("/reset{query}"),
        std::iter::repeat_n(Answer::reset(), 8),
    );
    let mut headers = HeaderMap::new();
    headers.insert("x-api-key", HeaderValue::from_static(HEADER_SECRET));
    let builder = RetryClient::builder()
        .default_headers(headers)
        .credential(Arc::new(HeaderCredential));
    let builder_text = format!("{builder:?}{builder:#?}");
    let client = builder.build().unwrap();
    for path in ["/auth", "/throttled"] {
        let url = server.url(&format!("{path}{query}")).parse().unwrap();
        let response = client.send(client.get(url)).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let url = server.url(&format!("/reset{query}")).parse().unwrap();
    let error = client.send(client.get(url)).await.unwrap_err();
    let seen = server.requests();
    assert!(
        seen.iter()
            .any(|r| r.authorization.as_deref() == Some(&format!("Bearer {REFRESHED_HEADER}"))),
        "the 401 path really ran"
    );
    let text = format!(
        "{builder_text}{client:?}{client:#?}{:?}{}",
        client.stats(),
        error_text(&error)
    );
    let logs = captured_logs();
    assert!(logs.contains("http_attempt"), "attempt spans are logged");
    assert_clean("logs", &logs, &[HEADER_SECRET, REFRESHED_HEADER, SAS]);
    assert_clean(
        "retry-transport Debug/Display/errors",
        &text,
        &[HEADER_SECRET, REFRESHED_HEADER, SAS],
    );
}

// covers B7, B8: blob-pool's endpoint (with a SAS query), pool, client handle and SDK errors.
#[tokio::test]
async fn blob_pool_never_prints_a_token_or_a_sas_signature() {
    logs();
    let pool = BlobPool::new().unwrap();
    let credential: Arc<dyn TokenCredential> = Arc::new(SecretAzureCredential);
    // A SAS query is refused outright (the pool authenticates with bearer tokens), and the
    // refusal does not repeat the URL.
    let refused = Endpoint::parse(&format!("https://127.0.0.1:9/acct?sig={SAS}")).unwrap_err();
    // Port 9 on loopback: nothing listens, so the call fails after the token is fetched.
    let endpoint = Endpoint::parse("https://127.0.0.1:9/acct").unwrap();
    let client = pool.client(&credential, &endpoint).await.unwrap();
    let error = client.get_properties(None).await.unwrap_err();
    let text = format!(
        "{endpoint:?}{endpoint}{pool:?}{pool:#?}{client:?}{:?}{}{}",
        pool.stats(),
        error_text(&error),
        error_text(&refused)
    );
    assert_clean("blob-pool Debug/Display/errors", &text, &[AZURE_TOKEN, SAS]);
    assert_clean("logs", &captured_logs(), &[AZURE_TOKEN, SAS]);
}

// covers K2: k8s-session's source, material, pool, session and errors, for a token user and a
// client-certificate user (the key's PEM body must not appear anywhere).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8s_session_never_prints_a_token_or_a_client_key() {
    logs();
    let server = K8sServer::start().await.unwrap();
    server.add_token(K8S_TOKEN);
    let leaf = server
        .ca()
        .client_leaf("testkit-admin", &["system:masters"])
        .unwrap();
    let key_line = leaf
        .key_pem()
        .lines()
        .nth(1)
        .expect("a PEM body line")
        .to_string();
    let mut texts = String::new();
    for auth in [KubeAuth::Token(K8S_TOKEN), KubeAuth::ClientCert(&leaf)] {
        let kubeconfig = build_kubeconfig(server.url(), server.ca().cert_pem(), "c", auth);
        let source = KubeconfigSource::from_kubeconfig(kubeconfig);
        texts.push_str(&format!("{source:?}{source:#?}"));
        let pool = SessionPool::builder(source).knobs_from(|_| None).build();
        let key = SessionKey::new("sub", "rg", "c");
        let session = pool.session(&key).await.unwrap();
        let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
            kube::Api::namespaced(session.client().clone(), "testkit");
        pods.list(&Default::default()).await.unwrap();
        texts.push_str(&format!(
            "{pool:?}{pool:#?}{session:?}{session:#?}{:?}",
            pool.stats()
        ));
        // The server now refuses the token: the kube error must not carry it either.
        server.revoke_token(K8S_TOKEN);
        if let Err(error) = pods.list(&Default::default()).await {
            texts.push_str(&error_text(&error));
        }
        server.add_token(K8S_TOKEN);
        pool.shutdown().await;
    }
    // AKS: ARM answers 401 to a token it rejects; the error must not carry the token.
    let http = reqwest::Client::builder()
        .tls_certs_only([
            reqwest::Certificate::from_pem(server.ca().cert_pem().as_bytes()).unwrap(),
        ])
        .build()
        .unwrap();
    let aks = AksSource::builder(Arc::new(SecretAzureCredential))
        .base_url(server.url().parse().unwrap())
        .http_client(http)
        .build()
        .unwrap();
    texts.push_str(&format!("{aks:?}"));
    let pool = SessionPool::builder(aks).knobs_from(|_| None).build();
    let error = pool
        .session(&SessionKey::new("s", "r", "c"))
        .await
        .unwrap_err();
    texts.push_str(&error_text(&error));
    let secrets = [K8S_TOKEN, key_line.as_str(), AZURE_TOKEN];
    assert_clean("k8s-session Debug/Display/errors", &texts, &secrets);
    assert_clean("logs", &captured_logs(), &secrets);
}

// covers A6, A8: apikey-cache's keys, cache, stats and verdicts, and the layer.
#[tokio::test]
async fn apikey_cache_never_prints_a_key() {
    logs();
    let store = MemoryStore::new();
    let cache = ApiKeyCache::new(store.clone(), CacheConfig::default());
    let account = cache.create_account("acme", "Acme").await.unwrap();
    let issued = cache.issue_key(&account).await.unwrap();
    let key = issued.secret.expose().to_string();
    let identity = cache.authenticate(&key).await.unwrap();
    cache.revoke_key(&issued.identity.key).await.unwrap();
    let revoked = cache.authenticate(&key).await.unwrap_err();
    store.fail_loads(true);
    let unknown = cache
        .authenticate("ak_not-a-key-SECRET-0f")
        .await
        .unwrap_err();
    let text = format!(
        "{issued:?}{:?}{identity:?}{cache:?}{:?}{}{}{:?}",
        issued.secret,
        cache.stats(),
        error_text(&revoked),
        error_text(&unknown),
        store.document()
    );
    assert_clean(
        "apikey-cache Debug/Display/errors/store",
        &text,
        &[&key, "not-a-key-SECRET-0f"],
    );
    assert_clean("logs", &captured_logs(), &[&key, "not-a-key-SECRET-0f"]);
}

// covers I5: the inspector redacts Authorization, Cookie and x-api-key in what it keeps, in its
// JSON, in Debug and in logs.
#[tokio::test]
async fn request_inspector_redacts_secret_headers_everywhere() {
    logs();
    let inspector = Inspector::new(InspectorConfig::new());
    let inner = tower::service_fn(|_request: Request<_>| async {
        let mut response = http::Response::new(String::from("ok"));
        response.headers_mut().insert(
            "set-cookie",
            HeaderValue::from_static("session=cookie-SECRET-31"),
        );
        Ok::<_, std::convert::Infallible>(response)
    });
    let service = inspector.layer().layer(inner);
    let request = Request::post("/api/items?sig=q")
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("cookie", "session=cookie-SECRET-30")
        .header(API_KEY_HEADER, HEADER_SECRET)
        .body(String::from("{}"))
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap();
    drop(body);
    let entries = inspector.entries();
    assert_eq!(entries.len(), 1);
    let text = format!(
        "{entries:?}{entries:#?}{inspector:?}{}",
        serde_json::to_string(&entries.iter().map(|e| &**e).collect::<Vec<_>>()).unwrap()
    );
    let secrets = [TOKEN, "cookie-SECRET-30", HEADER_SECRET];
    assert_clean("request-inspector entries/JSON/Debug", &text, &secrets);
    assert_clean("logs", &captured_logs(), &secrets);
}

// ---------------------------------------------------------------------------------------------
// TLS: every option that touches trust, against a server whose CA is not trusted.
//
// | crate | option | effect |
// |---|---|---|
// | retry-transport | `Builder::add_root_certificate` | adds a trusted root (never removes verification) |
// | retry-transport | `Builder::tls_certs_only` | replaces the roots (narrows trust) |
// | retry-transport | `Builder::customize(|b| ...)` | any reqwest setting — verification can only be turned off with reqwest's own `danger_accept_invalid_certs` / `tls_danger_accept_invalid_hostnames`, written out by the caller |
// | blob-pool | `BlobPoolBuilder::transport` | a retry-transport client (same options) |
// | blob-pool | `Endpoint::parse` | `https` required for bearer clients |
// | k8s-session | `AksSourceBuilder::http_client` / `base_url` | caller's reqwest client; `https` required off loopback |
// | k8s-session | kubeconfig `certificate-authority-data` | the cluster's CA (missing → platform roots, still verified) |
// | k8s-session | kubeconfig `insecure-skip-tls-verify: true` | refused (`BuildError::InsecureSkipTlsVerify`), nothing sent |
// | k8s-session | `SessionPoolBuilder::danger_accept_insecure_skip_tls_verify()` | honours the flag: verification OFF, a `warn` per session |

/// An HTTPS server on loopback whose CA nobody trusts by default.
async fn untrusted_server() -> K8sServer {
    K8sServer::start().await.unwrap()
}

fn is_tls_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    let text = error_text(error).to_lowercase();
    text.contains("certificate")
        || text.contains("unknown issuer")
        || text.contains("tls")
        || text.contains("invalid peer")
}

// covers R6: retry-transport verifies by default, after reset(), and with foreign roots; only
// the right CA or reqwest's explicitly named `danger_*` switch gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_transport_tls_cannot_be_turned_off_by_accident() {
    let server = untrusted_server().await;
    let url: reqwest::Url = format!("{}/version", server.url()).parse().unwrap();
    let other_ca = testkit::tls::TestCa::new("other").unwrap();
    let other = reqwest::Certificate::from_pem(other_ca.cert_pem().as_bytes()).unwrap();
    let right = reqwest::Certificate::from_pem(server.ca().cert_pem().as_bytes()).unwrap();
    let refuse = |client: RetryClient, what: &'static str| {
        let url = url.clone();
        async move {
            let error = client.send(client.get(url)).await.expect_err(what);
            assert!(
                is_tls_failure(&error),
                "{what}: not a TLS failure: {error:?}"
            );
        }
    };
    refuse(RetryClient::new().unwrap(), "default roots").await;
    refuse(
        RetryClient::builder()
            .add_root_certificate(other.clone())
            .build()
            .unwrap(),
        "an added foreign root",
    )
    .await;
    refuse(
        RetryClient::builder()
            .tls_certs_only([other])
            .build()
            .unwrap(),
        "only a foreign root",
    )
    .await;
    let client = RetryClient::new().unwrap();
    client.reset().unwrap();
    refuse(client, "after reset").await;

    let trusting = RetryClient::builder()
        .tls_certs_only([right])
        .build()
        .unwrap();
    trusting
        .send(trusting.get(url.clone()))
        .await
        .expect("the right CA is trusted");
    trusting.reset().unwrap();
    trusting
        .send(trusting.get(url.clone()))
        .await
        .expect("reset keeps the roots");
    // The only way off: reqwest's own, loudly named switch, written out by the caller.
    let danger = RetryClient::builder()
        .customize(|b| b.danger_accept_invalid_certs(true))
        .build()
        .unwrap();
    danger
        .send(danger.get(url))
        .await
        .expect("explicit danger switch");
}

// covers B7: blob-pool verifies the endpoint's certificate and refuses plain http for bearer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_pool_tls_cannot_be_turned_off_by_accident() {
    let server = untrusted_server().await;
    assert!(Endpoint::parse(&format!("http://{}/acct", server.addr())).is_err());
    let pool = BlobPool::new().unwrap();
    let credential: Arc<dyn TokenCredential> = Arc::new(SecretAzureCredential);
    let endpoint = Endpoint::parse(&format!("{}/acct", server.url())).unwrap();
    let client = pool.client(&credential, &endpoint).await.unwrap();
    let error = client.get_properties(None).await.unwrap_err();
    assert!(is_tls_failure(&error), "{error:?}");
    assert!(
        server.requests().is_empty(),
        "no request (and no token) reached an untrusted server"
    );
}

// covers K2: a kubeconfig without the server's CA is verified against the platform roots and
// refused — a missing CA never means "skip verification"; an AKS base URL must be https.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8s_session_tls_cannot_be_turned_off_by_accident() {
    let server = untrusted_server().await;
    let other_ca = testkit::tls::TestCa::new("other").unwrap();
    let token = server.token().to_string();
    let pods_with = |kubeconfig, accept_insecure: bool| async move {
        let mut builder = SessionPool::builder(KubeconfigSource::from_kubeconfig(kubeconfig))
            .knobs_from(|_| None);
        if accept_insecure {
            builder = builder.danger_accept_insecure_skip_tls_verify();
        }
        let pool = builder.build();
        let session = pool.session(&SessionKey::new("s", "r", "c")).await?;
        let api: kube::Api<k8s_openapi::api::core::v1::Pod> =
            kube::Api::namespaced(session.client().clone(), "testkit");
        api.list(&Default::default()).await?;
        anyhow::Ok(())
    };
    let pods = |kubeconfig| pods_with(kubeconfig, false);
    // Wrong CA.
    let wrong = build_kubeconfig(
        server.url(),
        other_ca.cert_pem(),
        "c",
        KubeAuth::Token(&token),
    );
    assert!(pods(wrong).await.is_err());
    // No CA at all.
    let mut missing = build_kubeconfig(
        server.url(),
        server.ca().cert_pem(),
        "c",
        KubeAuth::Token(&token),
    );
    for cluster in &mut missing.clusters {
        if let Some(cluster) = cluster.cluster.as_mut() {
            cluster.certificate_authority_data = None;
        }
    }
    assert!(pods(missing).await.is_err());
    assert!(server.requests().is_empty(), "nothing reached the server");
    // The right CA works.
    let right = build_kubeconfig(
        server.url(),
        server.ca().cert_pem(),
        "c",
        KubeAuth::Token(&token),
    );
    pods(right).await.expect("the right CA is trusted");
    // A kubeconfig's own `insecure-skip-tls-verify: true` is refused (typed, before anything is
    // sent) unless the pool opted in with the loudly named builder call.
    let mut insecure = build_kubeconfig(
        server.url(),
        other_ca.cert_pem(),
        "c",
        KubeAuth::Token(&token),
    );
    for cluster in &mut insecure.clusters {
        if let Some(cluster) = cluster.cluster.as_mut() {
            cluster.certificate_authority_data = None;
            cluster.insecure_skip_tls_verify = Some(true);
        }
    }
    let sent_before = server.requests().len();
    let refused = pods(insecure.clone()).await.unwrap_err();
    let refused = refused
        .downcast_ref::<SessionError>()
        .and_then(SessionError::build_error);
    assert!(
        matches!(refused, Some(BuildError::InsecureSkipTlsVerify { .. })),
        "{refused:?}"
    );
    assert_eq!(
        server.requests().len(),
        sent_before,
        "nothing reached the server"
    );
    pods_with(insecure, true)
        .await
        .expect("only the explicit danger_accept_insecure_skip_tls_verify turns verification off");
    // AKS: a bearer token is never sent to a plain-http, non-loopback ARM.
    let plain = AksSource::builder(Arc::new(SecretAzureCredential))
        .base_url("http://management.example.invalid".parse().unwrap())
        .build();
    assert!(plain.is_err());
}

// ---------------------------------------------------------------------------------------------
// No temp files.

// covers K2 (no temp files at all): sessions (token, certificate, AKS), blob clients, retry
// clients with custom roots and an API-key cache are built and used; nothing under the temp
// dir is created with our material, and nothing there is held open by this process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn building_sessions_and_clients_writes_no_temp_file() {
    let before = support::temp_entries();
    // Files open there before the run (other tests of this binary, a redirected output).
    let open_before = support::open_temp_files();
    let server = K8sServer::start().await.unwrap();
    let leaf = server
        .ca()
        .client_leaf("testkit-admin", &["system:masters"])
        .unwrap();
    let mut held_open = Vec::new();
    for auth in [KubeAuth::Token(server.token()), KubeAuth::ClientCert(&leaf)] {
        let kubeconfig = build_kubeconfig(server.url(), server.ca().cert_pem(), "c", auth);
        let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(kubeconfig))
            .knobs_from(|_| None)
            .build();
        let session = pool.session(&SessionKey::new("s", "r", "c")).await.unwrap();
        let api: kube::Api<k8s_openapi::api::core::v1::Pod> =
            kube::Api::namespaced(session.client().clone(), "testkit");
        api.list(&Default::default()).await.unwrap();
        held_open.extend(support::open_temp_files());
        pool.shutdown().await;
    }
    let right = reqwest::Certificate::from_pem(server.ca().cert_pem().as_bytes()).unwrap();
    let client = RetryClient::builder()
        .tls_certs_only([right])
        .build()
        .unwrap();
    client
        .send(client.get(format!("{}/version", server.url()).parse().unwrap()))
        .await
        .unwrap();
    client.reset().unwrap();
    let pool = BlobPool::new().unwrap();
    let credential: Arc<dyn TokenCredential> = Arc::new(SecretAzureCredential);
    let _client = pool
        .client(&credential, &Endpoint::azure("account").unwrap())
        .await
        .unwrap();
    let cache = ApiKeyCache::new(MemoryStore::new(), CacheConfig::default());
    let account = cache.create_account("a", "A").await.unwrap();
    cache.issue_key(&account).await.unwrap();
    held_open.extend(support::open_temp_files());
    let after = support::temp_entries();

    held_open.retain(|path| !open_before.contains(path));
    assert!(
        held_open.is_empty(),
        "files held open under the temp dir: {held_open:?}"
    );
    // The machine is shared: other processes may create temp files meanwhile. A new file is
    // ours if it holds any of our material.
    let material = [
        leaf.key_pem().lines().nth(1).unwrap().to_string(),
        leaf.cert_pem().lines().nth(1).unwrap().to_string(),
        server.ca().cert_pem().lines().nth(1).unwrap().to_string(),
        server.token().to_string(),
    ];
    let mut ours = Vec::new();
    let new: Vec<_> = after.difference(&before).collect();
    for path in &new {
        if let Ok(bytes) = std::fs::read(path)
            && bytes.len() < 1 << 20
        {
            let text = String::from_utf8_lossy(&bytes);
            if material.iter().any(|m| text.contains(m.as_str())) {
                ours.push(path.to_path_buf());
            }
        }
    }
    assert!(ours.is_empty(), "temp files with our material: {ours:?}");
    println!(
        "temp dir: {} new entries during the run (none with our material, none held open by us)",
        new.len()
    );
    let _ = std::io::stdout().flush();
}
