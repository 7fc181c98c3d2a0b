//! Black-box seed suite for pool-core: the pooling lessons of seed 000 (a Blob client pool keyed
//! by a recyclable `id(credential)`, entries never evicted) and SPEC P1–P10 and X5, through the
//! public API only. Virtual time throughout.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::time::Duration;

use pool_core::{
    BoxError, Created, EvictionCause, KeyedPool, Knob, PoolConfig, PoolError, Retire, SingleFlight,
};
use tokio::sync::Notify;
use tokio::time::{Instant, advance};

#[derive(Debug, thiserror::Error)]
#[error("backend unavailable")]
struct Unavailable;

/// A credential whose identity is a never-reused number (the fix for seed 000's `id()`).
#[derive(Debug)]
struct Credential {
    id: u64,
}

impl Credential {
    fn new() -> Arc<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Arc::new(Self {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
        })
    }
}

/// (credential identity, account): the pool key.
type Key = (u64, &'static str);

/// What a client does when the pool retires it.
#[derive(Default)]
enum OnRetire {
    #[default]
    Close,
    Fail,
    Panic,
    /// Record whether the pool held a lock while retiring.
    CheckLocks(Arc<OnceLock<KeyedPool<Key, Client>>>, Arc<AtomicBool>),
}

struct Client {
    credential: u64,
    serial: usize,
    retired: Arc<AtomicUsize>,
    on_retire: OnRetire,
}

impl Retire for Client {
    async fn retire(&self) -> Result<(), BoxError> {
        match &self.on_retire {
            OnRetire::Close => {}
            OnRetire::Fail => return Err("close failed".into()),
            OnRetire::Panic => panic!("retire panicked (expected by the test)"),
            OnRetire::CheckLocks(pool, saw_lock) => {
                if pool.get().is_some_and(KeyedPool::is_locked) {
                    saw_lock.store(true, Ordering::SeqCst);
                }
            }
        }
        self.retired.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Counts factory calls and retires.
#[derive(Clone, Default)]
struct Backend {
    built: Arc<AtomicUsize>,
    retired: Arc<AtomicUsize>,
}

impl Backend {
    fn client(&self, credential: u64) -> Client {
        Client {
            credential,
            serial: self.built.fetch_add(1, Ordering::SeqCst),
            retired: self.retired.clone(),
            on_retire: OnRetire::Close,
        }
    }

    fn built(&self) -> usize {
        self.built.load(Ordering::SeqCst)
    }

    fn retired(&self) -> usize {
        self.retired.load(Ordering::SeqCst)
    }
}

type Pool = KeyedPool<Key, Client>;

async fn get(pool: &Pool, key: Key, backend: &Backend) -> pool_core::Pooled<Client> {
    pool.get_or_create(&key, || async move {
        Ok::<_, Unavailable>(Created::new(backend.client(key.0)))
    })
    .await
    .expect("created")
}

async fn get_until(
    pool: &Pool,
    key: Key,
    backend: &Backend,
    deadline: Instant,
) -> pool_core::Pooled<Client> {
    pool.get_or_create(&key, || async move {
        Ok::<_, Unavailable>(Created::until(backend.client(key.0), deadline))
    })
    .await
    .expect("created")
}

/// Let background retires run.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

/// Threads on which a panic happened. A `current_thread` test runtime runs spawned tasks
/// (sweeper, background retires) on the test's own thread, so a panic in any of them shows up
/// under the test's thread name.
fn panicked_threads() -> &'static Mutex<HashSet<String>> {
    static PANICKED: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(name) = std::thread::current().name() {
                panicked_threads()
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(name.to_string());
            }
            previous(info);
        }));
    });
    PANICKED.get_or_init(Mutex::default)
}

fn assert_nothing_panicked_on_this_thread() {
    let name = std::thread::current()
        .name()
        .unwrap_or_default()
        .to_string();
    let panicked = panicked_threads().lock().unwrap().contains(&name);
    assert!(!panicked, "a task on {name} panicked");
}

