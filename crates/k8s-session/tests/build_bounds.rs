//! A session's build is bounded (X5, "a hung or dead dependency gets a bounded wait"): a source
//! of the application's own that never answers, and a file a kubeconfig names that never
//! finishes reading, fail the build at `build_timeout` instead of holding its callers. The files
//! a kubeconfig names are read asynchronously and handed to kube as data: kube's own reads are
//! blocking calls that no timeout interrupts.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use k8s_session::{
    BuildError, ClusterCredentials, ClusterMaterial, CredentialsError, DEFAULT_BUILD_TIMEOUT,
    KubeconfigSource, SessionError, SessionKey, SessionPool,
};
use kube::config::Kubeconfig;
use testkit::k8s::K8sServer;
use tokio::time::Instant;

fn key() -> SessionKey {
    SessionKey::new("sub", "rg", "aks-east")
}

fn build_error(error: &SessionError) -> &BuildError {
    error.build_error().expect("a build error")
}

/// A source that never answers, counting the calls.
#[derive(Debug, Default)]
struct Silent(AtomicUsize);

#[async_trait::async_trait]
impl ClusterCredentials for Silent {
    async fn credentials(&self, _key: &SessionKey) -> Result<ClusterMaterial, CredentialsError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        std::future::pending().await
    }
}

// The default bound (150 s), a bound of the caller's, and the clamps; the failure is not
// cached: the next call asks the source again.
#[tokio::test(start_paused = true)]
async fn a_source_that_never_answers_fails_the_build_at_the_build_timeout() {
    for (configured, expected) in [
        (None, DEFAULT_BUILD_TIMEOUT),
        (Some(Duration::from_secs(5)), Duration::from_secs(5)),
        (Some(Duration::ZERO), Duration::from_millis(1)),
        (Some(Duration::MAX), Duration::from_secs(2 * 3600)),
    ] {
        let source = Arc::new(Silent::default());
        let mut builder = SessionPool::builder_arc(Arc::clone(&source) as _).knobs_from(|_| None);
        if let Some(bound) = configured {
            builder = builder.build_timeout(bound);
        }
        let pool = builder.build();
        for call in 1..=2 {
            let start = Instant::now();
            let error = tokio::time::timeout(Duration::from_secs(3 * 3600), pool.session(&key()))
                .await
                .expect("bounded")
                .expect_err("never answers");
            assert_eq!(start.elapsed(), expected, "{configured:?}");
            assert!(
                matches!(build_error(&error), BuildError::Timeout { after } if *after == expected),
                "{configured:?}: {error:?}"
            );
            assert_eq!(source.0.load(Ordering::SeqCst), call, "asked again");
        }
    }
}

/// A FIFO nobody writes to: opening it for reading blocks until a writer comes.
struct Fifo(PathBuf);

