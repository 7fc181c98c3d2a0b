//! The seed's naive sessions: a new `kube::Client` (TLS handshake, no reuse) for every call.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use k8s_session::{ClusterCredentials, ClusterMaterial, SessionKey};
use kube::config::KubeConfigOptions;
use tokio::sync::Mutex;

use crate::error::ApiError;

/// Builds a fresh client per call from material fetched once per cluster (the seed cached the
/// credentials but not the session). Comparison only: never use this shape.
pub(super) struct PerCallClients {
    source: Arc<dyn ClusterCredentials>,
    material: Mutex<HashMap<SessionKey, ClusterMaterial>>,
    built: AtomicU64,
}

impl PerCallClients {
    pub(super) fn new(source: Arc<dyn ClusterCredentials>) -> Self {
        Self {
            source,
            material: Mutex::new(HashMap::new()),
            built: AtomicU64::new(0),
        }
    }

    /// Clients built so far.
    pub(super) fn built(&self) -> u64 {
        self.built.load(Ordering::Relaxed)
    }

    /// A brand-new client for `key`.
    pub(super) async fn client(&self, key: &SessionKey) -> Result<kube::Client, ApiError> {
        let material = {
            let mut cache = self.material.lock().await;
            match cache.get(key) {
                Some(material) => material.clone(),
                None => {
                    let material = self
                        .source
                        .credentials(key)
                        .await
                        .map_err(|e| ApiError::backend("AKS credentials", &e))?;
                    cache.insert(key.clone(), material.clone());
                    material
                }
            }
        };
        let options = KubeConfigOptions {
            context: material.context().map(str::to_string),
            ..KubeConfigOptions::default()
        };
        let mut config =
            kube::Config::from_custom_kubeconfig(material.kubeconfig().clone(), &options)
                .await
                .map_err(|e| ApiError::backend("kubeconfig", &e))?;
        config.default_retry = false;
        let client =
            kube::Client::try_from(config).map_err(|e| ApiError::backend("kube client", &e))?;
        self.built.fetch_add(1, Ordering::Relaxed);
        Ok(client)
    }
}
