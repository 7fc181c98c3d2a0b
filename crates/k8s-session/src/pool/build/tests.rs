//! Unit tests of the build step: expiries learned from material, typed errors for bad material.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kube::config::Kubeconfig;

use super::*;
use crate::telemetry::ClusterMetrics;
use crate::testutil::{
    FakeCredential, cert_kubeconfig, cert_until, exec_kubeconfig, jwt, token_kubeconfig, wall_now,
};

/// A rejection hook that does nothing (T11 is tested through the pool).
fn no_hook(_: Option<(String, SecretString)>) -> OnRejected {
    Arc::new(|| Box::pin(async {}))
}

fn options() -> ClientOptions {
    ClientOptions {
        kube_retry: false,
        connect_timeout: None,
        read_timeout: None,
        accept_insecure_skip_tls_verify: false,
        max_in_flight: 4,
        http2: true,
        max_streams: None,
        keep_alive: (Duration::from_secs(20), Duration::from_secs(10)),
        aad_token_timeout: Duration::from_secs(60),
        build_timeout: Duration::from_secs(150),
        token_file_timeout: Duration::from_secs(1),
    }
}

async fn build_from(
    kubeconfig: Kubeconfig,
    aad: Option<&Arc<dyn TokenCredential>>,
) -> Result<Built, BuildError> {
    build(
        ClusterMaterial::new(kubeconfig),
        aad,
        &options(),
        &Default::default(),
        ClusterMetrics::new("test"),
        no_hook,
    )
    .await
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

// covers K3: the client certificate's notAfter is read from the in-memory PEM (to the second).
#[test]
fn parses_the_certificate_not_after() {
    let not_after = wall_now() + secs(90);
    let (cert, _key) = cert_until(not_after);
    assert_eq!(parse_not_after(cert.as_bytes()).unwrap(), Some(not_after));
}

// covers K2: garbage certificates are typed errors, never panics.
#[test]
fn malformed_certificates_are_typed_errors() {
    let (_cert, key) = cert_until(wall_now());
    for garbage in [
        &b""[..],
        b"not pem at all",
        b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        key.as_bytes(),
    ] {
        assert!(
            matches!(
                parse_not_after(garbage),
                Err(BuildError::Certificate { .. })
            ),
            "{:?}",
            String::from_utf8_lossy(garbage)
        );
    }
}

// covers K3: a JWT's exp is the token expiry; opaque tokens have none.
#[test]
fn reads_jwt_expiry_and_ignores_opaque_tokens() {
    let exp = wall_now() + secs(600);
    assert_eq!(jwt_expiry(&jwt(exp)), Some(exp));
    for opaque in ["", "abc", "a.b", "a.b.c.d", "a.!!!.c", "a.e30.c"] {
        assert_eq!(jwt_expiry(opaque), None, "{opaque}");
    }
}

// covers K2: kubelogin is recognised by its command name only.
#[test]
fn recognises_kubelogin_and_its_server_id() {
    let exec = |command: &str, args: &[&str]| ExecConfig {
        command: Some(command.to_string()),
        args: Some(args.iter().map(|a| a.to_string()).collect()),
        ..serde_json::from_str(r#"{"apiVersion":"v1"}"#).unwrap()
    };
    assert!(is_kubelogin(&exec("kubelogin", &[])));
    assert!(is_kubelogin(&exec("/usr/local/bin/kubelogin", &[])));
    assert!(is_kubelogin(&exec(r"C:\bin\kubelogin.exe", &[])));
    assert!(!is_kubelogin(&exec("aws", &["eks", "get-token"])));
    assert!(!is_kubelogin(&exec("not-kubelogin", &[])));

    let ours = exec("kubelogin", &["get-token", "--server-id", "abc"]);
    assert_eq!(server_scope(&ours), "abc/.default");
    let ours = exec("kubelogin", &["get-token", "--server-id=def"]);
    assert_eq!(server_scope(&ours), "def/.default");
    let none = exec("kubelogin", &["get-token", "--server-id"]);
    assert_eq!(server_scope(&none), AKS_SERVER_SCOPE);
}

// covers K2, K3: a certificate user builds in memory and reports its notAfter.
#[tokio::test]
async fn certificate_user_reports_not_after() {
    let not_after = wall_now() + secs(90);
    let built = build_from(cert_kubeconfig(not_after), None).await.unwrap();
    assert_eq!(built.auth, AuthKind::Certificate);
    assert_eq!(built.expiries.cert_not_after, Some(not_after));
    assert_eq!(built.expiries.token_expires_on, None);
}

// covers K3: a static JWT token reports its exp.
#[tokio::test]
async fn static_jwt_user_reports_token_expiry() {
    let exp = wall_now() + secs(200);
    let built = build_from(token_kubeconfig(&jwt(exp)), None).await.unwrap();
    assert_eq!(built.auth, AuthKind::StaticToken);
    assert_eq!(built.expiries.token_expires_on, Some(exp));
}

// covers K2: kubelogin users get a token from the Azure credential for the server-id scope,
// and the binary is never run (it does not exist here).
#[tokio::test]
async fn kubelogin_user_gets_a_token_from_the_azure_credential() {
    let exp = wall_now() + secs(3600);
    let fake = Arc::new(FakeCredential::new("aad-token", exp));
    let credential: Arc<dyn TokenCredential> = fake.clone();
    let config = exec_kubeconfig(
        "kubelogin",
        &[
            "get-token",
            "--login",
            "azurecli",
            "--server-id",
            AKS_SERVER_SCOPE.trim_end_matches("/.default"),
        ],
    );
    let built = build_from(config, Some(&credential)).await.unwrap();
    assert_eq!(built.auth, AuthKind::AadToken);
    assert_eq!(built.expiries.token_expires_on, Some(exp));
    assert_eq!(
        *fake.scopes.lock().unwrap(),
        vec![AKS_SERVER_SCOPE.to_string()]
    );
}

// covers K2: exec users are typed errors when they cannot be served without running a binary.
#[tokio::test]
async fn unservable_exec_users_are_typed_errors() {
    let aws = exec_kubeconfig("aws", &["eks", "get-token"]);
    assert!(matches!(
        build_from(aws, None).await,
        Err(BuildError::UnsupportedExecPlugin { command }) if command == "aws"
    ));
    let kubelogin = exec_kubeconfig("kubelogin", &["get-token"]);
    assert!(matches!(
        build_from(kubelogin, None).await,
        Err(BuildError::NoAadCredential)
    ));
}

// covers K2: kubeconfigs that do not resolve are typed errors.
#[tokio::test]
async fn unresolvable_kubeconfigs_are_typed_errors() {
    let mut no_context = cert_kubeconfig(wall_now() + secs(60));
    no_context.current_context = None;
    assert!(matches!(
        build_from(no_context, None).await,
        Err(BuildError::Kubeconfig(_))
    ));

    let wrong_context = ClusterMaterial::new(cert_kubeconfig(wall_now())).with_context("nope");
    assert!(matches!(
        build(
            wrong_context,
            None,
            &options(),
            &Default::default(),
            ClusterMetrics::new("test"),
            no_hook
        )
        .await,
        Err(BuildError::Kubeconfig(_))
    ));

    let mut bad_cert = cert_kubeconfig(wall_now());
    bad_cert.auth_infos[0]
        .auth_info
        .as_mut()
        .unwrap()
        .client_certificate_data = Some("bm90IGEgY2VydA==".into());
    assert!(matches!(
        build_from(bad_cert, None).await,
        Err(BuildError::Certificate { .. })
    ));

    let mut missing_file = cert_kubeconfig(wall_now());
    let user = missing_file.auth_infos[0].auth_info.as_mut().unwrap();
    user.client_certificate_data = None;
    user.client_certificate = Some("/nonexistent/k8s-session/client.crt".into());
    assert!(matches!(
        build_from(missing_file, None).await,
        Err(BuildError::CertificateFile { .. })
    ));
}

// covers K2: the material's expiry is carried through.
#[tokio::test]
async fn material_expiry_is_carried_through() {
    let at: SystemTime = wall_now() + secs(30);
    let material = ClusterMaterial::new(token_kubeconfig("opaque")).with_expiry(at);
    let built = build(
        material,
        None,
        &options(),
        &Default::default(),
        ClusterMetrics::new("test"),
        no_hook,
    )
    .await
    .unwrap();
    assert_eq!(built.expiries.material_expires_at, Some(at));
    assert_eq!(built.expiries.token_expires_on, None);
}

/// `kubeconfig` with its cluster's `insecure-skip-tls-verify: true` and no CA.
fn insecure(mut kubeconfig: Kubeconfig) -> Kubeconfig {
    for cluster in &mut kubeconfig.clusters {
        let cluster = cluster.cluster.as_mut().unwrap();
        cluster.certificate_authority_data = None;
        cluster.insecure_skip_tls_verify = Some(true);
    }
    kubeconfig
}

// covers K2 (TLS verification cannot be turned off by material): a kubeconfig that sets
// `insecure-skip-tls-verify: true` is refused with a typed error unless the pool opted in, and
// the refusal comes before any token is fetched (the kubelogin user's credential is never called).
#[tokio::test]
async fn insecure_skip_tls_verify_is_refused_unless_opted_in() {
    let fake = Arc::new(FakeCredential::new("aad-token", wall_now() + secs(3600)));
    let credential: Arc<dyn TokenCredential> = fake.clone();
    let kubelogin = insecure(exec_kubeconfig("kubelogin", &["get-token"]));
    let refused = build_from(kubelogin.clone(), Some(&credential)).await;
    match refused {
        Err(BuildError::InsecureSkipTlsVerify { server }) => assert_eq!(server, "127.0.0.1"),
        Err(other) => panic!("wrong error: {other:?}"),
        Ok(_) => panic!("an insecure kubeconfig was accepted by default"),
    }
    assert!(
        fake.scopes.lock().unwrap().is_empty(),
        "no token was fetched"
    );
    for kubeconfig in [
        insecure(token_kubeconfig("opaque")),
        insecure(cert_kubeconfig(wall_now() + secs(60))),
    ] {
        assert!(matches!(
            build_from(kubeconfig, None).await,
            Err(BuildError::InsecureSkipTlsVerify { .. })
        ));
    }

    let opted_in = ClientOptions {
        accept_insecure_skip_tls_verify: true,
        ..options()
    };
    let built = build(
        ClusterMaterial::new(kubelogin),
        Some(&credential),
        &opted_in,
        &Default::default(),
        ClusterMetrics::new("test"),
        no_hook,
    )
    .await
    .expect("the explicit opt-in honours the flag");
    assert_eq!(built.auth, AuthKind::AadToken);
    // `false` in the material is not the flag.
    let mut explicit_false = token_kubeconfig("opaque");
    explicit_false.clusters[0]
        .cluster
        .as_mut()
        .unwrap()
        .insecure_skip_tls_verify = Some(false);
    build_from(explicit_false, None)
        .await
        .expect("verification on");
}
