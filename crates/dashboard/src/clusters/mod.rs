//! The monitored AKS clusters: sessions (pooled or per call) and the reads the cards make.

mod naive;
mod source;
mod views;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::future::join_all;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use k8s_session::{Session, SessionKey, SessionPool};
use kube::Api;
use kube::api::ListParams;
use warmup_fanout::{WarmupOptions, WarmupStatus, warmup_status};

use crate::config::{ClusterConfig, Mode};
use crate::credential::Credentials;
use crate::error::{ApiError, StartError};
use naive::PerCallClients;
use source::RoutedAksSource;
pub use views::{AksCard, AksDetail, ClusterJobs, JobRow, NodeRow, WarningRow};

/// Session counters, pooled or naive, for `/api/stats` and the demo summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ClusterStats {
    /// `kube::Client`s built (pooled: pool creations and one-shots; naive: one per call).
    pub sessions_created: u64,
    /// Session lookups served from the pool (0 in naive mode).
    pub session_hits: u64,
    /// Kubernetes API calls the dashboard made (warmup reads included).
    pub kube_calls: u64,
}

enum Backend {
    Pooled(SessionPool),
    Naive(PerCallClients),
}

/// A client for one call: a pooled session handle (returned to the pool on drop) or a
/// throwaway client.
enum CallClient {
    Pooled(Session),
    Naive(kube::Client),
}

impl CallClient {
    fn kube(&self) -> kube::Client {
        match self {
            Self::Pooled(session) => session.client().clone(),
            Self::Naive(client) => client.clone(),
        }
    }
}

/// The clusters and how the dashboard reaches them.
pub(crate) struct Clusters {
    configs: BTreeMap<String, (ClusterConfig, SessionKey)>,
    order: Vec<String>,
    backend: Backend,
    warmup: WarmupOptions,
    kube_calls: AtomicU64,
}

impl std::fmt::Debug for Clusters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clusters")
            .field("clusters", &self.order)
            .finish_non_exhaustive()
    }
}

impl Clusters {
    /// Sessions from AKS credentials (ARM, authenticated with the cached credential).
    /// Pooled: k8s-session's pool; naive: the material is fetched once per cluster and a new
    /// `kube::Client` is built for every call, as the seed's `_get_k8s_session` did.
    pub(crate) fn new(
        clusters: &[ClusterConfig],
        credentials: &Credentials,
        mode: Mode,
    ) -> Result<Self, StartError> {
        let source = Arc::new(RoutedAksSource::new(clusters, &credentials.cached())?);
        let mut warmup = WarmupOptions::from_env();
        let backend = match mode {
            Mode::Pooled => Backend::Pooled(
                SessionPool::builder_arc(source)
                    .aad_credential(credentials.cached())
                    .build(),
            ),
            Mode::Naive => {
                // The seed's warmup read made its calls one after another.
                warmup = warmup.max_in_flight(1);
                Backend::Naive(PerCallClients::new(source))
            }
        };
        let mut configs = BTreeMap::new();
        let mut order = Vec::new();
        for cluster in clusters {
            let key = SessionKey::new(
                &cluster.subscription_id,
                &cluster.resource_group,
                &cluster.name,
            )
            .admin(cluster.admin);
            order.push(cluster.name.clone());
            configs.insert(cluster.name.clone(), (cluster.clone(), key));
        }
        Ok(Self {
            configs,
            order,
            backend,
            warmup,
            kube_calls: AtomicU64::new(0),
        })
    }

    /// Cluster names, in configuration order.
    pub(crate) fn names(&self) -> &[String] {
        &self.order
    }

    /// Counters for `/api/stats`.
    pub(crate) fn stats(&self) -> ClusterStats {
        let (sessions_created, session_hits) = match &self.backend {
            Backend::Pooled(pool) => {
                let stats = pool.stats();
                (stats.creations + stats.one_shots, stats.hits)
            }
            Backend::Naive(per_call) => (per_call.built(), 0),
        };
        ClusterStats {
            sessions_created,
            session_hits,
            kube_calls: self.kube_calls.load(Ordering::Relaxed),
        }
    }

