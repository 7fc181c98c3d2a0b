//! `MemoryStore`: an in-process store for tests and benchmarks that counts reads and can be
//! made slow, stalled or failing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use super::{Condition, FeedBatch, FeedCursor, KeyStore, Layout, Loaded, Record, Version};
use crate::document::KeyDocument;
use crate::error::StoreError;

/// An in-memory [`KeyStore`]. Clones share one document, so two caches built over clones of
/// one `MemoryStore` behave like two instances over one Blob.
///
/// [`MemoryStore::keyed`] makes one in the keyed layout (A10: a record per key, a change
/// feed in segments of [`MemoryStore::set_feed_segment_entries`] entries, the last two kept).
///
/// Test controls: [`MemoryStore::set_latency`] (a `tokio::time::sleep` per operation, so it
/// follows virtual time), [`MemoryStore::stall_loads`] (loads wait until released),
/// [`MemoryStore::fail_loads`] / [`MemoryStore::fail_writes`], and [`MemoryStore::counts`].
#[derive(Debug, Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    layout: Layout,
    state: Mutex<State>,
    keyed: Mutex<KeyedState>,
    fail_appends: AtomicBool,
    fail_feed_reads: AtomicBool,
    record_reads: AtomicU64,
    record_writes: AtomicU64,
    record_conflicts: AtomicU64,
    bytes_written: AtomicU64,
    feed_appends: AtomicU64,
    feed_reads: AtomicU64,
    latency: Mutex<Duration>,
    stalled: watch::Sender<bool>,
    fail_loads: AtomicBool,
    fail_writes: AtomicBool,
    loads: AtomicU64,
    full_loads: AtomicU64,
    not_modified: AtomicU64,
    failed_loads: AtomicU64,
    writes: AtomicU64,
    conflicts: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    document: Option<(KeyDocument, u64)>,
    last_version: u64,
}

/// The keyed layout's records and feed.
#[derive(Debug)]
struct KeyedState {
    records: std::collections::HashMap<String, (Vec<u8>, u64)>,
    last_version: u64,
    /// Retained feed segments, oldest first: (segment number, entries).
    segments: std::collections::VecDeque<(u64, Vec<Vec<u8>>)>,
    segment_entries: usize,
}

impl Default for KeyedState {
    fn default() -> Self {
        Self {
            records: std::collections::HashMap::new(),
            last_version: 0,
            segments: std::collections::VecDeque::from([(0, Vec::new())]),
            segment_entries: 10_000,
        }
    }
}

impl KeyedState {
    fn end(&self) -> FeedCursor {
        let (segment, entries) = self.segments.back().expect("one segment is always kept");
        FeedCursor {
            segment: *segment,
            offset: entries.len() as u64,
        }
    }

    fn read(&self, from: &FeedCursor) -> FeedBatch {
        let end = self.end();
        let oldest = self.segments.front().map_or(0, |(n, _)| *n);
        let gap = FeedBatch::new(Vec::new(), end, true);
        if from.segment < oldest || from.segment > end.segment {
            return gap;
        }
        let mut entries = Vec::new();
        for (number, segment) in &self.segments {
            if *number < from.segment {
                continue;
            }
            let skip = if *number == from.segment {
                let Ok(offset) = usize::try_from(from.offset) else {
                    return gap;
                };
                if offset > segment.len() {
                    return gap; // truncated under the cursor
                }
                offset
            } else {
                0
            };
            entries.extend(segment[skip..].iter().cloned());
        }
        FeedBatch::new(entries, end, false)
    }
}

