//! A kubeconfig user's `tokenFile`, served by the session rather than by kube (whose re-reads
//! are blocking calls under a lock every request waits on), against testkit's TLS API server
//! (real time): the token sent is the file's, trimmed; the file's later fate does not break a
//! built session; an exec plugin beside a token file is never run (kube prefers the file).

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Pod;
use k8s_session::{
    AuthKind, BuildError, DEFAULT_TOKEN_FILE_TIMEOUT, KubeconfigSource, SessionKey, SessionPool,
};
use kube::api::{Api, ListParams};
use kube::config::Kubeconfig;
use testkit::k8s::{AuthMethod, K8sServer, SAMPLE_NAMESPACE};

fn key() -> SessionKey {
    SessionKey::new("sub", "rg", "aks-east")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "k8s-session-token-file-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The server's kubeconfig with its user's inline token replaced by `token_file` (and `exec`,
/// if given, beside it).
fn with_token_file(server: &K8sServer, token_file: &std::path::Path, exec: bool) -> Kubeconfig {
    let mut kubeconfig = server.kubeconfig_token();
    let user = kubeconfig.auth_infos[0].auth_info.as_mut().expect("user");
    user.token = None;
    user.token_file = Some(token_file.display().to_string());
    if exec {
        user.exec = Some(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "client.authentication.k8s.io/v1beta1",
                "command": "/nonexistent/never-run-me",
            }))
            .unwrap(),
        );
    }
    kubeconfig
}

/// A pool over the server's kubeconfig with its user's token in `token_file`.
fn pool(server: &K8sServer, token_file: &std::path::Path, exec: bool) -> SessionPool {
    SessionPool::builder(KubeconfigSource::from_kubeconfig(with_token_file(
        server, token_file, exec,
    )))
    .build()
}

/// A scratch directory holding `token` in a file named `token`, and the file's path.
fn token_in(name: &str, token: &str) -> (PathBuf, PathBuf) {
    let dir = scratch(name);
    let path = dir.join("token");
    std::fs::write(&path, token).unwrap();
    (dir, path)
}

async fn list(session: &k8s_session::Session) -> Result<usize, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(session.client().clone(), SAMPLE_NAMESPACE);
    Ok(pods.list(&ListParams::default()).await?.items.len())
}

// kube sends a token file's bytes as they are: a trailing newline (how `echo` and most editors
// write a file) made every request fail with an invalid header. Trimmed, as client-go does.
#[tokio::test]
async fn a_token_file_with_a_trailing_newline_authenticates() {
    let server = K8sServer::start().await.expect("server");
    let (dir, path) = token_in("newline", &format!("{}\n", server.token()));
    let session = pool(&server, &path, false)
        .session(&key())
        .await
        .expect("session");
    assert_eq!(session.auth(), AuthKind::StaticToken);
    list(&session).await.expect("a call with the file's token");
    let last = server.requests().pop().expect("a request");
    assert!(
        matches!(last.auth, AuthMethod::Bearer),
        "authenticated by the token: {:?}",
        last.auth
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// The file removed after the build (a deployment that hides its token once read): the session
// keeps sending the token it read.
#[tokio::test]
async fn a_token_file_removed_after_the_build_leaves_the_session_working() {
    let server = K8sServer::start().await.expect("server");
    let (dir, path) = token_in("removed", server.token());
    let session = pool(&server, &path, false)
        .session(&key())
        .await
        .expect("session");
    std::fs::remove_file(&path).unwrap();
    for _ in 0..3 {
        list(&session).await.expect("the token read at the build");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// kube takes a token file over an exec plugin and never runs the plugin; so does the session
// (the plugin here does not exist: running it would fail the build).
#[tokio::test]
async fn an_exec_plugin_beside_a_token_file_is_never_run() {
    let server = K8sServer::start().await.expect("server");
    let (dir, path) = token_in("exec", server.token());
    let session = pool(&server, &path, true)
        .session(&key())
        .await
        .expect("session");
    assert_eq!(session.auth(), AuthKind::StaticToken);
    list(&session).await.expect("a call with the file's token");
    let _ = std::fs::remove_dir_all(&dir);
}

// A token file that holds nothing a header can carry fails the build with a typed error that
// quotes nothing of the file; one that cannot be read names the file.
#[tokio::test]
async fn an_empty_or_unreadable_token_file_fails_the_build_with_a_typed_error() {
    let server = K8sServer::start().await.expect("server");
    let dir = scratch("invalid");
    for (name, bytes) in [
        ("empty", &b""[..]),
        ("blank", b" \n\t\n"),
        ("two-lines", b"s3cr3t-one\ns3cr3t-two\n"),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let error = pool(&server, &path, false)
            .session(&key())
            .await
            .expect_err(name);
        let build = error.build_error().expect("a build error");
        assert!(
            matches!(build, BuildError::InvalidToken { what: "token file" }),
            "{name}: {build:?}"
        );
        assert!(
            !format!("{error:?} {error}").contains("s3cr3t"),
            "{error:?}"
        );
    }
    let missing = dir.join("missing");
    let error = pool(&server, &missing, false)
        .session(&key())
        .await
        .expect_err("missing");
    assert!(
        matches!(error.build_error(), Some(BuildError::ReadFile { path, .. }) if *path == missing),
        "{error:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_default_wait_for_a_due_read_is_one_second() {
    assert_eq!(
        DEFAULT_TOKEN_FILE_TIMEOUT,
        std::time::Duration::from_secs(1)
    );
}
