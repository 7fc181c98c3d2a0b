//! The pooled value (`Entry`) and what callers hold (`PooledBlobClient`).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use azure_core::credentials::TokenCredential;
use azure_storage_blob::BlobServiceClient;
use pool_core::{BoxError, Pooled, Retire};

use crate::endpoint::Endpoint;
use crate::identity::{CredentialId, same_allocation};

/// The pool key: (credential identity, account endpoint) (B1).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Key {
    pub(crate) credential: CredentialId,
    pub(crate) endpoint: Endpoint,
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.credential.hash(state);
        self.endpoint.hash(state);
    }
}

/// One pooled client and what it was built for.
pub(crate) struct Entry {
    pub(crate) client: BlobServiceClient,
    pub(crate) credential: CredentialId,
    /// Pins the credential's allocation while the entry (or a handle to it) exists, without
    /// keeping the credential alive; dead once the user dropped the credential (B4).
    pub(crate) owner: Weak<dyn TokenCredential>,
    pub(crate) endpoint: Endpoint,
    pub(crate) retired: Arc<AtomicU64>,
}

impl Entry {
    pub(crate) fn owner_dropped(&self) -> bool {
        self.owner.strong_count() == 0
    }
}

impl Retire for Entry {
    /// Nothing to close per client: connections belong to the one shared transport, and the
    /// token cache to the credential's registration. Counted, so tests and stats can see it.
    async fn retire(&self) -> Result<(), BoxError> {
        self.retired.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            credential = %self.credential,
            endpoint = %self.endpoint,
            "blob-pool: client retired"
        );
        Ok(())
    }
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("credential", &self.credential)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// A `BlobServiceClient` from a [`BlobPool`](crate::BlobPool); derefs to the client.
///
/// Holding it keeps the client usable even if the pool evicts it meanwhile. Dropping it does
/// nothing: only the pool retires clients. If the credential it was built for is dropped while
/// the handle is still held, requests keep using the credential's cached token until it
/// expires, then fail with a credential error — the client never switches to another credential.
pub struct PooledBlobClient {
    pub(crate) inner: Pooled<Entry>,
}

impl PooledBlobClient {
    /// The pool's identity for the credential this client was built for.
    pub fn credential_id(&self) -> CredentialId {
        self.inner.credential
    }

    /// The endpoint this client talks to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    /// Whether this client was built for `credential` (the same `Arc` allocation). Exact: the
    /// handle pins the allocation it was built for, so no other credential can share its address.
    pub fn is_for(&self, credential: &Arc<dyn TokenCredential>) -> bool {
        same_allocation(&self.inner.owner, credential)
    }

    /// The client (also reachable through `Deref`).
    pub fn client(&self) -> &BlobServiceClient {
        &self.inner.client
    }
}

impl Deref for PooledBlobClient {
    type Target = BlobServiceClient;

    fn deref(&self) -> &BlobServiceClient {
        &self.inner.client
    }
}

impl fmt::Debug for PooledBlobClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledBlobClient")
            .field("credential", &self.inner.credential)
            .field("endpoint", &self.inner.endpoint)
            .field("pooled", &self.inner.is_pooled())
            .finish()
    }
}
