//! `SingleFlight`: one async load per key at a time, shared by every concurrent caller.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::OnceCell;

/// Deduplicates concurrent async loads by key (P10).
///
/// The first caller for a key (the leader) runs its load; callers that arrive while it runs
/// wait and receive a clone of the leader's output — success or error alike, so a failing
/// backend sees one call, not one per caller. Once the load has finished the key is forgotten:
/// the next call loads again (caching is the caller's business).
///
/// If the leader is cancelled (its future dropped) or panics, one of the waiters runs *its own*
/// load instead: nobody is stranded waiting for a result that will never come. Loads for
/// different keys never wait on each other; the internal lock is held only to find the key's
/// slot, never across an `.await`.
///
/// ```
/// use pool_core::SingleFlight;
/// use std::sync::atomic::{AtomicUsize, Ordering};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let flights = SingleFlight::<&str, u32>::new();
/// let calls = AtomicUsize::new(0);
/// let load = || async {
///     calls.fetch_add(1, Ordering::SeqCst);
///     tokio::task::yield_now().await;
///     42
/// };
/// let (a, b) = tokio::join!(flights.run("answer", load()), flights.run("answer", load()));
/// assert_eq!((a, b), (42, 42));
/// assert_eq!(calls.load(Ordering::SeqCst), 1);
/// # }
/// ```
pub struct SingleFlight<K, T> {
    flights: Mutex<HashMap<K, Arc<OnceCell<T>>>>,
}

impl<K, T> Default for SingleFlight<K, T> {
    fn default() -> Self {
        Self {
            flights: Mutex::new(HashMap::new()),
        }
    }
}

impl<K, T> fmt::Debug for SingleFlight<K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let in_flight = self
            .flights
            .lock()
            .map(|m| m.len())
            .unwrap_or_else(|p| p.into_inner().len());
        f.debug_struct("SingleFlight")
            .field("in_flight", &in_flight)
            .finish()
    }
}

impl<K, T> SingleFlight<K, T>
where
    K: Hash + Eq + Clone,
    T: Clone,
{
    /// An empty group.
    pub fn new() -> Self {
        Self::default()
    }

    /// Run `load` for `key`, unless a load for `key` is already running, in which case wait for
    /// it and return a clone of its output. `load` is only polled if this caller becomes the
    /// leader (first in, or taking over from a cancelled leader); otherwise it is dropped.
    pub async fn run<F>(&self, key: K, load: F) -> T
    where
        F: Future<Output = T>,
    {
        let cell = {
            let mut flights = self.lock();
            flights.entry(key.clone()).or_default().clone()
        };
        let guard = Forget {
            flights: self,
            key: Some(key),
            cell: &cell,
        };
        let output = cell.get_or_init(|| load).await.clone();
        drop(guard);
        output
    }

    /// Keys with a load running (or abandoned by every caller and not yet cleaned up).
    pub fn in_flight(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Arc<OnceCell<T>>>> {
        // Nothing that can panic runs under this lock, so poisoning carries no broken invariant.
        self.flights.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// On every exit from [`SingleFlight::run`] (result, cancellation or panic), removes the key's
/// slot once it is finished or nobody else is waiting on it, so finished loads are never reused
/// and abandoned ones never leak.
struct Forget<'a, K: Hash + Eq + Clone, T: Clone> {
    flights: &'a SingleFlight<K, T>,
    key: Option<K>,
    cell: &'a Arc<OnceCell<T>>,
}

impl<K: Hash + Eq + Clone, T: Clone> Drop for Forget<'_, K, T> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let mut flights = self.flights.lock();
        let ours = flights
            .get(&key)
            .is_some_and(|current| Arc::ptr_eq(current, self.cell));
        // Joiners clone the slot under this same lock, so the count cannot grow while we look:
        // 2 means only the map and this caller hold it.
        if ours && (self.cell.initialized() || Arc::strong_count(self.cell) <= 2) {
            flights.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    // covers P10: concurrent loads for one key share one call, and its error.
    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_load_and_its_error() {
        let flights = Arc::new(SingleFlight::<u8, Result<u32, String>>::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let (flights, calls) = (flights.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                flights
                    .run(1, async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        Err::<u32, _>("backend down".to_string())
                    })
                    .await
            }));
        }
        for task in tasks {
            assert_eq!(task.await.expect("task"), Err("backend down".to_string()));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(flights.in_flight(), 0, "finished loads are forgotten");
    }

    // covers P10: a cancelled leader does not strand its waiters; one of them takes over.
    #[tokio::test(start_paused = true)]
    async fn cancelled_leader_hands_over_to_a_waiter() {
        let flights = Arc::new(SingleFlight::<u8, u32>::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let leader = {
            let (flights, calls) = (flights.clone(), calls.clone());
            tokio::spawn(async move {
                flights
                    .run(1, async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        std::future::pending::<u32>().await
                    })
                    .await
            })
        };
        tokio::task::yield_now().await;
        let waiter = {
            let (flights, calls) = (flights.clone(), calls.clone());
            tokio::spawn(async move {
                flights
                    .run(1, async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        7
                    })
                    .await
            })
        };
        tokio::task::yield_now().await;
        leader.abort();
        let value = tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("waiter not stranded")
            .expect("task");
        assert_eq!(value, 7);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(flights.in_flight(), 0);
    }

    // covers P10: a flight abandoned by every caller does not leak its slot.
    #[tokio::test(start_paused = true)]
    async fn abandoned_flight_is_forgotten() {
        let flights = SingleFlight::<u8, u32>::new();
        let attempt = flights.run(1, std::future::pending());
        assert!(
            tokio::time::timeout(Duration::from_millis(5), attempt)
                .await
                .is_err()
        );
        assert_eq!(flights.in_flight(), 0);
        assert_eq!(flights.run(1, async { 3 }).await, 3);
    }

    // covers P10: different keys never wait on each other.
    #[tokio::test(start_paused = true)]
    async fn different_keys_run_concurrently() {
        let flights = Arc::new(SingleFlight::<u8, u32>::new());
        let slow = {
            let flights = flights.clone();
            tokio::spawn(async move { flights.run(1, std::future::pending()).await })
        };
        tokio::task::yield_now().await;
        let fast = tokio::time::timeout(Duration::from_millis(1), flights.run(2, async { 2 }))
            .await
            .expect("key 2 does not wait for key 1");
        assert_eq!(fast, 2);
        slow.abort();
    }
}