// seed 000, P1: the pool is keyed by a never-reused identity. A new credential never receives
// the client built for a dropped one, even for the same account; the dropped credential's
// clients leave through `evict_where(OwnerGone)` and are retired.
#[tokio::test(start_paused = true)]
async fn seed000_new_credential_never_gets_a_dead_credentials_client() {
    let backend = Backend::default();
    let pool = Pool::new(PoolConfig::default());
    let old = Credential::new();
    let old_client = get(&pool, (old.id, "acct"), &backend).await;
    assert_eq!(old_client.credential, old.id);
    drop(old_client);
    let old_id = old.id;
    drop(old);

    let report = pool
        .evict_where(EvictionCause::OwnerGone, |key, _| key.0 == old_id)
        .await;
    assert_eq!((report.retired, report.failed), (1, 0));
    assert_eq!(pool.stats().evictions.owner_gone, 1);

    let new = Credential::new();
    assert_ne!(new.id, old_id, "identities are never reused");
    let client = get(&pool, (new.id, "acct"), &backend).await;
    assert_eq!(client.credential, new.id);
    assert_eq!(backend.built(), 2);
    assert_eq!(backend.retired(), 1);
}

// seed 000, P1: two live credentials for one account never share a client.
#[tokio::test(start_paused = true)]
async fn seed000_distinct_identities_never_share_a_client() {
    let backend = Backend::default();
    let pool = Pool::new(PoolConfig::default());
    let (a, b) = (Credential::new(), Credential::new());
    let from_a = get(&pool, (a.id, "acct"), &backend).await;
    let from_b = get(&pool, (b.id, "acct"), &backend).await;
    assert_ne!(from_a.serial, from_b.serial);
    assert_eq!((from_a.credential, from_b.credential), (a.id, b.id));
    assert_eq!(
        get(&pool, (a.id, "acct"), &backend).await.serial,
        from_a.serial
    );
    assert_eq!(pool.len(), 2);
}

// seed 000 ("clients held forever"), P3: entries unused for longer than the idle TTL are
// retired by prune_idle and by the background sweeper; used ones stay.
#[tokio::test(start_paused = true)]
async fn seed000_idle_clients_are_pruned_and_swept() {
    let backend = Backend::default();
    let pool = Pool::new(
        PoolConfig::default()
            .idle_ttl(Duration::from_secs(1800))
            .sweep_interval(Duration::from_secs(60)),
    );
    drop(get(&pool, (1, "idle"), &backend).await);
    drop(get(&pool, (1, "busy"), &backend).await);
    settle().await;
    for _ in 0..31 {
        advance(Duration::from_secs(60)).await;
        drop(pool.get(&(1, "busy")).expect("busy stays pooled"));
        settle().await;
    }
    assert!(pool.get(&(1, "idle")).is_none(), "swept after 1800 s idle");
    assert_eq!(pool.stats().evictions.idle, 1);
    assert_eq!(backend.retired(), 1);

    // The explicit prune, without a sweeper.
    let manual = Pool::new(PoolConfig::default());
    drop(get(&manual, (1, "a"), &backend).await);
    advance(Duration::from_secs(10)).await;
    assert_eq!(manual.prune_idle(Duration::from_secs(10)).await.total(), 0);
    advance(Duration::from_millis(1001)).await;
    assert_eq!(manual.prune_idle(Duration::from_secs(10)).await.total(), 1);
}

