//! The kubeconfig source: an in-memory `Kubeconfig` or a file, read on every session build.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::SystemTime;

use kube::config::Kubeconfig;

use super::{ClusterCredentials, ClusterMaterial};
use crate::{CredentialsError, SessionKey};

/// Cluster material from a kubeconfig (K2), held in memory or read from a file.
///
/// Every key uses the kubeconfig's current context unless routed to another context with
/// [`with_context`](Self::with_context); with [`strict`](Self::strict), unrouted keys are an
/// error instead. A file is re-read on every session build (never on a hit), so a rotated
/// kubeconfig is picked up by the next session; it is only ever read, never written.
///
/// ```
/// use k8s_session::{KubeconfigSource, SessionKey};
///
/// let yaml = r#"
/// apiVersion: v1
/// kind: Config
/// clusters:
/// - name: east
///   cluster: { server: "https://127.0.0.1:6443" }
/// users:
/// - name: reader
///   user: { token: "not-a-real-token" }
/// contexts:
/// - name: east-reader
///   context: { cluster: east, user: reader }
/// current-context: east-reader
/// "#;
/// let key = SessionKey::new("sub", "rg", "east");
/// let source = KubeconfigSource::from_yaml(yaml)?.with_context(key, "east-reader");
/// # Ok::<(), k8s_session::CredentialsError>(())
/// ```
pub struct KubeconfigSource {
    origin: Origin,
    contexts: HashMap<SessionKey, String>,
    strict: bool,
    expires_at: Option<SystemTime>,
}

enum Origin {
    Memory(Box<Kubeconfig>),
    File(PathBuf),
}

impl KubeconfigSource {
    /// A source serving an in-memory kubeconfig.
    pub fn from_kubeconfig(kubeconfig: Kubeconfig) -> Self {
        Self::with_origin(Origin::Memory(Box::new(kubeconfig)))
    }

    /// A source serving a kubeconfig parsed from YAML text.
    pub fn from_yaml(yaml: &str) -> Result<Self, CredentialsError> {
        let kubeconfig = Kubeconfig::from_yaml(yaml).map_err(CredentialsError::ParseKubeconfig)?;
        Ok(Self::from_kubeconfig(kubeconfig))
    }

    /// A source reading the kubeconfig file at `path` on every session build.
    pub fn from_file(path: impl Into<PathBuf>) -> Self {
        Self::with_origin(Origin::File(path.into()))
    }

    fn with_origin(origin: Origin) -> Self {
        Self {
            origin,
            contexts: HashMap::new(),
            strict: false,
            expires_at: None,
        }
    }

    /// Serve `key` from the context named `context`.
    #[must_use]
    pub fn with_context(mut self, key: SessionKey, context: impl Into<String>) -> Self {
        self.contexts.insert(key, context.into());
        self
    }

    /// Refuse keys not routed with [`with_context`](Self::with_context)
    /// ([`CredentialsError::UnknownCluster`]) instead of serving the current context.
    #[must_use]
    pub fn strict(mut self) -> Self {
        self.strict = true;
        self
    }

    /// The material expires at `at` (clamps every session's TTL, K3).
    #[must_use]
    pub fn with_expiry(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }

    async fn load(&self) -> Result<Kubeconfig, CredentialsError> {
        match &self.origin {
            Origin::Memory(kubeconfig) => Ok((**kubeconfig).clone()),
            Origin::File(path) => {
                let text = tokio::fs::read_to_string(path).await.map_err(|source| {
                    CredentialsError::ReadFile {
                        path: path.clone(),
                        source,
                    }
                })?;
                Kubeconfig::from_yaml(&text).map_err(CredentialsError::ParseKubeconfig)
            }
        }
    }
}

#[async_trait::async_trait]
impl ClusterCredentials for KubeconfigSource {
    async fn credentials(&self, key: &SessionKey) -> Result<ClusterMaterial, CredentialsError> {
        let context = self.contexts.get(key).cloned();
        if context.is_none() && self.strict {
            return Err(CredentialsError::UnknownCluster { key: key.clone() });
        }
        let mut material = ClusterMaterial::new(self.load().await?);
        if let Some(context) = context {
            material = material.with_context(context);
        }
        if let Some(at) = self.expires_at {
            material = material.with_expiry(at);
        }
        Ok(material)
    }
}

impl fmt::Debug for KubeconfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("KubeconfigSource");
        match &self.origin {
            Origin::Memory(_) => debug.field("origin", &"in-memory"),
            Origin::File(path) => debug.field("origin", path),
        };
        debug
            .field("routed_keys", &self.contexts.len())
            .field("strict", &self.strict)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}
