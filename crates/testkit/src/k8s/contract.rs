//! The cluster a contract suite runs against: the in-process server, or a kind cluster under
//! `cargo xtask it --k8s kind`.

use std::path::PathBuf;

use kube::config::Kubeconfig;

use super::error::K8sError;
use super::fixtures::SAMPLE_NAMESPACE;
use super::handle::K8sServer;
use super::kubeconfig::kube_client;

/// Selects the target: `local` (default) or `kind`.
pub const TARGET_ENV: &str = "TESTKIT_K8S";
/// With `TESTKIT_K8S=kind`: the kind cluster's kubeconfig (written by `cargo xtask kind up`).
pub const KUBECONFIG_ENV: &str = "TESTKIT_KUBECONFIG";

/// A cluster holding the sample fixtures ([`SAMPLE_NAMESPACE`], jobs and pods labelled
/// [`WARMUP_SELECTOR`](super::WARMUP_SELECTOR) whose logs mention their job).
///
/// Write cluster suites against [`ContractCluster::client`] and plain `kube::Api` calls, and
/// they run unchanged on the in-process server and on kind.
#[derive(Debug)]
pub struct ContractCluster {
    server: Option<K8sServer>,
    kubeconfig: Kubeconfig,
}

impl ContractCluster {
    /// The target named by `TESTKIT_K8S` / `TESTKIT_KUBECONFIG` in the environment.
    pub async fn from_env() -> Result<Self, K8sError> {
        Self::from_lookup(|key| std::env::var(key).ok()).await
    }

    /// The target named by `lookup` (for tests of the selection itself).
    pub async fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, K8sError> {
        match lookup(TARGET_ENV).as_deref() {
            None | Some("") | Some("local") => {
                let server = K8sServer::start().await?;
                let kubeconfig = server.kubeconfig_token();
                Ok(Self {
                    server: Some(server),
                    kubeconfig,
                })
            }
            Some("kind") => {
                let path =
                    PathBuf::from(lookup(KUBECONFIG_ENV).ok_or(K8sError::KindNotConfigured)?);
                let kubeconfig = Kubeconfig::read_from(&path)
                    .map_err(|source| K8sError::ReadKubeconfig { path, source })?;
                Ok(Self {
                    server: None,
                    kubeconfig,
                })
            }
            Some(other) => Err(K8sError::UnknownTarget(other.to_owned())),
        }
    }

    /// A new client for the cluster (default retries off).
    pub async fn client(&self) -> Result<kube::Client, K8sError> {
        kube_client(self.kubeconfig.clone()).await
    }

    /// The namespace holding the fixtures.
    pub fn namespace(&self) -> &'static str {
        SAMPLE_NAMESPACE
    }

    /// The in-process server, when that is the target (for request-log assertions, which a
    /// contract suite must only make when this is `Some`).
    pub fn local(&self) -> Option<&K8sServer> {
        self.server.as_ref()
    }
}