// P2: deadline = min(created + ttl, the factory's deadline); an expired entry is never handed
// out, by `get` or `get_or_create`.
#[tokio::test(start_paused = true)]
async fn p2_expired_entries_are_never_handed_out() {
    let backend = Backend::default();
    let pool = Pool::new(PoolConfig::default().ttl(Duration::from_secs(300)));
    let first = get(&pool, (1, "ttl"), &backend).await;
    assert_eq!(
        first.deadline(),
        Some(Instant::now() + Duration::from_secs(300))
    );
    let soon = get_until(
        &pool,
        (1, "cred"),
        &backend,
        Instant::now() + Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        soon.deadline(),
        Some(Instant::now() + Duration::from_secs(30))
    );
    let (first, soon) = (first.serial, soon.serial);

    advance(Duration::from_secs(29)).await;
    assert_eq!(pool.get(&(1, "cred")).expect("still valid").serial, soon);
    advance(Duration::from_secs(1)).await;
    assert!(pool.get(&(1, "cred")).is_none(), "at its deadline: gone");
    advance(Duration::from_secs(269)).await;
    assert_eq!(get(&pool, (1, "ttl"), &backend).await.serial, first);
    advance(Duration::from_secs(1)).await;
    assert!(pool.get(&(1, "ttl")).is_none());
    assert_ne!(get(&pool, (1, "ttl"), &backend).await.serial, first);
    assert_eq!(backend.built(), 3);
    assert_eq!(
        pool.stats().evictions.expired,
        2,
        "each `get` that found an expired entry evicted it"
    );
}

// P1: 100 concurrent misses on one key make one factory call; a slow creation for one key
// does not delay another key.
#[tokio::test(start_paused = true)]
async fn p1_single_flight_per_key_and_no_cross_key_waiting() {
    let backend = Backend::default();
    let pool = Pool::new(PoolConfig::default());
    let gate = Arc::new(Notify::new());
    let slow = {
        let (pool, backend, gate) = (pool.clone(), backend.clone(), gate.clone());
        tokio::spawn(async move {
            pool.get_or_create(&(1, "slow"), || async move {
                gate.notified().await;
                Ok::<_, Unavailable>(Created::new(backend.client(1)))
            })
            .await
            .map(|c| c.serial)
        })
    };
    settle().await;
    let started = Instant::now();
    let fast = get(&pool, (1, "fast"), &backend).await;
    assert_eq!(Instant::now(), started, "the other key never waited");
    drop(fast);

    let callers: Vec<_> = (0..100)
        .map(|_| {
            let (pool, backend) = (pool.clone(), backend.clone());
            tokio::spawn(async move {
                let built = pool
                    .get_or_create(&(1, "hot"), || async move {
                        // A real factory does I/O: let the other callers arrive meanwhile.
                        settle().await;
                        Ok::<_, Unavailable>(Created::new(backend.client(1)))
                    })
                    .await;
                built.expect("created").serial
            })
        })
        .collect();
    let serials: HashSet<_> = futures::future::join_all(callers)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(serials.len(), 1, "every caller got the one value");
    gate.notify_one();
    slow.await.unwrap().unwrap();
    assert_eq!(backend.built(), 3, "slow, fast and hot: one build each");
    assert_eq!(
        pool.stats().coalesced,
        99,
        "99 callers joined the leader's creation"
    );
}

// P1, P10: a failed creation is shared by its waiters and not cached.
#[tokio::test(start_paused = true)]
async fn p1_failures_are_shared_and_not_cached() {
    let pool = Pool::new(PoolConfig::default());
    let calls = AtomicUsize::new(0);
    let failing = || async {
        calls.fetch_add(1, Ordering::SeqCst);
        tokio::task::yield_now().await;
        Err::<Created<Client>, _>(Unavailable)
    };
    let (a, b) = tokio::join!(
        pool.get_or_create(&(1, "x"), failing),
        pool.get_or_create(&(1, "x"), failing)
    );
    assert!(matches!(a, Err(PoolError::Create(_))) && matches!(b, Err(PoolError::Create(_))));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let backend = Backend::default();
    get(&pool, (1, "x"), &backend).await;
    assert_eq!(pool.stats().creation_failures, 1);
}

// P4, X4: past capacity the entry with the soonest deadline is evicted (not the oldest, not
// the least recently used) and retired.
#[tokio::test(start_paused = true)]
async fn p4_capacity_evicts_the_soonest_deadline_first() {
    let backend = Backend::default();
    let pool = Pool::new(PoolConfig::default().max_entries(3));
    let now = Instant::now();
    for (account, secs) in [("a", 300), ("b", 100), ("c", 200)] {
        get_until(
            &pool,
            (1, account),
            &backend,
            now + Duration::from_secs(secs),
        )
        .await;
    }
    // "b" is the most recently used; it still goes first because it expires first.
    drop(pool.get(&(1, "b")));
    get_until(&pool, (1, "d"), &backend, now + Duration::from_secs(400)).await;
    settle().await;
    assert_eq!(pool.len(), 3);
    assert!(pool.get(&(1, "b")).is_none());
    for kept in ["a", "c", "d"] {
        assert!(pool.get(&(1, kept)).is_some(), "{kept} kept");
    }
    assert_eq!(pool.stats().evictions.capacity, 1);
    assert_eq!(backend.retired(), 1);
}