/// Operation counts of a [`MemoryStore`] (shared by all its clones).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryStoreCounts {
    /// Every load call (counted when it starts: the number of reads the store was asked for).
    pub loads: u64,
    /// Loads that returned the document.
    pub full_loads: u64,
    /// Loads answered "not modified".
    pub not_modified: u64,
    /// Loads that failed (injected).
    pub failed_loads: u64,
    /// Successful writes.
    pub writes: u64,
    /// Writes refused with a version conflict.
    pub conflicts: u64,
    /// Keyed layout: point reads ([`KeyStore::get_record`] calls).
    pub record_reads: u64,
    /// Keyed layout: records written.
    pub record_writes: u64,
    /// Keyed layout: record writes refused by their condition.
    pub record_conflicts: u64,
    /// Keyed layout: bytes written (records and feed entries).
    pub bytes_written: u64,
    /// Keyed layout: feed entries appended.
    pub feed_appends: u64,
    /// Keyed layout: feed reads.
    pub feed_reads: u64,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store (nothing written yet) in the single-document layout.
    pub fn new() -> Self {
        Self::with_layout(Layout::Document)
    }

    /// An empty store in the keyed layout (A10): a record per key, accounts likewise, and a
    /// change feed (A11).
    pub fn keyed() -> Self {
        Self::with_layout(Layout::Keyed)
    }

    fn with_layout(layout: Layout) -> Self {
        Self {
            shared: Arc::new(Shared {
                layout,
                keyed: Mutex::new(KeyedState::default()),
                fail_appends: AtomicBool::new(false),
                fail_feed_reads: AtomicBool::new(false),
                record_reads: AtomicU64::new(0),
                record_writes: AtomicU64::new(0),
                record_conflicts: AtomicU64::new(0),
                bytes_written: AtomicU64::new(0),
                feed_appends: AtomicU64::new(0),
                feed_reads: AtomicU64::new(0),
                state: Mutex::new(State::default()),
                latency: Mutex::new(Duration::ZERO),
                stalled: watch::Sender::new(false),
                fail_loads: AtomicBool::new(false),
                fail_writes: AtomicBool::new(false),
                loads: AtomicU64::new(0),
                full_loads: AtomicU64::new(0),
                not_modified: AtomicU64::new(0),
                failed_loads: AtomicU64::new(0),
                writes: AtomicU64::new(0),
                conflicts: AtomicU64::new(0),
            }),
        }
    }

    /// A store already holding `document`.
    pub fn with_document(document: KeyDocument) -> Self {
        let store = Self::new();
        store.set_document(document);
        store
    }

    /// Replace the document out of band (like another writer would), bumping the version.
    pub fn set_document(&self, document: KeyDocument) {
        let mut state = self.state();
        state.last_version += 1;
        state.document = Some((document, state.last_version));
    }

    /// The stored document, if any.
    pub fn document(&self) -> Option<KeyDocument> {
        self.state().document.as_ref().map(|(d, _)| d.clone())
    }

    /// Delay every load and write by `latency` (virtual time in paused tests).
    pub fn set_latency(&self, latency: Duration) {
        *self
            .shared
            .latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = latency;
    }

    /// While `true`, loads (already counted) wait before reading; `false` lets them go on.
    pub fn stall_loads(&self, stalled: bool) {
        self.shared.stalled.send_replace(stalled);
    }

    /// While `true`, loads fail with [`StoreError::Unavailable`] (checked after a stall).
    pub fn fail_loads(&self, fail: bool) {
        self.shared.fail_loads.store(fail, Ordering::SeqCst);
    }

    /// While `true`, writes fail with [`StoreError::Unavailable`].
    pub fn fail_writes(&self, fail: bool) {
        self.shared.fail_writes.store(fail, Ordering::SeqCst);
    }

    /// While `true`, feed appends fail (a writer that dies between its record write and its
    /// feed append).
    pub fn fail_feed_appends(&self, fail: bool) {
        self.shared.fail_appends.store(fail, Ordering::SeqCst);
    }

    /// While `true`, change-feed reads fail with [`StoreError::Unavailable`] (point reads
    /// still answer).
    pub fn fail_feed_reads(&self, fail: bool) {
        self.shared.fail_feed_reads.store(fail, Ordering::SeqCst);
    }

    /// Keyed layout: start a new feed segment after this many entries (default 10 000; the
    /// current and the previous segment are kept).
    pub fn set_feed_segment_entries(&self, entries: usize) {
        self.keyed_state().segment_entries = entries.max(1);
    }

    /// Keyed layout: drop every feed segment but a fresh one (a reader behind it sees a gap).
    pub fn drop_feed_segments(&self) {
        let mut keyed = self.keyed_state();
        let next = keyed.end().segment + 1;
        keyed.segments.clear();
        keyed.segments.push_back((next, Vec::new()));
    }

    /// Keyed layout: the names of the stored records (sorted).
    pub fn record_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.keyed_state().records.keys().cloned().collect();
        names.sort();
        names
    }

    fn keyed_state(&self) -> std::sync::MutexGuard<'_, KeyedState> {
        self.shared
            .keyed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Operation counts so far.
    pub fn counts(&self) -> MemoryStoreCounts {
        let s = &self.shared;
        MemoryStoreCounts {
            record_reads: s.record_reads.load(Ordering::SeqCst),
            record_writes: s.record_writes.load(Ordering::SeqCst),
            record_conflicts: s.record_conflicts.load(Ordering::SeqCst),
            bytes_written: s.bytes_written.load(Ordering::SeqCst),
            feed_appends: s.feed_appends.load(Ordering::SeqCst),
            feed_reads: s.feed_reads.load(Ordering::SeqCst),
            loads: s.loads.load(Ordering::SeqCst),
            full_loads: s.full_loads.load(Ordering::SeqCst),
            not_modified: s.not_modified.load(Ordering::SeqCst),
            failed_loads: s.failed_loads.load(Ordering::SeqCst),
            writes: s.writes.load(Ordering::SeqCst),
            conflicts: s.conflicts.load(Ordering::SeqCst),
        }
    }

    /// Shorthand for `counts().loads`.
    pub fn loads(&self) -> u64 {
        self.shared.loads.load(Ordering::SeqCst)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn delay(&self) {
        let latency = *self
            .shared
            .latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
    }
}

