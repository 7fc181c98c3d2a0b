//! The key store the dashboard was configured with: apikey-cache's Blob store (over the
//! dashboard's blob pool) or its file store.

use apikey_cache::{BlobStore, FileStore, KeyDocument, KeyStore, Loaded, StoreError, Version};

/// apikey-cache's stores behind one type, chosen by [`KeyStoreConfig`](crate::KeyStoreConfig).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum AnyKeyStore {
    /// One blob (ETag-conditional reads and writes), through the dashboard's blob pool.
    Blob(BlobStore),
    /// A local file.
    File(FileStore),
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
}
