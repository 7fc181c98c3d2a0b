//! Black-box tests of a kubeconfig user's `tokenFile` (`SessionPoolBuilder::token_file_timeout`),
//! written from the public rustdoc and docs/k8s-session.md only, by a helper that did not read
//! the implementation. They try to break: rotation after 50 s (A in the file, then B written and
//! A revoked), the file's later fate (removed, a directory, a FIFO, emptied, oversized, several
//! lines), many requests at the due point, CRLF, huge files, projected-volume symlink swaps,
//! relative paths, precedence (inline token, basic auth, auth provider), and secrets in
//! `Debug`/`Display` and in logs.
//!
//! Every scenario runs on a current-thread runtime of its own named thread (so a blocking read
//! holding that thread, or a hung await, fails the test instead of hanging it, and so `tracing`
//! events can be attributed to the test), bounded in real time. The 50 s re-read is reached by
//! moving tokio's clock (`pause` + `advance` + `resume`) between requests: the due check uses
//! tokio's clock.

use std::any::Any;
use std::fmt::Write as _;
use std::future::Future;
use std::io::ErrorKind;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once, mpsc};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_session::{
    AuthKind, BuildError, DEFAULT_TOKEN_FILE_TIMEOUT, KubeconfigSource, Session, SessionError,
    SessionKey, SessionPool, SessionPoolBuilder,
};
use kube::api::{Api, ListParams};
use kube::config::{AuthInfo, Kubeconfig};
use testkit::fifo;
use testkit::k8s::{AuthMethod, K8sServer, SAMPLE_NAMESPACE, kubeconfig_text};

/// Any single await on the network is bounded by this (real time).
const OUTER: Duration = Duration::from_secs(5);
/// When kube (and the session) re-read a token file.
const DUE: Duration = Duration::from_secs(50);
/// A generous wait for a due read, for scenarios where the read itself is fast: a timed-out
/// read is not what they test.
const GENEROUS: Duration = Duration::from_secs(5);
/// A short wait for a due read, for scenarios where the read hangs.
const SHORT: Duration = Duration::from_millis(200);
/// Slack allowed over a documented bound (scheduling, TLS, a debug build).
const SLACK: Duration = Duration::from_millis(1500);
const MIB4: usize = 4 * 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// log capture: every `tracing` event and span, with the name of the thread it came from

#[derive(Debug, Clone)]
struct Logged {
    thread: String,
    level: tracing::Level,
    text: String,
}

static LOG: Mutex<Vec<Logged>> = Mutex::new(Vec::new());
static INSTALL: Once = Once::new();

struct Capture {
    next: AtomicU64,
}

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        let _ = write!(self.0, " {}={}", field.name(), value);
    }
}