    fn config(&self, name: &str) -> Result<&(ClusterConfig, SessionKey), ApiError> {
        self.configs
            .get(name)
            .ok_or_else(|| ApiError::UnknownCluster(name.to_string()))
    }

    /// A client for one call to `name`.
    async fn client(&self, name: &str) -> Result<CallClient, ApiError> {
        let (_, key) = self.config(name)?;
        match &self.backend {
            Backend::Pooled(pool) => pool
                .session(key)
                .await
                .map(CallClient::Pooled)
                .map_err(|e| ApiError::backend("kubernetes session", &e)),
            Backend::Naive(per_call) => per_call.client(key).await.map(CallClient::Naive),
        }
    }

    /// One list call against `name`.
    async fn list<K>(
        &self,
        name: &str,
        namespace: Option<&str>,
        params: &ListParams,
    ) -> Result<Vec<K>, ApiError>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
        <K as kube::Resource>::DynamicType: Default,
    {
        let client = self.client(name).await?;
        self.kube_calls.fetch_add(1, Ordering::Relaxed);
        let api: Api<K> = match namespace {
            Some(ns) => Api::namespaced(client.kube(), ns),
            None => Api::all(client.kube()),
        };
        let list = api
            .list(params)
            .await
            .map_err(|e| ApiError::backend("kubernetes", &e))?;
        Ok(list.items)
    }

    async fn nodes(&self, name: &str) -> Result<Vec<Node>, ApiError> {
        let client = self.client(name).await?;
        self.kube_calls.fetch_add(1, Ordering::Relaxed);
        let api: Api<Node> = Api::all(client.kube());
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|e| ApiError::backend("kubernetes", &e))?;
        Ok(list.items)
    }

    /// The AKS card of every cluster (nodes and pods, two calls each, in parallel). A cluster
    /// that fails shows its error on its card; the others still render.
    pub(crate) async fn aks_overview(&self) -> Vec<AksCard> {
        join_all(self.order.iter().map(|name| self.aks_card(name))).await
    }

    async fn aks_card(&self, name: &str) -> AksCard {
        let all = ListParams::default();
        let (nodes, pods) = futures::join!(self.nodes(name), self.list::<Pod>(name, None, &all));
        AksCard::new(name, nodes, pods)
    }

    /// One cluster's nodes and recent warnings in its warmup namespace.
    pub(crate) async fn aks_detail(&self, name: &str) -> Result<AksDetail, ApiError> {
        let (config, _) = self.config(name)?;
        let warnings = ListParams::default().fields("type=Warning");
        let (nodes, events) = futures::join!(
            self.nodes(name),
            self.list::<Event>(name, Some(&config.namespace), &warnings)
        );
        Ok(AksDetail::new(name, nodes?, events?))
    }

    /// Jobs in each cluster's warmup namespace (or in `only`).
    pub(crate) async fn jobs(&self, only: Option<&str>) -> Result<Vec<ClusterJobs>, ApiError> {
        let clusters: Vec<&ClusterConfig> = match only {
            Some(name) => vec![&self.config(name)?.0],
            None => self
                .order
                .iter()
                .filter_map(|name| self.configs.get(name).map(|(config, _)| config))
                .collect(),
        };
        Ok(join_all(clusters.into_iter().map(|cluster| async move {
            let jobs = self
                .list::<Job>(
                    &cluster.name,
                    Some(&cluster.namespace),
                    &ListParams::default(),
                )
                .await;
            ClusterJobs::new(&cluster.name, jobs)
        }))
        .await)
    }

    /// The warmup status of `name`: warmup-fanout's phased fan-out (pooled) or the same reads
    /// one at a time on a fresh client (naive).
    pub(crate) async fn warmup(&self, name: &str) -> Result<WarmupStatus, ApiError> {
        let (config, _) = self.config(name)?;
        let client = self.client(name).await?;
        let status = warmup_status(client.kube(), &config.namespace, &self.warmup).await;
        // One request per read, except the stale-node marking (computed, no request).
        let requests = status
            .reads
            .reads
            .iter()
            .filter(|read| read.name != "stale_nodes")
            .count();
        self.kube_calls
            .fetch_add(requests as u64, Ordering::Relaxed);
        Ok(status)
    }
}
