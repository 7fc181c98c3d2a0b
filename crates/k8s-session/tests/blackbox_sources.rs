//! Black-box tests of k8s-session's credential sources and its key/TTL rules (SPEC K1–K7, X5),
//! written from the SPEC and the guide only (public API; no source bodies, no other test file).
//!
//! - Kubeconfig source: malformed and adversarial kubeconfigs are typed errors, never panics,
//!   never a secret in `Display`/`Debug`; no binary is ever run; files are only read.
//! - AKS source against a loopback fake ARM written here: operations by key, status codes,
//!   garbage answers, hung endpoints and token providers (bounded waits).
//! - TTL: default, knobs (builder, `knobs_from`, and the real environment in child processes),
//!   clamps by certificate `notAfter`, material expiry and token expiry − 60 s, one-shots.
//! - Handles, reset and shutdown: drop returns, retire outside the lock, no deadlock.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::time::OffsetDateTime;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use k8s_session::{
    AksSource, AuthKind, BuildError, ClusterCredentials, ClusterMaterial, CredentialsError,
    DEFAULT_ARM_TIMEOUT, Expiries, FixedClock, KubeconfigSource, SessionError, SessionKey,
    SessionPool, SessionPoolBuilder, TOKEN_EXPIRY_MARGIN, TtlBound, effective_ttl,
};
use kube::config::Kubeconfig;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The pinned wall clock of most tests.
const T0_SECS: u64 = 1_700_000_000;

fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(T0_SECS)
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A marker that must never appear in any error or `Debug` output.
const SECRET: &str = "S3CRET-leak-marker-7f3a9c";

fn b64(text: impl AsRef<[u8]>) -> String {
    STANDARD.encode(text)
}

/// An unsigned JWT carrying `claims`.
fn jwt(claims: &Value) -> String {
    format!(
        "{}.{}.c2lnbmF0dXJl",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// A kubeconfig (JSON text, which is YAML) with one cluster `c` on a closed loopback port, one
/// user `u` described by `user`, context `ctx` current.
fn kc_text(user: Value) -> String {
    kc_value(user).to_string()
}

fn kc_value(user: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "c", "cluster": { "server": "https://127.0.0.1:1" } }],
        "users": [{ "name": "u", "user": user }],
        "contexts": [{ "name": "ctx", "context": { "cluster": "c", "user": "u" } }],
        "current-context": "ctx",
    })
}

fn kc(user: Value) -> Kubeconfig {
    serde_json::from_value(kc_value(user)).expect("test kubeconfig deserialises")
}

fn token_user(token: &str) -> Value {
    json!({ "token": token })
}

/// A self-signed client certificate (PEM) and its key (PEM), valid until `not_after_unix`.
fn cert_pair(not_after_unix: i64) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec!["client.test".into()]).expect("params");
    params.not_before = OffsetDateTime::from_unix_timestamp(0).expect("epoch");
    params.not_after = OffsetDateTime::from_unix_timestamp(not_after_unix).expect("not_after");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "client");
    let cert = params.self_signed(&key).expect("self-signed");
    (cert.pem(), key.serialize_pem())
}

fn cert_user(not_after_unix: i64) -> Value {
    let (cert, key) = cert_pair(not_after_unix);
    json!({ "client-certificate-data": b64(cert), "client-key-data": b64(key) })
}

fn key() -> SessionKey {
    SessionKey::new("sub-1", "rg-1", "cluster-1")
}

/// A builder that reads no environment (the process environment is shared between tests),
/// with the wall clock pinned at [`t0`].
fn builder(source: impl ClusterCredentials) -> SessionPoolBuilder {
    SessionPool::builder(source)
        .knobs_from(|_| None)
        .clock(Arc::new(FixedClock::new(t0())))
}