// P5: retire runs after every pool lock is released, on every path (capacity, expiry,
// invalidate, reset), and one failing or panicking retire never stops the others.
#[tokio::test(start_paused = true)]
async fn p5_retire_outside_locks_and_failures_isolated() {
    let slot = Arc::new(OnceLock::new());
    let saw_lock = Arc::new(AtomicBool::new(false));
    let pool = Pool::new(
        PoolConfig::default()
            .max_entries(2)
            .ttl(Duration::from_secs(10)),
    );
    slot.set(pool.clone()).ok();
    let backend = Backend::default();
    let checking = |account: &'static str| {
        let (slot, saw_lock, backend) = (slot.clone(), saw_lock.clone(), backend.clone());
        let pool = pool.clone();
        async move {
            pool.get_or_create(&(1, account), || async move {
                let mut client = backend.client(1);
                client.on_retire = OnRetire::CheckLocks(slot, saw_lock);
                Ok::<_, Unavailable>(Created::new(client))
            })
            .await
            .expect("created")
        }
    };
    for account in ["a", "b", "c"] {
        drop(checking(account).await); // "a" leaves by capacity
    }
    assert!(pool.invalidate(&(1, "b")).await);
    advance(Duration::from_secs(10)).await;
    assert!(pool.get(&(1, "c")).is_none()); // expired
    drop(checking("d").await);
    pool.reset().await;
    settle().await;
    assert_eq!(backend.retired(), 4);
    assert!(
        !saw_lock.load(Ordering::SeqCst),
        "a retire ran under a pool lock"
    );

    // Failures: 2 good, 1 failing, 1 panicking retire in one reset.
    let pool = Pool::new(PoolConfig::default());
    let backend = Backend::default();
    for (account, on_retire) in [
        ("ok1", OnRetire::Close),
        ("fail", OnRetire::Fail),
        ("panic", OnRetire::Panic),
        ("ok2", OnRetire::Close),
    ] {
        let backend = backend.clone();
        pool.get_or_create(&(1, account), || async move {
            let mut client = backend.client(1);
            client.on_retire = on_retire;
            Ok::<_, Unavailable>(Created::new(client))
        })
        .await
        .unwrap();
    }
    let report = pool.reset().await;
    assert_eq!((report.retired, report.failed), (2, 2));
    assert_eq!(pool.stats().retire_failures, 2);
    assert!(pool.is_empty());
}

// P6: a value that must not be pooled (one-shot, or a deadline already passed) goes to the
// caller only, is retired when dropped, and leaves the pool unchanged.
#[tokio::test(start_paused = true)]
async fn p6_one_shot_values_are_never_pooled_and_retired_on_drop() {
    let backend = Backend::default();
    let pool = Pool::new(PoolConfig::default());
    let once = pool
        .get_or_create(&(1, "x"), || async {
            Ok::<_, Unavailable>(Created::one_shot(backend.client(1)))
        })
        .await
        .unwrap();
    assert!(!once.is_pooled());
    assert!(pool.is_empty() && pool.get(&(1, "x")).is_none());
    drop(once);
    settle().await;
    assert_eq!(backend.retired(), 1);

    let past = Instant::now();
    advance(Duration::from_secs(1)).await;
    let stale = get_until(&pool, (1, "y"), &backend, past).await;
    assert!(!stale.is_pooled());
    assert!(pool.is_empty());
    drop(stale);
    settle().await;
    assert_eq!(backend.retired(), 2);
    assert_eq!(pool.stats().one_shots, 2);
}

