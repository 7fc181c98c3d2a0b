//! T11 against testkit's Kubernetes API server: a 401 retires the session that got it and
//! invalidates its AAD token, so the caller's retry gets a session with a new token.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::ensure;
use azure_core::credentials::AccessToken;
use azure_core::time::OffsetDateTime;
use k8s_session::SessionPool;
use testkit::k8s::{Fault, K8sServer, SAMPLE_NAMESPACE, unsigned_jwt};
use token_refresh::{CachingCredential, Fetched, RefreshConfig, TokenSource};

use crate::support::{PerKey, key, kubelogin_kubeconfig, list_pods, secrets};

/// An AAD endpoint handing out the next of `tokens` (all accepted by the server) on every
/// fetch; counts fetches.
#[derive(Debug)]
struct Minter {
    tokens: Arc<Vec<String>>,
    fetches: Arc<AtomicUsize>,
}

impl TokenSource for Minter {
    type Token = AccessToken;
    type Error = std::io::Error;

    async fn fetch(&self) -> Result<Fetched<AccessToken>, std::io::Error> {
        let n = self.fetches.fetch_add(1, Ordering::SeqCst);
        let jwt = self.tokens[n.min(self.tokens.len() - 1)].clone();
        let expires_on = OffsetDateTime::now_utc() + azure_core::time::Duration::hours(1);
        Ok(Fetched::from(AccessToken::new(jwt, expires_on)))
    }
}

// covers T11: the API server answers 401 to a session built with an AAD token. Before the
// caller sees the 401, the pool retires that session and the token cache drops that token; the
// next `session()` builds a new session with a newly fetched token, and the call succeeds. A
// second rejection-free call reuses the new session (no refresh per call).
pub(crate) async fn a_401_retires_the_session_and_its_aad_token() -> anyhow::Result<()> {
    let server = K8sServer::start().await?;
    let tokens: Vec<String> = (0..3)
        .map(|n| unsigned_jwt("6dae42f8", 3600, &format!("k8s-session-rejection-{n}")))
        .collect();
    for token in &tokens {
        secrets().lock().unwrap().push(token.clone());
        server.add_token(token);
    }
    let tokens = Arc::new(tokens);
    let fetches = Arc::new(AtomicUsize::new(0));
    let credential = Arc::new(CachingCredential::new(RefreshConfig::default(), {
        let fetches = fetches.clone();
        move |_scopes| Minter {
            tokens: tokens.clone(),
            fetches: fetches.clone(),
        }
    }));
    let source = PerKey::default().with(&key("aad"), kubelogin_kubeconfig(&server));
    let pool = SessionPool::builder(source)
        .aad_caching_credential(credential)
        .knobs_from(|_| None)
        .build();
    let pods = format!("/api/v1/namespaces/{SAMPLE_NAMESPACE}/pods");
    server.inject(pods.as_str(), Fault::status(401).times(1));

    let session = pool.session(&key("aad")).await?;
    let refused = list_pods(&session).await;
    ensure!(refused.is_err(), "the 401 reaches the caller");
    ensure!(pool.rejections() == 1, "rejections: {}", pool.rejections());
    drop(session);

    let session = pool.session(&key("aad")).await?;
    list_pods(&session).await?;
    list_pods(&session).await?;
    let stats = pool.stats();
    ensure!(
        stats.creations == 2,
        "a new session after the 401: {stats:?}"
    );
    ensure!(
        fetches.load(Ordering::SeqCst) == 2,
        "one new token for the rejection (without T11 the cache kept serving the rejected one): {}",
        fetches.load(Ordering::SeqCst)
    );
    Ok(())
}
