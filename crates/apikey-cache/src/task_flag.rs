//! "One background task of this kind at a time", robust to the task being dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether a background task of one kind is running. [`TaskFlag::start`] hands out a
/// [`Running`] token that clears the flag when it is dropped: when the task ends, and also
/// when its runtime shuts down and drops it mid-way — a flag cleared only at the task's end
/// would stay set for good and disable every later retry.
#[derive(Debug, Default)]
pub(crate) struct TaskFlag(Arc<AtomicBool>);

/// Held by the running task; dropping it lets the next task start.
#[derive(Debug)]
pub(crate) struct Running(Arc<AtomicBool>);

impl TaskFlag {
    /// `None` if a task is running; otherwise the token the new task must hold.
    pub(crate) fn start(&self) -> Option<Running> {
        (!self.0.swap(true, Ordering::AcqRel)).then(|| Running(self.0.clone()))
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