// P7: reset retires everything and leaves the pool usable; after shutdown, get_or_create fails.
#[tokio::test(start_paused = true)]
async fn p7_reset_and_shutdown() {
    let backend = Backend::default();
    let pool = Pool::new(PoolConfig::default());
    drop(get(&pool, (1, "a"), &backend).await);
    drop(get(&pool, (1, "b"), &backend).await);
    assert_eq!(pool.reset().await.retired, 2);
    drop(get(&pool, (1, "a"), &backend).await);
    let report = pool.shutdown().await;
    assert_eq!((report.retire.retired, report.skipped_shards), (1, 0));
    let after = pool
        .get_or_create(&(1, "a"), || async {
            Ok::<_, Unavailable>(Created::new(backend.client(1)))
        })
        .await;
    assert!(matches!(after, Err(PoolError::ShutDown)));
    assert_eq!(pool.stats().evictions.reset, 3);
}

// P8: knobs clamp into their range, garbage falls back to the default, nothing panics.
#[test]
fn p8_knobs_clamp_and_never_panic() {
    const MAX_ENTRIES: Knob<usize> = Knob::new("K8S_SESSION_POOL_MAX_ENTRIES", 32, 1, 4096);
    for (raw, expected) in [
        ("0", 1),
        ("100000", 4096),
        ("17", 17),
        ("lots", 32),
        ("-1", 32),
        ("", 32),
        ("99999999999999999999999999", 32),
    ] {
        assert_eq!(
            MAX_ENTRIES.read_with(|_| Some(raw.into())),
            expected,
            "{raw:?}"
        );
    }
    // A knob whose range reaches u64::MAX seconds: the Duration is huge, the pool clamps it.
    const FOREVER: Knob<u64> = Knob::new("POOL_CORE_SEED_TTL", 300, 0, u64::MAX);
    let ttl = FOREVER.read_secs_with(|_| Some(u64::MAX.to_string()));
    assert_eq!(ttl, Duration::from_secs(u64::MAX));
    let config = PoolConfig::default().ttl(ttl).idle_ttl(ttl).max_entries(0);
    assert_eq!(config.ttl_value(), Some(PoolConfig::MAX_DURATION));
    assert_eq!(
        config.max_entries_value(),
        1,
        "capacity clamps to at least 1"
    );
}

// X5, issue #16: every Duration the config accepts may be Duration::MAX; nothing panics,
// neither on the caller's path nor in the sweeper or background retires, and values are
// pooled "effectively forever".
#[tokio::test(start_paused = true)]
async fn x5_duration_max_everywhere_never_panics() {
    panicked_threads();
    let backend = Backend::default();
    let pool = Pool::new(
        PoolConfig::default()
            .ttl(Duration::MAX)
            .idle_ttl(Duration::MAX)
            .sweep_interval(Duration::MAX)
            .retire_timeout(Duration::MAX)
            .max_entries(1),
    );
    let first = get(&pool, (1, "a"), &backend).await;
    assert!(first.is_pooled());
    let deadline = first.deadline().expect("clamped TTL");
    assert!(deadline > Instant::now() + Duration::from_secs(86_400 * 365 * 29));
    drop(first);
    settle().await;
    advance(Duration::from_secs(86_400 * 365 * 10)).await;
    settle().await;
    assert!(pool.get(&(1, "a")).is_some(), "ten years on, still pooled");
    assert_eq!(pool.prune_idle(Duration::MAX).await.total(), 0);
    drop(get(&pool, (1, "b"), &backend).await); // capacity evicts "a" in the background
    settle().await;
    assert_eq!(backend.retired(), 1);
    // A factory deadline at the far edge of the clock, and one in the past.
    let far = Instant::now() + PoolConfig::MAX_DURATION;
    drop(get_until(&pool, (1, "far"), &backend, far).await);
    assert_eq!(pool.reset().await.failed, 0);
    advance(PoolConfig::MAX_DURATION).await; // the sweeper's first tick
    settle().await;
    assert_nothing_panicked_on_this_thread();
}