fn version(n: u64) -> Version {
    Version::new(format!("\"{n}\""))
}

impl KeyStore for MemoryStore {
    async fn load(&self, if_none_match: Option<&Version>) -> Result<Loaded, StoreError> {
        let s = &self.shared;
        if s.layout == Layout::Keyed {
            return Err(StoreError::Unsupported { operation: "load" });
        }
        s.loads.fetch_add(1, Ordering::SeqCst);
        self.delay().await;
        let mut stalled = s.stalled.subscribe();
        // The sender lives in `shared`, which we hold: waiting cannot fail.
        let _ = stalled.wait_for(|stalled| !*stalled).await;
        if s.fail_loads.load(Ordering::SeqCst) {
            s.failed_loads.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::unavailable("injected load failure"));
        }
        let state = self.state();
        match &state.document {
            None => {
                s.full_loads.fetch_add(1, Ordering::SeqCst);
                Ok(Loaded::Document {
                    document: KeyDocument::empty(),
                    version: None,
                })
            }
            Some((_, n)) if if_none_match == Some(&version(*n)) => {
                s.not_modified.fetch_add(1, Ordering::SeqCst);
                Ok(Loaded::NotModified)
            }
            Some((document, n)) => {
                s.full_loads.fetch_add(1, Ordering::SeqCst);
                Ok(Loaded::Document {
                    document: document.clone(),
                    version: Some(version(*n)),
                })
            }
        }
    }

    async fn store(
        &self,
        document: &KeyDocument,
        if_match: Option<&Version>,
    ) -> Result<Version, StoreError> {
        self.delay().await;
        let s = &self.shared;
        if s.layout == Layout::Keyed {
            return Err(StoreError::Unsupported { operation: "store" });
        }
        if s.fail_writes.load(Ordering::SeqCst) {
            return Err(StoreError::unavailable("injected write failure"));
        }
        let mut state = self.state();
        let current = state.document.as_ref().map(|(_, n)| version(*n));
        if current.as_ref() != if_match {
            s.conflicts.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Conflict);
        }
        state.last_version += 1;
        let n = state.last_version;
        state.document = Some((document.clone(), n));
        s.writes.fetch_add(1, Ordering::SeqCst);
        Ok(version(n))
    }

    fn describe(&self) -> String {
        match self.shared.layout {
            Layout::Keyed => "memory (keyed)".to_string(),
            _ => "memory".to_string(),
        }
    }

    fn layout(&self) -> Layout {
        self.shared.layout
    }

    async fn get_record(&self, name: &str) -> Result<Option<Record>, StoreError> {
        let s = &self.shared;
        self.keyed_only("get_record")?;
        s.record_reads.fetch_add(1, Ordering::SeqCst);
        self.delay().await;
        let mut stalled = s.stalled.subscribe();
        let _ = stalled.wait_for(|stalled| !*stalled).await;
        if s.fail_loads.load(Ordering::SeqCst) {
            s.failed_loads.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::unavailable("injected load failure"));
        }
        Ok(self
            .keyed_state()
            .records
            .get(name)
            .map(|(bytes, n)| Record {
                bytes: bytes.clone(),
                version: version(*n),
            }))
    }

    async fn put_record(
        &self,
        name: &str,
        bytes: &[u8],
        condition: Condition<'_>,
    ) -> Result<Version, StoreError> {
        let s = &self.shared;
        self.keyed_only("put_record")?;
        self.delay().await;
        if s.fail_writes.load(Ordering::SeqCst) {
            return Err(StoreError::unavailable("injected write failure"));
        }
        let mut keyed = self.keyed_state();
        let current = keyed.records.get(name).map(|(_, n)| version(*n));
        let allowed = match condition {
            Condition::IfNoneMatch => current.is_none(),
            Condition::IfMatch(expected) => current.as_ref() == Some(expected),
        };
        if !allowed {
            s.record_conflicts.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Conflict);
        }
        keyed.last_version += 1;
        let n = keyed.last_version;
        keyed.records.insert(name.to_string(), (bytes.to_vec(), n));
        s.record_writes.fetch_add(1, Ordering::SeqCst);
        s.bytes_written
            .fetch_add(bytes.len() as u64, Ordering::SeqCst);
        Ok(version(n))
    }

    async fn append_feed(&self, entry: &[u8]) -> Result<(), StoreError> {
        let s = &self.shared;
        self.keyed_only("append_feed")?;
        self.delay().await;
        if s.fail_writes.load(Ordering::SeqCst) || s.fail_appends.load(Ordering::SeqCst) {
            return Err(StoreError::unavailable("injected feed append failure"));
        }
        let mut keyed = self.keyed_state();
        let limit = keyed.segment_entries;
        let full = keyed.segments.back().is_some_and(|(_, e)| e.len() >= limit);
        if full {
            let next = keyed.end().segment + 1;
            keyed.segments.push_back((next, Vec::new()));
            while keyed.segments.len() > 2 {
                keyed.segments.pop_front();
            }
        }
        if let Some((_, entries)) = keyed.segments.back_mut() {
            entries.push(entry.to_vec());
        }
        s.feed_appends.fetch_add(1, Ordering::SeqCst);
        s.bytes_written
            .fetch_add(entry.len() as u64 + 1, Ordering::SeqCst);
        Ok(())
    }

    async fn read_feed(&self, from: Option<&FeedCursor>) -> Result<FeedBatch, StoreError> {
        let s = &self.shared;
        self.keyed_only("read_feed")?;
        s.feed_reads.fetch_add(1, Ordering::SeqCst);
        self.delay().await;
        if s.fail_loads.load(Ordering::SeqCst) || s.fail_feed_reads.load(Ordering::SeqCst) {
            return Err(StoreError::unavailable("injected load failure"));
        }
        let keyed = self.keyed_state();
        Ok(match from {
            None => FeedBatch::new(Vec::new(), keyed.end(), false),
            Some(from) => keyed.read(from),
        })
    }
}

