//! The API-key document in Blob storage (ETag-conditional), or in a local file.
//!
//! apikey-cache ships a file and a memory store; its Blob store waits for a later change, so
//! the dashboard implements `KeyStore` over blob-pool here, as the trait's docs describe:
//! `If-None-Match` → 304 on load, `If-Match` (or `If-None-Match: *` for the first write) →
//! 412/409 on a conflicting write.

use std::sync::Arc;

use apikey_cache::{FileStore, KeyDocument, KeyStore, Loaded, StoreError, Version};
use azure_core::http::{Etag, RequestContent, StatusCode};
use azure_storage_blob::models::{BlobClientDownloadOptions, BlobClientUploadOptions};

use crate::error::ApiError;
use crate::storage::{Storage, create_container};

/// The key document as one blob, read and written through the dashboard's blob pool.
#[derive(Debug, Clone)]
pub struct BlobKeyStore {
    storage: Arc<Storage>,
    container: String,
    blob: String,
}

impl BlobKeyStore {
    pub(crate) fn new(storage: Arc<Storage>, container: String, blob: String) -> Self {
        Self {
            storage,
            container,
            blob,
        }
    }

    /// Create the container unless it exists.
    pub(crate) async fn ensure_container(&self) -> Result<(), ApiError> {
        let client = self.storage.infra_client().await?;
        create_container(&client, &self.container).await
    }
}

fn unavailable(error: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Unavailable {
        source: Box::new(error),
    }
}

impl KeyStore for BlobKeyStore {
    async fn load(&self, if_none_match: Option<&Version>) -> Result<Loaded, StoreError> {
        let client = self.storage.infra_client().await.map_err(unavailable)?;
        let blob = client
            .blob_container_client(&self.container)
            .blob_client(&self.blob);
        let options = if_none_match.map(|version| BlobClientDownloadOptions {
            if_none_match: Some(Etag::from(version.as_str())),
            ..BlobClientDownloadOptions::default()
        });
        match blob.download(options).await {
            Ok(response) => {
                let version = response
                    .properties
                    .etag
                    .as_ref()
                    .map(|etag| Version::new(etag.to_string()));
                let body = response.body.collect().await.map_err(unavailable)?;
                Ok(Loaded::Document {
                    document: KeyDocument::from_json(&body)?,
                    version,
                })
            }
            Err(e) if e.http_status() == Some(StatusCode::NotModified) => Ok(Loaded::NotModified),
            Err(e) if e.http_status() == Some(StatusCode::NotFound) => Ok(Loaded::Document {
                document: KeyDocument::empty(),
                version: None,
            }),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn store(
        &self,
        document: &KeyDocument,
        if_match: Option<&Version>,
    ) -> Result<Version, StoreError> {
        let client = self.storage.infra_client().await.map_err(unavailable)?;
        let blob = client
            .blob_container_client(&self.container)
            .blob_client(&self.blob);
        let options = match if_match {
            Some(version) => BlobClientUploadOptions {
                if_match: Some(Etag::from(version.as_str())),
                ..BlobClientUploadOptions::default()
            },
            None => BlobClientUploadOptions {
                if_none_match: Some(Etag::from("*")),
                ..BlobClientUploadOptions::default()
            },
        };
        match blob
            .upload(RequestContent::from(document.to_json()), Some(options))
            .await
        {
            Ok(uploaded) => uploaded
                .etag
                .map(|etag| Version::new(etag.to_string()))
                .ok_or_else(|| StoreError::unavailable("the upload answer carried no ETag")),
            Err(e)
                if matches!(
                    e.http_status(),
                    Some(StatusCode::PreconditionFailed | StatusCode::Conflict)
                ) =>
            {
                Err(StoreError::Conflict)
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    fn describe(&self) -> String {
        format!("blob {}/{}", self.container, self.blob)
    }
}

/// The key store the dashboard was configured with.
#[derive(Debug, Clone)]
pub enum AnyKeyStore {
    /// A blob, through blob-pool.
    Blob(BlobKeyStore),
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
