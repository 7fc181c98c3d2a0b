//! Test helpers: certificates with chosen expiries, kubeconfigs, counting sources, fake credentials.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::time::OffsetDateTime;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use kube::config::Kubeconfig;

use crate::{ClusterCredentials, ClusterMaterial, CredentialsError, SessionKey};

/// A fixed "now" for the wall clock in tests.
pub(crate) fn wall_now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000)
}

/// A self-signed certificate (PEM) valid until `not_after`, and its key (PEM).
pub(crate) fn cert_until(not_after: SystemTime) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    let since_epoch = not_after
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after epoch");
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
    let cert = params.self_signed(&key).expect("cert");
    (cert.pem(), key.serialize_pem())
}

fn kubeconfig(user: &str) -> Kubeconfig {
    let (ca, _) = cert_until(wall_now() + Duration::from_secs(86_400 * 365));
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:1\n    certificate-authority-data: {ca}\nusers:\n- name: u\n  user:\n{user}contexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n",
        ca = STANDARD.encode(ca),
    );
    Kubeconfig::from_yaml(&yaml).expect("test kubeconfig")
}

/// A kubeconfig whose user has a client certificate valid until `not_after`.
pub(crate) fn cert_kubeconfig(not_after: SystemTime) -> Kubeconfig {
    let (cert, key) = cert_until(not_after);
    kubeconfig(&format!(
        "    client-certificate-data: {}\n    client-key-data: {}\n",
        STANDARD.encode(cert),
        STANDARD.encode(key)
    ))
}

/// A kubeconfig whose user has a static bearer token.
pub(crate) fn token_kubeconfig(token: &str) -> Kubeconfig {
    kubeconfig(&format!("    token: {token}\n"))
}

/// A kubeconfig whose user runs an exec plugin `command` with `args`.
pub(crate) fn exec_kubeconfig(command: &str, args: &[&str]) -> Kubeconfig {
    let args: String = args.iter().map(|a| format!("      - {a}\n")).collect();
    kubeconfig(&format!(
        "    exec:\n      apiVersion: client.authentication.k8s.io/v1beta1\n      command: {command}\n      interactiveMode: Never\n      args:\n{args}"
    ))
}

/// An unsigned JWT with `exp`.
pub(crate) fn jwt(exp: SystemTime) -> String {
    let exp = exp
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("epoch")
        .as_secs();
    format!(
        "{}.{}.sig",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(format!(r#"{{"exp":{exp}}}"#))
    )
}

/// A source serving one kubeconfig per key, counting calls.
#[derive(Debug, Default)]
pub(crate) struct MapSource {
    pub(crate) configs: Mutex<HashMap<SessionKey, Kubeconfig>>,
    pub(crate) calls: AtomicUsize,
}

impl MapSource {
    pub(crate) fn with(self, key: &SessionKey, kubeconfig: Kubeconfig) -> Self {
        self.configs.lock().unwrap().insert(key.clone(), kubeconfig);
        self
    }
}

#[async_trait::async_trait]
impl ClusterCredentials for MapSource {
    async fn credentials(&self, key: &SessionKey) -> Result<ClusterMaterial, CredentialsError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        // A real source does I/O here; yield so concurrent callers overlap.
        tokio::task::yield_now().await;
        let config = self.configs.lock().unwrap().get(key).cloned();
        config
            .map(ClusterMaterial::new)
            .ok_or_else(|| CredentialsError::UnknownCluster { key: key.clone() })
    }
}

/// A credential returning a fixed token, recording the scopes asked for.
#[derive(Debug)]
pub(crate) struct FakeCredential {
    pub(crate) token: String,
    pub(crate) expires_on: SystemTime,
    pub(crate) scopes: Mutex<Vec<String>>,
}

impl FakeCredential {
    pub(crate) fn new(token: &str, expires_on: SystemTime) -> Self {
        Self {
            token: token.to_string(),
            expires_on,
            scopes: Mutex::default(),
        }
    }
}

#[async_trait::async_trait]
impl TokenCredential for FakeCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        self.scopes
            .lock()
            .unwrap()
            .extend(scopes.iter().map(|s| s.to_string()));
        Ok(AccessToken::new(
            self.token.clone(),
            OffsetDateTime::from(self.expires_on),
        ))
    }
}
