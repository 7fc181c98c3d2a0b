//! `BlobStore`'s keyed layout (A10/A11): a blob per record (`<prefix>keys/<sha256>` …) written
//! with `If-None-Match: *` / `If-Match`, and the change feed as append blobs
//! `<prefix>feed/<segment>.log` rotated by size (`x-ms-blob-condition-maxsize`).

use std::sync::atomic::Ordering;

use azure_core::http::{Etag, RequestContent, StatusCode};
use azure_storage_blob::BlobClient;
use azure_storage_blob::models::{
    AppendBlobClientAppendBlockOptions, AppendBlobClientCreateOptions, BlobClientDownloadOptions,
    BlobClientGetPropertiesResultHeaders as _, BlobClientUploadOptions,
};

use super::blob::{BlobStore, status, unavailable};
use super::{Condition, FeedBatch, FeedCursor, Record, Version};
use crate::error::StoreError;

/// Longest feed entry accepted. A reader whose cursor is further than this below the segment
/// limit knows no rotation can have happened, so an idle poll is one ranged GET.
pub(crate) const MAX_FEED_ENTRY: u64 = 1024;
/// Append blobs are rotated at this size; the current and the previous are kept.
pub(crate) const BLOB_SEGMENT_BYTES: u64 = 4 * 1024 * 1024;
/// The writer's current segment is not known yet.
pub(crate) const UNKNOWN: u64 = u64::MAX;

impl BlobStore {
    fn record_client(&self, service: &blob_pool::PooledBlobClient, name: &str) -> BlobClient {
        service
            .blob_container_client(self.container())
            .blob_client(&format!("{}{name}", self.prefix()))
    }

    fn segment_client(&self, service: &blob_pool::PooledBlobClient, segment: u64) -> BlobClient {
        self.record_client(service, &format!("feed/{segment:020}.log"))
    }

    pub(crate) async fn get_record_keyed(&self, name: &str) -> Result<Option<Record>, StoreError> {
        let service = self.service().await?;
        let blob = self.record_client(&service, name);
        let result = match blob.download(None).await {
            Ok(result) => result,
            Err(e) if status(&e) == Some(StatusCode::NotFound) => return Ok(None),
            Err(e) => return Err(unavailable(e)),
        };
        let etag = result
            .properties
            .etag
            .clone()
            .ok_or_else(|| StoreError::unavailable("a key record came back without an ETag"))?;
        let bytes = result.body.collect().await.map_err(unavailable)?;
        Ok(Some(Record {
            bytes: bytes.to_vec(),
            version: Version::new(String::from(etag)),
        }))
    }

