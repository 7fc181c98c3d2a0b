//! The `KeyStore` trait (conditional loads, optimistic writes) and its implementations.

#[cfg(feature = "azure")]
mod blob;
#[cfg(feature = "azure")]
mod blob_records;
mod file;
mod file_records;
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

/// How a store lays out the key table (A10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Layout {
    /// One JSON [`KeyDocument`] (v1): [`KeyStore::load`] / [`KeyStore::store`]. Every write
    /// rewrites the whole table; fine to ~10k keys.
    Document,
    /// A record per key addressed by its hash, accounts likewise, and a change feed:
    /// [`KeyStore::get_record`], [`KeyStore::put_record`], [`KeyStore::append_feed`],
    /// [`KeyStore::read_feed`]. Unknown keys cost one point read, writes O(1) bytes.
    Keyed,
}

/// One record of a keyed store: its bytes and its version (an ETag for Blob).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The record's bytes (small JSON).
    pub bytes: Vec<u8>,
    /// Its current version, for a later [`Condition::IfMatch`].
    pub version: Version,
}

/// The condition of a [`KeyStore::put_record`]: the only two writes the keyed layout makes.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Condition<'a> {
    /// Create: only if no record of that name exists (`If-None-Match: *`).
    IfNoneMatch,
    /// Replace: only if the record still has this version (`If-Match: <etag>`).
    IfMatch(&'a Version),
}

/// A position in the change feed (A11): a segment number and a byte (or entry) offset inside
/// it. Opaque to the cache; only the store that made it interprets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct FeedCursor {
    /// The segment (log file / append blob) number.
    pub segment: u64,
    /// The offset inside the segment.
    pub offset: u64,
}

/// The answer to [`KeyStore::read_feed`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FeedBatch {
    /// Entries appended since the cursor, oldest first (each one line of JSON, no newline).
    pub entries: Vec<Vec<u8>>,
    /// Where the next read starts.
    pub next: FeedCursor,
    /// `true` when entries between the cursor and `next` may have been lost (the segment the
    /// cursor pointed into was rotated away or truncated): the reader must revalidate
    /// everything it cached from the store.
    pub gap: bool,
}

impl FeedBatch {
    /// A batch of `entries` ending at `next`.
    pub fn new(entries: Vec<Vec<u8>>, next: FeedCursor, gap: bool) -> Self {
        Self { entries, next, gap }
    }
}

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

    /// The layout this store uses. Default: [`Layout::Document`] (then only `load` and
    /// `store` are called). A [`Layout::Keyed`] store implements the four record and feed
    /// methods below instead, and answers `load`/`store` with [`StoreError::Unsupported`].
    fn layout(&self) -> Layout {
        Layout::Document
    }

    /// Keyed layout: the record called `name` (e.g. `keys/<sha256>`, `ids/<key id>`,
    /// `accounts/<id>`), or `None` if there is none (HTTP 404). One point read.
    fn get_record(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<Record>, StoreError>> + Send {
        let _ = name;
        std::future::ready(Err(StoreError::Unsupported {
            operation: "get_record",
        }))
    }

    /// Keyed layout: write the record `name` under `condition`; a failed condition is
    /// [`StoreError::Conflict`] and changes nothing. Returns the new version.
    fn put_record(
        &self,
        name: &str,
        bytes: &[u8],
        condition: Condition<'_>,
    ) -> impl Future<Output = Result<Version, StoreError>> + Send {
        let _ = (name, bytes, condition);
        std::future::ready(Err(StoreError::Unsupported {
            operation: "put_record",
        }))
    }

    /// Keyed layout: append one entry (a line of JSON without its newline) to the change feed
    /// (A11). Appends are atomic per entry; the store rotates segments by size.
    fn append_feed(&self, entry: &[u8]) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = entry;
        std::future::ready(Err(StoreError::Unsupported {
            operation: "append_feed",
        }))
    }

    /// Keyed layout: the feed entries after `from` (a ranged, conditional read: nothing new
    /// costs no transfer). `from: None` answers no entries and the cursor of the feed's end
    /// (where a starting instance begins to tail).
    fn read_feed(
        &self,
        from: Option<&FeedCursor>,
    ) -> impl Future<Output = Result<FeedBatch, StoreError>> + Send {
        let _ = from;
        std::future::ready(Err(StoreError::Unsupported {
            operation: "read_feed",
        }))
    }
}
