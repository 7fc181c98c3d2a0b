//! Black-box tests of one session's build: `build_timeout`, files named by the selected context
//! read asynchronously (FIFOs, missing files, directories, symlinks, relative paths), the AAD
//! token bound, refused auth providers and exec plugins, tokens an HTTP header cannot carry, CAs
//! without a certificate, and YAML errors that never quote the text. Public API only, written
//! from SPEC K1–K10 and docs/k8s-session.md by a helper that did not read the implementation.
//!
//! Virtual time where no real IO happens; FIFO scenarios run on a current-thread runtime of
//! their own thread, with a 300 ms build bound, and the test fails (instead of hanging) when
//! that thread is still blocked after 3 s.

use std::future::Future;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use k8s_session::{
    AuthKind, BuildError, ClusterCredentials, ClusterMaterial, CredentialsError,
    DEFAULT_AAD_TOKEN_TIMEOUT, DEFAULT_BUILD_TIMEOUT, KubeconfigSource, Session, SessionError,
    SessionKey, SessionPool,
};
use kube::config::Kubeconfig;
use serde_json::{Value, json};
use testkit::fifo;
use tokio::time::Instant;

const SECRET: &str = "s3cr3tT0k3nXyZ";
const OFFLINE: &str = "https://127.0.0.1:9";
const FIFO_BOUND: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------------------------
// helpers

fn key() -> SessionKey {
    SessionKey::new("sub", "rg", "c")
}

fn ca_pem() -> String {
    testkit::tls::TestCa::new("blackbox-build")
        .expect("test CA")
        .cert_pem()
        .to_owned()
}

fn b64(text: &str) -> String {
    STANDARD.encode(text)
}

/// A kubeconfig with one cluster `c`, one user `u`, one context `ctx` (current).
fn kubeconfig(cluster: Value, user: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "c", "cluster": cluster }],
        "users": [{ "name": "u", "user": user }],
        "contexts": [{ "name": "ctx", "context": { "cluster": "c", "user": "u" } }],
        "current-context": "ctx",
    })
}

/// Two contexts: `good` (offline server, inline CA and token) and `bad` (`bad_cluster`,
/// `bad_user`), current context `current`.
fn two_contexts(bad_cluster: Value, bad_user: Value, current: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            { "name": "good", "cluster": { "server": OFFLINE, "certificate-authority-data": b64(&ca_pem()) } },
            { "name": "bad", "cluster": bad_cluster },
        ],
        "users": [
            { "name": "good", "user": { "token": "good-token" } },
            { "name": "bad", "user": bad_user },
        ],
        "contexts": [
            { "name": "good", "context": { "cluster": "good", "user": "good" } },
            { "name": "bad", "context": { "cluster": "bad", "user": "bad" } },
        ],
        "current-context": current,
    })
}

fn parse(value: &Value) -> Kubeconfig {
    serde_json::from_value(value.clone()).expect("a kubeconfig")
}

fn source(value: &Value) -> KubeconfigSource {
    KubeconfigSource::from_kubeconfig(parse(value))
}

fn offline_cluster() -> Value {
    json!({ "server": OFFLINE, "certificate-authority-data": b64(&ca_pem()) })
}

fn kubelogin_user() -> Value {
    json!({ "exec": {
        "apiVersion": "client.authentication.k8s.io/v1beta1",
        "command": "kubelogin",
        "args": ["get-token", "--server-id", "6dae42f8-4368-4678-94ff-3960e28e3630"],
    }})
}

fn build_error(result: Result<Session, SessionError>) -> Arc<BuildError> {
    match result {
        Err(SessionError::Build { source, .. }) => source,
        Err(other) => panic!("expected a build error, got {other:?}"),
        Ok(session) => panic!(
            "expected a build error, got a session ({:?})",
            session.auth()
        ),
    }
}

/// Debug of the error and Display of every error in its chain.
fn chain_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = format!("{error:?}\n");
    let mut current = Some(error);
    while let Some(e) = current {
        text.push_str(&format!("{e}\n"));
        current = e.source();
    }
    text
}

fn assert_no_secret(error: &(dyn std::error::Error + 'static), secret: &str) {
    let text = chain_text(error);
    assert!(
        !text.contains(secret),
        "error text reveals the secret {secret:?}: {text}"
    );
}

/// A credential source following a script: each call takes the next step (the last repeats).
#[derive(Clone, Copy)]
enum Step {
    Hang,
    Delay(Duration),
    Answer,
}

struct Scripted {
    calls: AtomicUsize,
    steps: Vec<Step>,
    material: ClusterMaterial,
}

impl std::fmt::Debug for Scripted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scripted")
    }
}

impl Scripted {
    fn new(steps: Vec<Step>) -> Arc<Self> {
        Arc::new(Self {
            calls: AtomicUsize::new(0),
            steps,
            material: ClusterMaterial::new(parse(&kubeconfig(
                offline_cluster(),
                json!({ "token": "scripted-token" }),
            ))),
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn pool(self: &Arc<Self>) -> k8s_session::SessionPoolBuilder {
        SessionPool::builder_arc(self.clone())
    }
}

#[async_trait::async_trait]
impl ClusterCredentials for Scripted {
    async fn credentials(&self, _key: &SessionKey) -> Result<ClusterMaterial, CredentialsError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        match self.steps[n.min(self.steps.len() - 1)] {
            Step::Hang => std::future::pending().await,
            Step::Delay(d) => {
                tokio::time::sleep(d).await;
                Ok(self.material.clone())
            }
            Step::Answer => Ok(self.material.clone()),
        }
    }
}

/// An Azure credential that hangs or answers `token`.
struct Aad {
    token: String,
    hang: bool,
    calls: AtomicUsize,
    scopes: Mutex<Vec<String>>,
}

impl std::fmt::Debug for Aad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Aad")
    }
}

