//! `SessionKey`: which cluster, and which credential kind (user or admin), a session is for.

use std::fmt;

/// The pool key (K1): one session per (subscription id, resource group, cluster name, admin).
///
/// `admin` selects the cluster-admin credential (`listClusterAdminCredential`) instead of the
/// user credential (`listClusterUserCredential`); an admin session and a user session for the
/// same cluster are never shared.
///
/// ```
/// use k8s_session::SessionKey;
///
/// let user = SessionKey::new("sub-1", "rg-east", "aks-east");
/// let admin = user.clone().admin(true);
/// assert_ne!(user, admin);
/// assert_eq!(
///     admin.to_string(),
///     "subscriptions/sub-1/resourceGroups/rg-east/managedClusters/aks-east (admin)"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey {
    subscription_id: String,
    resource_group: String,
    cluster_name: String,
    admin: bool,
}

impl SessionKey {
    /// A key for the *user* credential of a cluster.
    pub fn new(
        subscription_id: impl Into<String>,
        resource_group: impl Into<String>,
        cluster_name: impl Into<String>,
    ) -> Self {
        Self {
            subscription_id: subscription_id.into(),
            resource_group: resource_group.into(),
            cluster_name: cluster_name.into(),
            admin: false,
        }
    }

    /// The same cluster, with the admin credential when `admin` is true.
    #[must_use]
    pub fn admin(mut self, admin: bool) -> Self {
        self.admin = admin;
        self
    }

    /// The Azure subscription id.
    pub fn subscription_id(&self) -> &str {
        &self.subscription_id
    }

    /// The resource group holding the cluster.
    pub fn resource_group(&self) -> &str {
        &self.resource_group
    }

    /// The cluster's name.
    pub fn cluster_name(&self) -> &str {
        &self.cluster_name
    }

    /// Whether this key asks for the admin credential.
    pub fn is_admin(&self) -> bool {
        self.admin
    }
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "subscriptions/{}/resourceGroups/{}/managedClusters/{}",
            self.subscription_id, self.resource_group, self.cluster_name
        )?;
        if self.admin {
            f.write_str(" (admin)")?;
        }
        Ok(())
    }
}