/// `Display` of the error and of its whole source chain, plus its `Debug`.
fn everything(error: &(dyn StdError + 'static)) -> String {
    let mut out = format!("{error:?}\n");
    let mut next: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(e) = next {
        out.push_str(&e.to_string());
        out.push('\n');
        next = e.source();
    }
    out
}

fn assert_no_secret(what: &str, text: &str, secrets: &[&str]) {
    if let Err(message) = check_no_secret(what, text, secrets) {
        panic!("{message}");
    }
}

fn check_no_secret(what: &str, text: &str, secrets: &[&str]) -> Result<(), String> {
    for secret in secrets {
        if text.contains(secret) {
            let shown: String = text.chars().take(1500).collect();
            return Err(format!(
                "{what}: a secret ({secret:?}) is printed:\n{shown}"
            ));
        }
    }
    Ok(())
}

/// The `CredentialsError` inside a session error, if any.
fn credentials_error(error: &SessionError) -> Option<&CredentialsError> {
    match error.build_error()? {
        BuildError::Credentials(c) => Some(c),
        _ => None,
    }
}

/// An Azure credential for tests.
#[derive(Debug)]
struct TestCred {
    token: String,
    expires_on: OffsetDateTime,
    mode: CredMode,
    scopes: Mutex<Vec<String>>,
    calls: AtomicUsize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CredMode {
    Ok,
    Fail,
    Hang,
}

impl TestCred {
    fn new(token: &str, expires_on_unix: i64, mode: CredMode) -> Arc<Self> {
        Arc::new(Self {
            token: token.to_owned(),
            expires_on: OffsetDateTime::from_unix_timestamp(expires_on_unix).expect("expiry"),
            mode,
            scopes: Mutex::new(Vec::new()),
            calls: AtomicUsize::new(0),
        })
    }

    fn ok(token: &str) -> Arc<Self> {
        Self::new(token, T0_SECS as i64 + 3600, CredMode::Ok)
    }

    fn scopes(&self) -> Vec<String> {
        self.scopes.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl TokenCredential for TestCred {
    async fn get_token(
        &self,
        scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.scopes
            .lock()
            .unwrap()
            .extend(scopes.iter().map(|s| (*s).to_owned()));
        match self.mode {
            CredMode::Ok => Ok(AccessToken::new(self.token.clone(), self.expires_on)),
            CredMode::Fail => Err(azure_core::Error::with_message(
                azure_core::error::ErrorKind::Credential,
                "identity endpoint said no",
            )),
            CredMode::Hang => std::future::pending().await,
        }
    }
}

/// A source serving one kubeconfig, counting calls, optionally held at a gate.
#[derive(Debug)]
struct CountingSource {
    material: ClusterMaterial,
    calls: Arc<AtomicUsize>,
    gate: Option<Arc<tokio::sync::Semaphore>>,
}

impl CountingSource {
    fn new(kubeconfig: Kubeconfig) -> (Self, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        (
            Self {
                material: ClusterMaterial::new(kubeconfig),
                calls: calls.clone(),
                gate: None,
            },
            calls,
        )
    }
}

#[async_trait::async_trait]
impl ClusterCredentials for CountingSource {
    async fn credentials(&self, _key: &SessionKey) -> Result<ClusterMaterial, CredentialsError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(gate) = &self.gate {
            gate.acquire().await.expect("gate open").forget();
        }
        Ok(self.material.clone())
    }
}

/// A scratch directory under cargo's per-target temp dir (never `std::env::temp_dir()`, which
/// the no-temp-files test watches).
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("blackbox_sources")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

// ---------------------------------------------------------------------------------------------
// A fake ARM endpoint on loopback (plain HTTP: the AKS source allows http on loopback)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    authorization: Option<String>,
}

impl Seen {
    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
}

#[derive(Clone)]
enum Reply {
    Respond(u16, Vec<u8>),
    /// Accept the request, never answer.
    Hang,
    /// Headers, then a 1 GiB body of which 64 MiB are sent, then silence.
    Oversized,
}

type Responder = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

struct FakeArm {
    url: url::Url,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeArm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeArm {
    async fn start(responder: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        let responder: Responder = Arc::new(responder);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                let mut connections = tokio::task::JoinSet::new();
                while let Ok((socket, _)) = listener.accept().await {
                    connections.spawn(serve(socket, seen.clone(), responder.clone()));
                    while connections.try_join_next().is_some() {}
                }
            }
        });
        Self {
            url: format!("http://{addr}").parse().expect("url"),
            seen,
            task,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn serve(mut socket: TcpStream, seen: Arc<Mutex<Vec<Seen>>>, responder: Responder) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let Ok(n) = socket.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > 1 << 20 {
            return;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_owned();
    let target = first.next().unwrap_or_default().to_owned();
    let mut headers = HashMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut have = buf.len() - head_end;
    while have < length {
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => have += n,
        }
    }
    let request = Seen {
        method,
        target,
        authorization: headers.get("authorization").cloned(),
    };
    seen.lock().unwrap().push(request.clone());
    match responder(&request) {
        Reply::Respond(status, body) => {
            let head = format!(
                "HTTP/1.1 {status} Answer\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.write_all(&body).await;
            let _ = socket.shutdown().await;
        }
        Reply::Hang => std::future::pending::<()>().await,
        Reply::Oversized => {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1073741824\r\n\r\n";
            if socket.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let zeros = vec![b' '; 1 << 20];
            for _ in 0..64 {
                if socket.write_all(&zeros).await.is_err() {
                    return;
                }
            }
            std::future::pending::<()>().await;
        }
    }
}

/// ARM's answer holding `kubeconfig` (base64 in `value`).
fn arm_answer(kubeconfig: &str) -> Vec<u8> {
    json!({ "kubeconfigs": [{ "name": "clusterUser", "value": b64(kubeconfig) }] })
        .to_string()
        .into_bytes()
}

fn aks_source(arm: &FakeArm, cred: Arc<TestCred>) -> AksSource {
    AksSource::builder(cred)
        .base_url(arm.url.clone())
        .timeout(secs(10))
        .build()
        .expect("AKS source on loopback")
}

// ---------------------------------------------------------------------------------------------
// K2: the kubeconfig source, malformed and adversarial input
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Parsing or building must fail with a typed error.
    Fail,
    /// May build or fail; never a panic, never a secret.
    Either,
}

/// Parse `yaml` with the source, then build a session from it (if it parsed). `Ok`: a
/// description of the outcome; `Err`: a leak or an unexpected success.
async fn probe_kubeconfig(
    name: &str,
    yaml: &str,
    expect: Expect,
    secrets: &[&str],
) -> Result<String, String> {
    let source = match KubeconfigSource::from_yaml(yaml) {
        Err(error) => {
            check_no_secret(
                &format!("case {name:?}: from_yaml error"),
                &everything(&error),
                secrets,
            )?;
            return Ok(format!("parse error: {error}"));
        }
        Ok(source) => source,
    };
    check_no_secret(
        &format!("case {name:?}: Debug of KubeconfigSource"),
        &format!("{source:?}"),
        secrets,
    )?;
    let pool = builder(source).build();
    let outcome = match pool.session(&key()).await {
        Err(error) => {
            let text = everything(&error);
            check_no_secret(&format!("case {name:?}: session error"), &text, secrets)?;
            if !matches!(error, SessionError::Build { .. }) {
                return Err(format!("case {name:?}: {error:?}"));
            }
            format!("build error: {text}")
        }
        Ok(session) => {
            if expect != Expect::Either {
                return Err(format!(
                    "case {name:?}: a session was built from a kubeconfig that must be refused: {session:?}"
                ));
            }
            check_no_secret(
                &format!("case {name:?}: Debug of Session"),
                &format!("{session:?}"),
                secrets,
            )?;
            format!("built: {:?}", session.auth())
        }
    };
    check_no_secret(
        &format!("case {name:?}: Debug of SessionPool"),
        &format!("{pool:?}"),
        secrets,
    )?;
    Ok(outcome)
}

/// K2 + general rules: a table of broken kubeconfigs, each a typed error (or a harmless build),
/// never a panic, never the secret they carry in any error or `Debug`.
#[tokio::test]
async fn k2_malformed_kubeconfigs_are_typed_errors_that_print_no_secret() {
    let (good_cert, _good_key) = cert_pair(T0_SECS as i64 + 86_400 * 365);
    let base = |user: Value| kc_value(user);
    let mut cases: Vec<(&str, String, Expect)> = vec![
        ("not yaml", "{{{{ ::: [[[".into(), Expect::Fail),
        ("empty text", String::new(), Expect::Fail),
        ("yaml null", "~".into(), Expect::Fail),
        ("a yaml list", "- a\n- b\n".into(), Expect::Fail),
        (
            "no current context",
            {
                let mut v = base(token_user(SECRET));
                v.as_object_mut().unwrap().remove("current-context");
                v.to_string()
            },
            Expect::Fail,
        ),
        (
            "current context names nothing",
            {
                let mut v = base(token_user(SECRET));
                v["current-context"] = json!("nope");
                v.to_string()
            },
            Expect::Fail,
        ),
        (
            "context names a missing cluster",
            {
                let mut v = base(token_user(SECRET));
                v["contexts"][0]["context"]["cluster"] = json!("missing");
                v.to_string()
            },
            Expect::Fail,
        ),
        (
            "context names a missing user",
            {
                let mut v = base(token_user(SECRET));
                v["contexts"][0]["context"]["user"] = json!("missing");
                v.to_string()
            },
            Expect::Either,
        ),
        (
            "cluster without server",
            {
                let mut v = base(token_user(SECRET));
                v["clusters"][0]["cluster"] = json!({});
                v.to_string()
            },
            Expect::Fail,
        ),
        (
            "server is not a url",
            {
                let mut v = base(token_user(SECRET));
                v["clusters"][0]["cluster"]["server"] = json!("::: not a url :::");
                v.to_string()
            },
            Expect::Fail,
        ),
        (
            "server url with a password in it",
            {
                let mut v = base(token_user("tok"));
                v["clusters"][0]["cluster"]["server"] =
                    json!(format!("https://admin:{SECRET}@127.0.0.1:1"));
                v.to_string()
            },
            Expect::Either,
        ),
        (
            "CA data is not base64",
            {
                let mut v = base(token_user(SECRET));
                v["clusters"][0]["cluster"]["certificate-authority-data"] =
                    json!("!!!! not base64 !!!!");
                v.to_string()
            },
            Expect::Fail,
        ),
        (
            "CA data is not PEM",
            {
                let mut v = base(token_user(SECRET));
                v["clusters"][0]["cluster"]["certificate-authority-data"] =
                    json!(b64("this is no certificate"));
                v.to_string()
            },
            Expect::Either,
        ),
        (
            "client certificate data is not base64",
            kc_text(json!({
                "client-certificate-data": "%%% not base64 %%%",
                "client-key-data": b64(SECRET),
            })),
            Expect::Fail,
        ),
        (
            "client certificate is not a certificate",
            kc_text(json!({
                "client-certificate-data": b64(format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", b64(SECRET))),
                "client-key-data": b64(SECRET),
            })),
            Expect::Fail,
        ),
        (
            "client key is base64 garbage holding the secret",
            kc_text(json!({
                "client-certificate-data": b64(&good_cert),
                "client-key-data": format!("%%{SECRET}%%"),
            })),
            Expect::Fail,
        ),
        (
            "client key is a PEM block of garbage",
            kc_text(json!({
                "client-certificate-data": b64(&good_cert),
                "client-key-data": b64(format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", b64(SECRET))),
            })),
            Expect::Fail,
        ),
        (
            "client key is plain text holding the secret",
            kc_text(json!({
                "client-certificate-data": b64(&good_cert),
                "client-key-data": b64(SECRET),
            })),
            Expect::Fail,
        ),
        (
            "client certificate without key",
            kc_text(json!({ "client-certificate-data": b64(&good_cert) })),
            Expect::Either,
        ),
        (
            "unknown auth provider with a token in its config",
            kc_text(
                json!({ "auth-provider": { "name": "weird", "config": { "access-token": SECRET } } }),
            ),
            Expect::Either,
        ),
        (
            "azure auth provider with a token in its config",
            kc_text(
                json!({ "auth-provider": { "name": "azure", "config": { "access-token": SECRET, "tenant-id": "t" } } }),
            ),
            Expect::Either,
        ),
        (
            "oidc auth provider without id-token",
            kc_text(
                json!({ "auth-provider": { "name": "oidc", "config": { "refresh-token": SECRET } } }),
            ),
            Expect::Either,
        ),
        (
            "token file that does not exist",
            kc_text(json!({ "tokenFile": "/nonexistent/blackbox/token" })),
            Expect::Either,
        ),
        (
            "client certificate file that does not exist (relative)",
            kc_text(
                json!({ "client-certificate": "no-such-dir/client.crt", "client-key": "no-such-dir/client.key" }),
            ),
            Expect::Fail,
        ),
        (
            "exec plugin without command",
            kc_text(
                json!({ "exec": { "apiVersion": "client.authentication.k8s.io/v1beta1", "env": [{ "name": "PASSWORD", "value": SECRET }] } }),
            ),
            Expect::Fail,
        ),
        (
            "exec plugin with an unknown command and a secret in its env and args",
            kc_text(json!({ "exec": {
                "apiVersion": "client.authentication.k8s.io/v1beta1",
                "command": "definitely-not-kubelogin",
                "args": ["--client-secret", SECRET],
                "env": [{ "name": "PASSWORD", "value": SECRET }],
            } })),
            Expect::Fail,
        ),
        (
            "basic auth password",
            kc_text(json!({ "username": "admin", "password": SECRET })),
            Expect::Either,
        ),
        (
            "kind is not Config",
            {
                let mut v = base(token_user(SECRET));
                v["kind"] = json!("Pod");
                v["apiVersion"] = json!("v99");
                v.to_string()
            },
            Expect::Either,
        ),
        (
            "two yaml documents",
            format!(
                "{}\n---\n{}\n",
                kc_text(token_user(SECRET)),
                kc_text(token_user("other"))
            ),
            Expect::Either,
        ),
        (
            "duplicate mapping keys",
            format!(
                "current-context: ctx\ncurrent-context: other\nclusters: []\nusers:\n- name: u\n  user:\n    token: {SECRET}\n"
            ),
            Expect::Either,
        ),
        (
            "binary tag",
            format!("users: !!binary {}\n", b64(SECRET)),
            Expect::Fail,
        ),
    ];
    // Huge values.
    let huge_token = format!("{SECRET}{}", "t".repeat(8 << 20));
    cases.push((
        "an 8 MiB token",
        kc_text(json!({ "token": huge_token })),
        Expect::Either,
    ));
    cases.push((
        "an 8 MiB server name",
        {
            let mut v = base(token_user(SECRET));
            v["clusters"][0]["cluster"]["server"] =
                json!(format!("https://{}.example:1", "a".repeat(8 << 20)));
            v.to_string()
        },
        Expect::Either,
    ));
    cases.push((
        "a thousand contexts",
        {
            let mut v = base(token_user(SECRET));
            let contexts: Vec<Value> = (0..1000)
                .map(|i| json!({ "name": format!("ctx{i}"), "context": { "cluster": "c", "user": "u" } }))
                .collect();
            v["contexts"] = json!(contexts);
            v["current-context"] = json!("ctx999");
            v.to_string()
        },
        Expect::Either,
    ));

    let mut report = String::new();
    let mut failures = Vec::new();
    for (name, yaml, expect) in &cases {
        // Each case on its own task, so a panic is reported as that case's failure.
        let (name, yaml, expect) = (name.to_string(), yaml.clone(), *expect);
        let outcome = tokio::spawn({
            let name = name.clone();
            async move { probe_kubeconfig(&name, &yaml, expect, &[SECRET]).await }
        })
        .await;
        match outcome {
            Ok(Ok(outcome)) => {
                let short: String = outcome.chars().take(160).collect();
                report.push_str(&format!("{name}: {short}\n"));
            }
            Ok(Err(failure)) => failures.push(failure),
            Err(join) => failures.push(format!("case {name:?}: PANICKED: {join}")),
        }
    }
    eprintln!("{report}");
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

/// K2: the refusals that have a documented variant get that variant.
#[tokio::test]
async fn k2_documented_refusals_have_their_typed_variants() {
    // An exec plugin other than kubelogin.
    let pool = builder(KubeconfigSource::from_kubeconfig(kc(json!({ "exec": {
        "apiVersion": "client.authentication.k8s.io/v1beta1",
        "command": "aws-iam-authenticator",
        "args": ["token", "-i", "cluster"],
    } }))))
    .build();
    let error = pool.session(&key()).await.expect_err("exec refused");
    assert!(
        matches!(error.build_error(), Some(BuildError::UnsupportedExecPlugin { command, .. }) if command.contains("aws-iam-authenticator")),
        "{error:?}"
    );

    // kubelogin without an AAD credential.
    let pool = builder(KubeconfigSource::from_kubeconfig(kc(kubelogin_user(None)))).build();
    let error = pool.session(&key()).await.expect_err("no AAD credential");
    assert!(
        matches!(error.build_error(), Some(BuildError::NoAadCredential)),
        "{error:?}"
    );

    // No current context: a kubeconfig error.
    let mut value = kc_value(token_user("tok"));
    value.as_object_mut().unwrap().remove("current-context");
    let pool = builder(KubeconfigSource::from_kubeconfig(
        serde_json::from_value(value).unwrap(),
    ))
    .build();
    let error = pool.session(&key()).await.expect_err("no context");
    assert!(
        matches!(error.build_error(), Some(BuildError::Kubeconfig(_))),
        "{error:?}"
    );

    // A client certificate that is not one: a certificate error.
    let pool = builder(KubeconfigSource::from_kubeconfig(kc(json!({
        "client-certificate-data": b64("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
        "client-key-data": b64(cert_pair(T0_SECS as i64 + 3600).1),
    }))))
    .build();
    let error = pool.session(&key()).await.expect_err("bad certificate");
    assert!(
        matches!(error.build_error(), Some(BuildError::Certificate { .. })),
        "{error:?}"
    );

    // insecure-skip-tls-verify without the opt-in, for a kubelogin user: refused before any
    // token is fetched.
    let mut value = kc_value(kubelogin_user(None));
    value["clusters"][0]["cluster"]["insecure-skip-tls-verify"] = json!(true);
    let cred = TestCred::ok("aad-token");
    let pool = builder(KubeconfigSource::from_kubeconfig(
        serde_json::from_value(value.clone()).unwrap(),
    ))
    .aad_credential(cred.clone())
    .build();
    let error = pool.session(&key()).await.expect_err("insecure refused");
    assert!(
        matches!(error.build_error(), Some(BuildError::InsecureSkipTlsVerify { server, .. }) if server.contains("127.0.0.1")),
        "{error:?}"
    );
    assert_eq!(
        cred.calls.load(Ordering::SeqCst),
        0,
        "no token fetched for a refused kubeconfig"
    );
    // With the opt-in it builds.
    let pool = builder(KubeconfigSource::from_kubeconfig(
        serde_json::from_value(value).unwrap(),
    ))
    .aad_credential(cred.clone())
    .danger_accept_insecure_skip_tls_verify()
    .build();
    let session = pool.session(&key()).await.expect("opted in");
    assert_eq!(session.auth(), AuthKind::AadToken);
}

/// Bad input → typed error, never a panic: a kubeconfig token that cannot be an HTTP header
/// value (a NUL, CR/LF, DEL) must give a typed error (at build or on the request), never a
/// panic in the caller's task; concurrent callers of the same key do not hang, and the pool
/// keeps serving other keys.
#[tokio::test]
async fn k2_kubeconfig_token_that_is_no_header_value_never_panics() {
    let mut failures = Vec::new();
    for (name, token) in [
        ("NUL", "abc\u{0}def"),
        ("CR LF", "abc\r\nX-Injected: 1"),
        ("DEL", "abc\u{7f}def"),
    ] {
        let value = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{ "name": "c", "cluster": { "server": "https://127.0.0.1:1" } }],
            "users": [
                { "name": "good", "user": { "token": "tok" } },
                { "name": "bad", "user": { "token": token } },
            ],
            "contexts": [
                { "name": "good", "context": { "cluster": "c", "user": "good" } },
                { "name": "bad", "context": { "cluster": "c", "user": "bad" } },
            ],
            "current-context": "good",
        });
        let bad = SessionKey::new("s", "rg", "bad");
        let good = SessionKey::new("s", "rg", "good");
        let pool = builder(
            KubeconfigSource::from_kubeconfig(serde_json::from_value(value).unwrap())
                .with_context(bad.clone(), "bad")
                .with_context(good.clone(), "good"),
        )
        .connect_timeout(Some(Duration::from_millis(300)))
        .build();
        let callers: Vec<_> = (0..4)
            .map(|_| {
                let pool = pool.clone();
                let bad = bad.clone();
                tokio::spawn(async move {
                    match pool.session(&bad).await {
                        Err(e) => format!("typed build error: {e}"),
                        Ok(session) => match session.client().apiserver_version().await {
                            Err(e) => format!("built; request failed: {e}"),
                            Ok(_) => "built; request succeeded".to_owned(),
                        },
                    }
                })
            })
            .collect();
        let (mut panics, mut hung) = (0, 0);
        for caller in callers {
            match tokio::time::timeout(secs(10), caller).await {
                Ok(Ok(text)) => eprintln!("{name}: {text}"),
                Ok(Err(_)) => panics += 1,
                Err(_) => hung += 1,
            }
        }
        if panics + hung > 0 {
            failures.push(format!(
                "token with {name}: {panics} of 4 callers PANICKED, {hung} hung"
            ));
        }
        let after = tokio::spawn({
            let pool = pool.clone();
            async move { pool.session(&good).await.map(|s| s.auth()) }
        });
        match tokio::time::timeout(secs(10), after).await {
            Ok(Ok(Ok(_))) => {}
            other => failures.push(format!(
                "token with {name}: the pool stopped serving other keys: {other:?}"
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A marker file path that a binary run by the pool (or kube) would create.
fn marker(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// K2 ("Binaries are never run"): exec plugins other than kubelogin are refused without being
/// run, whatever their command.
#[tokio::test]
async fn k2_exec_plugins_are_never_run() {
    let dir = scratch("exec");
    let touched = marker(&dir, "exec-ran");
    for command in ["touch", "/usr/bin/touch", "./touch", "touch.exe"] {
        let pool = builder(KubeconfigSource::from_kubeconfig(kc(json!({ "exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": command,
            "args": [touched.to_str().unwrap()],
        } }))))
        .build();
        let result = pool.session(&key()).await;
        assert!(result.is_err(), "{command}: an exec user must be refused");
        assert!(
            !touched.exists(),
            "{command}: the exec plugin was RUN by the pool"
        );
    }
}

/// K2 ("Binaries are never run", "material from ARM or files, not from your code"): kube runs a
/// gcp auth-provider's `cmd-path` when a client is built from such a user. The pool must never
/// let it: building (and using) the session must not run the command.
#[tokio::test]
async fn k2_gcp_auth_provider_cmd_path_is_never_run() {
    let dir = scratch("gcp");
    let touched = marker(&dir, "gcp-cmd-ran");
    let pool = builder(KubeconfigSource::from_kubeconfig(kc(json!({
        "auth-provider": { "name": "gcp", "config": {
            "cmd-path": "touch",
            "cmd-args": touched.to_str().unwrap(),
        } }
    }))))
    .connect_timeout(Some(Duration::from_millis(500)))
    .build();
    let result = pool.session(&key()).await;
    let ran_at_build = touched.exists();
    if let Ok(session) = &result {
        // A request (to a closed port) would run a refreshing provider too.
        let _ = session.client().apiserver_version().await;
    }
    assert!(
        !ran_at_build && !touched.exists(),
        "a gcp auth-provider's cmd-path was RUN (at build: {ran_at_build}) by a session \
         (result: {:?})",
        result.as_ref().map(|s| s.auth())
    );
}

fn kubelogin_user(server_id: Option<&str>) -> Value {
    let mut args = vec!["get-token", "--login", "azurecli"];
    if let Some(id) = server_id {
        args.extend(["--server-id", id]);
    }
    json!({ "exec": {
        "apiVersion": "client.authentication.k8s.io/v1beta1",
        "command": "kubelogin",
        "args": args,
        "interactiveMode": "Never",
    } })
}

/// K2/K3: a kubelogin user gets a token from the pool's AAD credential for `<--server-id>/.default`
/// (default the AKS server scope); the session's TTL is the token's expiry − 60 s.
#[tokio::test(start_paused = true)]
async fn k3_kubelogin_user_gets_aad_token_and_ttl_follows_it() {
    let cred = TestCred::new("aad-token", T0_SECS as i64 + 200, CredMode::Ok);
    let pool = builder(KubeconfigSource::from_kubeconfig(kc(kubelogin_user(Some(
        "my-server-id",
    )))))
    .aad_credential(cred.clone())
    .build();
    let session = pool.session(&key()).await.expect("kubelogin session");
    assert_eq!(session.auth(), AuthKind::AadToken);
    assert_eq!(cred.scopes(), vec!["my-server-id/.default".to_owned()]);
    let ttl = session.effective_ttl();
    assert_eq!(ttl.ttl, secs(140), "{ttl:?}");
    assert_eq!(ttl.bound, TtlBound::Token);
    drop(session);

    // Default scope.
    let cred = TestCred::new("aad-token", T0_SECS as i64 + 3600, CredMode::Ok);
    let pool = builder(KubeconfigSource::from_kubeconfig(kc(kubelogin_user(None))))
        .aad_credential(cred.clone())
        .build();
    let session = pool.session(&key()).await.expect("kubelogin session");
    assert_eq!(
        cred.scopes(),
        vec![k8s_session::AKS_SERVER_SCOPE.to_owned()]
    );
    assert_eq!(session.effective_ttl().bound, TtlBound::PoolTtl);

    // An AAD token within the margin: one-shot; far in the past (before 1970): one-shot too.
    for expiry in [T0_SECS as i64 + 60, T0_SECS as i64 + 30, -1_000_000_000] {
        let cred = TestCred::new("aad-token", expiry, CredMode::Ok);
        let pool = builder(KubeconfigSource::from_kubeconfig(kc(kubelogin_user(None))))
            .aad_credential(cred)
            .build();
        let session = pool.session(&key()).await.expect("one-shot session");
        assert!(!session.is_pooled(), "expiry {expiry}: {session:?}");
        assert_eq!(pool.len(), 0);
    }
}

/// K2: an AAD credential that fails is a typed error, not cached.
#[tokio::test]
async fn k2_aad_credential_failure_is_typed_and_not_cached() {
    let cred = TestCred::new("x", T0_SECS as i64 + 3600, CredMode::Fail);
    let pool = builder(KubeconfigSource::from_kubeconfig(kc(kubelogin_user(None))))
        .aad_credential(cred.clone())
        .build();
    for _ in 0..2 {
        let error = pool.session(&key()).await.expect_err("AAD failure");
        assert!(
            matches!(error.build_error(), Some(BuildError::AadToken(_))),
            "{error:?}"
        );
    }
    assert_eq!(
        cred.calls.load(Ordering::SeqCst),
        2,
        "failures are not cached"
    );
    assert_eq!(pool.len(), 0);
}

/// General rule "hung or dead dependencies get bounded waits" (and the guide: "a hung identity
/// endpoint ... fails ... instead of stalling every caller waiting on that session's build"):
/// an AAD credential that never answers must not hang `session()` forever.
#[tokio::test(start_paused = true)]
async fn k2_hung_aad_credential_is_a_bounded_wait() {
    let cred = TestCred::new("x", T0_SECS as i64 + 3600, CredMode::Hang);
    let pool = builder(KubeconfigSource::from_kubeconfig(kc(kubelogin_user(None))))
        .aad_credential(cred)
        .build();
    let start = tokio::time::Instant::now();
    let outcome = tokio::time::timeout(secs(6 * 3600), pool.session(&key())).await;
    assert!(
        matches!(outcome, Ok(Err(_))),
        "a hung AAD credential kept session() waiting for over {:?} (virtual time)",
        start.elapsed()
    );
}

/// K2: keys routed to contexts; `strict()` refuses unrouted keys; a route to a missing context
/// is a typed error.
#[tokio::test]
async fn k2_multiple_contexts_are_routed_per_key() {
    let (cert, key_pem) = cert_pair(T0_SECS as i64 + 3600);
    let value = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [
            { "name": "east", "cluster": { "server": "https://127.0.0.1:1" } },
            { "name": "west", "cluster": { "server": "https://127.0.0.1:2" } },
        ],
        "users": [
            { "name": "reader", "user": { "token": "tok" } },
            { "name": "admin", "user": { "client-certificate-data": b64(&cert), "client-key-data": b64(&key_pem) } },
        ],
        "contexts": [
            { "name": "east-reader", "context": { "cluster": "east", "user": "reader" } },
            { "name": "west-admin", "context": { "cluster": "west", "user": "admin" } },
        ],
        "current-context": "east-reader",
    });
    let kubeconfig: Kubeconfig = serde_json::from_value(value).unwrap();
    let east = SessionKey::new("s", "rg", "east");
    let west = SessionKey::new("s", "rg", "west");
    let other = SessionKey::new("s", "rg", "other");
    let missing = SessionKey::new("s", "rg", "missing");

    let source = KubeconfigSource::from_kubeconfig(kubeconfig.clone())
        .with_context(east.clone(), "east-reader")
        .with_context(west.clone(), "west-admin")
        .with_context(missing.clone(), "no-such-context");
    let pool = builder(source).build();
    assert_eq!(
        pool.session(&east).await.unwrap().auth(),
        AuthKind::StaticToken
    );
    assert_eq!(
        pool.session(&west).await.unwrap().auth(),
        AuthKind::Certificate
    );
    // Unrouted, not strict: the current context.
    assert_eq!(
        pool.session(&other).await.unwrap().auth(),
        AuthKind::StaticToken
    );
    let error = pool.session(&missing).await.expect_err("missing context");
    assert!(
        matches!(error, SessionError::Build { .. }),
        "missing context: {error:?}"
    );

    let strict = builder(
        KubeconfigSource::from_kubeconfig(kubeconfig)
            .with_context(east.clone(), "east-reader")
            .strict(),
    )
    .build();
    assert!(strict.session(&east).await.is_ok());
    let error = strict.session(&other).await.expect_err("strict");
    assert!(
        matches!(
            credentials_error(&error),
            Some(CredentialsError::UnknownCluster { .. })
        ),
        "{error:?}"
    );
}

/// K2: an unreadable kubeconfig file is `CredentialsError::ReadFile`; a directory too.
#[tokio::test]
async fn k2_unreadable_kubeconfig_files_are_typed_errors() {
    let dir = scratch("unreadable");
    for path in [dir.join("does-not-exist.yaml"), dir.clone()] {
        let pool = builder(KubeconfigSource::from_file(&path)).build();
        let error = pool.session(&key()).await.expect_err("unreadable");
        assert!(
            matches!(
                credentials_error(&error),
                Some(CredentialsError::ReadFile { .. })
            ),
            "{path:?}: {error:?}"
        );
    }
    // A file of garbage: a parse error.
    let garbage = dir.join("garbage.yaml");
    std::fs::write(&garbage, "{{{{ ::: [[[").unwrap();
    let pool = builder(KubeconfigSource::from_file(&garbage)).build();
    let error = pool.session(&key()).await.expect_err("garbage");
    assert!(
        matches!(
            credentials_error(&error),
            Some(CredentialsError::ParseKubeconfig(_))
        ),
        "{error:?}"
    );
}

/// A kubeconfig whose token line has a YAML syntax error (a stray `: ` or an unclosed quote
/// in the token: an easy typo when pasting one). Guide: "Error messages never include tokens,
/// keys or ARM response bodies" — the parse error must not quote the offending line.
fn token_line_typo() -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:1\nusers:\n- name: u\n  user:\n    token: {SECRET}: pasted-twice\ncontexts:\n- name: ctx\n  context: {{cluster: c, user: u}}\ncurrent-context: ctx\n"
    )
}

/// "Secrets never printed" (guide: "Error messages never include tokens, keys or ARM response
/// bodies"): a kubeconfig the YAML parser refuses where it holds a secret — a syntax error on the
/// token line (through `from_yaml`, `from_file` and an AKS answer), or a token/user of the wrong
/// type — must not print the secret in `Display` or `Debug` of the error.
#[tokio::test]
async fn k2_yaml_errors_never_quote_the_secret_they_hit() {
    let yaml = token_line_typo();
    let mut failures = Vec::new();
    let mut check = |what: &str, error: &(dyn StdError + 'static)| {
        if let Err(f) = check_no_secret(what, &everything(error), &[SECRET]) {
            failures.push(f);
        }
    };
    match KubeconfigSource::from_yaml(&yaml) {
        Ok(_) => panic!("from_yaml accepted a broken kubeconfig"),
        Err(error) => check("token-line typo, from_yaml", &error),
    }
    let dir = scratch("typo");
    let path = dir.join("config");
    std::fs::write(&path, &yaml).unwrap();
    let pool = builder(KubeconfigSource::from_file(&path)).build();
    match pool.session(&key()).await {
        Ok(_) => panic!("from_file built a broken kubeconfig"),
        Err(error) => check("token-line typo, from_file", &error),
    }
    let answer = yaml.clone();
    let arm = FakeArm::start(move |_| Reply::Respond(200, arm_answer(&answer))).await;
    let pool = builder(aks_source(&arm, TestCred::ok("arm"))).build();
    match pool.session(&key()).await {
        Ok(_) => panic!("the AKS source built a broken kubeconfig"),
        Err(error) => check("token-line typo, AKS answer", &error),
    }
    let wrong_types = [
        (
            "clusters is a string",
            json!({ "clusters": SECRET }).to_string(),
        ),
        (
            "user is a string holding a token",
            json!({
                "users": [{ "name": "u", "user": SECRET }],
                "contexts": [{ "name": "ctx", "context": { "cluster": "c", "user": "u" } }],
                "current-context": "ctx",
            })
            .to_string(),
        ),
        (
            "token is a map",
            kc_text(json!({ "token": { "value": SECRET } })),
        ),
        (
            "token is a list",
            kc_text(json!({ "token": [SECRET, SECRET] })),
        ),
    ];
    for (name, text) in wrong_types {
        match KubeconfigSource::from_yaml(&text) {
            Ok(_) => panic!("{name}: accepted"),
            Err(error) => check(name, &error),
        }
    }
    assert!(
        failures.is_empty(),
        "{} leaks:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// K2 (guide: "Malformed kubeconfigs, certificates and ARM answers are typed errors"; "A cluster
/// is always verified against its kubeconfig CA"): `certificate-authority-data` that holds no
/// certificate is a typed error at build, not a session that silently trusts nothing (or
/// something else).
#[tokio::test]
async fn k2_ca_data_without_a_certificate_is_a_typed_error() {
    let (_, key_pem) = cert_pair(T0_SECS as i64 + 3600);
    let mut built = Vec::new();
    for (name, ca) in [
        ("plain text", b64("this is no certificate")),
        ("a private key PEM", b64(&key_pem)),
        (
            "a PEM block of garbage",
            b64("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
        ),
    ] {
        let mut value = kc_value(token_user("tok"));
        value["clusters"][0]["cluster"]["certificate-authority-data"] = json!(ca);
        let pool = builder(KubeconfigSource::from_kubeconfig(
            serde_json::from_value(value).unwrap(),
        ))
        .build();
        match pool.session(&key()).await {
            Err(error) => eprintln!("{name}: {error}"),
            Ok(session) => built.push(format!("{name}: {session:?}")),
        }
    }
    assert!(
        built.is_empty(),
        "sessions were built from CA data holding no certificate:\n{}",
        built.join("\n")
    );
}

/// K2: a file is re-read on every build, never on a hit, and only read.
#[tokio::test(start_paused = true)]
async fn k2_kubeconfig_file_is_reread_on_build_never_on_hit() {
    let dir = scratch("reread");
    let path = dir.join("config");
    std::fs::write(&path, kc_text(token_user("first"))).unwrap();
    let pool = builder(KubeconfigSource::from_file(&path))
        .ttl(secs(100))
        .build();
    let first = pool.session(&key()).await.unwrap();
    assert_eq!(first.auth(), AuthKind::StaticToken);
    drop(first);
    let before = std::fs::read(&path).unwrap();
    // Gone from disk: a hit must not need it.
    std::fs::remove_file(&path).unwrap();
    let hit = pool.session(&key()).await.expect("a hit reads no file");
    assert_eq!(pool.stats().creations, 1);
    drop(hit);
    // Rotated: the next build picks the new material up.
    std::fs::write(&path, kc_text(cert_user(T0_SECS as i64 + 3600))).unwrap();
    tokio::time::advance(secs(101)).await;
    let rotated = pool.session(&key()).await.unwrap();
    assert_eq!(rotated.auth(), AuthKind::Certificate);
    assert_eq!(pool.stats().creations, 2);
    assert_ne!(before, std::fs::read(&path).unwrap());
}

/// K2 + kubeconfig semantics: relative paths in a kubeconfig *file* (client-certificate,
/// client-key, certificate-authority) are relative to the file's directory (kubectl, and kube's
/// own `Kubeconfig::read_from`), not to the process's working directory.
#[tokio::test]
async fn k2_relative_paths_in_a_kubeconfig_file_resolve_against_its_directory() {
    let dir = scratch("relative");
    let (cert, key_pem) = cert_pair(T0_SECS as i64 + 277);
    std::fs::write(dir.join("client.crt"), &cert).unwrap();
    std::fs::write(dir.join("client.key"), &key_pem).unwrap();
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{ "name": "c", "cluster": { "server": "https://127.0.0.1:1" } }],
        "users": [{ "name": "u", "user": { "client-certificate": "client.crt", "client-key": "client.key" } }],
        "contexts": [{ "name": "ctx", "context": { "cluster": "c", "user": "u" } }],
        "current-context": "ctx",
    });
    let path = dir.join("config");
    std::fs::write(&path, config.to_string()).unwrap();
    let pool = builder(KubeconfigSource::from_file(&path)).build();
    let session = pool.session(&key()).await.unwrap_or_else(|e| {
        panic!(
            "relative certificate paths were not resolved against the kubeconfig's directory: {}",
            everything(&e)
        )
    });
    assert_eq!(session.auth(), AuthKind::Certificate);
    assert_eq!(
        session.effective_ttl().ttl,
        secs(277),
        "the certificate clamps the 300 s TTL"
    );
}

/// Deeply nested YAML and alias bombs: a typed error within bounded time and memory, never a
/// stack overflow (run in a child process so an abort cannot take the suite down).
#[test]
fn k2_yaml_bombs_are_typed_errors_in_a_child_process() {
    let (ok, out) = run_child("child_yaml_bombs", &[], secs(60));
    assert!(
        ok && out.contains("REPORT yaml-bombs done"),
        "the child parsing YAML bombs crashed or hung:\n{out}"
    );
}

#[tokio::test]
async fn child_yaml_bombs() {
    if std::env::var("BLACKBOX_CHILD").as_deref() != Ok("1") {
        return;
    }
    let deep_flow = format!("users: {}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_block = {
        let mut s = String::from("users:\n");
        for depth in 0..20_000 {
            s.push_str(&" ".repeat(depth));
            s.push_str("- \n");
        }
        s
    };
    let laughs = {
        let mut s = String::from(
            "a0: &a0 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        for i in 1..12 {
            let p = i - 1;
            s.push_str(&format!(
                "a{i}: &a{i} [*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p}]\n"
            ));
        }
        s.push_str("users: *a11\n");
        s
    };
    for (name, yaml) in [
        ("deep flow", deep_flow),
        ("deep block", deep_block),
        ("laughs", laughs),
    ] {
        let outcome = probe_kubeconfig(name, &yaml, Expect::Fail, &[])
            .await
            .unwrap_or_else(|failure| panic!("{failure}"));
        println!(
            "REPORT {name}: {}",
            outcome.chars().take(120).collect::<String>()
        );
    }
    println!("REPORT yaml-bombs done");
}

/// Run this test binary's test `name` alone in a child process with `envs`; kill it after
/// `limit`. Returns (exit success, stdout + stderr).
fn run_child(name: &str, envs: &[(&str, &str)], limit: Duration) -> (bool, String) {
    let mut command = std::process::Command::new(std::env::current_exe().expect("test binary"));
    command
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env("BLACKBOX_CHILD", "1")
        .env_remove("K8S_SESSION_POOL_TTL_SECONDS")
        .env_remove("K8S_SESSION_POOL_MAX_ENTRIES")
        .env_remove("K8S_SESSION_MAX_IN_FLIGHT")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in envs {
        command.env(k, v);
    }
    let child = command.spawn().expect("spawn child");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(output)) => (
            output.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        ),
        Ok(Err(e)) => (false, format!("waiting for the child failed: {e}")),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
            (false, format!("the child did not finish within {limit:?}"))
        }
    }
}

/// K2 + "secrets never printed": `Debug` of sources, material, sessions and pools carrying a
/// token, a password, a client key, an auth-provider token and exec env values prints none.
#[tokio::test]
async fn k2_debug_output_never_prints_secrets() {
    let (cert, key_pem) = cert_pair(T0_SECS as i64 + 3600);
    let key_line = key_pem.lines().nth(1).unwrap().to_owned();
    let secrets = [SECRET, key_line.as_str()];
    let users = [
        json!({ "token": SECRET }),
        json!({ "username": "admin", "password": SECRET }),
        json!({ "client-certificate-data": b64(&cert), "client-key-data": b64(&key_pem) }),
        json!({ "client-certificate-data": b64(&cert), "client-key-data": b64(&key_pem), "token": SECRET }),
        json!({ "token": "t", "auth-provider": { "name": "azure", "config": { "access-token": SECRET } } }),
        json!({ "exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": "kubelogin", "args": ["get-token", "--client-secret", SECRET],
            "env": [{ "name": "AAD_SERVICE_PRINCIPAL_CLIENT_SECRET", "value": SECRET }],
        } }),
    ];
    for user in users {
        let text = kc_text(user.clone());
        let source = KubeconfigSource::from_yaml(&text).unwrap();
        assert_no_secret("KubeconfigSource", &format!("{source:?}"), &secrets);
        let material = ClusterMaterial::new(Kubeconfig::from_yaml(&text).unwrap())
            .with_context("ctx")
            .with_expiry(t0() + secs(5));
        assert_no_secret("ClusterMaterial", &format!("{material:?}"), &secrets);
        let pool = builder(source).aad_credential(TestCred::ok(SECRET)).build();
        match pool.session(&key()).await {
            Ok(session) => {
                assert_no_secret("Session", &format!("{session:?}"), &secrets);
                assert_no_secret("SessionPool", &format!("{pool:?}"), &secrets);
            }
            Err(error) => assert_no_secret("SessionError", &everything(&error), &secrets),
        }
    }
    let cred = TestCred::ok(SECRET);
    let source = AksSource::builder(cred)
        .base_url("https://management.example".parse().unwrap())
        .build()
        .unwrap();
    assert_no_secret("AksSource", &format!("{source:?}"), &secrets);
}

