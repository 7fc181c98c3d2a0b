//! `Session`: the handle callers hold; derefs to `kube::Client`, returns to the pool on drop.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use pool_core::{BoxError, Pooled, Retire};
use tokio::time::Instant;

use super::build::AuthKind;
use crate::telemetry::{ClusterMetrics, InUse};
use crate::{EffectiveTtl, SessionKey};

/// Called with the key of every session the pool retires.
pub(crate) type RetireObserver = Arc<dyn Fn(&SessionKey) + Send + Sync>;

/// One pooled session: the client and what the pool knows about it.
pub(crate) struct Entry {
    pub(crate) client: kube::Client,
    /// Which build made it: a rejection evicts this build only, never a newer one.
    pub(crate) build_id: u64,
    pub(crate) key: SessionKey,
    pub(crate) auth: AuthKind,
    pub(crate) ttl: EffectiveTtl,
    pub(crate) observer: Option<RetireObserver>,
    /// The cluster's metric handles.
    pub(crate) metrics: ClusterMetrics,
}

impl Retire for Entry {
    /// Runs after the pool released every lock (K7). The client's connections close when the
    /// last handle to it is dropped; nothing is on disk to delete.
    async fn retire(&self) -> Result<(), BoxError> {
        tracing::debug!(key = %self.key, auth = ?self.auth, "retiring Kubernetes session");
        if let Some(observer) = &self.observer {
            observer(&self.key);
        }
        Ok(())
    }
}

/// A Kubernetes session from a [`SessionPool`](crate::SessionPool); derefs to
/// [`kube::Client`].
///
/// Dropping it (or calling [`close`](Self::close)) returns it to the pool; only the pool
/// tears pooled sessions down (K6). A one-shot session (its credentials expire too soon to
/// pool it, K4) is torn down when dropped.
pub struct Session {
    pub(crate) inner: Pooled<Entry>,
    /// Counted in `k8s.session.sessions.in_use` while held.
    pub(crate) _in_use: InUse,
}

impl Session {
    /// Whether the session lives in the pool (`false`: a one-shot session).
    pub fn is_pooled(&self) -> bool {
        self.inner.is_pooled()
    }

    /// When the pool stops handing this session out.
    pub fn deadline(&self) -> Option<Instant> {
        self.inner.deadline()
    }

    /// The key the session was built for.
    pub fn key(&self) -> &SessionKey {
        &self.inner.key
    }

    /// How the session authenticates.
    pub fn auth(&self) -> AuthKind {
        self.inner.auth
    }

    /// The effective TTL computed when the session was built, and which limit decided it.
    pub fn effective_ttl(&self) -> EffectiveTtl {
        self.inner.ttl
    }

    /// The client (same as dereferencing).
    pub fn client(&self) -> &kube::Client {
        &self.inner.client
    }

    /// Release the session: a pooled session goes back to the pool, a one-shot session is
    /// torn down. Same as dropping it; here for `try … finally close()` call sites.
    pub fn close(self) {}
}

impl Deref for Session {
    type Target = kube::Client;

    fn deref(&self) -> &kube::Client {
        &self.inner.client
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("key", &self.inner.key)
            .field("auth", &self.inner.auth)
            .field("pooled", &self.is_pooled())
            .field("deadline", &self.deadline())
            .field("ttl", &self.inner.ttl)
            .finish_non_exhaustive()
    }
}
