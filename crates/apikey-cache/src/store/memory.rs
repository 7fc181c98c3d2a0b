//! `MemoryStore`: an in-process store for tests and benchmarks that counts reads and can be
//! made slow, stalled or failing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use super::{KeyStore, Loaded, Version};
use crate::document::KeyDocument;
use crate::error::StoreError;

/// An in-memory [`KeyStore`]. Clones share one document, so two caches built over clones of
/// one `MemoryStore` behave like two instances over one Blob.
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
    state: Mutex<State>,
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
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store (nothing written yet).
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
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

    /// Operation counts so far.
    pub fn counts(&self) -> MemoryStoreCounts {
        let s = &self.shared;
        MemoryStoreCounts {
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
        "memory".to_string()
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
}
