//! Helpers: a per-key test source, fake Azure credentials, secrets to look for in the temp dir.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::time::OffsetDateTime;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::core::v1::Pod;
use k8s_session::{ClusterCredentials, ClusterMaterial, CredentialsError, SessionKey};
use kube::Api;
use kube::config::Kubeconfig;
use testkit::k8s::{K8sServer, SAMPLE_NAMESPACE};

/// Every secret the suite handed to the pool: the temp-dir check looks for them.
pub(crate) fn secrets() -> &'static Mutex<Vec<String>> {
    static SECRETS: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    SECRETS.get_or_init(Mutex::default)
}

/// Remember the secret parts of a kubeconfig (a line of each PEM body, tokens).
pub(crate) fn remember(kubeconfig: &Kubeconfig) {
    let mut found = Vec::new();
    let pem_line = |b64: &str| {
        let pem = String::from_utf8(STANDARD.decode(b64).unwrap_or_default()).unwrap_or_default();
        pem.lines().nth(2).map(str::to_string)
    };
    for user in kubeconfig
        .auth_infos
        .iter()
        .filter_map(|u| u.auth_info.as_ref())
    {
        found.extend(user.client_certificate_data.as_deref().and_then(pem_line));
        if let Some(key) = &user.client_key_data {
            found.extend(pem_line(secrecy::ExposeSecret::expose_secret(key)));
        }
        if let Some(token) = &user.token {
            found.push(secrecy::ExposeSecret::expose_secret(token).to_string());
        }
    }
    for cluster in kubeconfig
        .clusters
        .iter()
        .filter_map(|c| c.cluster.as_ref())
    {
        found.extend(
            cluster
                .certificate_authority_data
                .as_deref()
                .and_then(pem_line),
        );
    }
    secrets()
        .lock()
        .unwrap()
        .extend(found.into_iter().filter(|s| s.len() >= 16));
}

pub(crate) fn key(cluster: &str) -> SessionKey {
    SessionKey::new("00000000-0000-0000-0000-000000000001", "rg-test", cluster)
}

/// List the sample namespace's pods through `client`; returns how many.
pub(crate) async fn list_pods(client: &kube::Client) -> anyhow::Result<usize> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), SAMPLE_NAMESPACE);
    Ok(pods.list(&Default::default()).await?.items.len())
}

/// A source serving a kubeconfig (and optionally an expiry) per key, counting calls.
#[derive(Debug, Default)]
pub(crate) struct PerKey {
    entries: Mutex<HashMap<SessionKey, (Kubeconfig, Option<SystemTime>)>>,
    pub(crate) calls: Mutex<Vec<SessionKey>>,
}

impl PerKey {
    pub(crate) fn with(self, key: &SessionKey, kubeconfig: Kubeconfig) -> Self {
        remember(&kubeconfig);
        self.entries
            .lock()
            .unwrap()
            .insert(key.clone(), (kubeconfig, None));
        self
    }

    pub(crate) fn expiring(self, key: &SessionKey, kubeconfig: Kubeconfig, at: SystemTime) -> Self {
        remember(&kubeconfig);
        self.entries
            .lock()
            .unwrap()
            .insert(key.clone(), (kubeconfig, Some(at)));
        self
    }

    pub(crate) fn calls(&self) -> usize {
        self.calls.lock().unwrap().len()
    }
}

#[async_trait::async_trait]
impl ClusterCredentials for PerKey {
    async fn credentials(&self, key: &SessionKey) -> Result<ClusterMaterial, CredentialsError> {
        self.calls.lock().unwrap().push(key.clone());
        let entry = self.entries.lock().unwrap().get(key).cloned();
        let (kubeconfig, expiry) =
            entry.ok_or_else(|| CredentialsError::UnknownCluster { key: key.clone() })?;
        let material = ClusterMaterial::new(kubeconfig);
        Ok(match expiry {
            Some(at) => material.with_expiry(at),
            None => material,
        })
    }
}

/// An Azure credential returning a fixed token, recording the scopes asked for.
#[derive(Debug)]
pub(crate) struct FakeCredential {
    token: String,
    expires_on: SystemTime,
    pub(crate) scopes: Mutex<Vec<String>>,
}

impl FakeCredential {
    pub(crate) fn new(token: &str, expires_in: Duration) -> Arc<Self> {
        secrets().lock().unwrap().push(token.to_string());
        Arc::new(Self {
            token: token.to_string(),
            expires_on: SystemTime::now() + expires_in,
            scopes: Mutex::default(),
        })
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

/// The server's token kubeconfig with its user switched to a kubelogin exec plugin (whose
/// binary does not exist here: the pool must never run it).
pub(crate) fn kubelogin_kubeconfig(server: &K8sServer) -> Kubeconfig {
    let mut kubeconfig = server.kubeconfig_token();
    let user = kubeconfig.auth_infos[0].auth_info.as_mut().expect("user");
    user.token = None;
    user.exec = Some(
        serde_json::from_value(serde_json::json!({
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": "kubelogin",
            "args": ["get-token", "--login", "azurecli", "--server-id",
                     "6dae42f8-4368-4678-94ff-3960e28e3630"],
            "interactiveMode": "Never",
        }))
        .expect("exec config"),
    );
    kubeconfig
}

/// The notAfter of a kubeconfig's client certificate.
pub(crate) fn cert_not_after(kubeconfig: &Kubeconfig) -> SystemTime {
    let user = kubeconfig.auth_infos[0].auth_info.as_ref().expect("user");
    let pem = STANDARD
        .decode(user.client_certificate_data.as_deref().expect("cert"))
        .expect("base64");
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).expect("pem");
    let cert = pem.parse_x509().expect("x509");
    let secs = cert.validity().not_after.timestamp();
    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).expect("after 1970"))
}

/// Files under the temp dir this process already had open when the suite started (for
/// instance stdout redirected to a log under /tmp by CI): not ours, so never reported.
static BASELINE_FDS: std::sync::OnceLock<Vec<std::path::PathBuf>> = std::sync::OnceLock::new();

/// Record what is open under the temp dir before any scenario runs. Call once, first thing.
pub(crate) fn record_open_temp_baseline() {
    let _ = BASELINE_FDS.set(temp_targets_open());
}

fn temp_targets_open() -> Vec<std::path::PathBuf> {
    let temp = std::env::temp_dir();
    let temp = temp.canonicalize().unwrap_or(temp);
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new(); // not Linux: the listing check still runs
    };
    fds.flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter(|target| target.starts_with(&temp))
        .collect()
}

/// Fail if this process holds a file open under the temp dir that it did not hold when the
/// suite started (the seed kept its temp cert and key files open for a session's lifetime; our
/// pooled sessions are alive at this point).
pub(crate) fn open_temp_files() -> Result<(), String> {
    let baseline = BASELINE_FDS.get().map(Vec::as_slice).unwrap_or_default();
    let open: Vec<_> = temp_targets_open()
        .into_iter()
        .filter(|target| !baseline.contains(target))
        .collect();
    if open.is_empty() {
        Ok(())
    } else {
        Err(format!("files open under the temp dir: {open:?}"))
    }
}