    pub(crate) async fn put_record_keyed(
        &self,
        name: &str,
        bytes: &[u8],
        condition: Condition<'_>,
    ) -> Result<Version, StoreError> {
        let service = self.service().await?;
        let put = |blob: BlobClient| {
            let mut options = BlobClientUploadOptions {
                blob_content_type: Some("application/json".to_string()),
                ..Default::default()
            };
            match condition {
                Condition::IfMatch(version) => {
                    options.if_match = Some(Etag::from(version.as_str()));
                }
                Condition::IfNoneMatch => options.if_none_match = Some(Etag::from("*")),
            }
            let body = RequestContent::from(bytes.to_vec());
            async move { blob.upload(body, Some(options)).await }
        };
        let mut result = put(self.record_client(&service, name)).await;
        if matches!(condition, Condition::IfNoneMatch)
            && let Err(e) = &result
            && status(e) == Some(StatusCode::NotFound)
        {
            self.create_container(&service).await?;
            result = put(self.record_client(&service, name)).await;
        }
        match result {
            Ok(result) => result
                .etag
                .map(|etag| Version::new(String::from(etag)))
                .ok_or_else(|| StoreError::unavailable("a key record was written without an ETag")),
            Err(e)
                if matches!(
                    status(&e),
                    Some(StatusCode::PreconditionFailed | StatusCode::Conflict)
                ) || (matches!(condition, Condition::IfMatch(_))
                    && status(&e) == Some(StatusCode::NotFound)) =>
            {
                Err(StoreError::Conflict)
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn create_container(
        &self,
        service: &blob_pool::PooledBlobClient,
    ) -> Result<(), StoreError> {
        match service
            .blob_container_client(self.container())
            .create(None)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(StatusCode::Conflict) => Ok(()), // created meanwhile
            Err(e) => Err(unavailable(e)),
        }
    }

    /// The segment the feed currently ends in: the highest existing `feed/<n>.log`, found by
    /// probing upwards from the last one this store saw (usually one HEAD).
    async fn current_segment(
        &self,
        service: &blob_pool::PooledBlobClient,
    ) -> Result<(u64, Option<u64>), StoreError> {
        let known = self.feed_segment().load(Ordering::SeqCst);
        let mut segment = if known == UNKNOWN { 0 } else { known };
        let mut length = None;
        loop {
            match self
                .segment_client(service, segment)
                .get_properties(None)
                .await
            {
                Ok(response) => {
                    length = Some(response.content_length().ok().flatten().unwrap_or(0));
                    segment += 1;
                }
                Err(e) if status(&e) == Some(StatusCode::NotFound) => {
                    let current = if length.is_some() {
                        segment - 1
                    } else {
                        segment
                    };
                    self.feed_segment().fetch_max(current, Ordering::SeqCst);
                    if self.feed_segment().load(Ordering::SeqCst) == UNKNOWN {
                        self.feed_segment().store(current, Ordering::SeqCst);
                    }
                    return Ok((current, length));
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
    }

    pub(crate) async fn append_feed_keyed(&self, entry: &[u8]) -> Result<(), StoreError> {
        if entry.len() as u64 + 1 > MAX_FEED_ENTRY {
            return Err(StoreError::unavailable("feed entry too long"));
        }
        let service = self.service().await?;
        let mut line = entry.to_vec();
        line.push(b'\n');
        let (mut segment, _) = if self.feed_segment().load(Ordering::SeqCst) == UNKNOWN {
            self.current_segment(&service).await?
        } else {
            (self.feed_segment().load(Ordering::SeqCst), None)
        };
        for _ in 0..8 {
            let client = self.segment_client(&service, segment).append_blob_client();
            let options = AppendBlobClientAppendBlockOptions {
                max_size: i64::try_from(self.segment_bytes()).ok(),
                ..Default::default()
            };
            let len = line.len() as u64;
            match client
                .append_block(RequestContent::from(line.clone()), len, Some(options))
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if status(&e) == Some(StatusCode::NotFound) => {
                    // The segment (or the container) does not exist yet: create it.
                    let create = AppendBlobClientCreateOptions {
                        if_none_match: Some(Etag::from("*")),
                        ..Default::default()
                    };
                    match client.create(Some(create.clone())).await {
                        Ok(_) => {}
                        Err(e) if status(&e) == Some(StatusCode::NotFound) => {
                            self.create_container(&service).await?;
                            let _ = client.create(Some(create)).await;
                        }
                        Err(e)
                            if matches!(
                                status(&e),
                                Some(StatusCode::Conflict | StatusCode::PreconditionFailed)
                            ) => {} // another writer created it
                        Err(e) => return Err(unavailable(e)),
                    }
                }
                Err(e) if status(&e) == Some(StatusCode::PreconditionFailed) => {
                    // Full (max size): rotate to the next segment, drop the one before this.
                    segment += 1;
                    self.feed_segment().fetch_max(segment, Ordering::SeqCst);
                    if segment >= 2 {
                        let _ = self
                            .segment_client(&service, segment - 2)
                            .delete(None)
                            .await;
                    }
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
        Err(StoreError::unavailable(
            "could not append to the change feed",
        ))
    }

    pub(crate) async fn read_feed_keyed(
        &self,
        from: Option<&FeedCursor>,
    ) -> Result<FeedBatch, StoreError> {
        let service = self.service().await?;
        let Some(from) = from else {
            let (segment, length) = self.current_segment(&service).await?;
            let end = FeedCursor {
                segment,
                offset: length.unwrap_or(0),
            };
            return Ok(FeedBatch::new(Vec::new(), end, false));
        };
        let mut entries = Vec::new();
        let mut cursor = *from;
        loop {
            let options = BlobClientDownloadOptions {
                range: Some((cursor.offset..).into()),
                ..Default::default()
            };
            let bytes = match self
                .segment_client(&service, cursor.segment)
                .download(Some(options))
                .await
            {
                Ok(result) => result.body.collect().await.map_err(unavailable)?.to_vec(),
                Err(e) if status(&e) == Some(StatusCode::RequestedRangeNotSatisfiable) => {
                    Vec::new()
                }
                Err(e) if status(&e) == Some(StatusCode::NotFound) => {
                    let (segment, length) = self.current_segment(&service).await?;
                    if cursor.offset == 0 && segment <= cursor.segment {
                        // Not created yet (an empty feed): nothing new, no gap.
                        return Ok(FeedBatch::new(entries, cursor, false));
                    }
                    // The segment under the cursor was rotated away: a gap.
                    let end = FeedCursor {
                        segment,
                        offset: length.unwrap_or(0),
                    };
                    return Ok(FeedBatch::new(Vec::new(), end, true));
                }
                Err(e) => return Err(unavailable(e)),
            };
            let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            for line in bytes[..complete].split(|b| *b == b'\n') {
                if !line.is_empty() {
                    entries.push(line.to_vec());
                }
            }
            cursor.offset += complete as u64;
            // A segment can only have been rotated if it is within one entry of the limit.
            if cursor.offset + MAX_FEED_ENTRY < self.segment_bytes() {
                return Ok(FeedBatch::new(entries, cursor, false));
            }
            let next = FeedCursor {
                segment: cursor.segment + 1,
                offset: 0,
            };
            let exists = match self
                .segment_client(&service, next.segment)
                .get_properties(None)
                .await
            {
                Ok(_) => true,
                Err(e) if status(&e) == Some(StatusCode::NotFound) => false,
                Err(e) => return Err(unavailable(e)),
            };
            if !exists {
                return Ok(FeedBatch::new(entries, cursor, false));
            }
            cursor = next;
        }
    }
}
