//! The key store the dashboard was configured with: apikey-cache's Blob store (over the
//! dashboard's blob pool) or its file store, in the keyed layout (A10, the default: a record
//! per key and a change feed) or the single-document layout.

use apikey_cache::{
    ApiKeyCache, BlobStore, Condition, FeedBatch, FeedCursor, FileStore, KeyDocument, KeyStore,
    Layout, Loaded, Record, StoreError, Version,
};

use crate::config::KeyStoreConfig;
use crate::storage::Storage;

/// apikey-cache's stores behind one type, chosen by [`KeyStoreConfig`](crate::KeyStoreConfig).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum AnyKeyStore {
    /// Azure Blob through the dashboard's blob pool: one blob (ETag-conditional reads and
    /// writes) or, keyed, a blob per record and an append-blob change feed.
    Blob(BlobStore),
    /// A local file, or, keyed, a directory of record files and a change feed.
    File(FileStore),
}

impl AnyKeyStore {
    /// The store `config` names; Blob stores go through `storage`'s infrastructure pool.
    pub(crate) fn from_config(config: &KeyStoreConfig, storage: &Storage) -> Self {
        match config {
            KeyStoreConfig::KeyedBlob { container, prefix } => Self::Blob(
                storage
                    .key_store(container, prefix)
                    .with_layout(Layout::Keyed),
            ),
            KeyStoreConfig::KeyedFile { dir } => Self::File(FileStore::keyed(dir.clone())),
            KeyStoreConfig::Blob { container, blob } => {
                Self::Blob(storage.key_store(container, blob))
            }
            KeyStoreConfig::File { path } => Self::File(FileStore::new(path.clone())),
        }
    }
}

/// Keyed layout: tail the change feed in the background every `poll` for the cache's (the
/// app's) lifetime, so requests rarely wait for a feed read. The task holds the cache weakly
/// and ends after the dashboard is dropped. Without a tokio runtime (a `Dashboard` built
/// outside one) nothing is spawned: requests then tail the feed themselves once per `poll`.
pub(crate) fn watch(keys: &ApiKeyCache<AnyKeyStore>, poll: std::time::Duration) {
    if keys.store().layout() == Layout::Keyed && tokio::runtime::Handle::try_current().is_ok() {
        keys.spawn_watcher(poll).detach();
    }
}

impl KeyStore for AnyKeyStore {
    async fn load(&self, if_none_match: Option<&Version>) -> Result<Loaded, StoreError> {
        match self {
            Self::Blob(store) => store.load(if_none_match).await,
            Self::File(store) => store.load(if_none_match).await,
        }
    }

    async fn store(
        &self,
        document: &KeyDocument,
        if_match: Option<&Version>,
    ) -> Result<Version, StoreError> {
        match self {
            Self::Blob(store) => store.store(document, if_match).await,
            Self::File(store) => store.store(document, if_match).await,
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Blob(store) => store.describe(),
            Self::File(store) => store.describe(),
        }
    }

    fn layout(&self) -> Layout {
        match self {
            Self::Blob(store) => store.layout(),
            Self::File(store) => store.layout(),
        }
    }

    async fn get_record(&self, name: &str) -> Result<Option<Record>, StoreError> {
        match self {
            Self::Blob(store) => store.get_record(name).await,
            Self::File(store) => store.get_record(name).await,
        }
    }

    async fn put_record(
        &self,
        name: &str,
        bytes: &[u8],
        condition: Condition<'_>,
    ) -> Result<Version, StoreError> {
        match self {
            Self::Blob(store) => store.put_record(name, bytes, condition).await,
            Self::File(store) => store.put_record(name, bytes, condition).await,
        }
    }

    async fn append_feed(&self, entry: &[u8]) -> Result<(), StoreError> {
        match self {
            Self::Blob(store) => store.append_feed(entry).await,
            Self::File(store) => store.append_feed(entry).await,
        }
    }

    async fn read_feed(&self, from: Option<&FeedCursor>) -> Result<FeedBatch, StoreError> {
        match self {
            Self::Blob(store) => store.read_feed(from).await,
            Self::File(store) => store.read_feed(from).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A10: every keyed method reaches the store behind the enum (a missing forward answers
    // StoreError::Unsupported from the trait's default and fails the contract check).
    #[tokio::test]
    async fn any_key_store_forwards_the_keyed_layout() {
        let dir = std::env::temp_dir().join(format!(
            "dashboard-keystore-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let store = AnyKeyStore::File(FileStore::keyed(&dir));
        assert_eq!(store.layout(), Layout::Keyed);
        let version = store
            .put_record("accounts/acme", b"{}", Condition::IfNoneMatch)
            .await
            .expect("put");
        let record = store.get_record("accounts/acme").await.expect("get");
        assert_eq!(record.map(|r| r.version), Some(version));
        let start = store.read_feed(None).await.expect("feed end");
        store
            .append_feed(br#"{"op":"account","account":"acme"}"#)
            .await
            .expect("append");
        let batch = store.read_feed(Some(&start.next)).await.expect("feed");
        assert_eq!(batch.entries.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