/// K2: no temporary file is ever written with the material, and none is held open, while real
/// sessions (mTLS and bearer) talk to the in-process API server.
#[tokio::test]
async fn k2_no_temp_file_carries_the_material() {
    use testkit::k8s::{K8sServer, KubeAuth, SAMPLE_NAMESPACE, build_kubeconfig};
    let server = K8sServer::start().await.expect("server");
    let leaf = server
        .ca()
        .client_leaf(testkit::k8s::ADMIN_USER, &["system:masters"])
        .unwrap();
    let key_lines: Vec<String> = leaf
        .key_pem()
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 20)
        .map(str::to_owned)
        .collect();
    let cert_line = leaf
        .cert_pem()
        .lines()
        .nth(3)
        .expect("cert body")
        .to_owned();
    let ca_line = server.ca().cert_pem().lines().nth(3).unwrap().to_owned();
    let token = server.token().to_owned();
    let mut needles: Vec<String> = key_lines.clone();
    needles.extend([cert_line, ca_line, token.clone()]);

    let temp = std::env::temp_dir();
    let before = snapshot(&temp);

    let cert_kc = build_kubeconfig(
        server.url(),
        server.ca().cert_pem(),
        "cert",
        KubeAuth::ClientCert(&leaf),
    );
    let token_kc = build_kubeconfig(
        server.url(),
        server.ca().cert_pem(),
        "tok",
        KubeAuth::Token(&token),
    );
    let cert_key = SessionKey::new("s", "rg", "cert");
    let token_key = SessionKey::new("s", "rg", "tok");
    let yaml = serde_json::to_string(&cert_kc).unwrap();
    let dir = scratch("notemp");
    let file = dir.join("config");
    std::fs::write(&file, serde_json::to_string(&token_kc).unwrap()).unwrap();
    let cert_pool = SessionPool::builder(KubeconfigSource::from_yaml(&yaml).unwrap())
        .knobs_from(|_| None)
        .build();
    let token_pool = SessionPool::builder(KubeconfigSource::from_file(&file))
        .knobs_from(|_| None)
        .build();
    let mut held = Vec::new();
    for (pool, key, kind) in [
        (&cert_pool, &cert_key, AuthKind::Certificate),
        (&token_pool, &token_key, AuthKind::StaticToken),
    ] {
        for _ in 0..3 {
            let session = pool.session(key).await.expect("session");
            assert_eq!(session.auth(), kind);
            let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
                kube::Api::namespaced(session.client().clone(), SAMPLE_NAMESPACE);
            pods.list(&Default::default()).await.expect("list pods");
            held.push(session);
        }
    }
    // While the sessions are alive: no open file under the temp dir carries the material.
    let open = open_temp_files(&temp);
    for path in &open {
        let content = std::fs::read(path).unwrap_or_default();
        let text = String::from_utf8_lossy(&content);
        for needle in &needles {
            assert!(
                !text.contains(needle.as_str()),
                "an open temp file {path:?} holds the session's material"
            );
        }
    }
    drop(held);
    cert_pool.reset().await;
    token_pool.shutdown().await;
    let after = snapshot(&temp);
    for (path, stamp) in &after {
        if before.get(path) == Some(stamp) {
            continue;
        }
        let Ok(content) = std::fs::read(path) else {
            continue;
        };
        let text = String::from_utf8_lossy(&content);
        for needle in &needles {
            assert!(
                !text.contains(needle.as_str()),
                "temp file {path:?} was written with the session's material"
            );
        }
    }
}

