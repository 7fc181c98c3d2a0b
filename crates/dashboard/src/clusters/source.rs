//! `RoutedAksSource`: AKS credentials per cluster, each cluster with its own ARM endpoint.

use std::collections::HashMap;
use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use k8s_session::{AksSource, ClusterCredentials, ClusterMaterial, CredentialsError, SessionKey};

use crate::config::ClusterConfig;
use crate::error::StartError;

/// Serves each cluster's kubeconfig from ARM (`listClusterUserCredential`, or the admin one).
///
/// In production every cluster shares `https://management.azure.com`; the demo gives each
/// simulated cluster its own ARM endpoint (testkit's Kubernetes API server answers the AKS
/// credential action for its own cluster), so the source routes by cluster name. k8s-session's
/// `AksSource` takes one base URL, hence this thin router over one `AksSource` per endpoint.
#[derive(Debug)]
pub(crate) struct RoutedAksSource {
    by_cluster: HashMap<String, Arc<AksSource>>,
}

impl RoutedAksSource {
    /// One `AksSource` per distinct (ARM URL, CA) pair, all authenticating with `credential`.
    pub(crate) fn new(
        clusters: &[ClusterConfig],
        credential: &Arc<dyn TokenCredential>,
    ) -> Result<Self, StartError> {
        let mut sources: HashMap<(Option<String>, Option<String>), Arc<AksSource>> = HashMap::new();
        let mut by_cluster = HashMap::new();
        for cluster in clusters {
            let route = (
                cluster.arm_base_url.as_ref().map(ToString::to_string),
                cluster.arm_ca_pem.clone(),
            );
            let source = match sources.get(&route) {
                Some(source) => source.clone(),
                None => {
                    let source = Arc::new(build_source(cluster, credential)?);
                    sources.insert(route, source.clone());
                    source
                }
            };
            by_cluster.insert(cluster.name.clone(), source);
        }
        Ok(Self { by_cluster })
    }
}

fn build_source(
    cluster: &ClusterConfig,
    credential: &Arc<dyn TokenCredential>,
) -> Result<AksSource, StartError> {
    let mut builder = AksSource::builder(credential.clone());
    if let Some(url) = &cluster.arm_base_url {
        builder = builder.base_url(url.clone());
    }
    if let Some(pem) = &cluster.arm_ca_pem {
        let what = format!("ARM of cluster {}", cluster.name);
        builder = builder.http_client(crate::http::client_trusting(pem, &what)?);
    }
    builder.build().map_err(|source| StartError::Clusters {
        cluster: cluster.name.clone(),
        source,
    })
}

#[async_trait::async_trait]
impl ClusterCredentials for RoutedAksSource {
    async fn credentials(&self, key: &SessionKey) -> Result<ClusterMaterial, CredentialsError> {
        match self.by_cluster.get(key.cluster_name()) {
            Some(source) => source.credentials(key).await,
            None => Err(CredentialsError::UnknownCluster { key: key.clone() }),
        }
    }
}