impl MemoryStore {
    fn keyed_only(&self, operation: &'static str) -> Result<(), StoreError> {
        if self.shared.layout == Layout::Keyed {
            Ok(())
        } else {
            Err(StoreError::Unsupported { operation })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // covers A7: conditional loads and compare-and-swap writes (the KeyStore contract), and
    // the counts the store keeps of them.
    #[tokio::test(start_paused = true)]
    async fn memory_store_is_conditional_and_compare_and_swap() {
        let store = MemoryStore::new();
        crate::testing::check_store_contract(&store).await;
        let counts = store.counts();
        assert_eq!(
            (
                counts.loads,
                counts.not_modified,
                counts.writes,
                counts.conflicts
            ),
            (3, 1, 2, 2)
        );
    }

    // covers A10 + A11: the keyed memory store meets the keyed contract; a write costs one
    // record's bytes.
    #[tokio::test(start_paused = true)]
    async fn keyed_memory_store_meets_the_keyed_contract() {
        let store = MemoryStore::keyed();
        crate::testing::check_keyed_store_contract(&store).await;
        let counts = store.counts();
        assert_eq!((counts.record_writes, counts.record_conflicts), (3, 2));
        assert_eq!(counts.feed_appends, 3);
        assert!(matches!(
            store.load(None).await,
            Err(StoreError::Unsupported { .. })
        ));
    }

    // covers A11: rotation keeps two segments; a reader behind them sees a gap.
    #[tokio::test(start_paused = true)]
    async fn keyed_memory_feed_rotates_and_reports_gaps() {
        let store = MemoryStore::keyed();
        store.set_feed_segment_entries(2);
        let start = store.read_feed(None).await.expect("end").next;
        for n in 0..3 {
            store
                .append_feed(format!("{n}").as_bytes())
                .await
                .expect("append");
        }
        let batch = store.read_feed(Some(&start)).await.expect("read");
        assert_eq!(batch.entries.len(), 3, "across a rotation, nothing lost");
        assert!(!batch.gap);
        for n in 3..7 {
            store
                .append_feed(format!("{n}").as_bytes())
                .await
                .expect("append");
        }
        let behind = store.read_feed(Some(&batch.next)).await.expect("read");
        assert!(behind.gap, "segment rotated away under the cursor");
        store.drop_feed_segments();
        assert!(store.read_feed(Some(&behind.next)).await.expect("read").gap);
    }
}