impl Aad {
    fn answering(token: &str) -> Arc<Self> {
        Arc::new(Self {
            token: token.to_owned(),
            hang: false,
            calls: AtomicUsize::new(0),
            scopes: Mutex::new(Vec::new()),
        })
    }

    fn hanging() -> Arc<Self> {
        Arc::new(Self {
            hang: true,
            ..Arc::into_inner(Self::answering("never")).expect("fresh")
        })
    }
}

#[async_trait::async_trait]
impl TokenCredential for Aad {
    async fn get_token(
        &self,
        scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.scopes
            .lock()
            .unwrap()
            .extend(scopes.iter().map(|s| s.to_string()));
        if self.hang {
            std::future::pending::<()>().await;
        }
        Ok(AccessToken::new(
            self.token.clone(),
            azure_core::time::OffsetDateTime::now_utc() + azure_core::time::Duration::hours(1),
        ))
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("blackbox_build")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// What a build gave: the session's auth kind or the build error, and how long it took.
type Outcome = (Result<AuthKind, Arc<BuildError>>, Duration);

async fn outcome(pool: &SessionPool, key: &SessionKey) -> Outcome {
    let start = std::time::Instant::now();
    let result = pool
        .session(key)
        .await
        .map(|s| s.auth())
        .map_err(|e| match e {
            SessionError::Build { source, .. } => source,
            other => panic!("unexpected {other:?}"),
        });
    (result, start.elapsed())
}

/// Run `scenario` on a current-thread runtime of its own thread; fail if that thread is still
/// busy after 3 s (a blocking read holding the runtime's only thread), then release `fifos`.
fn bounded<T, F>(fifos: &[PathBuf], scenario: impl FnOnce() -> F + Send + 'static) -> T
where
    F: Future<Output = T>,
    T: Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let out = rt.block_on(scenario());
        let _ = tx.send(out);
        rt.shutdown_background();
    });
    let out = rx.recv_timeout(Duration::from_secs(3));
    fifo::release(fifos);
    out.unwrap_or_else(|_| {
        panic!("the build held its runtime's only thread for 3 s (a blocking read of a FIFO?)")
    })
}

fn fifo_pool(src: KubeconfigSource) -> SessionPool {
    SessionPool::builder(src).build_timeout(FIFO_BOUND).build()
}

/// A FIFO nobody writes is refused at once as not a regular file (the guide: `ReadFile` or
/// `CertificateFile`, or `CredentialsError::ReadFile` for the kubeconfig itself, with an
/// `InvalidInput` source), or, were it opened, fails at the build bound; never built.
fn assert_timed_out(out: &Outcome, what: &str) {
    let not_regular = |source: &std::io::Error| source.kind() == std::io::ErrorKind::InvalidInput;
    match &out.0 {
        Err(e) => match &**e {
            BuildError::Timeout { after } => {
                assert_eq!(*after, FIFO_BOUND, "{what}");
                assert!(out.1 >= FIFO_BOUND, "{what}: took {:?}", out.1);
            }
            BuildError::ReadFile { source, .. }
            | BuildError::CertificateFile { source, .. }
            | BuildError::Credentials(CredentialsError::ReadFile { source, .. })
                if not_regular(source) => {}
            other => panic!("{what}: expected a refusal or a Timeout, got {other:?}"),
        },
        Ok(kind) => panic!("{what}: built a session ({kind:?}) from a FIFO nobody writes"),
    }
    assert!(out.1 < Duration::from_secs(3), "{what}: took {:?}", out.1);
}

// ---------------------------------------------------------------------------------------------
// 1. build_timeout (virtual time, a source of our own)

