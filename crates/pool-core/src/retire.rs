//! The `Retire` trait and the isolated, lock-free runner that tears values down.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::FutureExt;

use crate::pool::Slot;
use crate::stats::Counters;

/// A boxed error, as returned by [`Retire::retire`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// How a pooled value is torn down when the pool lets go of it.
///
/// The pool calls `retire` exactly once per value it evicts, always after every pool lock is
/// released (P5), bounded by [`PoolConfig::retire_timeout`](crate::PoolConfig::retire_timeout).
/// A failing, panicking or hanging retire is counted in
/// [`PoolStats::retire_failures`](crate::PoolStats::retire_failures) and never stops the others.
///
/// Handles that are still out when an entry is evicted keep the value alive (it is behind an
/// `Arc`); `retire` should therefore release what the pool owns (idle connections, cached
/// material) rather than break in-flight calls.
///
/// The default does nothing, so a value that only needs dropping is one line:
///
/// ```
/// struct Plain;
/// impl pool_core::Retire for Plain {}
/// ```
pub trait Retire: Send + Sync + 'static {
    /// Tear the value down: close connections, flush, delete material.
    fn retire(&self) -> impl Future<Output = Result<(), BoxError>> + Send {
        async { Ok(()) }
    }
}

/// What a bulk retire ([`KeyedPool::reset`](crate::KeyedPool::reset),
/// [`KeyedPool::prune_idle`](crate::KeyedPool::prune_idle) …) did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetireReport {
    /// Values whose retire returned `Ok`.
    pub retired: usize,
    /// Values whose retire returned an error, panicked or timed out.
    pub failed: usize,
}

impl RetireReport {
    /// Values removed from the pool, successfully retired or not.
    pub fn total(&self) -> usize {
        self.retired + self.failed
    }
}

/// Retire every value one after the other, isolating each failure. Must be called with no pool
/// lock held; callers pass values they have already removed from the map.
pub(crate) async fn retire_all<V: Retire>(
    values: Vec<Arc<Slot<V>>>,
    timeout: Duration,
    counters: &Counters,
) -> RetireReport {
    let mut report = RetireReport::default();
    for value in values {
        if retire_one(&value.value, timeout).await {
            report.retired += 1;
        } else {
            report.failed += 1;
            counters.retire_failures.add(1);
        }
    }
    report
}

/// Run one retire, returning whether it succeeded.
///
/// A retire that finishes on its first poll (one with nothing to await, like the default) needs
/// no timer: the timeout, which reads the clock and takes a timer handle, is set only for a
/// retire that has to wait.
async fn retire_one<V: Retire>(value: &V, timeout: Duration) -> bool {
    // `retire` may run code (and panic) before it returns its future: caught like a panic
    // inside the future, so it neither unwinds into the caller nor ends a background batch.
    let Ok(retire) = std::panic::catch_unwind(AssertUnwindSafe(|| value.retire())) else {
        tracing::warn!("retiring a pooled value panicked");
        return false;
    };
    let mut attempt = std::pin::pin!(AssertUnwindSafe(retire).catch_unwind());
    let outcome = match futures::poll!(attempt.as_mut()) {
        std::task::Poll::Ready(outcome) => Ok(outcome),
        std::task::Poll::Pending => tokio::time::timeout(timeout, attempt).await,
    };
    match outcome {
        Ok(Ok(Ok(()))) => true,
        Ok(Ok(Err(error))) => {
            tracing::warn!(error = %error, "retiring a pooled value failed");
            false
        }
        Ok(Err(_panic)) => {
            tracing::warn!("retiring a pooled value panicked");
            false
        }
        Err(_elapsed) => {
            tracing::warn!(?timeout, "retiring a pooled value timed out");
            false
        }
    }
}

/// Retire in the background when a runtime is available (eviction on a caller's path must not
/// make that caller wait for someone else's teardown); otherwise drop the values and say so.
pub(crate) fn retire_detached<V: Retire>(
    values: Vec<Arc<Slot<V>>>,
    timeout: Duration,
    counters: Arc<Counters>,
) {
    if values.is_empty() {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(async move {
                retire_all(values, timeout, &counters).await;
            });
        }
        Err(_) => {
            tracing::warn!(
                count = values.len(),
                "no tokio runtime to retire evicted values on; dropping them without retire"
            );
            counters.retire_failures.add(values.len() as u64);
        }
    }
}

