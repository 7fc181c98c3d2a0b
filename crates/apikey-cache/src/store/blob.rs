//! `BlobStore`: the key document as one Azure blob, over blob-pool (ETag-conditional reads and writes).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use azure_core::credentials::TokenCredential;
use azure_core::error::ErrorKind;
use azure_core::http::{Etag, RequestContent, StatusCode};
use azure_storage_blob::BlobClient;
use azure_storage_blob::models::{BlobClientDownloadOptions, BlobClientUploadOptions};
use blob_pool::{BlobPool, Endpoint};

use super::blob_records::{BLOB_SEGMENT_BYTES, UNKNOWN};
use super::{Condition, FeedBatch, FeedCursor, KeyStore, Layout, Loaded, Record, Version};
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
///
/// [`BlobStore::keyed`] makes one in the keyed layout (A10/A11), the layout to use for Blob
/// beyond ~10k keys: a blob per record (`<prefix>keys/<sha256>`, `<prefix>ids/<key id>`,
/// `<prefix>accounts/<id>`), created with `If-None-Match: *` and replaced with `If-Match`, and
/// the change feed as append blobs `<prefix>feed/<segment>.log` rotated at 4 MiB (the
/// current and the previous kept), tailed with ranged GETs.
#[derive(Clone)]
pub struct BlobStore {
    pool: BlobPool,
    credential: Arc<dyn TokenCredential>,
    endpoint: Endpoint,
    container: String,
    blob: String,
    layout: Layout,
    segment_bytes: u64,
    /// Keyed layout: the feed segment this store appends to (`UNKNOWN` until probed).
    feed_segment: Arc<AtomicU64>,
}

impl fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobStore")
            .field("container", &self.container)
            .field("blob", &self.blob)
            .finish_non_exhaustive()
    }
}

pub(crate) fn status(error: &azure_core::Error) -> Option<StatusCode> {
    match error.kind() {
        ErrorKind::HttpResponse { status, .. } => Some(*status),
        _ => None,
    }
}

pub(crate) fn unavailable(error: impl std::error::Error + Send + Sync + 'static) -> StoreError {
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
            layout: Layout::Document,
            segment_bytes: BLOB_SEGMENT_BYTES,
            feed_segment: Arc::new(AtomicU64::new(UNKNOWN)),
        }
    }

    /// The keyed layout (A10) under `prefix` (e.g. `"apikeys/"`, or `""`) in `container`.
    pub fn keyed(
        pool: BlobPool,
        credential: Arc<dyn TokenCredential>,
        endpoint: Endpoint,
        container: impl Into<String>,
        prefix: impl Into<String>,
    ) -> Self {
        let mut store = Self::new(pool, credential, endpoint, container, prefix);
        store.layout = Layout::Keyed;
        store
    }

    /// The same store in `layout`: for [`Layout::Keyed`] the `blob` given to
    /// [`BlobStore::new`] becomes the record-name prefix (as [`BlobStore::keyed`]'s `prefix`),
    /// e.g. `"apikeys/"`. For code that receives a store built elsewhere.
    pub fn with_layout(mut self, layout: Layout) -> Self {
        self.layout = layout;
        self
    }

    /// Keyed layout: rotate the feed's append blob at `bytes` (default 4 MiB; clamped to
    /// 2 KiB – 190 GiB).
    pub fn feed_segment_bytes(mut self, bytes: u64) -> Self {
        self.segment_bytes = bytes.clamp(2048, 190 << 30);
        self
    }

    pub(crate) fn container(&self) -> &str {
        &self.container
    }

    /// Keyed layout: the record-name prefix (the `blob` argument of [`BlobStore::keyed`]).
    pub(crate) fn prefix(&self) -> &str {
        &self.blob
    }

    pub(crate) fn segment_bytes(&self) -> u64 {
        self.segment_bytes
    }

    pub(crate) fn feed_segment(&self) -> &AtomicU64 {
        &self.feed_segment
    }

    pub(crate) async fn service(&self) -> Result<blob_pool::PooledBlobClient, StoreError> {
        self.pool
            .client(&self.credential, &self.endpoint)
            .await
            .map_err(unavailable)
    }

    fn keyed_only(&self, operation: &'static str) -> Result<(), StoreError> {
        match self.layout {
            Layout::Keyed => Ok(()),
            _ => Err(StoreError::Unsupported { operation }),
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
        if self.layout == Layout::Keyed {
            return Err(StoreError::Unsupported { operation: "load" });
        }
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
        if self.layout == Layout::Keyed {
            return Err(StoreError::Unsupported { operation: "store" });
        }
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
        match self.layout {
            Layout::Keyed => format!("blob-keyed:{}/{}", self.container, self.blob),
            _ => format!("blob:{}/{}", self.container, self.blob),
        }
    }

    fn layout(&self) -> Layout {
        self.layout
    }

    async fn get_record(&self, name: &str) -> Result<Option<Record>, StoreError> {
        self.keyed_only("get_record")?;
        self.get_record_keyed(name).await
    }

    async fn put_record(
        &self,
        name: &str,
        bytes: &[u8],
        condition: Condition<'_>,
    ) -> Result<Version, StoreError> {
        self.keyed_only("put_record")?;
        self.put_record_keyed(name, bytes, condition).await
    }

    async fn append_feed(&self, entry: &[u8]) -> Result<(), StoreError> {
        self.keyed_only("append_feed")?;
        self.append_feed_keyed(entry).await
    }

    async fn read_feed(&self, from: Option<&FeedCursor>) -> Result<FeedBatch, StoreError> {
        self.keyed_only("read_feed")?;
        self.read_feed_keyed(from).await
    }
}
