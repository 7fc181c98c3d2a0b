//! `BlobStore`: the key document as one Azure blob, over blob-pool (ETag-conditional reads and writes).

use std::fmt;
use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use azure_core::error::ErrorKind;
use azure_core::http::{Etag, RequestContent, StatusCode};
use azure_storage_blob::BlobClient;
use azure_storage_blob::models::{BlobClientDownloadOptions, BlobClientUploadOptions};
use blob_pool::{BlobPool, Endpoint};

use super::{KeyStore, Loaded, Version};
use crate::document::KeyDocument;
use crate::error::StoreError;

/// The key document as one blob in Azure Blob Storage (or Azurite), with clients from a
/// [`BlobPool`] (pooled per credential, retries that release connections, shared tokens).
///
/// - **Load**: `GET` with `If-None-Match: <etag>`; `304` → [`Loaded::NotModified`] (no body
///   transferred); `404` (blob or container) → an empty document with version `None`.
/// - **Store**: `PUT` with `If-Match: <etag>`, or `If-None-Match: *` when the blob must not exist
///   yet; `412` / `409` → [`StoreError::Conflict`] (the cache then re-loads, re-applies and
///   re-writes). A missing container is created on the first write.
/// - Any other failure → [`StoreError::Unavailable`] with the SDK error as its source.
#[derive(Clone)]
pub struct BlobStore {
    pool: BlobPool,
    credential: Arc<dyn TokenCredential>,
    endpoint: Endpoint,
    container: String,
    blob: String,
}

impl fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobStore")
            .field("container", &self.container)
            .field("blob", &self.blob)
            .finish_non_exhaustive()
    }
}

fn status(error: &azure_core::Error) -> Option<StatusCode> {
    match error.kind() {
        ErrorKind::HttpResponse { status, .. } => Some(*status),
        _ => None,
    }
}

fn unavailable(error: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Unavailable {
        source: Box::new(error),
    }
}

impl BlobStore {
    /// The document at `container`/`blob` of the account at `endpoint`, read and written with
    /// `credential` through `pool`.
    pub fn new(
        pool: BlobPool,
        credential: Arc<dyn TokenCredential>,
        endpoint: Endpoint,
        container: impl Into<String>,
        blob: impl Into<String>,
    ) -> Self {
        Self {
            pool,
            credential,
            endpoint,
            container: container.into(),
            blob: blob.into(),
        }
    }

    async fn blob_client(&self) -> Result<(blob_pool::PooledBlobClient, BlobClient), StoreError> {
        let service = self
            .pool
            .client(&self.credential, &self.endpoint)
            .await
            .map_err(unavailable)?;
        let blob = service
            .blob_container_client(&self.container)
            .blob_client(&self.blob);
        Ok((service, blob))
    }

    async fn put(
        &self,
        blob: &BlobClient,
        bytes: &[u8],
        if_match: Option<&Version>,
    ) -> Result<Version, azure_core::Error> {
        let mut options = BlobClientUploadOptions {
            blob_content_type: Some("application/json".to_string()),
            ..Default::default()
        };
        match if_match {
            Some(version) => options.if_match = Some(Etag::from(version.as_str())),
            None => options.if_none_match = Some(Etag::from("*")),
        }
        let result = blob
            .upload(RequestContent::from(bytes.to_vec()), Some(options))
            .await?;
        Ok(Version::new(
            result.etag.map(String::from).unwrap_or_default(),
        ))
    }
}

impl KeyStore for BlobStore {
    async fn load(&self, if_none_match: Option<&Version>) -> Result<Loaded, StoreError> {
        let (_service, blob) = self.blob_client().await?;
        let options = BlobClientDownloadOptions {
            if_none_match: if_none_match.map(|v| Etag::from(v.as_str())),
            ..Default::default()
        };
        let result = match blob.download(Some(options)).await {
            Ok(result) => result,
            Err(e) if status(&e) == Some(StatusCode::NotModified) => {
                return Ok(Loaded::NotModified);
            }
            Err(e) if status(&e) == Some(StatusCode::NotFound) => {
                return Ok(Loaded::Document {
                    document: KeyDocument::empty(),
                    version: None,
                });
            }
            Err(e) => return Err(unavailable(e)),
        };
        let etag =
            result.properties.etag.clone().ok_or_else(|| {
                StoreError::unavailable("the key blob was returned without an ETag")
            })?;
        let bytes = result.body.collect().await.map_err(unavailable)?;
        Ok(Loaded::Document {
            document: KeyDocument::from_json(&bytes)?,
            version: Some(Version::new(String::from(etag))),
        })
    }

    async fn store(
        &self,
        document: &KeyDocument,
        if_match: Option<&Version>,
    ) -> Result<Version, StoreError> {
        let (service, blob) = self.blob_client().await?;
        let bytes = document.to_json();
        let mut result = self.put(&blob, &bytes, if_match).await;
        if if_match.is_none()
            && let Err(e) = &result
            && status(e) == Some(StatusCode::NotFound)
        {
            // First write ever: the container does not exist yet.
            match service
                .blob_container_client(&self.container)
                .create(None)
                .await
            {
                Ok(_) => {}
                Err(e) if status(&e) == Some(StatusCode::Conflict) => {} // created meanwhile
                Err(e) => return Err(unavailable(e)),
            }
            result = self.put(&blob, &bytes, None).await;
        }
        match result {
            Ok(version) if version.as_str().is_empty() => Err(StoreError::unavailable(
                "the key blob was written but no ETag came back",
            )),
            Ok(version) => Ok(version),
            Err(e)
                if matches!(
                    status(&e),
                    Some(StatusCode::PreconditionFailed | StatusCode::Conflict)
                ) =>
            {
                Err(StoreError::Conflict)
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    fn describe(&self) -> String {
        format!("blob:{}/{}", self.container, self.blob)
    }
}
