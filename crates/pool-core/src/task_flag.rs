//! "One background task of this kind at a time", robust to the task being dropped.
//!
//! Seed 004's incident was a "refresh running" flag that only the refresh itself cleared: when
//! the task died, no refresh ever started again. The pools' sweepers, the retire queue and the
//! API-key cache's background retries all need the same guard, so it lives here once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether a background task of one kind is running. [`TaskFlag::start`] hands out a
/// [`Running`] token to move into the task; the flag is cleared when the token is dropped —
/// when the task ends, and also when its runtime shuts down and drops the task mid-way or
/// before its first poll. A flag cleared only by code at the task's end would stay set for good
/// and disable every later task of its kind.
///
/// ```
/// let flag = pool_core::TaskFlag::default();
/// let running = flag.start().expect("nothing runs yet");
/// assert!(flag.start().is_none());
/// drop(running); // e.g. the task ended, or its runtime dropped it
/// assert!(flag.start().is_some());
/// ```
#[derive(Debug, Default)]
pub struct TaskFlag(Arc<AtomicBool>);

/// Held by the running task; dropping it lets the next task start.
#[derive(Debug)]
#[must_use = "dropping the token at once clears the flag"]
pub struct Running(Arc<AtomicBool>);

impl TaskFlag {
    /// `None` if a task is running; otherwise the token the new task must hold.
    pub fn start(&self) -> Option<Running> {
        // A load first: callers on hot paths (a pool's `get`) ask on every call, and a
        // running task is the common answer; only a possible start writes the shared line.
        let free = !self.0.load(Ordering::Acquire) && !self.0.swap(true, Ordering::AcqRel);
        free.then(|| Running(self.0.clone()))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::TaskFlag;

    #[test]
    fn one_at_a_time_and_free_again_when_the_token_is_dropped() {
        let flag = TaskFlag::default();
        let running = flag.start().expect("free");
        assert!(flag.start().is_none(), "a second task while one runs");
        drop(running);
        assert!(
            flag.start().is_some(),
            "free again once the token is dropped"
        );
    }

    // The seed's "background refresh disabled for good": a task dropped before its end (its
    // runtime shut down) must not leave the flag set.
    #[test]
    fn a_task_dropped_by_its_runtime_frees_the_flag() {
        let flag = TaskFlag::default();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let running = flag.start().expect("free");
        runtime.spawn(async move {
            let _running = running;
            std::future::pending::<()>().await;
        });
        drop(runtime);
        assert!(flag.start().is_some(), "the dropped task left the flag set");
    }
}
