//! An optional background task that keeps the snapshot fresh with conditional loads.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::ApiKeyCache;
use crate::config::MAX_TTL;
use crate::store::KeyStore;

/// Handle of a watcher started by [`ApiKeyCache::spawn_watcher`]. Dropping it stops the task;
/// the task also stops by itself when every handle of the cache is dropped (it holds only a
/// weak reference).
#[derive(Debug)]
pub struct Watcher {
    task: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Whether the task has ended (the cache was dropped).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Let the task run for the cache's lifetime instead of the handle's: it ends by itself
    /// at its next tick after every handle of the cache is dropped (it holds only a weak
    /// reference). For an application that keeps the cache, not the watcher.
    pub fn detach(mut self) {
        self.task = None; // dropping a JoinHandle detaches the task
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl<S: KeyStore> ApiKeyCache<S> {
    /// Keyed layout: the task tails the change feed every `interval` instead (use the
    /// configured `poll`), so a request rarely waits for a feed read.
    ///
    /// Start a task that, every `interval`, reloads the snapshot if the store has not confirmed
    /// it for `interval` or longer — a conditional load (ETag: a 304 when nothing changed). With
    /// `interval` below the TTL, requests almost never wait for a refresh. `interval` is
    /// clamped to 1 ms – 1 h (X5: `Duration::MAX` is accepted). Failures are logged
    /// and counted like any reload; the previous snapshot stays. Needs a tokio runtime.
    pub fn spawn_watcher(&self, interval: Duration) -> Watcher {
        let interval = interval.clamp(Duration::from_millis(1), MAX_TTL);
        let weak = Arc::downgrade(&self.inner);
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                if inner.keyed.is_some() {
                    // Keyed layout: tail the change feed (requests then rarely wait for it).
                    let cache = ApiKeyCache { inner };
                    let _ = cache.poll_feed_now().await;
                    continue;
                }
                let due = inner
                    .current()
                    .checked_at
                    .is_none_or(|at| at.elapsed() >= interval);
                if due {
                    // Logged and counted inside; the previous snapshot stays on failure.
                    let _ = inner.reload_fresh().await;
                }
            }
        });
        Watcher { task: Some(task) }
    }
}