/// Background retire for victims evicted on callers' paths (expiry found by a lookup, capacity).
///
/// Victims queue up; one task is spawned per *batch*, not per victim: the first push after a
/// task has started spawns the next, and that task takes everything queued by the time it runs.
/// A busy caller evicting on every insert therefore pays a queue push, not a task spawn, per
/// eviction. Within a batch retires run concurrently, each bounded by the timeout, so a hanging
/// retire delays no other.
pub(crate) struct RetireQueue<V> {
    pending: Mutex<Vec<Arc<Slot<V>>>>,
    scheduled: crate::TaskFlag,
    timeout: Duration,
    counters: Arc<Counters>,
}

impl<V: Retire> RetireQueue<V> {
    pub(crate) fn new(timeout: Duration, counters: Arc<Counters>) -> Self {
        Self {
            pending: Mutex::new(Vec::new()),
            scheduled: crate::TaskFlag::default(),
            timeout,
            counters,
        }
    }

    /// Queue `values` for retire. Must be called with no pool lock held.
    pub(crate) fn push(self: &Arc<Self>, values: Vec<Arc<Slot<V>>>) {
        if values.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                count = values.len(),
                "no tokio runtime to retire evicted values on; dropping them without retire"
            );
            self.counters.retire_failures.add(values.len() as u64);
            return;
        };
        self.lock().extend(values);
        // The token goes with the task: dropped unrun (its runtime shut down), it frees the
        // flag, so the next push schedules a new task instead of queueing for good.
        if let Some(scheduled) = self.scheduled.start() {
            let queue = self.clone();
            runtime.spawn(async move {
                // Cleared before taking the batch: a push after this point schedules a new task.
                drop(scheduled);
                let batch = std::mem::take(&mut *queue.lock());
                retire_concurrently(&batch, queue.timeout, &queue.counters).await;
            });
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Slot<V>>>> {
        // Nothing panics while holding it: a poisoned lock breaks nothing.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Retire a batch concurrently, each retire bounded by `timeout`, counting each failure as it
/// happens.
///
/// Each retire is polled once as it is started: one that finishes then (the default retire, and
/// most that only drop) is done without a timer or a task slot, and only the retires that have
/// to wait are kept and driven together. A batch of victims evicted by a busy caller costs one
/// poll each, not a `join_all` of them all (a task per future, and one allocation the size of
/// the whole batch: at 1M entries the evicting insert took 2.0–2.4× a plain one with it,
/// 1.5–1.7× without, `POOL_SCALE_ONLY=1M` on `benches/pool_scale.rs`).
async fn retire_concurrently<V: Retire>(
    batch: &[Arc<Slot<V>>],
    timeout: Duration,
    counters: &Counters,
) {
    let mut waiting = Vec::new();
    for slot in batch {
        let mut attempt = Box::pin(retire_one(&slot.value, timeout));
        match futures::poll!(attempt.as_mut()) {
            std::task::Poll::Ready(true) => {}
            std::task::Poll::Ready(false) => counters.retire_failures.add(1),
            std::task::Poll::Pending => waiting.push(attempt),
        }
    }
    if waiting.is_empty() {
        return;
    }
    let mut waiting = CutOff {
        retires: waiting.into_iter().collect(),
        counters,
    };
    while let Some(ok) = futures::StreamExt::next(&mut waiting.retires).await {
        if !ok {
            counters.retire_failures.add(1);
        }
    }
}

/// Retires still waiting when their batch is dropped unfinished (its runtime shut down): each
/// is counted as a retire that could not run.
struct CutOff<'a, F> {
    retires: futures::stream::FuturesUnordered<F>,
    counters: &'a Counters,
}

impl<F> Drop for CutOff<'_, F> {
    fn drop(&mut self) {
        let cut = self.retires.len();
        if cut > 0 {
            tracing::warn!(
                count = cut,
                "retires of pooled values cut off by their runtime shutting down"
            );
            self.counters.retire_failures.add(cut as u64);
        }
    }
}
