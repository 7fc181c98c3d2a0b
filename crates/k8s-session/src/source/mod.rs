//! Credential sources (K2): where a cluster's kubeconfig material comes from.

mod aks;
mod kubeconfig;

use std::fmt;
use std::time::SystemTime;

use kube::config::Kubeconfig;

use crate::{CredentialsError, SessionKey};

pub(crate) use aks::MAX_ARM_TIMEOUT;
pub use aks::{AKS_SERVER_SCOPE, ARM_SCOPE, AksSource, AksSourceBuilder, DEFAULT_ARM_TIMEOUT};
pub use kubeconfig::KubeconfigSource;

/// A source of cluster material for a [`SessionKey`] (K2).
///
/// The pool calls it once per session build (never on a hit). Material stays in memory: a
/// source must not write certificates, keys or tokens to files, and the pool never does.
///
/// Implement it for your own store (a secret manager, a database) the same way:
///
/// ```
/// use k8s_session::{ClusterCredentials, ClusterMaterial, CredentialsError, SessionKey};
///
/// #[derive(Debug)]
/// struct FromVault;
///
/// #[async_trait::async_trait]
/// impl ClusterCredentials for FromVault {
///     async fn credentials(&self, key: &SessionKey) -> Result<ClusterMaterial, CredentialsError> {
///         Err(CredentialsError::UnknownCluster { key: key.clone() })
///     }
/// }
/// ```
#[async_trait::async_trait]
pub trait ClusterCredentials: Send + Sync + fmt::Debug + 'static {
    /// The material for `key`: a kubeconfig (server, CA, client certificate and key, or a
    /// token, or a kubelogin exec user), the context to use, and any expiry the source knows.
    async fn credentials(&self, key: &SessionKey) -> Result<ClusterMaterial, CredentialsError>;
}

/// What a [`ClusterCredentials`] source returns: an in-memory kubeconfig, optionally the
/// context to use (default: its current context), and optionally the material's own expiry.
#[derive(Clone)]
pub struct ClusterMaterial {
    kubeconfig: Kubeconfig,
    context: Option<String>,
    expires_at: Option<SystemTime>,
}

impl ClusterMaterial {
    /// Material from an in-memory kubeconfig, using its current context.
    pub fn new(kubeconfig: Kubeconfig) -> Self {
        Self {
            kubeconfig,
            context: None,
            expires_at: None,
        }
    }

    /// Use the context named `context` instead of the current one.
    #[must_use]
    pub fn with_context(mut self, context: impl Into<String>) -> Self {
        self.context = Some(context.into());
        self
    }

    /// The material stops being valid at `at` (clamps the session TTL, K3).
    #[must_use]
    pub fn with_expiry(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// The kubeconfig.
    pub fn kubeconfig(&self) -> &Kubeconfig {
        &self.kubeconfig
    }

    /// The context to use, if not the current one.
    pub fn context(&self) -> Option<&str> {
        self.context.as_deref()
    }

    /// The material's own expiry, if the source knows one.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    pub(crate) fn into_parts(self) -> (Kubeconfig, Option<String>, Option<SystemTime>) {
        (self.kubeconfig, self.context, self.expires_at)
    }
}

impl fmt::Debug for ClusterMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only names: the kubeconfig holds keys and tokens.
        let clusters: Vec<_> = self.kubeconfig.clusters.iter().map(|c| &c.name).collect();
        f.debug_struct("ClusterMaterial")
            .field("clusters", &clusters)
            .field("current_context", &self.kubeconfig.current_context)
            .field("context", &self.context)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}