impl Fifo {
    fn new(dir: &Path, name: &str) -> Self {
        let path = dir.join(name);
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .expect("mkfifo");
        assert!(made.success());
        Self(path)
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "k8s-session-build-bounds-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

// A CA or client key named by path that is a FIFO nobody writes (opening it would block) is
// refused at once as not a regular file, on a current-thread runtime too: kube's own blocking
// read would have blocked the runtime's only thread for good (this test hung), and a read on
// tokio's blocking pool would have left a thread blocked after the build timeout. A CA read from
// a real file works.
#[tokio::test]
async fn a_file_that_is_not_a_regular_file_is_refused_and_a_real_ca_file_works() {
    let server = K8sServer::start().await.expect("test server");
    let dir = scratch("fifo");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, server.ca().cert_pem()).expect("CA file");
    let bound = Duration::from_millis(300);
    let not_regular = |source: &std::io::Error| source.kind() == std::io::ErrorKind::InvalidInput;
    let pool_for = |kubeconfig: Kubeconfig| {
        SessionPool::builder(KubeconfigSource::from_kubeconfig(kubeconfig))
            .knobs_from(|_| None)
            .build_timeout(bound)
            .build()
    };

    // The CA from a file: read here, handed to kube as data, and the session works.
    let mut kubeconfig = server.kubeconfig_token();
    let cluster = kubeconfig.clusters[0].cluster.as_mut().expect("cluster");
    cluster.certificate_authority_data = None;
    cluster.certificate_authority = Some(ca.display().to_string());
    let pool = pool_for(kubeconfig.clone());
    let session = pool.session(&key()).await.expect("a CA file is read");
    let pods = kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(
        session.client().clone(),
        "default",
    );
    pods.list(&Default::default()).await.expect("trusted");

    // The CA as a FIFO.
    let fifo = Fifo::new(&dir, "ca-fifo");
    let cluster = kubeconfig.clusters[0].cluster.as_mut().expect("cluster");
    cluster.certificate_authority = Some(fifo.0.display().to_string());
    let pool = pool_for(kubeconfig);
    let start = std::time::Instant::now();
    let error = pool.session(&key()).await.expect_err("a FIFO is refused");
    assert!(
        matches!(build_error(&error), BuildError::ReadFile { path, source }
            if path == &fifo.0 && not_regular(source)),
        "{error:?}"
    );
    assert!(start.elapsed() < bound, "refused at once");

    // The client key as a FIFO (the certificate is a real file).
    let leaf = server
        .ca()
        .client_leaf("admin", &["system:masters"])
        .expect("leaf");
    let cert = dir.join("client.crt");
    std::fs::write(&cert, leaf.cert_pem()).expect("certificate file");
    let fifo = Fifo::new(&dir, "key-fifo");
    let mut kubeconfig = server.kubeconfig_cert().expect("kubeconfig");
    let user = kubeconfig.auth_infos[0].auth_info.as_mut().expect("user");
    user.client_certificate_data = None;
    user.client_key_data = None;
    user.client_certificate = Some(cert.display().to_string());
    user.client_key = Some(fifo.0.display().to_string());
    let pool = pool_for(kubeconfig);
    let error = pool.session(&key()).await.expect_err("a FIFO is refused");
    assert!(
        matches!(build_error(&error), BuildError::ReadFile { source, .. } if not_regular(source)),
        "{error:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// A device that never ends (`/dev/zero`) named as the CA, the client key or the token file, or
// given as the kubeconfig file itself, is refused as not a regular file; a regular file over the
// limit (4 MiB for the first three, 16 MiB for a kubeconfig; sparse files here) is read up to
// the limit and refused: memory stays bounded and the build ends at once.
#[tokio::test]
async fn files_that_never_end_or_are_too_large_are_refused() {
    let server = K8sServer::start().await.expect("test server");
    let dir = scratch("large");
    let large = dir.join("large.pem");
    std::fs::File::create(&large)
        .and_then(|file| file.set_len((4 << 20) + 1))
        .expect("sparse file");
    let huge = dir.join("huge-kubeconfig");
    std::fs::File::create(&huge)
        .and_then(|file| file.set_len((16 << 20) + 1))
        .expect("sparse file");
    let kind = |error: &SessionError| match build_error(error) {
        BuildError::ReadFile { source, .. }
        | BuildError::Credentials(CredentialsError::ReadFile { source, .. }) => source.kind(),
        other => panic!("expected a read error, got {other:?}"),
    };
    let pool_for = |kubeconfig: Kubeconfig| {
        SessionPool::builder(KubeconfigSource::from_kubeconfig(kubeconfig))
            .knobs_from(|_| None)
            .build()
    };
    let start = std::time::Instant::now();
    for (file, expected) in [
        ("/dev/zero".to_string(), std::io::ErrorKind::InvalidInput),
        (large.display().to_string(), std::io::ErrorKind::InvalidData),
    ] {
        let mut ca = server.kubeconfig_token();
        let cluster = ca.clusters[0].cluster.as_mut().expect("cluster");
        cluster.certificate_authority_data = None;
        cluster.certificate_authority = Some(file.clone());
        let mut key_file = server.kubeconfig_cert().expect("kubeconfig");
        let user = key_file.auth_infos[0].auth_info.as_mut().expect("user");
        user.client_key_data = None;
        user.client_key = Some(file.clone());
        let mut token_file = server.kubeconfig_token();
        let user = token_file.auth_infos[0].auth_info.as_mut().expect("user");
        user.token = None;
        user.token_file = Some(file.clone());
        for (what, kubeconfig) in [("CA", ca), ("key", key_file), ("token file", token_file)] {
            let error = pool_for(kubeconfig).session(&key()).await.expect_err(what);
            assert_eq!(kind(&error), expected, "{what} {file}: {error:?}");
        }
    }
    for (file, expected) in [
        (PathBuf::from("/dev/zero"), std::io::ErrorKind::InvalidInput),
        (huge, std::io::ErrorKind::InvalidData),
    ] {
        let pool = SessionPool::builder(KubeconfigSource::from_file(&file))
            .knobs_from(|_| None)
            .build();
        let error = pool.session(&key()).await.expect_err("kubeconfig");
        assert_eq!(kind(&error), expected, "kubeconfig {file:?}: {error:?}");
    }
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "read to the limit, no further"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// kube's error for a `client-key-data` that is not base64 names the offending byte, a byte of
// the key: it is refused before kube sees it, with an error that quotes nothing of it.
#[tokio::test]
async fn client_key_data_that_is_not_base64_is_refused_without_quoting_it() {
    let server = K8sServer::start().await.expect("test server");
    let mut kubeconfig = server.kubeconfig_cert().expect("kubeconfig");
    let user = kubeconfig.auth_infos[0].auth_info.as_mut().expect("user");
    user.client_key_data = Some("SECRETKEYBYTES$%&".to_string().into());
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(kubeconfig))
        .knobs_from(|_| None)
        .build();
    let error = pool.session(&key()).await.expect_err("not base64");
    assert!(
        matches!(build_error(&error), BuildError::ClientKey),
        "{error:?}"
    );
    let mut chain = format!("{error:?}");
    let mut next: Option<&dyn std::error::Error> = Some(&error);
    while let Some(e) = next {
        chain.push_str(&e.to_string());
        next = e.source();
    }
    for quoted in ["SECRET", "$", "%", "&", "symbol"] {
        assert!(!chain.contains(quoted), "{quoted:?} in {chain}");
    }
}