/// Files under `dir` (3 levels deep, each at most 4 MiB) with their modification time and size.
fn snapshot(dir: &Path) -> HashMap<PathBuf, (Option<SystemTime>, u64)> {
    let mut out = HashMap::new();
    let mut stack = vec![(dir.to_path_buf(), 0)];
    while let Some((d, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                if depth < 3 {
                    stack.push((entry.path(), depth + 1));
                }
            } else if meta.is_file() && meta.len() <= 4 << 20 {
                out.insert(entry.path(), (meta.modified().ok(), meta.len()));
            }
        }
    }
    out
}

/// `/proc/self/fd` entries pointing under `dir` (as readable `/proc/self/fd/N` paths).
fn open_temp_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return out;
    };
    for entry in entries.flatten() {
        if let Ok(target) = std::fs::read_link(entry.path())
            && target.starts_with(dir)
        {
            out.push(entry.path());
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// K1/K2: the AKS source against a fake ARM
// ---------------------------------------------------------------------------------------------

/// K1/K2: user keys POST `listClusterUserCredential`, admin keys `listClusterAdminCredential`,
/// with `api-version`, the ARM bearer token for the ARM scope; admin and user never share a
/// session; a hit sends nothing.
#[tokio::test]
async fn k1_aks_user_and_admin_keys_use_their_own_operation_and_session() {
    let user_kc = kc_text(token_user("user-kube-token"));
    let admin_kc = kc_text(cert_user(T0_SECS as i64 + 86_400));
    let arm = FakeArm::start(move |seen| {
        if seen.path().ends_with("/listClusterAdminCredential") {
            Reply::Respond(200, arm_answer(&admin_kc))
        } else {
            Reply::Respond(200, arm_answer(&user_kc))
        }
    })
    .await;
    let cred = TestCred::ok("arm-bearer-token");
    let pool = builder(aks_source(&arm, cred.clone())).build();
    let user = SessionKey::new("sub-a", "rg-a", "aks-a");
    let admin = user.clone().admin(true);

    let u = pool.session(&user).await.expect("user session");
    let a = pool.session(&admin).await.expect("admin session");
    assert_eq!(u.auth(), AuthKind::StaticToken);
    assert_eq!(a.auth(), AuthKind::Certificate);
    assert!(u.is_pooled() && a.is_pooled());
    assert_eq!(u.key(), &user);
    assert_eq!(a.key(), &admin);
    drop((u, a));
    for _ in 0..3 {
        drop(pool.session(&user).await.unwrap());
        drop(pool.session(&admin).await.unwrap());
    }
    let seen = arm.seen();
    assert_eq!(seen.len(), 2, "one POST per key, none on hits: {seen:?}");
    let paths: Vec<&str> = seen.iter().map(Seen::path).collect();
    assert!(paths.contains(&"/subscriptions/sub-a/resourceGroups/rg-a/providers/Microsoft.ContainerService/managedClusters/aks-a/listClusterUserCredential"), "{paths:?}");
    assert!(paths.contains(&"/subscriptions/sub-a/resourceGroups/rg-a/providers/Microsoft.ContainerService/managedClusters/aks-a/listClusterAdminCredential"), "{paths:?}");
    for s in &seen {
        assert_eq!(s.method, "POST");
        assert!(s.target.contains("api-version=2024-05-01"), "{s:?}");
        assert_eq!(
            s.authorization.as_deref(),
            Some("Bearer arm-bearer-token"),
            "{s:?}"
        );
    }
    assert!(cred.scopes().iter().all(|s| s == k8s_session::ARM_SCOPE));
    assert_eq!(pool.stats().creations, 2);
    assert_eq!(pool.len(), 2);
}

/// K1: concurrent misses for one AKS key share one build (one POST).
#[tokio::test]
async fn k1_aks_concurrent_misses_share_one_post() {
    let user_kc = kc_text(token_user("tok"));
    let arm = FakeArm::start(move |_| Reply::Respond(200, arm_answer(&user_kc))).await;
    let pool = builder(aks_source(&arm, TestCred::ok("arm"))).build();
    let calls = (0..40).map(|_| {
        let pool = pool.clone();
        async move { pool.session(&key()).await.map(|s| s.is_pooled()) }
    });
    let results = futures::future::join_all(calls).await;
    assert!(results.iter().all(|r| matches!(r, Ok(true))));
    assert_eq!(arm.seen().len(), 1);
    assert_eq!(pool.stats().creations, 1);
}

/// K2: ARM's non-2xx answers are the documented typed errors; the error names no body.
#[tokio::test]
async fn k2_aks_status_codes_are_typed_errors() {
    let body = json!({ "error": { "code": "X", "message": SECRET } })
        .to_string()
        .into_bytes();
    for (status, admin) in [
        (401u16, false),
        (403, false),
        (403, true),
        (404, true),
        (409, false),
        (429, false),
        (500, false),
        (503, true),
        (302, false),
        (204, false),
    ] {
        let body = body.clone();
        let arm = FakeArm::start(move |_| Reply::Respond(status, body.clone())).await;
        let pool = builder(aks_source(&arm, TestCred::ok("arm"))).build();
        let k = key().admin(admin);
        let error = pool.session(&k).await.expect_err("non-2xx");
        assert_no_secret(&format!("status {status}"), &everything(&error), &[SECRET]);
        let cred_error = credentials_error(&error)
            .unwrap_or_else(|| panic!("status {status}: not a credentials error: {error:?}"));
        let operation = if admin {
            "listClusterAdminCredential"
        } else {
            "listClusterUserCredential"
        };
        match (status, cred_error) {
            (401, CredentialsError::Unauthorized) => {}
            (
                403,
                CredentialsError::Forbidden {
                    operation: op,
                    role,
                },
            ) => {
                assert_eq!(*op, operation);
                assert_eq!(*role, if admin { "Admin" } else { "User" });
            }
            (404, CredentialsError::ClusterNotFound { key: k2 }) => assert_eq!(k2, &k),
            (409 | 429 | 500 | 503 | 302, CredentialsError::Status { status: s, .. }) => {
                assert_eq!(*s, status)
            }
            (204, CredentialsError::MalformedResponse { .. }) => {}
            (204, CredentialsError::Status { .. }) => {}
            (_, other) => panic!("status {status}: unexpected {other:?}"),
        }
        assert_eq!(pool.len(), 0);
    }
}

/// K2: 2xx answers that are not a credential list holding a kubeconfig are
/// `MalformedResponse` (or a kubeconfig error once decoded) and never echo the body.
#[tokio::test]
async fn k2_aks_garbage_answers_are_typed_and_never_echo_the_body() {
    let not_config = format!("this: is\nnot: [a, kubeconfig, {SECRET}]\n");
    let user_is_string = json!({
        "clusters": [{ "name": "c", "cluster": { "server": "https://127.0.0.1:1" } }],
        "users": [{ "name": "u", "user": SECRET }],
        "contexts": [{ "name": "ctx", "context": { "cluster": "c", "user": "u" } }],
        "current-context": "ctx",
    })
    .to_string();
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("empty body", Vec::new()),
        ("not json", format!("<html>{SECRET}</html>").into_bytes()),
        ("json string", json!(SECRET).to_string().into_bytes()),
        ("json null", b"null".to_vec()),
        ("empty object", b"{}".to_vec()),
        ("empty list", br#"{"kubeconfigs":[]}"#.to_vec()),
        ("list is null", br#"{"kubeconfigs":null}"#.to_vec()),
        (
            "list is a string",
            json!({ "kubeconfigs": SECRET }).to_string().into_bytes(),
        ),
        (
            "entry without value",
            br#"{"kubeconfigs":[{"name":"clusterUser"}]}"#.to_vec(),
        ),
        (
            "value is a number",
            br#"{"kubeconfigs":[{"name":"clusterUser","value":12345}]}"#.to_vec(),
        ),
        (
            "value is not base64",
            json!({ "kubeconfigs": [{ "name": "clusterUser", "value": format!("!!{SECRET}!!") }] })
                .to_string()
                .into_bytes(),
        ),
        (
            "value is base64 of binary",
            json!({ "kubeconfigs": [{ "name": "clusterUser", "value": STANDARD.encode([0xff, 0xfe, 0x00, 0x01, 0x80]) }] })
                .to_string()
                .into_bytes(),
        ),
        ("value is not a kubeconfig", arm_answer(&not_config)),
        ("user is a string holding a token", arm_answer(&user_is_string)),
        ("value is empty", arm_answer("")),
        (
            "truncated json",
            arm_answer(&kc_text(token_user(SECRET)))[..40].to_vec(),
        ),
    ];
    for (name, body) in bodies {
        let arm = FakeArm::start(move |_| Reply::Respond(200, body.clone())).await;
        let pool = builder(aks_source(&arm, TestCred::ok("arm"))).build();
        let error = pool.session(&key()).await.expect_err(name);
        assert_no_secret(name, &everything(&error), &[SECRET]);
        assert!(
            matches!(error, SessionError::Build { .. }),
            "{name}: {error:?}"
        );
    }
}

/// K2 (guide: "nothing cached, the next call retries"): a failed ARM call is retried on the
/// next `session()`.
#[tokio::test]
async fn k2_aks_failures_are_not_cached() {
    let user_kc = kc_text(token_user("tok"));
    let failing = Arc::new(AtomicBool::new(true));
    let arm = FakeArm::start({
        let failing = failing.clone();
        move |_| {
            if failing.load(Ordering::SeqCst) {
                Reply::Respond(503, b"{}".to_vec())
            } else {
                Reply::Respond(200, arm_answer(&user_kc))
            }
        }
    })
    .await;
    let pool = builder(aks_source(&arm, TestCred::ok("arm"))).build();
    assert!(pool.session(&key()).await.is_err());
    assert!(pool.session(&key()).await.is_err());
    failing.store(false, Ordering::SeqCst);
    let session = pool.session(&key()).await.expect("recovered");
    assert!(session.is_pooled());
    assert_eq!(arm.seen().len(), 3);
}

/// K2: a failing ARM token provider is `CredentialsError::Token`; no POST is sent.
#[tokio::test]
async fn k2_aks_token_provider_failure_is_typed() {
    let arm = FakeArm::start(|_| Reply::Respond(200, b"{}".to_vec())).await;
    let cred = TestCred::new("x", T0_SECS as i64 + 3600, CredMode::Fail);
    let pool = builder(aks_source(&arm, cred)).build();
    let error = pool.session(&key()).await.expect_err("token failure");
    assert!(
        matches!(credentials_error(&error), Some(CredentialsError::Token(_))),
        "{error:?}"
    );
    assert!(arm.seen().is_empty());
}

/// Bad input → typed error, never a panic: an ARM token that cannot be a header value.
#[tokio::test]
async fn k2_aks_token_that_is_no_header_value_is_a_typed_error() {
    let arm = FakeArm::start(|_| Reply::Respond(200, b"{}".to_vec())).await;
    for token in [
        format!("{SECRET}\r\nX-Injected: yes"),
        format!("{SECRET}\u{0}"),
        "tok\u{7f}en".to_owned(),
    ] {
        let pool = builder(aks_source(&arm, TestCred::ok(&token))).build();
        let result = pool.session(&key()).await;
        let error = result.expect_err("an invalid header value cannot succeed");
        assert_no_secret("invalid token", &everything(&error), &[SECRET]);
    }
    assert!(
        arm.seen()
            .iter()
            .all(|s| !s.target.contains("X-Injected") && s.authorization.is_none()),
        "{:?}",
        arm.seen()
    );
}

/// X5/guide: a hung ARM token provider fails with `CredentialsError::Timeout` after the finite
/// default (60 s, virtual time); `Duration::ZERO` and `Duration::MAX` are clamped to 1 ms / 1 h.
#[tokio::test(start_paused = true)]
async fn k2_aks_hung_token_provider_is_bounded_by_the_finite_default() {
    for (configured, expected) in [
        (None, DEFAULT_ARM_TIMEOUT),
        (Some(Duration::ZERO), Duration::from_millis(1)),
        (Some(Duration::MAX), secs(3600)),
        (Some(Duration::from_nanos(1)), Duration::from_millis(1)),
    ] {
        let cred = TestCred::new("x", T0_SECS as i64 + 3600, CredMode::Hang);
        let mut b = AksSource::builder(cred).base_url("http://127.0.0.1:9".parse().unwrap());
        if let Some(t) = configured {
            b = b.timeout(t);
        }
        // The pool's own bound on a build (150 s by default) must not cut the source's first.
        let pool = builder(b.build().expect("source"))
            .build_timeout(Duration::MAX)
            .build();
        let start = tokio::time::Instant::now();
        let outcome = tokio::time::timeout(secs(3 * 3600), pool.session(&key().admin(true))).await;
        let error = outcome
            .unwrap_or_else(|_| panic!("{configured:?}: a hung token provider was not bounded"))
            .expect_err("hung");
        match credentials_error(&error) {
            Some(CredentialsError::Timeout { operation, after }) => {
                assert_eq!(*after, expected, "{configured:?}");
                assert_eq!(*operation, "listClusterAdminCredential");
            }
            other => panic!("{configured:?}: expected Timeout, got {other:?}"),
        }
        let waited = start.elapsed();
        assert!(
            waited >= expected && waited <= expected + secs(1),
            "{configured:?}: waited {waited:?}"
        );
    }
}

/// X5/guide: an ARM endpoint that accepts and never answers fails with `Timeout` after the
/// source's configured bound (real time, 300 ms).
#[tokio::test]
async fn k2_aks_hung_arm_endpoint_is_bounded() {
    let arm = FakeArm::start(|_| Reply::Hang).await;
    let source = AksSource::builder(TestCred::ok("arm"))
        .base_url(arm.url.clone())
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let pool = builder(source).build();
    let outcome = tokio::time::timeout(secs(10), pool.session(&key())).await;
    let error = outcome.expect("bounded").expect_err("hung ARM");
    assert!(
        matches!(
            credentials_error(&error),
            Some(CredentialsError::Timeout { after, .. }) if *after == Duration::from_millis(300)
        ),
        "{error:?}"
    );
    assert_eq!(arm.seen().len(), 1);
}

/// General rules (bounded resources, "a credential response is a few KiB"): an ARM answer that
/// announces 1 GiB and streams 64 MiB is refused for its size, not buffered until the timeout.
#[tokio::test]
async fn k2_aks_oversized_answer_is_refused_not_buffered() {
    let arm = FakeArm::start(|_| Reply::Oversized).await;
    let source = AksSource::builder(TestCred::ok("arm"))
        .base_url(arm.url.clone())
        .timeout(secs(5))
        .build()
        .unwrap();
    let pool = builder(source).build();
    let error = tokio::time::timeout(secs(20), pool.session(&key()))
        .await
        .expect("bounded")
        .expect_err("oversized");
    assert!(
        !matches!(
            credentials_error(&error),
            Some(CredentialsError::Timeout { .. })
        ),
        "the oversized body was read until the timeout instead of being refused: {error:?}"
    );
}

/// K2: the AKS base URL must be https except on loopback; tricks that put a loopback-looking
/// string in front of another host are refused.
#[tokio::test]
async fn k2_aks_base_url_must_be_https_or_loopback() {
    let build = |url: &str| {
        AksSource::builder(TestCred::ok("arm"))
            .base_url(url.parse().unwrap())
            .build()
    };
    for ok in [
        "https://management.azure.com",
        "https://arm.example:8443/prefix/",
        "http://127.0.0.1:8080",
        "http://[::1]:8080",
    ] {
        assert!(build(ok).is_ok(), "{ok} refused");
    }
    for bad in [
        "http://management.azure.com",
        "http://127.0.0.1@evil.example/",
        "http://127.0.0.1.evil.example/",
        "http://localhost.evil.example/",
        "ftp://127.0.0.1/",
        "file:///etc/passwd",
        "http://10.0.0.1/",
    ] {
        let result = build(bad);
        assert!(
            matches!(result, Err(CredentialsError::Config { .. })),
            "{bad}: {result:?}"
        );
    }
}

/// K1/K2: key parts are path segments: a key holding `/`, `..`, `?` or `#` cannot steer the
/// POST to another resource or add query parameters (escaped, or refused with a typed error).
#[tokio::test]
async fn k1_aks_key_parts_cannot_escape_their_path_segment() {
    let user_kc = kc_text(token_user("tok"));
    let arm = FakeArm::start(move |_| Reply::Respond(200, arm_answer(&user_kc))).await;
    let pool = builder(aks_source(&arm, TestCred::ok("arm"))).build();
    let keys = [
        SessionKey::new("../../evil", "rg", "c"),
        SessionKey::new("sub", "rg/providers/X", "c"),
        SessionKey::new("sub", "rg", "c/listClusterAdminCredential?api-version=1#"),
        SessionKey::new("sub", "rg", "c?api-version=evil&x="),
        SessionKey::new("sub", "rg", "%2e%2e"),
        SessionKey::new("", "", ""),
    ];
    for k in &keys {
        let before = arm.seen().len();
        let _ = pool.session(k).await;
        for s in arm.seen().iter().skip(before) {
            let path = s.path();
            let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            assert_eq!(
                segments.len(),
                9,
                "{k}: the key escaped its path segment: {}",
                s.target
            );
            assert_eq!(segments[0], "subscriptions", "{}", s.target);
            assert_eq!(segments[2], "resourceGroups", "{}", s.target);
            assert_eq!(
                segments[8], "listClusterUserCredential",
                "{k}: operation changed: {}",
                s.target
            );
            assert!(
                !segments.iter().any(|seg| *seg == ".." || *seg == "."),
                "{k}: dot segment: {}",
                s.target
            );
            let query = s.target.split_once('?').map(|x| x.1).unwrap_or_default();
            assert_eq!(
                query, "api-version=2024-05-01",
                "{k}: query changed: {}",
                s.target
            );
        }
    }
}

/// K2/K3: an AKS user kubeconfig of an AAD cluster (kubelogin) is served with the pool's AAD
/// credential; the session's TTL follows that token.
#[tokio::test(start_paused = true)]
async fn k3_aks_kubelogin_user_is_served_by_the_aad_credential() {
    let user_kc = kc_text(kubelogin_user(Some("aks-server-app")));
    let arm = FakeArm::start(move |_| Reply::Respond(200, arm_answer(&user_kc))).await;
    let arm_cred = TestCred::ok("arm");
    let aad = TestCred::new("aad", T0_SECS as i64 + 150, CredMode::Ok);
    let pool = builder(aks_source(&arm, arm_cred.clone()))
        .aad_credential(aad.clone())
        .build();
    let session = pool.session(&key()).await.expect("AAD session");
    assert_eq!(session.auth(), AuthKind::AadToken);
    assert_eq!(aad.scopes(), vec!["aks-server-app/.default".to_owned()]);
    assert_eq!(session.effective_ttl().ttl, secs(90));
    assert_eq!(session.effective_ttl().bound, TtlBound::Token);
    let _ = arm_cred;
}

// ---------------------------------------------------------------------------------------------
// K3/K5/X5: knobs
// ---------------------------------------------------------------------------------------------

fn static_source() -> KubeconfigSource {
    KubeconfigSource::from_kubeconfig(kc(token_user("tok")))
}

/// K3/K5: the defaults are finite: TTL 300 s, 32 entries, 32 in flight.
#[tokio::test]
async fn k3_knob_defaults_are_finite() {
    let pool = builder(static_source()).build();
    assert_eq!(pool.ttl(), secs(300));
    assert_eq!(pool.max_entries(), 32);
    assert_eq!(pool.max_in_flight_per_session(), 32);
    assert!(pool.connect_timeout().is_some_and(|d| d <= secs(86_400)));
    assert!(pool.read_timeout().is_some_and(|d| d <= secs(86_400)));
}

/// The knob cases: (value, acceptable TTL seconds, acceptable max entries).
fn knob_cases() -> Vec<(&'static str, Vec<u64>, Vec<usize>)> {
    vec![
        ("120", vec![120], vec![120]),
        ("0", vec![0], vec![1]),
        ("1", vec![1], vec![1]),
        ("86400", vec![86_400], vec![4096]),
        ("86401", vec![86_400], vec![4096]),
        ("4096", vec![4096], vec![4096]),
        ("4097", vec![4097], vec![4096]),
        ("abc", vec![300], vec![32]),
        ("", vec![300], vec![32]),
        ("-5", vec![300, 0], vec![32, 1]),
        ("1e3", vec![300], vec![32]),
        ("120s", vec![300], vec![32]),
        ("12.5", vec![300, 12], vec![32, 12]),
        (" 120 ", vec![120, 300], vec![120, 32]),
        ("18446744073709551616", vec![300, 86_400], vec![32, 4096]),
        (
            "99999999999999999999999999999",
            vec![300, 86_400],
            vec![32, 4096],
        ),
        ("٣", vec![300], vec![32]),
        ("NaN", vec![300], vec![32]),
        ("0x10", vec![300], vec![32]),
    ]
}

/// K3/K5/P8: knob values through `knobs_from`: parsed, clamped, garbage → default; never a panic.
#[tokio::test]
async fn k3_knobs_from_lookup_parse_and_clamp() {
    for (value, ttls, maxes) in knob_cases() {
        let pool = SessionPool::builder(static_source())
            .knobs_from(move |name| {
                matches!(
                    name,
                    "K8S_SESSION_POOL_TTL_SECONDS" | "K8S_SESSION_POOL_MAX_ENTRIES"
                )
                .then(|| value.to_owned())
            })
            .build();
        assert!(
            ttls.contains(&pool.ttl().as_secs()),
            "TTL knob {value:?} gave {:?}, expected one of {ttls:?}",
            pool.ttl()
        );
        assert!(
            maxes.contains(&pool.max_entries()),
            "max entries knob {value:?} gave {}, expected one of {maxes:?}",
            pool.max_entries()
        );
    }
}

/// K3/K5/P8 from the real process environment, one child process per value (the environment is
/// shared by the tests of a binary, so it is never changed here).
#[test]
fn k3_env_knobs_parse_and_clamp_in_child_processes() {
    let mut failures = Vec::new();
    for (value, ttls, maxes) in knob_cases() {
        let (ok, out) = run_child(
            "child_env_report",
            &[
                ("K8S_SESSION_POOL_TTL_SECONDS", value),
                ("K8S_SESSION_POOL_MAX_ENTRIES", value),
            ],
            secs(60),
        );
        let line = out
            .lines()
            .find_map(|l| l.find("REPORT ").map(|at| l[at..].to_owned()));
        let Some(line) = line.filter(|_| ok) else {
            failures.push(format!("{value:?}: child failed:\n{out}"));
            continue;
        };
        let fields: HashMap<&str, u64> = line
            .trim_start_matches("REPORT ")
            .split(' ')
            .filter_map(|kv| kv.split_once('='))
            .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
            .collect();
        let ttl = fields["ttl"];
        let max = fields["max"] as usize;
        if !ttls.contains(&ttl) || !maxes.contains(&max) {
            failures.push(format!(
                "{value:?}: ttl {ttl} (want {ttls:?}), max {max} (want {maxes:?})"
            ));
        }
        if fields["oneshot"] != u64::from(ttl == 0) {
            failures.push(format!(
                "{value:?}: ttl {ttl} but first session one-shot = {}",
                fields["oneshot"]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn child_env_report() {
    if std::env::var("BLACKBOX_CHILD").as_deref() != Ok("1") {
        return;
    }
    let pool = SessionPool::builder(static_source()).build();
    let session = pool.session(&key()).await.expect("session");
    println!(
        "REPORT ttl={} max={} oneshot={}",
        pool.ttl().as_secs(),
        pool.max_entries(),
        u8::from(!session.is_pooled())
    );
}

/// X5: builder values at the extremes are clamped, never a panic.
#[tokio::test(start_paused = true)]
async fn k3_builder_extremes_are_clamped() {
    let pool = builder(static_source())
        .ttl(Duration::MAX)
        .max_entries(usize::MAX)
        .max_in_flight_per_session(usize::MAX)
        .sweep_interval(Duration::MAX)
        .expiry_margin(Duration::MAX)
        .connect_timeout(Some(Duration::MAX))
        .read_timeout(Some(Duration::MAX))
        .http2_keep_alive(Duration::MAX, Duration::MAX)
        .max_streams_per_session(Some(usize::MAX))
        .build();
    assert_eq!(pool.ttl(), secs(86_400));
    assert_eq!(pool.max_entries(), 4096);
    assert_eq!(pool.max_in_flight_per_session(), 1024);
    assert_eq!(pool.max_streams_per_session(), Some(1024));
    let session = pool.session(&key()).await.expect("session");
    assert_eq!(session.effective_ttl().ttl, secs(86_400));
    let deadline = session.deadline().expect("pooled");
    assert!(deadline <= tokio::time::Instant::now() + secs(86_400));

    let pool = builder(static_source())
        .max_entries(0)
        .max_in_flight_per_session(0)
        .ttl(Duration::from_nanos(1))
        .sweep_interval(Duration::ZERO)
        .expiry_margin(Duration::ZERO)
        .connect_timeout(Some(Duration::ZERO))
        .read_timeout(Some(Duration::ZERO))
        .http2_keep_alive(Duration::ZERO, Duration::ZERO)
        .max_streams_per_session(Some(0))
        .build();
    assert_eq!(pool.max_entries(), 1);
    assert_eq!(pool.max_in_flight_per_session(), 1);
    assert_eq!(pool.max_streams_per_session(), Some(1));
    assert!(pool.connect_timeout().is_some_and(|d| d > Duration::ZERO));
    assert!(pool.read_timeout().is_some_and(|d| d > Duration::ZERO));
    let _ = pool.session(&key()).await.expect("session");
    // `knobs_from` replaces earlier explicit values (documented).
    let pool = builder(static_source())
        .ttl(secs(5))
        .knobs_from(|_| None)
        .build();
    assert_eq!(pool.ttl(), secs(300));
}

// ---------------------------------------------------------------------------------------------
// K3/K4: TTL clamps in virtual time
// ---------------------------------------------------------------------------------------------

/// K3: the default TTL (300 s) decides the deadline: a hit just before, a rebuild after.
#[tokio::test(start_paused = true)]
async fn k3_pool_ttl_bounds_a_session_in_virtual_time() {
    let (source, calls) = CountingSource::new(kc(token_user("opaque-token")));
    let pool = builder(source).build();
    let start = tokio::time::Instant::now();
    let s = pool.session(&key()).await.unwrap();
    assert!(s.is_pooled());
    assert_eq!(s.effective_ttl().ttl, secs(300));
    assert_eq!(s.effective_ttl().bound, TtlBound::PoolTtl);
    let deadline = s.deadline().expect("pooled deadline");
    assert!(deadline >= start + secs(299) && deadline <= start + secs(300) + secs(1));
    drop(s);
    tokio::time::advance(secs(298)).await;
    drop(pool.session(&key()).await.unwrap());
    assert_eq!(calls.load(Ordering::SeqCst), 1, "hit before the deadline");
    tokio::time::advance(secs(4)).await;
    let s = pool.session(&key()).await.unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "an expired session is never handed out"
    );
    assert!(s.deadline().unwrap() > tokio::time::Instant::now() + secs(298));
}

/// K3: material expiry (source-declared) clamps the TTL; past material is one-shot.
#[tokio::test(start_paused = true)]
async fn k3_material_expiry_clamps_the_ttl() {
    let pool = builder(static_source().with_expiry(t0() + secs(100))).build();
    let s = pool.session(&key()).await.unwrap();
    assert_eq!(s.effective_ttl().ttl, secs(100));
    assert_eq!(s.effective_ttl().bound, TtlBound::Material);
    drop(s);
    tokio::time::advance(secs(99)).await;
    drop(pool.session(&key()).await.unwrap());
    assert_eq!(pool.stats().creations, 1);
    tokio::time::advance(secs(2)).await;
    drop(pool.session(&key()).await.unwrap());
    assert_eq!(pool.stats().creations, 2);

    for past in [t0(), t0() - secs(1), UNIX_EPOCH, UNIX_EPOCH - secs(10)] {
        let pool = builder(static_source().with_expiry(past)).build();
        let s = pool.session(&key()).await.unwrap();
        assert!(!s.is_pooled(), "{past:?}");
        assert_eq!(s.effective_ttl().ttl, Duration::ZERO);
        drop(s);
        assert_eq!(pool.len(), 0);
    }
    // A far-future material expiry never lengthens the pool TTL.
    let pool = builder(static_source().with_expiry(UNIX_EPOCH + secs(253_402_300_799))).build();
    assert_eq!(
        pool.session(&key()).await.unwrap().effective_ttl().bound,
        TtlBound::PoolTtl
    );
}

/// K3: a ClusterMaterial's own expiry (custom source) clamps too.
#[tokio::test(start_paused = true)]
async fn k3_custom_source_material_expiry_clamps_the_ttl() {
    let (mut source, _) = CountingSource::new(kc(token_user("tok")));
    source.material = source.material.clone().with_expiry(t0() + secs(42));
    let pool = builder(source).build();
    let s = pool.session(&key()).await.unwrap();
    assert_eq!(s.effective_ttl().ttl, secs(42));
    assert_eq!(s.effective_ttl().bound, TtlBound::Material);
}

/// K3: the client certificate's `notAfter` clamps the TTL; an expired certificate gives a
/// one-shot session; a year-9999 certificate leaves the pool TTL.
#[tokio::test(start_paused = true)]
async fn k3_certificate_not_after_clamps_the_ttl() {
    let pool = builder(KubeconfigSource::from_kubeconfig(kc(cert_user(
        T0_SECS as i64 + 200,
    ))))
    .build();
    let s = pool.session(&key()).await.unwrap();
    assert_eq!(s.auth(), AuthKind::Certificate);
    assert_eq!(s.effective_ttl().ttl, secs(200));
    assert_eq!(s.effective_ttl().bound, TtlBound::Certificate);
    drop(s);
    tokio::time::advance(secs(201)).await;
    drop(pool.session(&key()).await.unwrap());
    assert_eq!(pool.stats().creations, 2);

    for expired in [T0_SECS as i64 - 1, 0, -100_000] {
        let pool = builder(KubeconfigSource::from_kubeconfig(kc(cert_user(expired)))).build();
        let s = pool.session(&key()).await.unwrap();
        assert!(!s.is_pooled(), "notAfter {expired}: {s:?}");
        drop(s);
        assert_eq!(pool.len(), 0);
    }
    let pool = builder(KubeconfigSource::from_kubeconfig(kc(cert_user(
        253_402_300_799,
    ))))
    .build();
    assert_eq!(
        pool.session(&key()).await.unwrap().effective_ttl().bound,
        TtlBound::PoolTtl
    );
}

/// K3/K4: a static JWT's `exp` minus 60 s clamps the TTL; exactly at the margin → one-shot;
/// one second past it → a 1 s TTL; odd `exp` values never panic.
#[tokio::test(start_paused = true)]
async fn k3_bearer_token_expiry_minus_margin_clamps_the_ttl() {
    let t = T0_SECS as i64;
    let cases: Vec<(Value, Option<u64>)> = vec![
        (json!(t + 200), Some(140)),
        (json!(t + 61), Some(1)),
        (json!(t + 60), Some(0)),
        (json!(t + 10), Some(0)),
        (json!(t - 10), Some(0)),
        (json!(-5), Some(0)),
        (json!(t + 3600), Some(300)),
        (json!(u64::MAX), Some(300)),
        (json!(i64::MAX), Some(300)),
        (json!(1e300), Some(300)),
        (json!(f64::MIN_POSITIVE), Some(0)),
        (json!((t + 200) as f64 + 0.5), None),
        (json!("soon"), None),
        (json!(null), None),
        (json!({ "nested": 1 }), None),
    ];
    for (exp, want) in cases {
        let token = jwt(&json!({ "exp": exp, "aud": "k8s" }));
        let pool = builder(KubeconfigSource::from_kubeconfig(kc(token_user(&token)))).build();
        let s = pool
            .session(&key())
            .await
            .unwrap_or_else(|e| panic!("exp {exp}: {e:?}"));
        assert_eq!(s.auth(), AuthKind::StaticToken);
        let got = s.effective_ttl();
        if let Some(want) = want {
            assert_eq!(got.ttl, secs(want), "exp {exp}: {got:?}");
            assert_eq!(s.is_pooled(), want > 0, "exp {exp}");
            if want > 0 && want < 300 {
                assert_eq!(got.bound, TtlBound::Token, "exp {exp}");
            }
        }
        assert!(got.ttl <= secs(300));
    }
    // Not a JWT at all: only the pool TTL.
    for token in ["opaque", "a.b.c", "a.!!!.c", "..", "a.e30.c"] {
        let pool = builder(KubeconfigSource::from_kubeconfig(kc(token_user(token)))).build();
        let s = pool.session(&key()).await.unwrap();
        assert_eq!(s.effective_ttl().bound, TtlBound::PoolTtl, "{token}");
    }
}

/// K3: `effective_ttl` (pure) at its edges: the margin, ties, past and pre-1970 expiries,
/// `Duration::MAX` and a pre-1970 "now".
#[test]
fn k3_effective_ttl_edges() {
    let now = t0();
    let pool = secs(300);
    let at = |s: u64| now + secs(s);
    let e = Expiries::default();
    assert_eq!(effective_ttl(pool, now, &e).ttl, pool);
    assert_eq!(effective_ttl(pool, now, &e).bound, TtlBound::PoolTtl);
    assert_eq!(TOKEN_EXPIRY_MARGIN, secs(60));
    let token = |s| effective_ttl(pool, now, &Expiries::default().token_expires_on(at(s)));
    assert_eq!(token(60).ttl, Duration::ZERO);
    assert!(!token(60).is_poolable());
    assert_eq!(token(61).ttl, secs(1));
    assert!(token(61).is_poolable());
    assert_eq!(token(360).bound, TtlBound::PoolTtl, "tie: pool TTL wins");
    let tie = Expiries::default()
        .cert_not_after(at(100))
        .material_expires_at(at(100))
        .token_expires_on(at(160));
    let r = effective_ttl(pool, now, &tie);
    assert_eq!((r.ttl, r.bound), (secs(100), TtlBound::Certificate));
    let tie = Expiries::default()
        .material_expires_at(at(100))
        .token_expires_on(at(160));
    assert_eq!(effective_ttl(pool, now, &tie).bound, TtlBound::Material);
    let past = Expiries::default().cert_not_after(UNIX_EPOCH - secs(1));
    assert_eq!(effective_ttl(pool, now, &past).ttl, Duration::ZERO);
    // Sub-second remainders never round up past the expiry.
    let r = effective_ttl(
        pool,
        now,
        &Expiries::default().material_expires_at(now + Duration::from_millis(1500)),
    );
    assert!(r.ttl <= Duration::from_millis(1500) && r.bound == TtlBound::Material);
    // Extremes: no panic.
    let _ = effective_ttl(Duration::MAX, now, &e);
    let _ = effective_ttl(Duration::MAX, UNIX_EPOCH - secs(1_000_000), &tie);
    let far = UNIX_EPOCH + secs(1 << 40);
    let _ = effective_ttl(
        Duration::MAX,
        far,
        &Expiries::default().token_expires_on(UNIX_EPOCH),
    );
    let zero = effective_ttl(
        Duration::ZERO,
        now,
        &Expiries::default().token_expires_on(at(3600)),
    );
    assert!(!zero.is_poolable());
}

/// K4: a collapsed TTL gives a usable one-shot session: never pooled, counted, each caller its
/// own build, retired when dropped (observed by `on_retire`, outside any lock).
#[tokio::test(start_paused = true)]
async fn k4_one_shot_sessions_are_never_pooled_and_retired_on_drop() {
    let retired = Arc::new(Mutex::new(Vec::<(SessionKey, bool)>::new()));
    let pool_cell: Arc<OnceLock<SessionPool>> = Arc::default();
    let (source, calls) = CountingSource::new(kc(token_user("tok")));
    let pool = builder(source.with_expiry_material(t0() - secs(1)))
        .on_retire({
            let retired = retired.clone();
            let pool_cell = pool_cell.clone();
            move |k| {
                let locked = pool_cell.get().is_some_and(SessionPool::is_locked);
                retired.lock().unwrap().push((k.clone(), locked));
            }
        })
        .build();
    pool_cell.set(pool.clone()).unwrap();
    let a = pool.session(&key()).await.unwrap();
    let b = pool.session(&key()).await.unwrap();
    assert!(!a.is_pooled() && !b.is_pooled());
    assert_eq!(a.effective_ttl().ttl, Duration::ZERO);
    assert_eq!(pool.len(), 0);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one-shots are never reused"
    );
    let stats = pool.stats();
    assert_eq!(stats.one_shots, 2);
    assert_eq!(stats.creations, 0);
    drop(a);
    b.close();
    tokio::task::yield_now().await;
    let retired = retired.lock().unwrap().clone();
    assert_eq!(
        retired.len(),
        2,
        "each one-shot session is retired (torn down) when dropped: {retired:?}"
    );
    assert!(retired.iter().all(|(_, locked)| !locked));
    assert_eq!(pool.len(), 0);
}

trait WithExpiry {
    fn with_expiry_material(self, at: SystemTime) -> Self;
}

impl WithExpiry for CountingSource {
    fn with_expiry_material(mut self, at: SystemTime) -> Self {
        self.material = self.material.clone().with_expiry(at);
        self
    }
}

/// K4: TTL 0 (builder): every session one-shot.
#[tokio::test(start_paused = true)]
async fn k4_ttl_zero_makes_every_session_one_shot() {
    let pool = builder(static_source()).ttl(Duration::ZERO).build();
    for _ in 0..3 {
        let s = pool.session(&key()).await.unwrap();
        assert!(!s.is_pooled());
        assert_eq!(s.effective_ttl().ttl, Duration::ZERO);
    }
    assert_eq!(pool.len(), 0);
    assert_eq!(pool.stats().one_shots, 3);
}

// ---------------------------------------------------------------------------------------------
// K6/K7: handles, reset, shutdown
// ---------------------------------------------------------------------------------------------

/// K6: dropping or closing a handle returns it; handles held at once share one session.
#[tokio::test(start_paused = true)]
async fn k6_drop_and_close_return_the_session() {
    let (source, calls) = CountingSource::new(kc(token_user("tok")));
    let pool = builder(source).build();
    let a = pool.session(&key()).await.unwrap();
    let b = pool.session(&key()).await.unwrap();
    assert_eq!(a.deadline(), b.deadline());
    a.close();
    drop(b);
    for _ in 0..5 {
        pool.session(&key()).await.unwrap().close();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(pool.len(), 1);
    assert_eq!(pool.stats().creations, 1);
    assert!(pool.stats().hits >= 6);
}

/// K6/K7: a handle held across `reset()` stays usable and is not put back when dropped; the
/// next call builds afresh.
#[tokio::test(start_paused = true)]
async fn k6_handle_held_across_reset_is_not_reinserted() {
    let (source, calls) = CountingSource::new(kc(token_user("tok")));
    let pool = builder(source).build();
    let held = pool.session(&key()).await.unwrap();
    let report = pool.reset().await;
    assert_eq!(report.total(), 1);
    assert_eq!(pool.len(), 0);
    let _still_usable: kube::Client = held.client().clone();
    drop(held);
    assert_eq!(pool.len(), 0, "a reset session came back into the pool");
    let fresh = pool.session(&key()).await.unwrap();
    assert!(fresh.is_pooled());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// K7: every retire path runs with no pool lock held: reset, invalidate, expiry (prune),
/// capacity eviction, one-shot drop, shutdown.
#[tokio::test(start_paused = true)]
async fn k7_retires_never_run_under_the_pool_lock() {
    let observed = Arc::new(Mutex::new(Vec::<(String, bool)>::new()));
    let pool_cell: Arc<OnceLock<SessionPool>> = Arc::default();
    let source = KubeconfigSource::from_kubeconfig(kc(token_user("tok")))
        .with_context(SessionKey::new("s", "rg", "short"), "ctx");
    let pool = builder(source)
        .max_entries(2)
        .ttl(secs(100))
        .on_retire({
            let observed = observed.clone();
            let pool_cell = pool_cell.clone();
            move |k| {
                let locked = pool_cell.get().is_some_and(SessionPool::is_locked);
                observed
                    .lock()
                    .unwrap()
                    .push((k.cluster_name().to_owned(), locked));
            }
        })
        .build();
    pool_cell.set(pool.clone()).unwrap();
    let k = |name: &str| SessionKey::new("s", "rg", name);
    // invalidate
    drop(pool.session(&k("a")).await.unwrap());
    assert!(pool.invalidate(&k("a")).await);
    // capacity
    for name in ["b", "c", "d"] {
        drop(pool.session(&k(name)).await.unwrap());
    }
    // expiry + prune
    tokio::time::advance(secs(101)).await;
    let pruned = pool.prune_expired().await;
    // reset
    drop(pool.session(&k("e")).await.unwrap());
    let reset = pool.reset().await;
    // shutdown
    drop(pool.session(&k("f")).await.unwrap());
    let shut = pool.shutdown().await;
    tokio::task::yield_now().await;
    let observed = observed.lock().unwrap().clone();
    let names: Vec<&str> = observed.iter().map(|(n, _)| n.as_str()).collect();
    for name in ["a", "b", "c", "d", "e", "f"] {
        assert!(
            names.contains(&name),
            "{name} never retired: {observed:?} (pruned {pruned:?}, reset {reset:?}, shutdown {shut:?})"
        );
    }
    assert!(
        observed.iter().all(|(_, locked)| !locked),
        "a retire ran under the pool lock: {observed:?}"
    );
    assert_eq!(reset.failed, 0);
}

/// K7 ("one failure (or panic) never stops the others; reset() leaves the pool usable"): an
/// `on_retire` observer that panics for one key does not stop the others, does not escape
/// `reset()`/`shutdown()`, and leaves the pool usable.
#[tokio::test(start_paused = true)]
async fn k7_a_panicking_retire_observer_is_isolated() {
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let pool = builder(static_source())
        .on_retire({
            let seen = seen.clone();
            move |k| {
                seen.lock().unwrap().push(k.cluster_name().to_owned());
                assert!(k.cluster_name() != "bad", "observer blew up on purpose");
            }
        })
        .build();
    let k = |name: &str| SessionKey::new("s", "rg", name);
    for name in ["a", "bad", "c"] {
        drop(pool.session(&k(name)).await.unwrap());
    }
    let outcome = tokio::spawn({
        let pool = pool.clone();
        async move { pool.reset().await }
    })
    .await;
    let report = outcome.expect("a panicking observer escaped reset()");
    assert_eq!(report.total(), 3, "{report:?}");
    let mut names = seen.lock().unwrap().clone();
    names.sort();
    assert_eq!(names, ["a", "bad", "c"]);
    assert_eq!(pool.len(), 0);
    // Still usable.
    drop(pool.session(&k("bad")).await.expect("usable after reset"));
    let shut = tokio::spawn({
        let pool = pool.clone();
        async move { pool.shutdown().await }
    })
    .await
    .expect("a panicking observer escaped shutdown()");
    assert_eq!(shut.retire.total(), 1);
    assert!(matches!(
        pool.session(&k("a")).await,
        Err(SessionError::ShutDown)
    ));
}

/// K7: shutdown: later calls get `ShutDown`; shutdown twice and reset after are harmless;
/// handles held across shutdown stay usable and are not reinserted.
#[tokio::test(start_paused = true)]
async fn k7_shutdown_is_final_idempotent_and_handles_survive() {
    let pool = builder(static_source()).build();
    let held = pool.session(&key()).await.unwrap();
    let first = pool.shutdown().await;
    assert_eq!(first.retire.total(), 1);
    assert_eq!(first.skipped_shards, 0);
    let err = pool.session(&key()).await.expect_err("shut down");
    assert!(matches!(err, SessionError::ShutDown), "{err:?}");
    assert!(err.build_error().is_none());
    let second = pool.shutdown().await;
    assert_eq!(second.retire.total(), 0);
    let _ = pool.reset().await;
    let _ = pool.prune_expired().await;
    assert!(!pool.invalidate(&key()).await);
    let _client = held.client().clone();
    drop(held);
    assert_eq!(pool.len(), 0);
    assert!(pool.is_empty());
}

/// K7: a build in flight when the pool shuts down never lands in the shut-down pool.
#[tokio::test(start_paused = true)]
async fn k7_build_in_flight_at_shutdown_is_not_pooled() {
    let (mut source, calls) = CountingSource::new(kc(token_user("tok")));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    source.gate = Some(gate.clone());
    let pool = builder(source).build();
    let pending = tokio::spawn({
        let pool = pool.clone();
        async move { pool.session(&key()).await.map(|s| s.is_pooled()) }
    });
    while calls.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    let shut = tokio::time::timeout(secs(60), pool.shutdown())
        .await
        .expect("shutdown does not wait for a build in flight");
    gate.add_permits(1);
    let outcome = pending.await.expect("no panic");
    assert_eq!(
        pool.len(),
        0,
        "a build finished after shutdown entered the pool (shutdown {shut:?}, caller got {outcome:?})"
    );
    assert!(
        !matches!(outcome, Ok(true)),
        "the caller got a *pooled* session from a shut-down pool"
    );
}

/// K7: an observer that calls back into the pool (stats, len, is_locked, even `session`) does
/// not deadlock any retire path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k7_reentrant_retire_observer_does_not_deadlock() {
    let pool_cell: Arc<OnceLock<SessionPool>> = Arc::default();
    let reentered = Arc::new(AtomicUsize::new(0));
    let handle = tokio::runtime::Handle::current();
    let pool = SessionPool::builder(static_source())
        .knobs_from(|_| None)
        .max_entries(1)
        .on_retire({
            let pool_cell = pool_cell.clone();
            let reentered = reentered.clone();
            move |_| {
                if let Some(pool) = pool_cell.get() {
                    let _ = (pool.len(), pool.stats(), pool.is_locked(), pool.ttl());
                    let pool = pool.clone();
                    let reentered = reentered.clone();
                    handle.spawn(async move {
                        let _ = pool.session(&SessionKey::new("s", "rg", "re")).await;
                        reentered.fetch_add(1, Ordering::SeqCst);
                    });
                }
            }
        })
        .build();
    pool_cell.set(pool.clone()).unwrap();
    let work = tokio::spawn({
        let pool = pool.clone();
        async move {
            for name in ["a", "b", "c"] {
                drop(
                    pool.session(&SessionKey::new("s", "rg", name))
                        .await
                        .unwrap(),
                );
            }
            pool.invalidate(&SessionKey::new("s", "rg", "c")).await;
            drop(pool.session(&key()).await.unwrap());
            pool.reset().await;
            pool.shutdown().await
        }
    });
    let outcome = tokio::time::timeout(secs(10), work).await;
    assert!(
        matches!(outcome, Ok(Ok(_))),
        "retire paths deadlocked or panicked with a re-entrant observer: {outcome:?}"
    );
}
