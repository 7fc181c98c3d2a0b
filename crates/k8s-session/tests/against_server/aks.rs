//! The AKS source end to end through testkit's ARM endpoint (K2), and its typed errors.

use std::sync::Arc;
use std::time::Duration;

use anyhow::ensure;
use k8s_session::{
    AksSource, AuthKind, BuildError, CredentialsError, SessionError, SessionPool, TtlBound,
};
use testkit::k8s::{AuthMethod, Fault, K8sServer, arm_test_token};

use crate::support::{FakeCredential, key, list_pods, open_temp_files};

fn source_for(server: &K8sServer, credential: Arc<FakeCredential>) -> anyhow::Result<AksSource> {
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(
            server.ca().cert_pem().as_bytes(),
        )?])
        .build()?;
    Ok(AksSource::builder(credential)
        .base_url(server.url().parse()?)
        .http_client(http)
        .build()?)
}

fn credentials_error(error: &SessionError) -> Option<&CredentialsError> {
    match error.build_error() {
        Some(BuildError::Credentials(error)) => Some(error),
        _ => None,
    }
}

// covers K2: user and admin credentials fetched from ARM with an Azure token, decoded in memory,
// and used: the user session is a bearer session, the admin one mTLS. ARM is called once per key.
pub(crate) async fn aks_source_end_to_end() -> anyhow::Result<()> {
    let server = K8sServer::start().await?;
    let credential = FakeCredential::new(&arm_test_token(3600), Duration::from_secs(3600));
    let pool = SessionPool::builder(source_for(&server, credential.clone())?)
        .knobs_from(|_| None)
        .build();
    let (user, admin) = (key("aks-east"), key("aks-east").admin(true));
    for _ in 0..3 {
        list_pods(&*pool.session(&user).await?).await?;
        list_pods(&*pool.session(&admin).await?).await?;
    }
    let user_session = pool.session(&user).await?;
    open_temp_files().map_err(anyhow::Error::msg)?; // while sessions are alive
    let admin_session = pool.session(&admin).await?;
    ensure!(
        user_session.auth() == AuthKind::StaticToken,
        "{user_session:?}"
    );
    ensure!(
        admin_session.auth() == AuthKind::Certificate,
        "{admin_session:?}"
    );
    ensure!(admin_session.effective_ttl().bound == TtlBound::PoolTtl);

    let posts: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.path.rsplit('/').next().unwrap_or_default().to_string())
        .collect();
    ensure!(
        posts == ["listClusterUserCredential", "listClusterAdminCredential"],
        "ARM called once per key: {posts:?}"
    );
    let scopes = credential.scopes.lock().unwrap().clone();
    ensure!(
        scopes == ["https://management.azure.com/.default"; 2],
        "{scopes:?}"
    );
    let auths: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET")
        .map(|r| r.auth)
        .collect();
    ensure!(auths.len() == 6);
    ensure!(
        auths
            .iter()
            .filter(|a| **a == AuthMethod::ClientCert)
            .count()
            == 3
    );
    ensure!(auths.iter().filter(|a| **a == AuthMethod::Bearer).count() == 3);
    Ok(())
}

// covers K2: ARM refusals and garbage are typed errors, shared by waiters, and nothing pooled.
pub(crate) async fn aks_errors_are_typed() -> anyhow::Result<()> {
    let server = K8sServer::start().await?;
    let path = |cluster: &str| {
        format!(
            "/subscriptions/{}/resourceGroups/rg-test/providers/Microsoft.ContainerService/managedClusters/{cluster}/listClusterUserCredential",
            key(cluster).subscription_id()
        )
    };
    server.inject(path("forbidden").as_str(), Fault::status(403));
    server.inject(path("missing").as_str(), Fault::status(404));
    server.inject(path("garbage").as_str(), Fault::garbage_body());
    server.inject(path("busy").as_str(), Fault::status(503));
    let good = FakeCredential::new(&arm_test_token(3600), Duration::from_secs(3600));
    let pool = SessionPool::builder(source_for(&server, good)?)
        .knobs_from(|_| None)
        .build();

    let error = pool.session(&key("forbidden")).await.unwrap_err();
    ensure!(
        matches!(
            credentials_error(&error),
            Some(CredentialsError::Forbidden { .. })
        ),
        "{error:?}"
    );
    let error = pool.session(&key("missing")).await.unwrap_err();
    ensure!(
        matches!(
            credentials_error(&error),
            Some(CredentialsError::ClusterNotFound { .. })
        ),
        "{error:?}"
    );
    let error = pool.session(&key("garbage")).await.unwrap_err();
    ensure!(
        matches!(
            credentials_error(&error),
            Some(CredentialsError::MalformedResponse { .. })
        ),
        "{error:?}"
    );
    let error = pool.session(&key("busy")).await.unwrap_err();
    ensure!(
        matches!(
            credentials_error(&error),
            Some(CredentialsError::Status { status: 503, .. })
        ),
        "{error:?}"
    );

    let expired = FakeCredential::new(&arm_test_token(-60), Duration::from_secs(3600));
    let pool_expired = SessionPool::builder(source_for(&server, expired)?)
        .knobs_from(|_| None)
        .build();
    let error = pool_expired.session(&key("east")).await.unwrap_err();
    ensure!(
        matches!(
            credentials_error(&error),
            Some(CredentialsError::Unauthorized)
        ),
        "{error:?}"
    );
    ensure!(pool.is_empty() && pool_expired.is_empty());
    ensure!(pool.stats().creation_failures == 4);

    // Bearer tokens are never sent in clear to a non-loopback host.
    let plain = AksSource::builder(FakeCredential::new(
        &arm_test_token(60),
        Duration::from_secs(60),
    ))
    .base_url("http://management.example.invalid".parse()?)
    .build();
    ensure!(matches!(plain, Err(CredentialsError::Config { .. })));
    Ok(())
}