#[tokio::test(start_paused = true)]
async fn hung_source_fails_at_the_default_build_timeout_and_is_not_cached() {
    assert_eq!(DEFAULT_BUILD_TIMEOUT, Duration::from_secs(150));
    let src = Scripted::new(vec![Step::Hang, Step::Answer]);
    let pool = src.pool().build();
    let start = Instant::now();
    let err = build_error(pool.session(&key()).await);
    let took = start.elapsed();
    assert!(
        matches!(*err, BuildError::Timeout { after } if after == DEFAULT_BUILD_TIMEOUT),
        "{err:?}"
    );
    assert!(
        took >= DEFAULT_BUILD_TIMEOUT && took < DEFAULT_BUILD_TIMEOUT + Duration::from_secs(1),
        "{took:?}"
    );
    assert!(err.to_string().contains("150"), "{err}");
    assert!(pool.is_empty(), "a timed-out build must not be cached");
    // The next call asks the source again and succeeds; the one after is a hit.
    let session = pool.session(&key()).await.expect("retry builds");
    assert!(session.is_pooled());
    drop(session);
    let _hit = pool.session(&key()).await.expect("hit");
    assert_eq!(src.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn build_timeout_is_clamped_to_1ms_and_2h() {
    for (asked, expected) in [
        (Duration::ZERO, Duration::from_millis(1)),
        (Duration::from_nanos(1), Duration::from_millis(1)),
        (Duration::from_secs(7201), Duration::from_secs(7200)),
        (Duration::MAX, Duration::from_secs(7200)),
        (Duration::from_secs(3), Duration::from_secs(3)),
    ] {
        let src = Scripted::new(vec![Step::Hang]);
        let pool = src.pool().build_timeout(asked).build();
        let start = Instant::now();
        let err = build_error(pool.session(&key()).await);
        let took = start.elapsed();
        assert!(
            matches!(*err, BuildError::Timeout { after } if after == expected),
            "build_timeout({asked:?}): {err:?}"
        );
        assert!(
            took >= expected && took < expected + Duration::from_millis(50),
            "build_timeout({asked:?}) took {took:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_source_within_the_bound_still_builds() {
    let src = Scripted::new(vec![Step::Delay(Duration::from_secs(149))]);
    let pool = src.pool().build();
    let session = pool.session(&key()).await.expect("149 s < 150 s");
    assert_eq!(session.auth(), AuthKind::StaticToken);
}

#[tokio::test(start_paused = true)]
async fn concurrent_callers_share_one_hung_build_and_its_error() {
    let src = Scripted::new(vec![Step::Hang]);
    let pool = src.pool().build_timeout(Duration::from_secs(10)).build();
    let start = Instant::now();
    let callers = (0..64).map(|i| {
        let pool = pool.clone();
        async move {
            // Callers join at 0 s, 1 s, … 7 s: all are waiting on the one build.
            tokio::time::sleep(Duration::from_secs(i % 8)).await;
            let err = build_error(pool.session(&key()).await);
            (err, start.elapsed())
        }
    });
    let results = futures::future::join_all(callers).await;
    assert_eq!(src.calls(), 1, "one build for 64 concurrent callers");
    let first = &results[0].0;
    for (err, at) in &results {
        assert!(matches!(**err, BuildError::Timeout { .. }), "{err:?}");
        assert_eq!(
            *at, results[0].1,
            "every caller gets the error at the same instant"
        );
        assert!(Arc::ptr_eq(err, first), "callers share the one error");
    }
    assert!(results[0].1 >= Duration::from_secs(10) && results[0].1 < Duration::from_secs(11));
    // A caller after the failure starts a new build.
    let _ = pool.session(&key()).await;
    assert_eq!(src.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_late_answer_after_the_timeout_is_not_pooled() {
    let src = Scripted::new(vec![Step::Delay(Duration::from_secs(20)), Step::Answer]);
    let pool = src.pool().build_timeout(Duration::from_secs(5)).build();
    let err = build_error(pool.session(&key()).await);
    assert!(matches!(*err, BuildError::Timeout { .. }), "{err:?}");
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        pool.is_empty(),
        "the answer that came after the bound entered the pool"
    );
    assert_eq!(pool.stats().creations, 0, "{:?}", pool.stats());
    let _ = pool.session(&key()).await.expect("next build");
    assert_eq!(src.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_caller_does_not_unbound_the_next_one() {
    let src = Scripted::new(vec![Step::Hang]);
    let pool = src.pool().build_timeout(Duration::from_secs(10)).build();
    assert!(
        tokio::time::timeout(Duration::from_secs(6), pool.session(&key()))
            .await
            .is_err()
    );
    let start = Instant::now();
    let err = build_error(pool.session(&key()).await);
    assert!(matches!(*err, BuildError::Timeout { .. }), "{err:?}");
    assert!(
        start.elapsed() <= Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert!(src.calls() <= 2);
}

#[tokio::test(start_paused = true)]
async fn shutdown_during_a_hung_build_is_bounded() {
    let src = Scripted::new(vec![Step::Hang]);
    let pool = src.pool().build().clone();
    let caller = tokio::spawn({
        let pool = pool.clone();
        async move { pool.session(&key()).await.map(|_| ()) }
    });
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(src.calls(), 1);
    let start = Instant::now();
    tokio::time::timeout(DEFAULT_BUILD_TIMEOUT, pool.shutdown())
        .await
        .expect("shutdown waits for no hung build");
    let outcome = tokio::time::timeout(DEFAULT_BUILD_TIMEOUT, caller)
        .await
        .expect("the waiting caller is answered within the build bound")
        .expect("no panic");
    match outcome {
        Err(SessionError::ShutDown) => {}
        Err(e @ SessionError::Build { .. }) => assert!(
            matches!(e.build_error(), Some(BuildError::Timeout { .. })),
            "{e:?}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(start.elapsed() <= DEFAULT_BUILD_TIMEOUT);
    assert!(matches!(
        pool.session(&key()).await,
        Err(SessionError::ShutDown)
    ));
    assert_eq!(src.calls(), 1, "no build after shutdown");
    assert!(pool.is_empty());
}

#[tokio::test(start_paused = true)]
async fn reset_during_a_hung_build_does_not_wait_for_it() {
    let src = Scripted::new(vec![Step::Hang, Step::Answer]);
    let pool = src.pool().build_timeout(Duration::from_secs(30)).build();
    let caller = tokio::spawn({
        let pool = pool.clone();
        async move { pool.session(&key()).await.map(|_| ()) }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = Instant::now();
    let report = pool.reset().await;
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "reset waited for the build"
    );
    assert_eq!(report.failed, 0);
    let err = caller.await.expect("no panic").expect_err("hung");
    assert!(
        matches!(err.build_error(), Some(BuildError::Timeout { .. })),
        "{err:?}"
    );
    pool.session(&key()).await.expect("usable after reset");
    assert_eq!(pool.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// 3. the AAD token bound (virtual time)

#[tokio::test(start_paused = true)]
async fn hung_aad_credential_fails_at_aad_token_timeout() {
    assert_eq!(DEFAULT_AAD_TOKEN_TIMEOUT, Duration::from_secs(60));
    let config = kubeconfig(offline_cluster(), kubelogin_user());
    for (aad_bound, build_bound, expect_aad, at) in [
        // (aad_token_timeout, build_timeout, AadTokenTimeout?, when)
        (None, None, true, Duration::from_secs(60)),
        (
            Some(Duration::from_secs(5)),
            None,
            true,
            Duration::from_secs(5),
        ),
        (Some(Duration::ZERO), None, true, Duration::from_millis(1)),
        (Some(Duration::MAX), None, false, Duration::from_secs(150)),
        (
            Some(Duration::MAX),
            Some(Duration::MAX),
            true,
            Duration::from_secs(3600),
        ),
        (
            None,
            Some(Duration::from_secs(10)),
            false,
            Duration::from_secs(10),
        ),
    ] {
        let aad = Aad::hanging();
        let mut builder = SessionPool::builder(source(&config)).aad_credential(aad.clone());
        if let Some(b) = aad_bound {
            builder = builder.aad_token_timeout(b);
        }
        if let Some(b) = build_bound {
            builder = builder.build_timeout(b);
        }
        let pool = builder.build();
        let start = Instant::now();
        let err = build_error(pool.session(&key()).await);
        let took = start.elapsed();
        let case = format!("aad {aad_bound:?}, build {build_bound:?}");
        if expect_aad {
            assert!(
                matches!(*err, BuildError::AadTokenTimeout { after } if after == at),
                "{case}: {err:?}"
            );
        } else {
            assert!(
                matches!(*err, BuildError::Timeout { after } if after == at),
                "{case}: {err:?}"
            );
        }
        assert!(
            took >= at && took < at + Duration::from_millis(50),
            "{case}: {took:?}"
        );
        assert_eq!(aad.calls.load(Ordering::SeqCst), 1, "{case}");
        assert!(pool.is_empty());
    }
}

#[tokio::test(start_paused = true)]
async fn kubelogin_without_aad_credential_and_with_one() {
    let config = kubeconfig(offline_cluster(), kubelogin_user());
    let err = build_error(
        SessionPool::builder(source(&config))
            .build()
            .session(&key())
            .await,
    );
    assert!(matches!(*err, BuildError::NoAadCredential), "{err:?}");

    let aad = Aad::answering("aad-good-token");
    let pool = SessionPool::builder(source(&config))
        .aad_credential(aad.clone())
        .build();
    let session = pool.session(&key()).await.expect("kubelogin user built");
    assert_eq!(session.auth(), AuthKind::AadToken);
    assert_eq!(
        aad.scopes.lock().unwrap().as_slice(),
        ["6dae42f8-4368-4678-94ff-3960e28e3630/.default"]
    );
}

// ---------------------------------------------------------------------------------------------
// 4. commands never run; 5. tokens a header cannot carry; 6. CAs without a certificate

fn marker_script(dir: &Path) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt as _;
    let marker = dir.join("ran");
    let script = dir.join("plugin.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ntouch '{}'\necho '{{\"access_token\":\"x\",\"token_expiry\":\"2999-01-01T00:00:00Z\"}}'\n",
            marker.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, marker)
}

#[tokio::test]
async fn auth_provider_with_cmd_path_is_refused_and_never_run() {
    let dir = scratch("cmd-path");
    let (script, marker) = marker_script(&dir);
    let script = script.to_str().unwrap().to_owned();
    for (name, config) in [
        ("gcp", json!({ "cmd-path": script })),
        (
            "gcp",
            json!({ "cmd-path": script, "cmd-args": "config config-helper --format=json",
                    "token-key": "{.access_token}", "expiry-key": "{.token_expiry}" }),
        ),
        // An expired cached token: kube would run cmd-path to refresh it.
        (
            "gcp",
            json!({ "cmd-path": script, "access-token": "old", "expiry": "2000-01-01T00:00:00Z" }),
        ),
        // A still-valid cached token next to cmd-path: kube would run it on the first refresh.
        (
            "gcp",
            json!({ "cmd-path": script, "access-token": "cached", "expiry": "2999-01-01T00:00:00Z" }),
        ),
    ] {
        let value = kubeconfig(
            offline_cluster(),
            json!({ "auth-provider": { "name": name, "config": config } }),
        );
        let err = build_error(
            SessionPool::builder(source(&value))
                .build()
                .session(&key())
                .await,
        );
        assert!(
            matches!(&*err, BuildError::UnsupportedAuthProvider { name: n } if n == name),
            "{config}: {err:?}"
        );
        assert!(!marker.exists(), "{config}: the cmd-path ran");
    }
    // Another provider name with a cmd-path: refused one way or another, never run.
    let value = kubeconfig(
        offline_cluster(),
        json!({ "auth-provider": { "name": "custom", "config": { "cmd-path": script } } }),
    );
    let result = SessionPool::builder(source(&value))
        .build()
        .session(&key())
        .await;
    assert!(result.is_err());
    assert!(!marker.exists(), "custom provider's cmd-path ran");
}

#[tokio::test]
async fn unsupported_exec_plugins_are_refused_and_never_run() {
    let dir = scratch("exec");
    let (script, marker) = marker_script(&dir);
    let aad = Aad::answering("aad-token");
    for command in [
        script.to_str().unwrap().to_owned(),
        "aws".into(),
        "gke-gcloud-auth-plugin".into(),
        "kubelogin.sh".into(),
        "notkubelogin".into(),
        "kubelogin-evil".into(),
        "/opt/kubelogin/sh".into(),
        "".into(),
    ] {
        let value = kubeconfig(
            offline_cluster(),
            json!({ "exec": { "apiVersion": "client.authentication.k8s.io/v1beta1",
                              "command": command, "args": ["get-token"] } }),
        );
        let err = build_error(
            SessionPool::builder(source(&value))
                .aad_credential(aad.clone())
                .build()
                .session(&key())
                .await,
        );
        assert!(
            matches!(&*err, BuildError::UnsupportedExecPlugin { .. }),
            "{command:?}: {err:?}"
        );
        assert!(!marker.exists(), "{command:?} ran");
    }
    assert_eq!(aad.calls.load(Ordering::SeqCst), 0);
    // kubelogin in any directory, `.exe` allowed.
    for command in [
        "/usr/local/bin/kubelogin",
        "kubelogin.exe",
        "./bin/kubelogin",
    ] {
        let mut user = kubelogin_user();
        user["exec"]["command"] = json!(command);
        let value = kubeconfig(offline_cluster(), user);
        let session = SessionPool::builder(source(&value))
            .aad_credential(aad.clone())
            .build()
            .session(&key())
            .await
            .unwrap_or_else(|e| panic!("{command}: {e:?}"));
        assert_eq!(session.auth(), AuthKind::AadToken, "{command}");
    }
}

fn control_bytes() -> impl Iterator<Item = char> {
    (0u8..=8).chain(10..=31).chain([127]).map(char::from)
}

#[tokio::test]
async fn inline_tokens_with_control_characters_are_typed_errors() {
    for c in control_bytes() {
        let token = format!("{SECRET}{c}tail");
        let mut kc = parse(&kubeconfig(offline_cluster(), json!({})));
        kc.auth_infos[0].auth_info.as_mut().unwrap().token = Some(token.clone().into());
        let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(kc)).build();
        let result = pool.session(&key()).await;
        let err = result.expect_err("a token a header cannot carry must not build");
        assert!(
            matches!(
                err.build_error(),
                Some(BuildError::InvalidToken { what: "token" })
            ),
            "{:?}: {err:?}",
            c as u32
        );
        assert_no_secret(&err, SECRET);
    }
    // A tab and non-ASCII bytes are legal in a header value: no panic either way.
    for token in [format!("{SECRET}\tx"), format!("{SECRET}ö€")] {
        let mut kc = parse(&kubeconfig(offline_cluster(), json!({})));
        kc.auth_infos[0].auth_info.as_mut().unwrap().token = Some(token.into());
        let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(kc)).build();
        if let Err(e) = pool.session(&key()).await {
            assert!(
                matches!(e.build_error(), Some(BuildError::InvalidToken { .. })),
                "{e:?}"
            );
            assert_no_secret(&e, SECRET);
        }
    }
}

#[tokio::test]
async fn auth_provider_tokens_with_control_characters_are_typed_errors() {
    let bad = format!("{SECRET}\nX-Injected: 1");
    for provider in [
        json!({ "name": "oidc", "config": { "id-token": bad, "client-id": "k" } }),
        json!({ "name": "gcp", "config": { "id-token": bad } }),
        json!({ "name": "gcp", "config": { "access-token": bad, "expiry": "2999-01-01T00:00:00Z" } }),
    ] {
        let value = kubeconfig(offline_cluster(), json!({ "auth-provider": provider }));
        let err = SessionPool::builder(source(&value))
            .build()
            .session(&key())
            .await
            .expect_err("must not build");
        assert!(
            matches!(
                err.build_error(),
                Some(BuildError::InvalidToken {
                    what: "auth-provider token"
                })
            ),
            "{provider}: {err:?}"
        );
        assert_no_secret(&err, SECRET);
    }
}

#[tokio::test]
async fn aad_token_with_control_characters_is_a_typed_error() {
    let value = kubeconfig(offline_cluster(), kubelogin_user());
    for c in ['\n', '\0', '\x7f', '\r'] {
        let aad = Aad::answering(&format!("{SECRET}{c}rest"));
        let err = SessionPool::builder(source(&value))
            .aad_credential(aad)
            .build()
            .session(&key())
            .await
            .expect_err("must not build");
        assert!(
            matches!(
                err.build_error(),
                Some(BuildError::InvalidToken { what: "AAD token" })
            ),
            "{err:?}"
        );
        assert_no_secret(&err, SECRET);
    }
}

#[tokio::test]
async fn bad_tokens_in_unselected_users_do_not_matter() {
    let mut value = two_contexts(
        offline_cluster(),
        json!({ "auth-provider": { "name": "gcp", "config": { "cmd-path": "/bin/false" } } }),
        "good",
    );
    value["users"][1]["user"]["token"] = json!(format!("{SECRET}\0"));
    let pool = SessionPool::builder(source(&value)).build();
    let session = pool.session(&key()).await.expect("the good context builds");
    assert_eq!(session.auth(), AuthKind::StaticToken);
}

#[tokio::test]
async fn a_ca_without_a_pem_certificate_is_refused() {
    let key_pem = testkit::tls::TestCa::new("k")
        .unwrap()
        .client_leaf("x", &[])
        .unwrap()
        .key_pem()
        .to_owned();
    for (what, data) in [
        ("plain text", b64("this is not a certificate\n")),
        ("a private key", b64(&key_pem)),
        ("empty", String::new()),
        (
            "binary junk",
            STANDARD.encode([0u8, 159, 146, 150, 1, 2, 3]),
        ),
        (
            "a public key",
            b64("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"),
        ),
    ] {
        let value = kubeconfig(
            json!({ "server": OFFLINE, "certificate-authority-data": data }),
            json!({ "token": "t" }),
        );
        let err = SessionPool::builder(source(&value))
            .build()
            .session(&key())
            .await
            .expect_err(what);
        assert!(
            matches!(err.build_error(), Some(BuildError::CertificateAuthority)),
            "{what}: {err:?}"
        );
        assert!(!chain_text(&err).contains("PRIVATE"), "{what}: {err:?}");
    }
    // Broken CERTIFICATE blocks and bad base64: a typed error, no panic.
    for (what, data) in [
        (
            "empty block",
            b64("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"),
        ),
        (
            "garbage block",
            b64("-----BEGIN CERTIFICATE-----\nAAAAAAAA\n-----END CERTIFICATE-----\n"),
        ),
        (
            "unterminated block",
            b64("-----BEGIN CERTIFICATE-----\nMIIB\n"),
        ),
        ("not base64", "!!!not base64!!!".to_owned()),
    ] {
        let value = kubeconfig(
            json!({ "server": OFFLINE, "certificate-authority-data": data }),
            json!({ "token": "t" }),
        );
        let result = SessionPool::builder(source(&value))
            .build()
            .session(&key())
            .await;
        assert!(result.is_err(), "{what}: a CA that trusts nothing built");
    }
}

// ---------------------------------------------------------------------------------------------
// 7. YAML errors say where, never what

#[tokio::test]
async fn yaml_errors_never_quote_the_text() {
    let cases = [
        format!("users:\n- name: u\n  user:\n    token: \"{SECRET}\n"),
        format!("users:\n\t- name: {SECRET}\n"),
        format!(
            "clusters:\n- name: c\n  cluster:\n    server: https://x\n    insecure-skip-tls-verify: {SECRET}\n"
        ),
        format!("users:\n- name: u\n  user:\n    token: [{SECRET}, 2]\n"),
        format!("current-context: {{ {SECRET}: 1 }}\n"),
        format!(
            "users:\n- name: u\n  user: {{ token: {SECRET} }}\n  user: {{ token: {SECRET} }}\n"
        ),
        format!("apiVersion: v1\nkind: {SECRET}\n---\nkind: Config\n"),
        format!("users: {SECRET}\n"),
        format!("{SECRET}: [\n"),
    ];
    let dir = scratch("yaml");
    for (i, text) in cases.iter().enumerate() {
        let err = KubeconfigSource::from_yaml(text).expect_err(text);
        assert!(
            matches!(err, CredentialsError::ParseKubeconfig(_)),
            "{text}: {err:?}"
        );
        assert_no_secret(&err, SECRET);
        // The same text read from a file, through the pool.
        let path = dir.join(format!("config-{i}"));
        std::fs::write(&path, text).unwrap();
        let err = SessionPool::builder(KubeconfigSource::from_file(&path))
            .build()
            .session(&key())
            .await
            .expect_err(text);
        assert!(
            matches!(
                err.build_error(),
                Some(BuildError::Credentials(CredentialsError::ParseKubeconfig(
                    _
                )))
            ),
            "{text}: {err:?}"
        );
        assert_no_secret(&err, SECRET);
    }
    // A syntax error says where it stopped.
    let err = KubeconfigSource::from_yaml(&cases[0]).unwrap_err();
    match err {
        CredentialsError::ParseKubeconfig(parse) => assert!(parse.location().is_some()),
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// 2. files of the selected context: FIFOs (own thread, 300 ms bound)

#[test]
fn selected_ca_fifo_fails_at_the_build_timeout() {
    let dir = scratch("ca-fifo");
    let fifo = fifo::make(&dir.join("ca.pem"));
    let value = kubeconfig(
        json!({ "server": OFFLINE, "certificate-authority": fifo }),
        json!({ "token": "t" }),
    );
    let out = bounded(&[fifo], move || async move {
        outcome(&fifo_pool(source(&value)), &key()).await
    });
    assert_timed_out(&out, "CA FIFO");
}

#[test]
fn selected_client_certificate_or_key_fifo_fails_at_the_build_timeout() {
    let dir = scratch("cert-fifo");
    let leaf = testkit::tls::TestCa::new("c")
        .unwrap()
        .client_leaf("u", &[])
        .unwrap();
    let cert_fifo = fifo::make(&dir.join("cert.pem"));
    let key_fifo = fifo::make(&dir.join("key.pem"));
    for (what, user) in [
        (
            "client certificate",
            json!({ "client-certificate": cert_fifo, "client-key-data": b64(leaf.key_pem()) }),
        ),
        (
            "client key",
            json!({ "client-certificate-data": b64(leaf.cert_pem()), "client-key": key_fifo }),
        ),
    ] {
        let value = kubeconfig(offline_cluster(), user);
        let out = bounded(&[cert_fifo.clone(), key_fifo.clone()], move || async move {
            outcome(&fifo_pool(source(&value)), &key()).await
        });
        assert_timed_out(&out, what);
    }
}

#[test]
fn kubeconfig_file_that_is_a_fifo_fails_at_the_build_timeout() {
    let dir = scratch("config-fifo");
    let fifo = fifo::make(&dir.join("config"));
    let path = fifo.clone();
    let out = bounded(&[fifo], move || async move {
        outcome(&fifo_pool(KubeconfigSource::from_file(path)), &key()).await
    });
    assert_timed_out(&out, "kubeconfig FIFO");
}

/// kube reads a `tokenFile` with a blocking `read_to_string` when the client's auth layer is
/// made (`TokenFile::new`), i.e. while the session is built: a FIFO there must not hold the
/// runtime's thread past the build bound.
#[test]
fn selected_token_file_fifo_does_not_hold_the_runtime() {
    let dir = scratch("token-fifo");
    let fifo = fifo::make(&dir.join("token"));
    let value = kubeconfig(offline_cluster(), json!({ "tokenFile": fifo }));
    let (result, took) = bounded(&[fifo], move || async move {
        outcome(&fifo_pool(source(&value)), &key()).await
    });
    assert!(
        took < Duration::from_secs(3),
        "token file FIFO held the build {took:?}"
    );
    if let Err(e) = result {
        assert!(
            matches!(*e, BuildError::Timeout { .. } | BuildError::ReadFile { .. }),
            "{e:?}"
        );
    }
}

#[test]
fn kubelogin_with_provide_cluster_info_and_a_ca_fifo_fails_at_the_build_timeout() {
    let dir = scratch("kubelogin-fifo");
    let fifo = fifo::make(&dir.join("ca.pem"));
    let mut user = kubelogin_user();
    user["exec"]["provideClusterInfo"] = json!(true);
    let value = kubeconfig(
        json!({ "server": OFFLINE, "certificate-authority": fifo }),
        user,
    );
    let out = bounded(&[fifo], move || async move {
        let pool = SessionPool::builder(source(&value))
            .aad_credential(Aad::answering("aad"))
            .build_timeout(FIFO_BOUND)
            .build();
        outcome(&pool, &key()).await
    });
    assert_timed_out(&out, "kubelogin + provideClusterInfo + CA FIFO");
}

#[test]
fn fifos_of_unselected_contexts_are_never_touched() {
    let dir = scratch("unselected");
    let ca = fifo::make(&dir.join("ca.pem"));
    let cert = fifo::make(&dir.join("cert.pem"));
    let key_fifo = fifo::make(&dir.join("key.pem"));
    let token = fifo::make(&dir.join("token"));
    let fifos = vec![ca.clone(), cert.clone(), key_fifo.clone(), token.clone()];
    let bad_cluster = json!({ "server": OFFLINE, "certificate-authority": ca });
    let bad_user =
        json!({ "client-certificate": cert, "client-key": key_fifo, "tokenFile": token });

    // The current context is the good one.
    let value = two_contexts(bad_cluster.clone(), bad_user.clone(), "good");
    let out = bounded(&fifos, move || async move {
        outcome(&fifo_pool(source(&value)), &key()).await
    });
    assert!(matches!(out.0, Ok(AuthKind::StaticToken)), "{:?}", out.0);

    // The current context is the bad one, the key is routed to the good one; a second key
    // routed to the bad one hangs on its own without holding the first.
    let value = two_contexts(bad_cluster.clone(), bad_user.clone(), "bad");
    let other = SessionKey::new("sub", "rg", "other");
    let out = bounded(&fifos, move || async move {
        let src = source(&value)
            .with_context(key(), "good")
            .with_context(other.clone(), "bad");
        let pool = fifo_pool(src);
        let good_key = key();
        let (good, bad) = tokio::join!(outcome(&pool, &good_key), outcome(&pool, &other));
        (good, bad)
    });
    assert!(
        matches!(out.0.0, Ok(AuthKind::StaticToken)),
        "{:?}",
        out.0.0
    );
    assert!(
        out.0.1 < FIFO_BOUND,
        "the good key waited for the hung one: {:?}",
        out.0.1
    );
    assert_timed_out(&out.1, "routed to the FIFO context");

    // The same from a file, with relative FIFO names.
    let file_value = two_contexts(
        json!({ "server": OFFLINE, "certificate-authority": "ca.pem" }),
        json!({ "client-certificate": "cert.pem", "client-key": "key.pem", "tokenFile": "token" }),
        "good",
    );
    let path = dir.join("config");
    std::fs::write(&path, serde_json::to_string(&file_value).unwrap()).unwrap();
    let out = bounded(&fifos, move || async move {
        outcome(&fifo_pool(KubeconfigSource::from_file(path)), &key()).await
    });
    assert!(matches!(out.0, Ok(AuthKind::StaticToken)), "{:?}", out.0);
}

#[test]
fn inline_data_wins_over_fifo_paths() {
    let dir = scratch("data-wins");
    let ca = fifo::make(&dir.join("ca.pem"));
    let cert = fifo::make(&dir.join("cert.pem"));
    let key_fifo = fifo::make(&dir.join("key.pem"));
    let leaf = testkit::tls::TestCa::new("c")
        .unwrap()
        .client_leaf("u", &[])
        .unwrap();
    let value = kubeconfig(
        json!({ "server": OFFLINE, "certificate-authority": ca,
                "certificate-authority-data": b64(&ca_pem()) }),
        json!({ "client-certificate": cert, "client-certificate-data": b64(leaf.cert_pem()),
                "client-key": key_fifo, "client-key-data": b64(leaf.key_pem()) }),
    );
    let out = bounded(&[ca, cert, key_fifo], move || async move {
        outcome(&fifo_pool(source(&value)), &key()).await
    });
    assert!(matches!(out.0, Ok(AuthKind::Certificate)), "{:?}", out.0);
}

// ---------------------------------------------------------------------------------------------
// 2. unreadable files: typed errors naming the file

#[tokio::test]
async fn unreadable_ca_key_and_certificate_files_are_typed_errors() {
    let dir = scratch("unreadable");
    let leaf = testkit::tls::TestCa::new("c")
        .unwrap()
        .client_leaf("u", &[])
        .unwrap();
    std::fs::write(dir.join("cert.pem"), leaf.cert_pem()).unwrap();
    std::fs::write(dir.join("key.pem"), leaf.key_pem()).unwrap();
    std::fs::create_dir(dir.join("a-dir")).unwrap();
    std::os::unix::fs::symlink(dir.join("nowhere"), dir.join("dangling")).unwrap();
    let ca_ok = json!({ "server": OFFLINE, "certificate-authority-data": b64(&ca_pem()) });
    let user_ok =
        json!({ "client-certificate": dir.join("cert.pem"), "client-key": dir.join("key.pem") });

    for (bad, kind) in [
        ("missing.pem", Some(ErrorKind::NotFound)),
        ("a-dir", None),
        ("dangling", Some(ErrorKind::NotFound)),
    ] {
        let bad = dir.join(bad);
        // CA
        let value = kubeconfig(
            json!({ "server": OFFLINE, "certificate-authority": bad }),
            user_ok.clone(),
        );
        let err = build_error(
            SessionPool::builder(source(&value))
                .build()
                .session(&key())
                .await,
        );
        match &*err {
            BuildError::ReadFile { path, source } => {
                assert_eq!(path, &bad);
                if let Some(kind) = kind {
                    assert_eq!(source.kind(), kind);
                }
            }
            other => panic!("CA {bad:?}: {other:?}"),
        }
        // key
        let value = kubeconfig(
            ca_ok.clone(),
            json!({ "client-certificate": dir.join("cert.pem"), "client-key": bad }),
        );
        let err = build_error(
            SessionPool::builder(source(&value))
                .build()
                .session(&key())
                .await,
        );
        assert!(
            matches!(&*err, BuildError::ReadFile { path, .. } if path == &bad),
            "key {bad:?}: {err:?}"
        );
        assert_no_secret(&*err, "PRIVATE KEY");
        // certificate
        let value = kubeconfig(
            ca_ok.clone(),
            json!({ "client-certificate": bad, "client-key": dir.join("key.pem") }),
        );
        let err = build_error(
            SessionPool::builder(source(&value))
                .build()
                .session(&key())
                .await,
        );
        assert!(
            matches!(&*err, BuildError::CertificateFile { path, .. } if path == &bad),
            "certificate {bad:?}: {err:?}"
        );
    }

    // A CA file of plain text: CertificateAuthority. One of 8 MiB is over the 4 MiB a file
    // named by a kubeconfig may hold (the guide): ReadFile, not read to its end.
    std::fs::write(dir.join("text.pem"), "not a certificate\n").unwrap();
    std::fs::write(dir.join("big.pem"), vec![b'A'; 8 << 20]).unwrap();
    for name in ["text.pem", "big.pem"] {
        let value = kubeconfig(
            json!({ "server": OFFLINE, "certificate-authority": dir.join(name) }),
            json!({ "token": "t" }),
        );
        let err = build_error(
            SessionPool::builder(source(&value))
                .build()
                .session(&key())
                .await,
        );
        if name == "big.pem" {
            assert!(
                matches!(&*err, BuildError::ReadFile { source, .. }
                    if source.kind() == std::io::ErrorKind::InvalidData),
                "{name}: {err:?}"
            );
        } else {
            assert!(
                matches!(*err, BuildError::CertificateAuthority),
                "{name}: {err:?}"
            );
        }
    }
}

#[tokio::test]
async fn relative_paths_in_an_in_memory_kubeconfig_are_typed_errors() {
    let value = kubeconfig(
        json!({ "server": OFFLINE, "certificate-authority": "blackbox-build-no-such-ca.pem" }),
        json!({ "token": "t" }),
    );
    let err = build_error(
        SessionPool::builder(source(&value))
            .build()
            .session(&key())
            .await,
    );
    assert!(matches!(*err, BuildError::ReadFile { .. }), "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// from_file: relative paths against the file's directory, symlinks, re-read per build — against
// testkit's TLS server (real time)

#[tokio::test]
async fn from_file_reads_relative_files_from_its_directory_and_rereads_them() {
    let server = testkit::k8s::K8sServer::start().await.expect("server");
    let dir = scratch("relative");
    let leaf = server
        .ca()
        .client_leaf(testkit::k8s::ADMIN_USER, &["system:masters"])
        .unwrap();
    std::fs::create_dir(dir.join("certs")).unwrap();
    std::fs::write(dir.join("real-ca.pem"), server.ca().cert_pem()).unwrap();
    std::os::unix::fs::symlink(dir.join("real-ca.pem"), dir.join("ca.pem")).unwrap();
    std::fs::write(dir.join("certs/client.crt"), leaf.cert_pem()).unwrap();
    std::fs::write(dir.join("certs/client.key"), leaf.key_pem()).unwrap();
    let value = kubeconfig(
        json!({ "server": server.url(), "certificate-authority": "ca.pem" }),
        json!({ "client-certificate": "certs/client.crt", "client-key": "./certs/../certs/client.key" }),
    );
    let path = dir.join("config");
    std::fs::write(&path, serde_json::to_string(&value).unwrap()).unwrap();
    assert_ne!(std::env::current_dir().unwrap(), dir);

    let pool = SessionPool::builder(KubeconfigSource::from_file(&path)).build();
    let session = pool.session(&key()).await.expect("relative files resolved");
    assert_eq!(session.auth(), AuthKind::Certificate);
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(session.client().clone(), testkit::k8s::SAMPLE_NAMESPACE);
    pods.list(&Default::default())
        .await
        .expect("a call over the CA and certificate read from the files");
    drop(session);

    // Re-read on the next build: the CA turned into plain text.
    std::fs::write(dir.join("real-ca.pem"), "rotated to garbage\n").unwrap();
    pool.invalidate(&key()).await;
    let err = build_error(pool.session(&key()).await);
    assert!(matches!(*err, BuildError::CertificateAuthority), "{err:?}");

    // A missing relative file is named by its path under the file's directory.
    std::fs::write(dir.join("real-ca.pem"), server.ca().cert_pem()).unwrap();
    std::fs::remove_file(dir.join("certs/client.key")).unwrap();
    let err = build_error(pool.session(&key()).await);
    match &*err {
        BuildError::ReadFile { path, source } => {
            assert!(path.starts_with(&dir), "{path:?} not under {dir:?}");
            assert!(path.ends_with("client.key"), "{path:?}");
            assert_eq!(source.kind(), ErrorKind::NotFound);
        }
        other => panic!("{other:?}"),
    }
    std::fs::remove_file(dir.join("certs/client.crt")).unwrap();
    let err = build_error(pool.session(&key()).await);
    assert!(
        matches!(&*err, BuildError::CertificateFile { path, .. } if path.starts_with(&dir)),
        "{err:?}"
    );
}

#[tokio::test]
async fn new_build_errors_never_print_tokens_or_keys() {
    let leaf = testkit::tls::TestCa::new("c")
        .unwrap()
        .client_leaf("u", &[])
        .unwrap();
    let key_body: String = leaf
        .key_pem()
        .lines()
        .find(|l| !l.starts_with("-----"))
        .unwrap()
        .to_owned();
    let errors = [
        BuildError::Timeout {
            after: Duration::from_secs(1),
        },
        BuildError::AadTokenTimeout {
            after: Duration::from_secs(1),
        },
        BuildError::InvalidToken { what: "token" },
        BuildError::CertificateAuthority,
        BuildError::UnsupportedAuthProvider { name: "gcp".into() },
    ];
    for e in &errors {
        assert!(!chain_text(e).is_empty());
    }
    // Built ones, with secrets all over the kubeconfig.
    let value = kubeconfig(
        json!({ "server": OFFLINE, "certificate-authority-data": b64("no cert\n") }),
        json!({ "token": SECRET, "client-key-data": b64(leaf.key_pem()),
                "client-certificate-data": b64(leaf.cert_pem()) }),
    );
    let err = SessionPool::builder(source(&value))
        .build()
        .session(&key())
        .await
        .expect_err("CA");
    assert_no_secret(&err, SECRET);
    assert_no_secret(&err, &key_body);
    let src = format!("{:?}", source(&value));
    assert!(!src.contains(SECRET) && !src.contains(&key_body), "{src}");
}