fn push(level: tracing::Level, text: String) {
    let thread = std::thread::current().name().unwrap_or("?").to_owned();
    if let Ok(mut log) = LOG.lock() {
        log.push(Logged {
            thread,
            level,
            text,
        });
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut fields = Fields(format!("span {}:", span.metadata().name()));
        span.record(&mut fields);
        push(*span.metadata().level(), fields.0);
        tracing::span::Id::from_u64(self.next.fetch_add(1, Ordering::Relaxed) + 1)
    }
    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut fields = Fields("span record:".to_owned());
        values.record(&mut fields);
        push(tracing::Level::TRACE, fields.0);
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = Fields(format!("{}:", event.metadata().target()));
        event.record(&mut fields);
        push(*event.metadata().level(), fields.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

fn install_capture() {
    INSTALL.call_once(|| {
        let _ = tracing::subscriber::set_global_default(Capture {
            next: AtomicU64::new(0),
        });
    });
}

/// Events logged by this test's threads (its runtime thread and its blocking pool).
fn logged_by(test: &str) -> Vec<Logged> {
    let thread = thread_name(test);
    LOG.lock()
        .map(|log| log.iter().filter(|l| l.thread == thread).cloned().collect())
        .unwrap_or_default()
}

fn warned(test: &str) -> bool {
    logged_by(test)
        .iter()
        .any(|l| l.level == tracing::Level::WARN)
}

/// No event or span of any test, at any level, ever holds one of `secrets`.
fn assert_never_logged(secrets: &[&str]) {
    let log = LOG.lock().map(|l| l.clone()).unwrap_or_default();
    for entry in &log {
        for secret in secrets {
            assert!(
                !entry.text.contains(secret),
                "a token was logged ({:?} on {}): {}",
                entry.level,
                entry.thread,
                entry.text.replace(secret, "<TOKEN>")
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// running a scenario: its own thread and current-thread runtime, bounded in real time

fn thread_name(test: &str) -> String {
    format!("bbtf-{test}")
}

/// Run `scenario` on a current-thread runtime of a thread named after `test` (its blocking pool
/// too); fail if it has not finished after `budget` of real time (a hung await, or a blocking
/// read holding the runtime's only thread). FIFOs in `fifos` are released afterwards.
fn run<F>(
    test: &str,
    budget: Duration,
    fifos: &[PathBuf],
    scenario: impl FnOnce() -> F + Send + 'static,
) where
    F: Future<Output = ()>,
{
    install_capture();
    let (tx, rx) = mpsc::channel::<Result<(), Box<dyn Any + Send>>>();
    let name = thread_name(test);
    let blocking_name = name.clone();
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name(blocking_name)
                .build()
                .expect("runtime");
            let out =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(scenario())));
            rt.shutdown_background();
            let _ = tx.send(out);
        })
        .expect("scenario thread");
    let out = rx.recv_timeout(budget);
    fifo::release(fifos);
    match out {
        Ok(Ok(())) => {}
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!(
            "{test}: the scenario did not finish within {budget:?} of real time (a hung await, or \
             a blocking read holding the runtime's only thread)"
        ),
    }
}

/// Run `test` (as `run` does, bounded by `budget_secs` seconds of real time) in a fresh scratch
/// directory, with a test server started inside the scenario; `body` gets the directory and the
/// server.
fn scenario<F>(
    test: &str,
    budget_secs: u64,
    body: impl FnOnce(PathBuf, K8sServer) -> F + Send + 'static,
) where
    F: Future<Output = ()>,
{
    scenario_with_fifos(test, budget_secs, &[], body);
}

/// `scenario`, releasing afterwards the FIFOs named `fifos` in the scratch directory.
fn scenario_with_fifos<F>(
    test: &str,
    budget_secs: u64,
    fifos: &[&str],
    body: impl FnOnce(PathBuf, K8sServer) -> F + Send + 'static,
) where
    F: Future<Output = ()>,
{
    let dir = Scratch::new(test);
    let root = dir.0.clone();
    let fifos: Vec<PathBuf> = fifos.iter().map(|name| dir.path(name)).collect();
    let budget = Duration::from_secs(budget_secs);
    run(test, budget, &fifos, move || async move {
        let server = K8sServer::start().await.expect("server");
        body(root, server).await;
    });
    drop(dir);
}

// ---------------------------------------------------------------------------------------------
// fixtures

fn key() -> SessionKey {
    SessionKey::new("sub", "rg", "aks-token-file")
}

/// A unique scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("k8s-session-bbtf-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A fresh token, accepted by `server` (`add_token`) when `accept`.
fn new_token(server: &K8sServer, tag: &str, accept: bool) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let token = format!(
        "bbtf{tag}{}x{nanos}x{}",
        std::process::id(),
        UNIQUE.fetch_add(1, Ordering::Relaxed)
    );
    if accept {
        server.add_token(token.clone());
    }
    token
}

/// The server's kubeconfig with its user's inline token replaced by `token_file`.
fn with_token_file(server: &K8sServer, token_file: &str) -> Kubeconfig {
    let mut kubeconfig = server.kubeconfig_token();
    let user = kubeconfig.auth_infos[0].auth_info.as_mut().expect("user");
    user.token = None;
    user.token_file = Some(token_file.to_owned());
    kubeconfig
}

fn builder(server: &K8sServer, path: &Path) -> SessionPoolBuilder {
    SessionPool::builder(KubeconfigSource::from_kubeconfig(with_token_file(
        server,
        &path.display().to_string(),
    )))
}

/// Replace `path`'s content atomically (write aside, rename over), as a rotation does.
fn rotate(path: &Path, bytes: &[u8]) {
    let aside = path.with_extension("rotating");
    std::fs::write(&aside, bytes).expect("write aside");
    std::fs::rename(&aside, path).expect("rename over");
}

/// A session of `pool`, or its build error; the build must not hang.
async fn try_session(pool: &SessionPool) -> Result<Session, SessionError> {
    tokio::time::timeout(OUTER, pool.session(&key()))
        .await
        .expect("the build did not hang")
}

async fn session(pool: &SessionPool) -> Session {
    try_session(pool).await.expect("session")
}

async fn build_error(pool: &SessionPool) -> SessionError {
    try_session(pool).await.expect_err("the build must fail")
}

/// A pod list through `client`, bounded by `OUTER`; how long it took.
async fn list_with(client: &kube::Client) -> (Result<usize, String>, Duration) {
    let start = std::time::Instant::now();
    let pods: Api<Pod> = Api::namespaced(client.clone(), SAMPLE_NAMESPACE);
    let out = match tokio::time::timeout(OUTER, pods.list(&ListParams::default())).await {
        Err(_) => Err(format!("the list did not finish within {OUTER:?}")),
        Ok(Err(e)) => Err(format!("the list failed: {e}")),
        Ok(Ok(list)) => Ok(list.items.len()),
    };
    (out, start.elapsed())
}

async fn list(session: &Session, what: &str) -> Duration {
    let (out, took) = list_with(session.client()).await;
    if let Err(e) = out {
        panic!("{what}: {e} (after {took:?})");
    }
    took
}

/// 64 pod lists at once through `client`, none of which may fail; how long each one took, and
/// the whole burst.
async fn burst(client: &kube::Client) -> (Vec<Duration>, Duration) {
    let start = std::time::Instant::now();
    let outs = futures::future::join_all((0..64).map(|_| list_with(client))).await;
    let all = start.elapsed();
    let failed: Vec<_> = outs
        .iter()
        .enumerate()
        .filter_map(|(i, (out, took))| {
            out.as_ref()
                .err()
                .map(|e| format!("#{i} after {took:?}: {e}"))
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of 64 failed: {failed:#?}",
        failed.len()
    );
    (outs.into_iter().map(|(_, took)| took).collect(), all)
}

/// A pool over the token file `path` that waits at most `wait` for a due read, and a session of
/// it whose first list (with token A, already in the file) went through.
async fn a_session(server: &K8sServer, path: &Path, wait: Duration) -> (SessionPool, Session) {
    let pool = builder(server, path).token_file_timeout(wait).build();
    let session = session(&pool).await;
    list(&session, "token A").await;
    (pool, session)
}

/// A pool over `kubeconfig` with its user changed by `edit`, and a session of it.
async fn edited_session(
    mut kubeconfig: Kubeconfig,
    edit: impl FnOnce(&mut AuthInfo),
) -> (SessionPool, Session) {
    edit(kubeconfig.auth_infos[0].auth_info.as_mut().expect("user"));
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(kubeconfig)).build();
    let session = session(&pool).await;
    (pool, session)
}

/// Rotate `path` to a fresh token B the server accepts (`text` with `T` standing for B), then
/// revoke `a`; B.
fn rotate_to_b(server: &K8sServer, path: &Path, a: &str, text: &str) -> String {
    let b = new_token(server, "B", true);
    rotate(path, text.replace('T', &b).as_bytes());
    server.revoke_token(a);
    b
}

/// Move tokio's clock by `by` without waiting (the session's due check uses tokio's clock).
async fn jump(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

fn last_auth(server: &K8sServer) -> AuthMethod {
    server.requests().pop().expect("a request").auth
}

fn assert_read_file(error: &SessionError, path: &Path, kind: ErrorKind, what: &str) {
    match error.build_error() {
        Some(BuildError::ReadFile { path: p, source }) => {
            assert_eq!(p, path, "{what}: the error names the token file");
            assert_eq!(source.kind(), kind, "{what}: {source:?}");
        }
        other => panic!("{what}: expected BuildError::ReadFile, got {other:?}"),
    }
}

/// The build over `path` fails at once (within 1 s, under a 3 s build timeout) with `ReadFile`
/// and an `InvalidInput` source.
async fn assert_refused_at_once(server: &K8sServer, path: &Path, what: &str) {
    let pool = builder(server, path)
        .build_timeout(Duration::from_secs(3))
        .build();
    let start = std::time::Instant::now();
    let error = build_error(&pool).await;
    let took = start.elapsed();
    assert_read_file(&error, path, ErrorKind::InvalidInput, what);
    assert!(
        took < Duration::from_secs(1),
        "{path:?}: refused after {took:?}, not at once"
    );
}

// ---------------------------------------------------------------------------------------------
// at the build

// client-go trims surrounding whitespace: a CRLF (a file written on Windows), leading blanks,
// several trailing line ends.
#[test]
fn crlf_and_surrounding_whitespace_are_trimmed_at_the_build() {
    scenario("crlf-build", 15, |dir, server| async move {
        let token = server.token().to_owned();
        for (i, text) in [
            format!("{token}\r\n"),
            format!("\t {token} \r\n\r\n"),
            format!("\n{token}"),
        ]
        .into_iter()
        .enumerate()
        {
            let path = dir.join(format!("token-{i}"));
            std::fs::write(&path, &text).unwrap();
            let pool = builder(&server, &path).build();
            let session = session(&pool).await;
            assert_eq!(session.auth(), AuthKind::StaticToken);
            list(
                &session,
                &format!("file {i} ({:?})", text.replace(&token, "T")),
            )
            .await;
            assert_eq!(last_auth(&server), AuthMethod::Bearer);
        }
        assert_never_logged(&[&token]);
    });
}

// Nothing a header can carry: empty, blank, a CR or LF inside, NUL, DEL, another control byte.
// A typed error, `InvalidToken { what: "token file" }`, that quotes nothing of the file.
#[test]
fn tokens_a_header_cannot_carry_fail_the_build_without_quoting_them() {
    scenario("invalid-build", 15, |dir, server| async move {
        let cases: [(&str, &[u8]); 8] = [
            ("empty", b""),
            ("crlf only", b"\r\n"),
            ("blank", b" \t \r\n "),
            ("cr inside", b"s3cr3tPART\rs3cr3tREST"),
            ("lf inside", b"s3cr3tPART\ns3cr3tREST\n"),
            ("nul inside", b"s3cr3tPART\0s3cr3tREST"),
            ("del inside", b"s3cr3tPART\x7fs3cr3tREST"),
            ("bell inside", b"s3cr3tPART\x07s3cr3tREST"),
        ];
        for (i, (what, bytes)) in cases.into_iter().enumerate() {
            let path = dir.join(format!("token-{i}"));
            std::fs::write(&path, bytes).unwrap();
            let pool = builder(&server, &path).build();
            let error = build_error(&pool).await;
            assert!(
                matches!(
                    error.build_error(),
                    Some(BuildError::InvalidToken { what: "token file" })
                ),
                "{what}: {error:?}"
            );
            let shown = format!("{error:?} {error} {:?}", error.build_error());
            assert!(
                !shown.contains("s3cr3t"),
                "{what}: the error quotes the file: {shown}"
            );
        }
        assert!(server.requests().is_empty(), "nothing was sent");
        assert_never_logged(&["s3cr3tPART", "s3cr3tREST"]);
    });
}

// Not a regular file: a FIFO (opening it would block until a writer comes), a device, a
// directory. Refused at once with `ReadFile` and an `InvalidInput` source.
#[test]
fn a_token_file_that_is_not_a_regular_file_is_refused_at_once() {
    scenario_with_fifos("not-regular", 10, &["fifo"], |dir, server| async move {
        let fifo = dir.join("fifo");
        fifo::make(&fifo);
        let directory = dir.join("a-directory");
        std::fs::create_dir(&directory).unwrap();
        for path in [
            fifo,
            PathBuf::from("/dev/zero"),
            PathBuf::from("/dev/null"),
            directory,
        ] {
            assert_refused_at_once(&server, &path, &path.display().to_string()).await;
        }
    });
}

// Larger than 4 MiB: refused (`ReadFile`, `InvalidData`), read only up to the limit (a sparse
// 1 GiB file is refused quickly, memory bounded); exactly 4 MiB is not "larger than 4 MiB".
#[test]
fn token_files_over_4_mib_are_refused_and_4_mib_is_not() {
    scenario("huge-build", 15, |dir, server| async move {
        let over = dir.join("over");
        std::fs::write(&over, vec![b'q'; MIB4 + 1]).unwrap();
        let error = build_error(&builder(&server, &over).build()).await;
        assert_read_file(&error, &over, ErrorKind::InvalidData, "4 MiB + 1");
        assert!(
            !format!("{error:?} {error}").contains("qqqqqqqq"),
            "the error quotes the file"
        );

        let sparse = dir.join("sparse");
        std::fs::File::create(&sparse)
            .unwrap()
            .set_len(1 << 30)
            .unwrap();
        let start = std::time::Instant::now();
        let error = build_error(&builder(&server, &sparse).build()).await;
        assert_read_file(&error, &sparse, ErrorKind::InvalidData, "1 GiB sparse");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "a 1 GiB token file took {:?} to refuse: not read up to the limit only?",
            start.elapsed()
        );

        let exact = dir.join("exact");
        std::fs::write(&exact, vec![b'q'; MIB4]).unwrap();
        if let Err(error) = &try_session(&builder(&server, &exact).build()).await {
            assert!(
                !matches!(error.build_error(), Some(BuildError::ReadFile { .. })),
                "a token file of exactly 4 MiB is not larger than 4 MiB: {error:?}"
            );
        }
    });
}

// A missing file names itself in `ReadFile` (NotFound), also as a dangling symlink.
#[test]
fn a_missing_token_file_or_dangling_symlink_fails_the_build_naming_the_file() {
    scenario("missing-build", 10, |dir, server| async move {
        let missing = dir.join("missing");
        let error = build_error(&builder(&server, &missing).build()).await;
        assert_read_file(&error, &missing, ErrorKind::NotFound, "missing");
        let dangling = dir.join("dangling");
        symlink(dir.join("nowhere"), &dangling).unwrap();
        let error = build_error(&builder(&server, &dangling).build()).await;
        assert_read_file(&error, &dangling, ErrorKind::NotFound, "dangling symlink");
    });
}

/// Each of `texts` (with `T` standing for the server's token) as the token file builds a session
/// whose call authenticates: the white space around the token was trimmed.
fn assert_trimmed(name: &'static str, texts: &'static [&'static str]) {
    scenario(name, 10, move |dir, server| async move {
        let token = server.token().to_owned();
        let mut failures = Vec::new();
        for (i, text) in texts.iter().map(|t| t.replace('T', &token)).enumerate() {
            let path = dir.join(format!("token-{i}"));
            std::fs::write(&path, &text).unwrap();
            let what = format!("{:?}", texts[i]);
            match try_session(&builder(&server, &path).build()).await {
                Err(e) => failures.push(format!("{what}: build failed: {e:?}")),
                Ok(session) => {
                    if let (Err(e), _) = list_with(session.client()).await {
                        failures.push(format!("{what}: {e}"));
                    }
                }
            }
        }
        assert!(
            failures.is_empty(),
            "whitespace around the token must be trimmed: {failures:#?}"
        );
    });
}

// client-go trims with Go's `strings.TrimSpace`: ASCII whitespace includes a vertical tab and a
// form feed (Rust's `trim_ascii` leaves the vertical tab).
#[test]
fn vertical_tab_and_form_feed_around_the_token_are_trimmed_as_client_go_does() {
    assert_trimmed("vt-ff", &["T\x0b\n", "\x0cT\x0c\r\n"]);
}

// Go's `strings.TrimSpace` also trims Unicode spaces (NO-BREAK SPACE, NEXT LINE), which an
// editor can leave at a line end.
#[test]
fn unicode_spaces_around_the_token_are_trimmed_as_client_go_does() {
    assert_trimmed("unicode-space", &["T\u{a0}\n", "\u{85}T\u{2003}"]);
}

// Odd input never panics: bytes that are not UTF-8, an empty `tokenFile` path, a path naming a
// symlink to a FIFO or to a device. A typed build error (or a working session), never a panic.
#[test]
fn odd_token_files_give_typed_errors_never_panics() {
    scenario_with_fifos("odd", 10, &["fifo"], |dir, server| async move {
        let fifo = dir.join("fifo");
        fifo::make(&fifo);
        let to_fifo = dir.join("to-fifo");
        symlink(&fifo, &to_fifo).unwrap();
        let to_zero = dir.join("to-zero");
        symlink("/dev/zero", &to_zero).unwrap();
        let latin1 = dir.join("latin1");
        std::fs::write(&latin1, b"s3cr3tPART\xe9\xff\xfes3cr3tREST\n").unwrap();
        for path in [to_fifo, to_zero] {
            assert_refused_at_once(&server, &path, &format!("{path:?} (a symlink)")).await;
        }
        if let Err(error) = &try_session(&builder(&server, &latin1).build()).await {
            assert!(
                matches!(
                    error.build_error(),
                    Some(BuildError::InvalidToken { .. } | BuildError::ReadFile { .. })
                ),
                "not UTF-8: {error:?}"
            );
            assert!(
                !format!("{error:?} {error}").contains("s3cr3t"),
                "{error:?}"
            );
        }
        let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(with_token_file(
            &server, "",
        )))
        .build();
        let _ = try_session(&pool).await;
        assert_never_logged(&["s3cr3tPART", "s3cr3tREST"]);
    });
}

// ---------------------------------------------------------------------------------------------
// precedence: nothing kube would prefer (auth provider, basic auth, inline token)

// An inline token wins: the file (holding a token the server refuses) is never sent, not even
// after 50 s.
#[test]
fn an_inline_token_beside_a_token_file_is_the_one_sent() {
    scenario("inline-wins", 10, |dir, server| async move {
        let path = dir.join("token");
        let refused = new_token(&server, "refused", false);
        std::fs::write(&path, &refused).unwrap();
        let (_pool, session) = edited_session(server.kubeconfig_token(), |user| {
            user.token_file = Some(path.display().to_string());
        })
        .await;
        assert_eq!(session.auth(), AuthKind::StaticToken);
        list(&session, "inline token").await;
        jump(DUE).await;
        list(&session, "inline token after 50 s").await;
        assert_never_logged(&[server.token(), &refused]);
    });
}

// Basic auth wins (kube's order): the file's token, although valid, is never sent.
#[test]
fn basic_auth_beside_a_token_file_wins() {
    scenario("basic-wins", 10, |dir, server| async move {
        let path = dir.join("token");
        std::fs::write(&path, server.token()).unwrap();
        let kubeconfig = with_token_file(&server, &path.display().to_string());
        let (_pool, session) = edited_session(kubeconfig, |user| {
            user.username = Some("someone".to_owned());
            user.password = Some("s3cr3tPassw0rd".to_owned().into());
        })
        .await;
        let pods: Api<Pod> = Api::namespaced(session.client().clone(), SAMPLE_NAMESPACE);
        let _ = tokio::time::timeout(OUTER, pods.list(&ListParams::default()))
            .await
            .expect("no hang");
        assert_ne!(
            last_auth(&server),
            AuthMethod::Bearer,
            "the token file was sent although kube prefers basic auth"
        );
        assert_eq!(
            session.auth(),
            AuthKind::Other,
            "a basic-auth user is `AuthKind::Other` (basic auth), not `StaticToken`"
        );
        assert_never_logged(&[server.token(), "s3cr3tPassw0rd"]);
    });
}

// An auth provider (oidc with an id-token: no command) wins over the token file.
#[test]
fn an_auth_provider_beside_a_token_file_wins() {
    scenario("provider-wins", 10, |dir, server| async move {
        let path = dir.join("token");
        let refused = new_token(&server, "refused", false);
        std::fs::write(&path, &refused).unwrap();
        let kubeconfig = with_token_file(&server, &path.display().to_string());
        let (_pool, session) = edited_session(kubeconfig, |user| {
            user.auth_provider = Some(
                serde_json::from_value(serde_json::json!({
                    "name": "oidc",
                    "config": {
                        "id-token": server.token(),
                        "idp-issuer-url": "https://127.0.0.1:9",
                    },
                }))
                .unwrap(),
            );
        })
        .await;
        list(&session, "auth provider's token").await;
        jump(DUE).await;
        list(&session, "auth provider's token after 50 s").await;
        assert_never_logged(&[server.token(), &refused]);
    });
}

// An exec plugin beside a token file is never run, also across a rotation.
#[test]
fn an_exec_plugin_beside_a_rotating_token_file_is_never_run() {
    scenario("exec-beside", 10, |dir, server| async move {
        let path = dir.join("token");
        let marker = dir.join("plugin-ran");
        std::fs::write(&path, server.token()).unwrap();
        let kubeconfig = with_token_file(&server, &path.display().to_string());
        let (_pool, session) = edited_session(kubeconfig, |user| {
            user.exec = Some(
                serde_json::from_value(serde_json::json!({
                    "apiVersion": "client.authentication.k8s.io/v1beta1",
                    "command": "/bin/sh",
                    "args": ["-c", format!("touch {}", marker.display())],
                }))
                .unwrap(),
            );
        })
        .await;
        assert_eq!(session.auth(), AuthKind::StaticToken);
        list(&session, "token file").await;
        rotate_to_b(&server, &path, server.token(), "T");
        jump(DUE).await;
        list(&session, "rotated token file").await;
        assert!(!marker.exists(), "the exec plugin ran");
    });
}

// ---------------------------------------------------------------------------------------------
// rotation

// The core promise: A in the file, then B written and A revoked; after 50 s a request carries B.
#[test]
fn a_rotated_token_is_sent_once_the_last_read_is_50_s_old() {
    scenario("rotation", 10, |dir, server| async move {
        let path = dir.join("token");
        let a = server.token().to_owned();
        std::fs::write(&path, format!("{a}\n")).unwrap();
        let (pool, session) = a_session(&server, &path, GENEROUS).await;
        let b = rotate_to_b(&server, &path, &a, "T\n");
        jump(DUE).await;
        list(&session, "token B after 50 s").await;
        assert_eq!(last_auth(&server), AuthMethod::Bearer);
        list(&session, "token B again").await;
        assert_never_logged(&[&a, &b]);
        let shown = format!("{pool:?} {session:?}");
        assert!(
            !shown.contains(&a) && !shown.contains(&b),
            "Debug shows a token"
        );
    });
}

// Not before: a refused token X written at once is not sent 30 s later (the file is re-read when
// the last read is 50 s old, counted from the build's read, not from the last request).
#[test]
fn the_file_is_not_reread_before_50_s_and_is_at_50_s_from_the_builds_read() {
    scenario("cadence", 10, |dir, server| async move {
        let path = dir.join("token");
        let a = server.token().to_owned();
        std::fs::write(&path, &a).unwrap();
        let (_pool, session) = a_session(&server, &path, GENEROUS).await;
        let refused = new_token(&server, "X", false);
        rotate(&path, refused.as_bytes());
        jump(Duration::from_secs(30)).await;
        list(&session, "token A 30 s after the build (no re-read yet)").await;
        rotate_to_b(&server, &path, &a, "T");
        jump(Duration::from_secs(20)).await;
        list(&session, "token B 50 s after the build's read").await;
    });
}

// A rotated token ending with CRLF is trimmed too.
#[test]
fn a_rotated_token_with_crlf_is_trimmed() {
    scenario("rotation-crlf", 10, |dir, server| async move {
        let path = dir.join("token");
        let a = server.token().to_owned();
        std::fs::write(&path, format!("{a}\r\n")).unwrap();
        let (_pool, session) = a_session(&server, &path, GENEROUS).await;
        rotate_to_b(&server, &path, &a, "  T\r\n\r\n");
        jump(DUE).await;
        list(&session, "token B (with CRLF) after 50 s").await;
    });
}

// Rewritten in place (truncate + write, not a rename), as `echo B > token` does.
#[test]
fn a_token_rewritten_in_place_is_sent_after_50_s() {
    scenario("in-place", 10, |dir, server| async move {
        let path = dir.join("token");
        let a = server.token().to_owned();
        std::fs::write(&path, &a).unwrap();
        let (_pool, session) = a_session(&server, &path, GENEROUS).await;
        let b = new_token(&server, "B", true);
        std::fs::write(&path, format!("{b}\n")).unwrap();
        server.revoke_token(&a);
        jump(DUE).await;
        list(&session, "token B after 50 s").await;
    });
}

// The rotation belongs to the session, not to one handle: a pool hit after the session went back
// and a `kube::Client` cloned before the rotation both send B.
#[test]
fn a_rotation_reaches_pool_hits_and_client_clones() {
    scenario("rotation-shared", 10, |dir, server| async move {
        let path = dir.join("token");
        let a = server.token().to_owned();
        std::fs::write(&path, &a).unwrap();
        let (pool, first) = a_session(&server, &path, GENEROUS).await;
        let clone = first.client().clone();
        drop(first);
        rotate_to_b(&server, &path, &a, "T");
        jump(DUE).await;
        let hit = session(&pool).await;
        list(&hit, "token B through a pool hit").await;
        let (out, _) = list_with(&clone).await;
        out.expect("token B through a client cloned before the rotation");
        assert_eq!(
            pool.stats().creations,
            1,
            "one build: the second session was a pool hit"
        );
    });
}

// A Kubernetes projected volume: `token -> ..data/token`, `..data -> ..2024_a`; a rotation writes
// `..2024_b`, swaps `..data` atomically (rename of a new symlink) and removes `..2024_a`.
#[test]
fn a_projected_volume_rotated_by_swapping_its_data_symlink_is_followed() {
    scenario("projected", 10, |root, server| async move {
        let a = server.token().to_owned();
        std::fs::create_dir(root.join("..2024_a")).unwrap();
        std::fs::write(root.join("..2024_a/token"), &a).unwrap();
        symlink("..2024_a", root.join("..data")).unwrap();
        symlink("..data/token", root.join("token")).unwrap();
        let path = root.join("token");
        let (_pool, session) = a_session(&server, &path, GENEROUS).await;

        let b = new_token(&server, "B", true);
        std::fs::create_dir(root.join("..2024_b")).unwrap();
        std::fs::write(root.join("..2024_b/token"), &b).unwrap();
        symlink("..2024_b", root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        std::fs::remove_dir_all(root.join("..2024_a")).unwrap();
        server.revoke_token(&a);
        jump(DUE).await;
        list(&session, "token B after the ..data swap").await;
    });
}

// A kubeconfig file's relative `tokenFile` is read from the file's directory (the guide), at the
// build and at every re-read: the process's working directory has no such file.
#[test]
fn a_relative_token_file_of_a_kubeconfig_file_is_reread_from_its_directory() {
    scenario("relative", 15, |root, server| async move {
        let a = server.token().to_owned();
        std::fs::create_dir(root.join("sub")).unwrap();
        for relative in ["token", "./sub/token"] {
            std::fs::write(root.join(relative), &a).unwrap();
            let config = root.join(format!("config-{}", relative.len()));
            std::fs::write(
                &config,
                kubeconfig_text(&with_token_file(&server, relative)),
            )
            .unwrap();
            let pool = SessionPool::builder(KubeconfigSource::from_file(&config))
                .token_file_timeout(GENEROUS)
                .build();
            let session = session(&pool).await;
            assert_eq!(session.auth(), AuthKind::StaticToken);
            list(&session, &format!("{relative}: token A")).await;
            rotate_to_b(&server, &root.join(relative), &a, "T");
            jump(DUE).await;
            list(
                &session,
                &format!("{relative}: token B re-read from the file's directory"),
            )
            .await;
            server.add_token(a.clone());
        }
    });
}

// ---------------------------------------------------------------------------------------------
// the file's later fate: keep the last token, with a warn, and never hang

// Removed after the build, due: A kept (with a warn); restored with B (A revoked): 50 s later, B.
#[test]
fn a_file_removed_then_restored_keeps_the_last_token_then_follows_the_new_one() {
    scenario("removed-restored", 10, |dir, server| async move {
        let path = dir.join("token");
        let a = server.token().to_owned();
        std::fs::write(&path, &a).unwrap();
        let (_pool, session) = a_session(&server, &path, GENEROUS).await;
        std::fs::remove_file(&path).unwrap();
        jump(DUE).await;
        let took = list(&session, "token A kept after the file was removed").await;
        assert!(
            took < GENEROUS,
            "a missing file made the request wait {took:?}"
        );
        list(&session, "token A kept, again").await;
        assert!(
            warned("removed-restored"),
            "a removed token file is logged with a warn"
        );
        let b = rotate_to_b(&server, &path, &a, "T");
        jump(DUE).await;
        list(&session, "token B once the file is back").await;
        assert_never_logged(&[&a, &b]);
    });
}

// Replaced by a directory: A kept, with a warn, no wait.
#[test]
fn a_file_replaced_by_a_directory_keeps_the_last_token() {
    scenario("became-dir", 10, |dir, server| async move {
        let path = dir.join("token");
        std::fs::write(&path, server.token()).unwrap();
        let (_pool, session) = a_session(&server, &path, GENEROUS).await;
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        jump(DUE).await;
        let took = list(&session, "token A kept, the file now a directory").await;
        assert!(
            took < GENEROUS,
            "a directory made the request wait {took:?}"
        );
        assert!(
            warned("became-dir"),
            "an unreadable token file is logged with a warn"
        );
    });
}

// Emptied, blank, two lines, a NUL, a DEL: nothing a header can carry. A kept (kube's auth layer
// would panic on such a header), with a warn; the bad content is never logged; B later works.
#[test]
fn a_file_rewritten_with_no_valid_token_keeps_the_last_token() {
    scenario("invalid-later", 10, |dir, server| async move {
        let path = dir.join("token");
        let a = server.token().to_owned();
        std::fs::write(&path, &a).unwrap();
        let (_pool, session) = a_session(&server, &path, GENEROUS).await;
        for (what, bytes) in [
            ("truncated to empty", &b""[..]),
            ("blank", b" \r\n\t\n"),
            ("two lines", b"s3cr3tPART\ns3cr3tREST\n"),
            ("a NUL", b"s3cr3tPART\0s3cr3tREST"),
            ("a DEL", b"s3cr3tPART\x7fs3cr3tREST"),
            ("a CR inside", b"s3cr3tPART\rs3cr3tREST"),
        ] {
            std::fs::write(&path, bytes).unwrap();
            jump(DUE).await;
            list(&session, &format!("token A kept, the file {what}")).await;
            assert_eq!(last_auth(&server), AuthMethod::Bearer, "{what}");
        }
        assert!(
            warned("invalid-later"),
            "a token file with no valid token is logged with a warn"
        );
        let b = rotate_to_b(&server, &path, &a, "T");
        jump(DUE).await;
        list(&session, "token B after the invalid contents").await;
        assert_never_logged(&[&a, &b, "s3cr3tPART", "s3cr3tREST"]);
    });
}

// Grown past 4 MiB: unreadable (over the limit), A kept, quickly, memory bounded.
#[test]
fn a_file_grown_past_4_mib_keeps_the_last_token() {
    scenario("huge-later", 10, |dir, server| async move {
        let path = dir.join("token");
        std::fs::write(&path, server.token()).unwrap();
        let (_pool, session) = a_session(&server, &path, GENEROUS).await;
        std::fs::write(&path, vec![b'q'; MIB4 + 1]).unwrap();
        jump(DUE).await;
        let took = list(&session, "token A kept, the file over 4 MiB").await;
        assert!(took < Duration::from_secs(2), "took {took:?}");
        let sparse = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        sparse.set_len(1 << 30).unwrap();
        drop(sparse);
        jump(DUE).await;
        let took = list(&session, "token A kept, the file 1 GiB").await;
        assert!(
            took < Duration::from_secs(2),
            "a 1 GiB token file held a request {took:?}"
        );
        assert!(
            warned("huge-later"),
            "an oversized token file is logged with a warn"
        );
    });
}

// Replaced by a symlink to `/dev/zero` (endless, not a regular file): A kept, at once, memory
// bounded.
#[test]
fn a_file_replaced_by_a_symlink_to_a_device_keeps_the_last_token() {
    scenario("became-device", 10, |dir, server| async move {
        let path = dir.join("token");
        std::fs::write(&path, server.token()).unwrap();
        let (_pool, session) = a_session(&server, &path, GENEROUS).await;
        std::fs::remove_file(&path).unwrap();
        symlink("/dev/zero", &path).unwrap();
        jump(DUE).await;
        let took = list(&session, "token A kept, the file a symlink to /dev/zero").await;
        assert!(took < Duration::from_secs(2), "took {took:?}");
        assert!(
            warned("became-device"),
            "an unreadable token file is logged with a warn"
        );
    });
}

// Replaced by a FIFO nobody writes (a hung read): a request waits at most `token_file_timeout`,
// then goes with A; so does the next one. Then the FIFO is replaced by a file holding B (A
// revoked): 50 s later B is sent — a hung read must not freeze the token forever.
#[test]
fn a_file_replaced_by_a_fifo_bounds_the_wait_and_does_not_freeze_rotation() {
    scenario_with_fifos(
        "became-fifo",
        12,
        &["fifo-side-link", "token"],
        |dir, server| async move {
            let path = dir.join("token");
            let side = dir.join("fifo-side-link");
            let a = server.token().to_owned();
            std::fs::write(&path, &a).unwrap();
            let (_pool, session) = a_session(&server, &path, SHORT).await;
            std::fs::remove_file(&path).unwrap();
            fifo::make(&path);
            std::fs::hard_link(&path, &side).unwrap();
            jump(DUE).await;
            for round in 0..3 {
                let took = list(
                    &session,
                    &format!("round {round}: token A kept, the file a FIFO"),
                )
                .await;
                assert!(
                    took < SHORT + SLACK,
                    "round {round}: a request waited {took:?} for a FIFO, bound {SHORT:?}"
                );
            }
            rotate_to_b(&server, &path, &a, "T");
            jump(DUE).await;
            let took = list(&session, "token B once the FIFO is replaced by a file").await;
            assert!(took < SHORT + SLACK, "took {took:?}");
        },
    );
}

// ---------------------------------------------------------------------------------------------
// many requests at the due point

// 64 requests at once when the read is due (B written, A revoked): every one succeeds, so every
// one waited for the read (one at a time per session) and went with B.
#[test]
fn many_requests_at_the_due_point_all_send_the_rotated_token() {
    scenario("burst-rotation", 15, |dir, server| async move {
        let path = dir.join("token");
        let a = server.token().to_owned();
        std::fs::write(&path, &a).unwrap();
        let (_pool, session) = a_session(&server, &path, GENEROUS).await;
        rotate_to_b(&server, &path, &a, "T");
        server.clear_requests();
        jump(DUE).await;
        burst(session.client()).await;
        let refused = server
            .requests()
            .iter()
            .filter(|r| r.auth != AuthMethod::Bearer)
            .count();
        assert_eq!(refused, 0, "requests sent with the revoked token");
    });
}

// 64 requests at once while the due read hangs (a FIFO): each goes with A within the bound (not
// one bound after another), none fails.
#[test]
fn many_requests_while_the_due_read_hangs_each_wait_at_most_the_bound() {
    scenario_with_fifos("burst-fifo", 12, &["token"], |dir, server| async move {
        let path = dir.join("token");
        std::fs::write(&path, server.token()).unwrap();
        let bound = Duration::from_millis(300);
        let (_pool, session) = a_session(&server, &path, bound).await;
        std::fs::remove_file(&path).unwrap();
        fifo::make(&path);
        jump(DUE).await;
        let (took, all) = burst(session.client()).await;
        let slowest = took.into_iter().max().unwrap_or_default();
        assert!(
            slowest < bound + SLACK && all < bound + SLACK,
            "slowest request {slowest:?}, whole burst {all:?}, bound {bound:?}"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// the knob

#[test]
fn the_default_wait_is_one_second() {
    assert_eq!(
        k8s_session::DEFAULT_TOKEN_FILE_TIMEOUT,
        Duration::from_secs(1)
    );
}

// Zero is clamped to 1 ms (a request with a hung read goes at once with A); `Duration::MAX` is
// clamped to 60 s and does not overflow (a fast read is waited for: B is sent).
#[test]
fn token_file_timeout_extremes_are_clamped_not_panics() {
    scenario_with_fifos("extremes", 12, &["fifo-token"], |dir, server| async move {
        let fifo_path = dir.join("fifo-token");
        let file_path = dir.join("token");
        let a = server.token().to_owned();

        std::fs::write(&fifo_path, &a).unwrap();
        let zero = builder(&server, &fifo_path)
            .token_file_timeout(Duration::ZERO)
            .build();
        let session_zero = session(&zero).await;
        list(&session_zero, "zero: token A").await;
        std::fs::remove_file(&fifo_path).unwrap();
        fifo::make(&fifo_path);

        std::fs::write(&file_path, &a).unwrap();
        let max = builder(&server, &file_path)
            .token_file_timeout(Duration::MAX)
            .build();
        let session_max = session(&max).await;
        list(&session_max, "MAX: token A").await;

        jump(DUE).await;
        let took = list(&session_zero, "zero: token A kept, the file a FIFO").await;
        assert!(
            took < DEFAULT_TOKEN_FILE_TIMEOUT,
            "token_file_timeout(ZERO) (1 ms) waited {took:?}"
        );
        rotate_to_b(&server, &file_path, &a, "T");
        jump(DUE).await;
        list(&session_max, "MAX: token B").await;
    });
}

// ---------------------------------------------------------------------------------------------
// secrets

// `Debug` of the builder, pool, source and session, and every error, never hold the file's token.
#[test]
fn debug_and_display_never_show_the_files_token() {
    scenario("debug", 10, |dir, server| async move {
        let path = dir.join("token");
        let a = server.token().to_owned();
        std::fs::write(&path, format!("{a}\n")).unwrap();
        let source = KubeconfigSource::from_kubeconfig(with_token_file(
            &server,
            &path.display().to_string(),
        ));
        let shown_source = format!("{source:?}");
        let builder = SessionPool::builder(source).token_file_timeout(GENEROUS);
        let shown_builder = format!("{builder:?} {shown_source}");
        let pool = builder.build();
        let session = session(&pool).await;
        list(&session, "token A").await;
        let b = rotate_to_b(&server, &path, &a, "T");
        jump(DUE).await;
        list(&session, "token B").await;
        let shown = format!(
            "{shown_builder} {pool:?} {session:?} {:?} {:?}",
            session.key(),
            session.effective_ttl()
        );
        for token in [&a, &b] {
            assert!(
                !shown.contains(token.as_str()),
                "Debug shows a token: {}",
                shown.replace(token.as_str(), "<TOKEN>")
            );
        }
        // A 401 through the session (B revoked too, after its re-read): the kube error says 401,
        // not the token.
        server.revoke_token(&b);
        let (out, _) = list_with(session.client()).await;
        let error = out.expect_err("B revoked: 401");
        assert!(!error.contains(&a) && !error.contains(&b), "{error}");
        assert_never_logged(&[&a, &b]);
    });
}
