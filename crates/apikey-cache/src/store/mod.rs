//! The `KeyStore` trait (conditional loads, optimistic writes) and its implementations.

#[cfg(feature = "azure")]
mod blob;
mod file;
mod memory;

use std::fmt;
use std::future::Future;
use std::sync::Arc;

#[cfg(feature = "azure")]
pub use blob::BlobStore;
pub use file::FileStore;
pub use memory::{MemoryStore, MemoryStoreCounts};

use crate::document::KeyDocument;
use crate::error::StoreError;

/// An opaque version of the stored document: an HTTP ETag for Azure Blob, a content hash for
/// the file store, a counter for the in-memory store. Only compared for equality.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Version(Arc<str>);

impl Version {
    /// Wrap a backend's version string.
    pub fn new(version: impl Into<Arc<str>>) -> Self {
        Self(version.into())
    }

    /// The version string (e.g. the ETag to send as `If-None-Match` / `If-Match`).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Version({})", &*self.0)
    }
}

/// The answer to [`KeyStore::load`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Loaded {
    /// The document still has the version passed as `if_none_match` (HTTP 304): keep yours.
    NotModified,
    /// The current document. `version` is `None` when nothing has been stored yet (the
    /// document is then empty, and the first write must expect `None`).
    Document {
        /// The document.
        document: KeyDocument,
        /// Its version, or `None` if the store holds nothing yet.
        version: Option<Version>,
    },
}

/// Where the key document lives. Several cache instances (processes, hosts) share one store.
///
/// Implementations must be linearizable per document: a load returns the latest successful
/// write, and [`KeyStore::store`] is a compare-and-swap on the version. That is what an Azure
/// Blob gives with ETags (`If-None-Match` → 304 on load, `If-Match` → 412 on write) and what
/// [`FileStore`] gives with an exclusive lock around read-compare-rename.
pub trait KeyStore: Send + Sync + 'static {
    /// Load the document. If `if_none_match` is the current version, answer
    /// [`Loaded::NotModified`] without transferring the document.
    fn load(
        &self,
        if_none_match: Option<&Version>,
    ) -> impl Future<Output = Result<Loaded, StoreError>> + Send;

    /// Replace the document if its current version is `if_match` (`None`: only if nothing is
    /// stored yet). On any other version answer [`StoreError::Conflict`] and change nothing.
    /// Returns the new version.
    fn store(
        &self,
        document: &KeyDocument,
        if_match: Option<&Version>,
    ) -> impl Future<Output = Result<Version, StoreError>> + Send;

    /// A short description for logs (a path or a container/blob name; never a credential).
    fn describe(&self) -> String;
}