// P10: concurrent loads of one key share the leader's result; a cancelled leader hands over
// to a waiter instead of stranding it.
#[tokio::test(start_paused = true)]
async fn p10_single_flight_survives_a_cancelled_leader() {
    let flights: SingleFlight<&str, u32> = SingleFlight::new();
    let loads = AtomicUsize::new(0);
    let load = |value: u32| {
        let loads = &loads;
        async move {
            loads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(1)).await;
            value
        }
    };
    let leader = flights.run("k", load(1));
    let waiter = flights.run("k", load(2));
    let (cancelled, value) = tokio::join!(
        tokio::time::timeout(Duration::from_millis(10), leader),
        waiter
    );
    assert!(cancelled.is_err(), "the leader was cancelled");
    assert_eq!(value, 2, "the waiter took over with its own load");
    assert_eq!(loads.load(Ordering::SeqCst), 2);

    let (a, b) = tokio::join!(flights.run("j", load(7)), flights.run("j", load(8)));
    assert_eq!((a, b), (7, 7), "one load, shared");
}

// P9: the counters count every path.
#[tokio::test(start_paused = true)]
async fn p9_stats_count_hits_misses_and_evictions() {
    let backend = Backend::default();
    let pool = Pool::new(PoolConfig::default().ttl(Duration::from_secs(5)));
    drop(get(&pool, (1, "a"), &backend).await);
    drop(get(&pool, (1, "a"), &backend).await);
    pool.invalidate(&(1, "a")).await;
    drop(get(&pool, (1, "a"), &backend).await);
    advance(Duration::from_secs(5)).await;
    pool.prune_expired().await;
    let stats = pool.stats();
    assert_eq!((stats.hits, stats.misses, stats.creations), (1, 2, 2));
    assert_eq!(
        (stats.evictions.invalidated, stats.evictions.expired),
        (1, 1)
    );
    assert_eq!(stats.entries, 0);
}

/// A paused current-thread runtime, for tests where the pool outlives one.
fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime")
}

// seed 000 ("clients held forever") and the incident class "a background task disabled for
// good": a pool outlives the runtime its sweeper ran on (a `static` pool used by tests with a
// runtime each, an application restarting its runtime). On the next runtime the pool must
// sweep again, not keep idle clients forever because a dead task still counts as started.
#[test]
fn seed000_sweeper_restarts_on_the_next_runtime() {
    let backend = Backend::default();
    let pool = Pool::new(
        PoolConfig::default()
            .idle_ttl(Duration::from_secs(60))
            .sweep_interval(Duration::from_secs(10)),
    );
    let first = paused_runtime();
    first.block_on(async {
        drop(get(&pool, (1, "first"), &backend).await);
        settle().await;
    });
    drop(first); // the sweeper task goes with its runtime
    paused_runtime().block_on(async {
        drop(get(&pool, (1, "second"), &backend).await);
        settle().await;
        for _ in 0..30 {
            advance(Duration::from_secs(10)).await;
            settle().await;
        }
        assert!(
            pool.is_empty(),
            "idle clients kept {} ({:?})",
            pool.len(),
            pool.stats().evictions
        );
        assert_eq!(backend.retired(), 2);
    });
}

// The same for capacity evictions: a victim queued for retire whose retire task was spawned
// but never ran (its runtime shut down first) must not stop every later retire.
#[test]
fn p4_retire_queue_restarts_on_the_next_runtime() {
    let backend = Backend::default();
    let pool = Pool::new(PoolConfig::default().max_entries(1));
    let first = paused_runtime();
    first.block_on(async {
        drop(get(&pool, (1, "a"), &backend).await);
        // Evicts "a"; its retire task is spawned but this block returns before it runs.
        drop(get(&pool, (1, "b"), &backend).await);
    });
    drop(first);
    assert_eq!(backend.retired(), 0, "the retire task never ran");
    paused_runtime().block_on(async {
        drop(get(&pool, (1, "c"), &backend).await); // evicts "b"
        settle().await;
        assert_eq!(
            backend.retired(),
            2,
            "the victims queued before and after the restart are both retired"
        );
    });
}
