//! Black-box tests of the lock-free ring (session 38) and its readers, through the public API
//! only: `Inspector::{layer, entries, entries_matching, stats, clear}`, `entries_handler` and
//! the `inspector.ring.*` gauges.
//!
//! Promises attacked (docs/request-inspector.md, "Capture, streaming and memory", "Metrics",
//! "JSON handler"; rustdoc of `Inspector::entries`, `Inspector::clear`, `InspectorStats`):
//! - "Every list is a run of consecutive ids, and once writers are quiet exactly the newest
//!   `min(captured, capacity)` since the last clear."
//! - "an id given but not yet landed ... is waited for, with yields, as a lock would be; an
//!   entry pushed out while the list is read moves the list's start past it".
//! - `clear()`: "its records are freed; its slots ... are kept ... ids go on from where they
//!   were. A capture finishing while the clear runs may land after it."
//! - `InspectorStats`: "one read agrees with itself where it matters: `evicted <= captured`,
//!   `retained_bytes` is the sum of its four parts, and `peak_retained_bytes >= retained_bytes`".
//! - gauges "move up and down (each push, eviction and clear by what it changed) ... an
//!   inspector that is dropped takes its part out of them".
//!
//! Concurrent tests use OS threads, each with its own current-thread runtime; every wait is
//! bounded by a deadline (a hang fails the test instead of blocking it).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{Method, Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use request_inspector::{
    Entry, EntryFilter, EntryQuery, InspectBody, Inspector, InspectorConfig, InspectorStats,
    Outcome, entries_handler,
};
use tower::{Layer, Service, ServiceExt};

/// Generous bound for one read of the ring (the guide: a reader copies slot by slot and waits
/// only for an id "between the add and its slot's lock, which takes no `.await` and no IO").
const READ_BOUND: Duration = Duration::from_secs(1);
/// Bound for a whole concurrent phase: a hang fails the test.
const PHASE_DEADLINE: Duration = Duration::from_secs(60);
/// One chunk of 64 slots: "1 024 bytes per 64 slots".
const CHUNK_BYTES: usize = 1024;

// ---------------------------------------------------------------------------------------------
// The service under the layer and one exchange through it.
// ---------------------------------------------------------------------------------------------

fn method_for(i: usize) -> Method {
    [Method::POST, Method::PUT, Method::PATCH, Method::DELETE][i % 4].clone()
}

fn status_for(i: usize) -> u16 {
    [200, 201, 404][i % 3]
}

/// Reads the whole request body and answers `resp:<tag>` with the status asked for.
async fn echo(req: Request<InspectBody<Full<Bytes>>>) -> Result<Response<Full<Bytes>>, Infallible> {
    let tag = req.headers()["x-tag"].to_str().unwrap().to_owned();
    let status: u16 = req.headers()["x-status"].to_str().unwrap().parse().unwrap();
    let body = match req.into_body().collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => panic!("request body failed"),
    };
    assert_eq!(body, Bytes::from(format!("req:{tag}")));
    Ok(Response::builder()
        .status(status)
        .header("x-tag", tag.as_str())
        .body(Full::new(Bytes::from(format!("resp:{tag}"))))
        .unwrap())
}

fn make_service(
    inspector: &Inspector,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<InspectBody<Full<Bytes>>>,
    Error = Infallible,
    Future: Send,
> + Clone
+ Send
+ 'static {
    inspector.layer().layer(tower::service_fn(echo))
}

fn tag(w: usize, i: usize) -> String {
    format!("w{w}-{i}")
}

/// One captured exchange for writer `w`, request `i`, driven to the end of its response body.
async fn exchange<S>(svc: &S, w: usize, i: usize)
where
    S: Service<
            Request<Full<Bytes>>,
            Response = Response<InspectBody<Full<Bytes>>>,
            Error = Infallible,
        > + Clone,
{
    let tag = tag(w, i);
    let req = Request::builder()
        .method(method_for(i))
        .uri(format!("/w/{w}/{i}?n={i}"))
        .header("x-request-id", tag.as_str())
        .header("x-tag", tag.as_str())
        .header("x-status", status_for(i).to_string())
        .body(Full::new(Bytes::from(format!("req:{tag}"))))
        .unwrap();
    let resp = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status().as_u16(), status_for(i));
    assert_eq!(resp.headers()["x-request-id"], tag.as_str());
    let body = match resp.into_body().collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => panic!("response body failed"),
    };
    assert_eq!(body, Bytes::from(format!("resp:{tag}")));
}

fn current_thread_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Checks.
// ---------------------------------------------------------------------------------------------

/// The writer and request number an entry was made from (its propagated request id).
fn origin(e: &Entry) -> (usize, usize) {
    let rest = e
        .request_id
        .strip_prefix('w')
        .unwrap_or_else(|| panic!("foreign request id {:?}", e.request_id));
    let (w, i) = rest.split_once('-').unwrap();
    (w.parse().unwrap(), i.parse().unwrap())
}

fn header<'a>(list: &'a [request_inspector::Header], name: &str) -> Option<&'a str> {
    list.iter()
        .find(|h| h.name == name)
        .map(|h| h.value.as_str())
}

/// An entry is intact: every field comes from the one exchange whose request id it carries.
fn check_entry(e: &Entry) {
    let (w, i) = origin(e);
    let tag = tag(w, i);
    assert_eq!(
        e.method,
        method_for(i).as_str(),
        "entry {} ({tag}): method",
        e.id
    );
    assert_eq!(
        e.path,
        format!("/w/{w}/{i}"),
        "entry {} ({tag}): path",
        e.id
    );
    assert_eq!(
        e.query.as_deref(),
        Some(format!("n={i}").as_str()),
        "entry {} ({tag}): query",
        e.id
    );
    assert_eq!(
        e.status,
        Some(status_for(i)),
        "entry {} ({tag}): status",
        e.id
    );
    assert_eq!(
        e.outcome,
        Outcome::Complete,
        "entry {} ({tag}): outcome",
        e.id
    );
    assert_eq!(
        e.request_body.text(),
        format!("req:{tag}"),
        "entry {} ({tag}): request body",
        e.id
    );
    assert_eq!(
        e.response_body.text(),
        format!("resp:{tag}"),
        "entry {} ({tag}): response body",
        e.id
    );
    assert!(
        e.request_body.complete() && e.response_body.complete(),
        "entry {} ({tag}): complete",
        e.id
    );
    assert_eq!(
        header(&e.request_headers, "x-tag"),
        Some(tag.as_str()),
        "entry {}: request header",
        e.id
    );
    assert_eq!(
        header(&e.response_headers, "x-tag"),
        Some(tag.as_str()),
        "entry {}: response header",
        e.id
    );
    assert!(e.retained_bytes() > 0);
}

/// "Every list is a run of consecutive ids", newest first, at most `capacity`, each entry
/// intact; and "later entries have larger ids": one writer's later request has a larger id.
fn check_run(list: &[Arc<Entry>], capacity: usize, what: &str) {
    assert!(
        list.len() <= capacity,
        "{what}: {} entries in a ring of {capacity}",
        list.len()
    );
    for pair in list.windows(2) {
        assert_eq!(
            pair[0].id,
            pair[1].id + 1,
            "{what}: ids not consecutive newest-first: {:?}",
            list.iter().map(|e| e.id).collect::<Vec<_>>()
        );
    }
    let mut newer: HashMap<usize, (u64, usize)> = HashMap::new();
    for e in list {
        check_entry(e);
        let (w, i) = origin(e);
        if let Some(&(nid, ni)) = newer.get(&w) {
            assert!(
                ni > i,
                "{what}: writer {w}: request {ni} (id {nid}) listed before request {i} (id {})",
                e.id
            );
        }
        newer.insert(w, (e.id, i));
    }
}

/// A filtered list: a subset of one run (ids strictly decreasing, spanning less than
/// `capacity`), every entry matching the filter, at most `limit`.
fn check_filtered(
    list: &[Arc<Entry>],
    filter: &EntryFilter,
    capacity: usize,
    limit: usize,
    what: &str,
) {
    assert!(
        list.len() <= capacity.min(limit),
        "{what}: {} entries (cap {capacity}, limit {limit})",
        list.len()
    );
    for pair in list.windows(2) {
        assert!(pair[0].id > pair[1].id, "{what}: not newest first");
    }
    if let (Some(first), Some(last)) = (list.first(), list.last()) {
        assert!(
            first.id - last.id < capacity as u64,
            "{what}: ids {}..{} span more than a ring of {capacity}",
            last.id,
            first.id
        );
    }
    for e in list {
        check_entry(e);
        assert!(
            filter.matches(e),
            "{what}: entry {} does not match its filter",
            e.id
        );
    }
}

/// "one read agrees with itself where it matters".
fn check_stats(s: &InspectorStats, capacity: usize, what: &str) {
    assert!(
        s.evicted <= s.captured,
        "{what}: evicted {} > captured {}: {s:?}",
        s.evicted,
        s.captured
    );
    assert_eq!(
        s.retained_bytes,
        s.in_flight_bytes + s.ring_bytes + s.ring_slot_bytes + s.spare_bytes,
        "{what}: retained_bytes is not the sum of its parts: {s:?}"
    );
    assert!(
        s.peak_retained_bytes >= s.retained_bytes,
        "{what}: peak below retained: {s:?}"
    );
    assert!(
        s.ring_len <= capacity,
        "{what}: ring_len {} > capacity {capacity}",
        s.ring_len
    );
    // "at most 8 × (16 KiB + 320 bytes)" of spares.
    assert!(
        s.spare_bytes <= 8 * (16 * 1024 + 320),
        "{what}: spare_bytes {}",
        s.spare_bytes
    );
}

fn chunks_bytes(captured: u64, capacity: usize) -> usize {
    (captured.min(capacity as u64) as usize).div_ceil(64) * CHUNK_BYTES
}

/// Quiescent exactness: the list is exactly the newest `n_since_clear.min(capacity)` ids, the
/// newest being `captured` (ids are "Position in capture order (1, 2, …)"), and the stats agree
/// with the list ("at quiescence ring_len == entries().len() and ring_bytes == sum of
/// Entry::retained_bytes").
fn check_quiescent(inspector: &Inspector, n_since_clear: u64, what: &str) -> Vec<Arc<Entry>> {
    let capacity = inspector.capacity();
    let list = inspector.entries();
    let s = inspector.stats();
    check_run(&list, capacity, what);
    check_stats(&s, capacity, what);
    let want = n_since_clear.min(capacity as u64) as usize;
    assert_eq!(
        list.len(),
        want,
        "{what}: quiet ring lists {} entries, want {want}; {s:?}",
        list.len()
    );
    if let Some(first) = list.first() {
        assert_eq!(
            first.id, s.captured,
            "{what}: newest id {} but {} captured",
            first.id, s.captured
        );
    }
    assert_eq!(
        s.ring_len,
        list.len(),
        "{what}: ring_len {} vs {} listed",
        s.ring_len,
        list.len()
    );
    let sum: usize = list.iter().map(|e| e.retained_bytes()).sum();
    assert_eq!(
        s.ring_bytes, sum,
        "{what}: ring_bytes {} vs sum of entries {sum}",
        s.ring_bytes
    );
    assert_eq!(s.in_flight_bytes, 0, "{what}: nothing in flight");
    assert_eq!(
        s.ring_slot_bytes,
        chunks_bytes(s.captured, capacity),
        "{what}: slot bytes; {s:?}"
    );
    // entries_matching(EntryFilter::new()) copies the same way: the same list when quiet.
    let all = inspector.entries_matching(&EntryFilter::new());
    assert_eq!(
        ids(&all),
        ids(&list),
        "{what}: entries_matching(all) differs from entries()"
    );
    list
}

fn ids(list: &[Arc<Entry>]) -> Vec<u64> {
    list.iter().map(|e| e.id).collect()
}

// ---------------------------------------------------------------------------------------------
// Bounded thread handling.
// ---------------------------------------------------------------------------------------------

/// Sends on drop, so a finished or panicked thread is seen by `wait_all`.
struct Done(mpsc::Sender<()>);
impl Drop for Done {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

struct Group {
    tx: mpsc::Sender<()>,
    rx: mpsc::Receiver<()>,
    handles: Vec<(String, JoinHandle<()>)>,
}

impl Group {
    fn new() -> Self {
        let (tx, rx) = mpsc::channel();
        Group {
            tx,
            rx,
            handles: Vec::new(),
        }
    }

    fn spawn(&mut self, name: String, f: impl FnOnce() + Send + 'static) {
        let done = Done(self.tx.clone());
        let h = thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let _done = done;
                f();
            })
            .unwrap();
        self.handles.push((name, h));
    }

    /// Waits for every thread, at most `PHASE_DEADLINE` in all; panics with the names of the
    /// threads still running (hung) or re-raises the first thread's panic.
    fn wait_all(self, what: &str) {
        let deadline = Instant::now() + PHASE_DEADLINE;
        for _ in 0..self.handles.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.rx.recv_timeout(left).is_err() {
                let hung: Vec<&str> = self
                    .handles
                    .iter()
                    .filter(|(_, h)| !h.is_finished())
                    .map(|(n, _)| n.as_str())
                    .collect();
                panic!("{what}: threads still running after {PHASE_DEADLINE:?}: {hung:?}");
            }
        }
        let mut first = None;
        for (name, h) in self.handles {
            if let Err(p) = h.join() {
                eprintln!("{what}: thread {name} panicked");
                first.get_or_insert(p);
            }
        }
        if let Some(p) = first {
            std::panic::resume_unwind(p);
        }
    }
}

/// Sets the flag when dropped (also on unwind), so readers stop even if a writer panicked.
struct SetOnDrop(Arc<AtomicBool>);
impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Spawns `writers` writer threads, each doing `per_writer` exchanges with its own clone of
/// `svc` (cloned here, used there) and, per request, a clone made on the writer's thread.
fn spawn_writers<S>(group: &mut Group, svc: &S, writers: usize, per_writer: usize, w_base: usize)
where
    S: Service<
            Request<Full<Bytes>>,
            Response = Response<InspectBody<Full<Bytes>>>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    for w in w_base..w_base + writers {
        let svc = svc.clone();
        group.spawn(format!("writer-{w}"), move || {
            let rt = current_thread_rt();
            rt.block_on(async {
                for i in 0..per_writer {
                    exchange(&svc, w, i).await;
                    if i % 16 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            });
        });
    }
}

/// A reader thread calling `entries()` (and a filtered `entries_matching`) until `stop`,
/// checking every list and the time each read took. Returns how many reads it made.
fn spawn_reader(
    group: &mut Group,
    name: String,
    inspector: Inspector,
    stop: Arc<AtomicBool>,
    reads: Arc<AtomicU64>,
) {
    group.spawn(name.clone(), move || {
        let capacity = inspector.capacity();
        let filter = EntryFilter::parse(Some("post"), Some("2xx"))
            .unwrap()
            .limit(5);
        let mut n = 0u64;
        let mut worst = Duration::ZERO;
        let mut last_peak = 0usize;
        loop {
            let stopping = stop.load(Ordering::SeqCst);
            let t0 = Instant::now();
            let list = inspector.entries();
            let dt = t0.elapsed();
            worst = worst.max(dt);
            assert!(dt < READ_BOUND, "{name}: entries() took {dt:?}");
            check_run(&list, capacity, &format!("{name}: entries() read {n}"));

            let t0 = Instant::now();
            let some = inspector.entries_matching(&filter);
            let dt = t0.elapsed();
            assert!(dt < READ_BOUND, "{name}: entries_matching() took {dt:?}");
            check_filtered(
                &some,
                &filter,
                capacity,
                5,
                &format!("{name}: entries_matching read {n}"),
            );

            let s = inspector.stats();
            check_stats(&s, capacity, &format!("{name}: stats read {n}"));
            assert!(
                s.peak_retained_bytes >= last_peak,
                "{name}: peak went back from {last_peak} to {}",
                s.peak_retained_bytes
            );
            last_peak = s.peak_retained_bytes;
            n += 1;
            if stopping {
                break;
            }
        }
        reads.fetch_add(n, Ordering::SeqCst);
        eprintln!("{name}: {n} reads, slowest {worst:?}");
    });
}

// ---------------------------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------------------------

/// Guide, "The ring": "Every list is a run of consecutive ids, and once writers are quiet
/// exactly the newest `min(captured, capacity)` since the last clear"; a reader "copies the
/// handles slot by slot ... an entry pushed out while the list is read moves the list's start
/// past it". Twelve writers on rings of 1, 2, 63, 64 and 65 entries (so readers are lapped all
/// the time), two readers checking every list, then quiescent exactness; also "a push held up
/// while `capacity` others went through ... its own entry is the one evicted": with no clear,
/// every capture is either listed or counted in `evicted`.
#[test]
fn tiny_rings_many_writers_readers_see_consecutive_intact_runs() {
    const WRITERS: usize = 12;
    const PER_WRITER: usize = 800;
    for capacity in [1usize, 2, 63, 64, 65] {
        let inspector = Inspector::new(InspectorConfig::new().capacity(capacity));
        assert_eq!(inspector.capacity(), capacity);
        let svc = make_service(&inspector);
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));

        let mut readers = Group::new();
        for r in 0..2 {
            spawn_reader(
                &mut readers,
                format!("cap{capacity}-reader-{r}"),
                inspector.clone(),
                stop.clone(),
                reads.clone(),
            );
        }
        {
            let _stop = SetOnDrop(stop.clone());
            let mut writers = Group::new();
            spawn_writers(&mut writers, &svc, WRITERS, PER_WRITER, 0);
            writers.wait_all(&format!("cap {capacity} writers"));
        }
        readers.wait_all(&format!("cap {capacity} readers"));
        assert!(reads.load(Ordering::SeqCst) >= 2);

        let total = (WRITERS * PER_WRITER) as u64;
        let what = format!("cap {capacity} quiescent");
        let s = inspector.stats();
        assert_eq!(s.captured, total, "{what}: {s:?}");
        let list = check_quiescent(&inspector, total, &what);
        assert_eq!(
            s.evicted,
            total - list.len() as u64,
            "{what}: captured = listed + evicted; {s:?}"
        );
        assert!(s.peak_retained_bytes >= s.retained_bytes);
    }
}

/// `Inspector::clear`: "Empty the ring ... ids go on from where they were. A capture finishing
/// while the clear runs may land after it." A thread clears in a loop while twelve writers push
/// and readers read: every list stays a run of consecutive, intact entries; a read never takes
/// long; stats stay self-consistent. Once quiet, a clear empties the ring exactly (records
/// freed: `ring_bytes == 0`, `spare_bytes == 0`; slots kept: `ring_slot_bytes` is still
/// 1 024 per chunk reached), and the next pushes continue the ids and are listed exactly.
#[test]
fn clear_loop_under_load_keeps_runs_valid_and_quiet_clear_is_exact() {
    const WRITERS: usize = 10;
    const PER_WRITER: usize = 800;
    for capacity in [1usize, 64, 65] {
        let inspector = Inspector::new(InspectorConfig::new().capacity(capacity));
        let svc = make_service(&inspector);
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));
        let clears = Arc::new(AtomicU64::new(0));

        let mut readers = Group::new();
        for r in 0..2 {
            spawn_reader(
                &mut readers,
                format!("cap{capacity}-reader-{r}"),
                inspector.clone(),
                stop.clone(),
                reads.clone(),
            );
        }
        {
            let inspector = inspector.clone();
            let stop = stop.clone();
            let clears = clears.clone();
            readers.spawn(format!("cap{capacity}-clearer"), move || {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let t0 = Instant::now();
                    inspector.clear();
                    let dt = t0.elapsed();
                    assert!(dt < READ_BOUND, "clear() took {dt:?}");
                    n += 1;
                    if n.is_multiple_of(4) {
                        thread::yield_now();
                    }
                }
                clears.fetch_add(n, Ordering::SeqCst);
            });
        }
        {
            let _stop = SetOnDrop(stop.clone());
            let mut writers = Group::new();
            spawn_writers(&mut writers, &svc, WRITERS, PER_WRITER, 0);
            writers.wait_all(&format!("cap {capacity} writers"));
        }
        readers.wait_all(&format!("cap {capacity} readers+clearer"));
        eprintln!("cap {capacity}: {} clears", clears.load(Ordering::SeqCst));

        let total = (WRITERS * PER_WRITER) as u64;
        let what = format!("cap {capacity} after the clear loop");
        let before = inspector.stats();
        assert_eq!(before.captured, total, "{what}: {before:?}");
        check_stats(&before, capacity, &what);
        let list = inspector.entries();
        check_run(&list, capacity, &what);
        assert_eq!(
            before.ring_len,
            list.len(),
            "{what}: ring_len vs entries(); {before:?}"
        );
        let sum: usize = list.iter().map(|e| e.retained_bytes()).sum();
        assert_eq!(
            before.ring_bytes, sum,
            "{what}: ring_bytes vs sum of entries; {before:?}"
        );

        // A clear while quiet empties the ring exactly.
        inspector.clear();
        let s = inspector.stats();
        let what = format!("cap {capacity} quiet clear");
        assert!(inspector.entries().is_empty(), "{what}: entries left");
        assert_eq!(s.ring_len, 0, "{what}: {s:?}");
        assert_eq!(s.ring_bytes, 0, "{what}: {s:?}");
        assert_eq!(
            s.spare_bytes, 0,
            "{what}: spares are freed by clear(); {s:?}"
        );
        assert_eq!(s.in_flight_bytes, 0, "{what}: {s:?}");
        assert_eq!(
            s.ring_slot_bytes,
            chunks_bytes(total, capacity),
            "{what}: slots kept; {s:?}"
        );
        assert_eq!(s.retained_bytes, s.ring_slot_bytes, "{what}: {s:?}");
        assert_eq!(s.captured, total, "{what}: counters kept; {s:?}");
        assert_eq!(s.evicted, before.evicted, "{what}: counters kept; {s:?}");

        // Ids go on; exactly the newest pushes since the clear are listed.
        let rt = current_thread_rt();
        let extra = capacity as u64 + 2;
        rt.block_on(async {
            for i in 0..extra as usize {
                exchange(&svc, 99, i).await;
            }
        });
        let list = check_quiescent(
            &inspector,
            extra,
            &format!("cap {capacity} after the quiet clear"),
        );
        assert_eq!(list[0].id, total + extra, "ids go on from where they were");
        assert_eq!(origin(&list[0]), (99, extra as usize - 1));
    }
}

/// `InspectorStats`: "Read from atomics, without any lock, while requests go on ... one read
/// agrees with itself where it matters: `evicted <= captured`, `retained_bytes` is the sum of
/// its four parts, and `peak_retained_bytes >= retained_bytes`"; `peak_retained_bytes` is "The
/// highest `retained_bytes` seen since the inspector was created", so it never goes back; and
/// `captured`/`evicted` are counts of events, so one thread's successive reads never see them
/// go back (each stripe only grows). Hammered with writers, a clearer and two stats readers.
#[test]
fn stats_read_without_locks_agree_with_themselves_under_load() {
    let capacity = 2;
    let inspector = Inspector::new(InspectorConfig::new().capacity(capacity));
    let svc = make_service(&inspector);
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Group::new();
    for r in 0..2 {
        let inspector = inspector.clone();
        let stop = stop.clone();
        readers.spawn(format!("stats-{r}"), move || {
            let mut prev = inspector.stats();
            let mut n = 0u64;
            loop {
                let stopping = stop.load(Ordering::SeqCst);
                let s = inspector.stats();
                check_stats(&s, capacity, &format!("stats-{r} read {n}"));
                assert!(
                    s.peak_retained_bytes >= prev.peak_retained_bytes,
                    "peak went back: {prev:?} -> {s:?}"
                );
                assert!(
                    s.captured >= prev.captured,
                    "captured went back: {prev:?} -> {s:?}"
                );
                assert!(
                    s.evicted >= prev.evicted,
                    "evicted went back: {prev:?} -> {s:?}"
                );
                assert!(s.passed_through >= prev.passed_through);
                prev = s;
                n += 1;
                if stopping {
                    break;
                }
            }
        });
    }
    {
        let inspector = inspector.clone();
        let stop = stop.clone();
        readers.spawn("clearer".into(), move || {
            let mut n = 0u32;
            while !stop.load(Ordering::SeqCst) {
                inspector.clear();
                n += 1;
                if n.is_multiple_of(8) {
                    thread::yield_now();
                }
            }
        });
    }
    {
        let _stop = SetOnDrop(stop.clone());
        let mut writers = Group::new();
        spawn_writers(&mut writers, &svc, 10, 800, 0);
        writers.wait_all("stats writers");
    }
    readers.wait_all("stats readers");
    let s = inspector.stats();
    check_stats(&s, capacity, "stats after");
    assert_eq!(s.captured, 8000);
    assert_eq!(s.in_flight_bytes, 0, "{s:?}");
}

/// Single task, virtual time. "`ring_slot_bytes` (the ring's chunks: 1 024 bytes per 64 slots,
/// `ceil(min(captured, capacity) / 64)` chunks, kept by `clear()` as a `Vec` keeps its
/// capacity)"; the list is "exactly the newest `min(captured, capacity)` since the last clear"
/// after every push; ids "1, 2, …" go on after a clear; counters other than the byte counts
/// are kept by a clear; `entries_matching` with a limit returns "at most `n` entries (the
/// newest)".
#[tokio::test(start_paused = true)]
async fn slot_chunks_and_exact_lists_push_by_push() {
    for capacity in [1usize, 2, 63, 64, 65, 129] {
        let inspector = Inspector::new(InspectorConfig::new().capacity(capacity));
        let svc = make_service(&inspector);
        let s = inspector.stats();
        assert_eq!(
            s.ring_slot_bytes, 0,
            "cap {capacity}: no chunk before the first push"
        );
        assert!(inspector.entries().is_empty());
        inspector.clear(); // clearing an untouched ring is harmless
        assert_eq!(inspector.stats().ring_slot_bytes, 0);

        let n = capacity + 3;
        for i in 0..n {
            exchange(&svc, 0, i).await;
            let what = format!("cap {capacity} after push {}", i + 1);
            let list = check_quiescent(&inspector, i as u64 + 1, &what);
            assert_eq!(list[0].id, i as u64 + 1, "{what}: ids are 1, 2, …");
            let s = inspector.stats();
            assert_eq!(
                s.evicted,
                (i as u64 + 1) - list.len() as u64,
                "{what}: {s:?}"
            );
            let k = 3.min(list.len());
            let newest = inspector.entries_matching(&EntryFilter::new().limit(k));
            assert_eq!(ids(&newest), ids(&list[..k]), "{what}: limit {k}");
            let deletes = inspector.entries_matching(&EntryFilter::new().method(Method::DELETE));
            let want: Vec<u64> = list
                .iter()
                .filter(|e| e.method == "DELETE")
                .map(|e| e.id)
                .collect();
            assert_eq!(ids(&deletes), want, "{what}: DELETE filter");
            let not_found =
                inspector.entries_matching(&EntryFilter::parse(None, Some("4xx")).unwrap());
            let want: Vec<u64> = list
                .iter()
                .filter(|e| e.status == Some(404))
                .map(|e| e.id)
                .collect();
            assert_eq!(ids(&not_found), want, "{what}: 4xx filter");
        }
        let before = inspector.stats();
        inspector.clear();
        let s = inspector.stats();
        let what = format!("cap {capacity} after clear");
        assert!(inspector.entries().is_empty(), "{what}");
        assert_eq!(
            (s.ring_len, s.ring_bytes, s.spare_bytes),
            (0, 0, 0),
            "{what}: {s:?}"
        );
        assert_eq!(
            s.ring_slot_bytes,
            chunks_bytes(n as u64, capacity),
            "{what}: slots kept; {s:?}"
        );
        assert_eq!(s.ring_slot_bytes, before.ring_slot_bytes, "{what}");
        assert_eq!(
            (s.captured, s.evicted),
            (before.captured, before.evicted),
            "{what}: counters kept"
        );
        assert!(
            s.peak_retained_bytes >= before.retained_bytes,
            "{what}: peak kept; {s:?}"
        );

        for j in 0..3 {
            exchange(&svc, 1, j).await;
            let list =
                check_quiescent(&inspector, j as u64 + 1, &format!("{what}, push {}", j + 1));
            assert_eq!(list[0].id, (n + j + 1) as u64, "{what}: ids go on");
            assert!(
                list.iter().all(|e| origin(e).0 == 1),
                "{what}: an entry from before the clear came back"
            );
        }
        let s = inspector.stats();
        let evicted_after = 3 - 3.min(capacity) as u64;
        assert_eq!(
            s.evicted,
            before.evicted + evicted_after,
            "cap {capacity}: evictions after the clear"
        );
        assert_eq!(s.ring_slot_bytes, chunks_bytes((n + 3) as u64, capacity));
    }
}

/// "services cloned on one thread and used on others"; "Cloning is cheap; every clone (and
/// every layer made from it) shares one ring"; "An `Entry` you read is a copy": the inspector
/// the test made, its layer and its service are dropped while writers (with clones made on the
/// main thread, on their own thread and handed over from another writer's thread) keep
/// capturing and a reader (holding only an `Inspector` clone) keeps reading and holds on to
/// lists; the held entries stay intact after every inspector handle is gone.
#[test]
fn clones_across_threads_and_inspector_dropped_while_readers_hold_entries() {
    const WRITERS: usize = 10;
    const PER_WRITER: usize = 100;
    let capacity = 3;
    let inspector = Inspector::new(InspectorConfig::new().capacity(capacity));
    let layer = inspector.layer();
    let svc = layer.layer(tower::service_fn(echo));
    let reader_view = inspector.clone();
    drop(layer);

    let stop = Arc::new(AtomicBool::new(false));
    let (held_tx, held_rx) = mpsc::channel::<Vec<Vec<Arc<Entry>>>>();
    let mut readers = Group::new();
    {
        let stop = stop.clone();
        readers.spawn("holding-reader".into(), move || {
            let mut held = Vec::new();
            loop {
                let stopping = stop.load(Ordering::SeqCst);
                let list = reader_view.entries();
                check_run(&list, capacity, "holding reader");
                if stopping {
                    // The last list, read once writers were quiet.
                    held.push(list);
                    break;
                }
                if held.len() < 500 {
                    held.push(list);
                }
            }
            drop(reader_view); // the last Inspector handle goes while entries are held
            held_tx.send(held).unwrap();
        });
    }

    // Each writer gets a clone made here, makes one on its own thread and hands one over to
    // the next writer, which uses it for half of its requests.
    let mut writers = Group::new();
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..WRITERS).map(|_| mpsc::channel()).unzip();
    let mut rxs: Vec<Option<mpsc::Receiver<_>>> = rxs.into_iter().map(Some).collect();
    for w in 0..WRITERS {
        let mine = svc.clone();
        let next_tx = txs[(w + 1) % WRITERS].clone();
        let rx = rxs[w].take().unwrap();
        writers.spawn(format!("writer-{w}"), move || {
            let local = mine.clone();
            next_tx.send(local.clone()).unwrap();
            let handed = rx
                .recv_timeout(PHASE_DEADLINE)
                .expect("a handed-over service");
            let rt = current_thread_rt();
            rt.block_on(async {
                for i in 0..PER_WRITER {
                    if i % 2 == 0 {
                        exchange(&handed, w, i).await;
                    } else {
                        exchange(&local, w, i).await;
                    }
                }
            });
        });
    }
    drop(txs);
    // The test's own handles go while the others work.
    drop(svc);
    drop(inspector);
    {
        let _stop = SetOnDrop(stop.clone());
        writers.wait_all("writers with moved clones");
    }
    readers.wait_all("holding reader");
    let held = held_rx.recv_timeout(PHASE_DEADLINE).unwrap();
    assert!(!held.is_empty());
    for list in &held {
        check_run(list, capacity, "held after every handle dropped");
    }
    let last = held.last().unwrap();
    assert_eq!(
        last.len(),
        capacity,
        "the last list was read once writers were quiet"
    );
    assert_eq!(last[0].id, (WRITERS * PER_WRITER) as u64);
}

fn drain_gauges(snap: &Snapshotter, acc: &mut HashMap<String, f64>) {
    for (key, _unit, _desc, value) in snap.snapshot().into_vec() {
        if let DebugValue::Gauge(g) = value {
            *acc.entry(key.key().name().to_string()).or_default() += g.into_inner();
        }
    }
}

fn gauge(acc: &HashMap<String, f64>, name: &str) -> f64 {
    acc.get(name).copied().unwrap_or(0.0)
}

/// Metrics: "Several inspectors in one process share the series (no per-inspector label) ...
/// the two gauges, which the layer moves up and down (each push, eviction and clear by what it
/// changed) rather than sets; an inspector that is dropped takes its part out of them."
/// `inspector.ring.entries` is "entries in the ring now", `inspector.ring.bytes` is
/// "`ring_bytes + ring_slot_bytes` of `InspectorStats`". Two inspectors under concurrent
/// writers, one of them cleared in a loop; the sums of the gauge moves (DebuggingRecorder
/// resets a gauge when read) must equal the stats once quiet, and drop to the survivor's part,
/// then to zero.
#[test]
fn ring_gauges_sum_over_inspectors_under_clears_and_drop_takes_part_out() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let (a, b) = metrics::with_local_recorder(&recorder, || {
        (
            Inspector::new(InspectorConfig::new().capacity(65)),
            Inspector::new(InspectorConfig::new().capacity(2)),
        )
    });
    let mut acc = HashMap::new();
    drain_gauges(&snap, &mut acc);

    let svc_a = make_service(&a);
    let svc_b = make_service(&b);
    let stop = Arc::new(AtomicBool::new(false));
    let mut others = Group::new();
    {
        let a = a.clone();
        let stop = stop.clone();
        others.spawn("clearer-a".into(), move || {
            let mut n = 0u32;
            while !stop.load(Ordering::SeqCst) {
                a.clear();
                n += 1;
                if n.is_multiple_of(4) {
                    thread::yield_now();
                }
            }
        });
    }
    {
        let _stop = SetOnDrop(stop.clone());
        let mut writers = Group::new();
        spawn_writers(&mut writers, &svc_a, 6, 600, 0);
        spawn_writers(&mut writers, &svc_b, 6, 600, 10);
        writers.wait_all("gauge writers");
    }
    others.wait_all("clearer");

    let check = |acc: &HashMap<String, f64>, insps: &[&Inspector], what: &str| {
        let (mut len, mut bytes) = (0usize, 0usize);
        for i in insps {
            let s = i.stats();
            assert_eq!(
                s.ring_len,
                i.entries().len(),
                "{what}: ring_len vs entries(); {s:?}"
            );
            len += s.ring_len;
            bytes += s.ring_bytes + s.ring_slot_bytes;
        }
        assert_eq!(
            gauge(acc, "inspector.ring.entries"),
            len as f64,
            "{what}: inspector.ring.entries"
        );
        assert_eq!(
            gauge(acc, "inspector.ring.bytes"),
            bytes as f64,
            "{what}: inspector.ring.bytes"
        );
    };
    drain_gauges(&snap, &mut acc);
    check(&acc, &[&a, &b], "two inspectors after load with clears");

    // Quiet clear and a few pushes: still in step.
    a.clear();
    let rt = current_thread_rt();
    rt.block_on(async {
        for i in 0..3 {
            exchange(&svc_a, 50, i).await;
        }
    });
    drain_gauges(&snap, &mut acc);
    check(&acc, &[&a, &b], "after a quiet clear and 3 pushes");

    drop(svc_a);
    drop(a);
    drain_gauges(&snap, &mut acc);
    check(&acc, &[&b], "after inspector A and its service dropped");

    drop(svc_b);
    drop(b);
    drain_gauges(&snap, &mut acc);
    assert_eq!(
        gauge(&acc, "inspector.ring.entries"),
        0.0,
        "every inspector dropped: entries gauge"
    );
    assert_eq!(
        gauge(&acc, "inspector.ring.bytes"),
        0.0,
        "every inspector dropped: bytes gauge"
    );
}

/// JSON handler: "returns `{"capacity": n, "stats": InspectorStats, "entries": [Entry, ...]}`,
/// newest first"; the handler copies the ring as `entries()` does ("`entries()`,
/// `entries_matching()`, the JSON handler"), so under load each unfiltered document is a run of
/// consecutive ids, at most `capacity` and at most `limit`, each entry intact, and its stats
/// agree with themselves.
#[test]
fn json_handler_under_load_serves_consecutive_runs() {
    let capacity = 64;
    let inspector = Inspector::new(InspectorConfig::new().capacity(capacity));
    let svc = make_service(&inspector);
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Group::new();
    for (r, query) in [
        "/",
        "/?limit=7",
        "/?method=delete&status=4xx",
        "/?status=201&limit=3",
    ]
    .into_iter()
    .enumerate()
    {
        let inspector = inspector.clone();
        let stop = stop.clone();
        readers.spawn(format!("json-{r}"), move || {
            let rt = current_thread_rt();
            let uri: Uri = query.parse().unwrap();
            let filtered = query.contains("method") || query.contains("status");
            let limit = if query.contains("limit=7") {
                7
            } else if query.contains("limit=3") {
                3
            } else {
                usize::MAX
            };
            rt.block_on(async {
                let mut n = 0;
                loop {
                    let stopping = stop.load(Ordering::SeqCst);
                    let q: Query<EntryQuery> = Query::try_from_uri(&uri).unwrap();
                    let t0 = Instant::now();
                    let resp = entries_handler(State(inspector.clone()), q).await;
                    assert_eq!(resp.status(), 200, "{query}");
                    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
                        .await
                        .unwrap();
                    let dt = t0.elapsed();
                    assert!(dt < READ_BOUND, "{query}: handler took {dt:?}");
                    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    assert_eq!(doc["capacity"], capacity, "{query}");
                    let st = &doc["stats"];
                    let g = |k: &str| {
                        st[k]
                            .as_u64()
                            .unwrap_or_else(|| panic!("stats.{k} missing: {st}"))
                    };
                    assert!(g("evicted") <= g("captured"), "{query}: {st}");
                    assert_eq!(
                        g("retained_bytes"),
                        g("in_flight_bytes")
                            + g("ring_bytes")
                            + g("ring_slot_bytes")
                            + g("spare_bytes"),
                        "{query}: {st}"
                    );
                    assert!(
                        g("peak_retained_bytes") >= g("retained_bytes"),
                        "{query}: {st}"
                    );
                    let entries = doc["entries"].as_array().unwrap();
                    assert!(
                        entries.len() <= capacity.min(limit),
                        "{query}: {} entries",
                        entries.len()
                    );
                    let ids: Vec<u64> = entries.iter().map(|e| e["id"].as_u64().unwrap()).collect();
                    for pair in ids.windows(2) {
                        if filtered {
                            assert!(pair[0] > pair[1], "{query}: not newest first: {ids:?}");
                        } else {
                            assert_eq!(
                                pair[0],
                                pair[1] + 1,
                                "{query}: not a consecutive run: {ids:?}"
                            );
                        }
                    }
                    if let (Some(f), Some(l)) = (ids.first(), ids.last()) {
                        assert!(f - l < capacity as u64, "{query}: span {ids:?}");
                    }
                    for e in entries {
                        let rid = e["request_id"].as_str().unwrap();
                        let (w, i) = rid[1..].split_once('-').unwrap();
                        let (w, i): (usize, usize) = (w.parse().unwrap(), i.parse().unwrap());
                        assert_eq!(e["path"], format!("/w/{w}/{i}"), "{query}: {e}");
                        assert_eq!(e["method"], method_for(i).as_str(), "{query}: {e}");
                        assert_eq!(e["status"], status_for(i), "{query}: {e}");
                        assert_eq!(e["outcome"], "complete", "{query}: {e}");
                        assert_eq!(
                            e["request_body"]["text"],
                            format!("req:{rid}"),
                            "{query}: {e}"
                        );
                        assert_eq!(
                            e["response_body"]["text"],
                            format!("resp:{rid}"),
                            "{query}: {e}"
                        );
                        if query.contains("delete") {
                            assert_eq!(
                                (e["method"].as_str(), e["status"].as_u64()),
                                (Some("DELETE"), Some(404))
                            );
                        }
                        if query.contains("201") {
                            assert_eq!(e["status"], 201);
                        }
                    }
                    n += 1;
                    if stopping {
                        break;
                    }
                }
                assert!(n >= 1);
            });
        });
    }
    {
        let _stop = SetOnDrop(stop.clone());
        let mut writers = Group::new();
        spawn_writers(&mut writers, &svc, 10, 600, 0);
        writers.wait_all("json writers");
    }
    readers.wait_all("json readers");
    check_quiescent(&inspector, 6000, "json quiescent");
}

/// Guide: "`in_flight_bytes` is striped ... a capture adds to its thread's stripe as its arena
/// grows, and the thread that finishes it subtracts from its own; a read sums the stripes";
/// the ring's counts are "per thread stripe, summed"; "The entry is pushed when the response
/// body ends (`outcome: complete`) ... or is dropped part-way (`aborted`)". Here every capture
/// starts on a writer thread and is finished (body read to its end, or dropped unread) on one
/// of two finisher threads, so pushes, evictions and the in-flight subtraction all happen on
/// other stripes than the additions; readers check every list while this runs. Once quiet:
/// nothing in flight, `ring_len == entries().len()`, `ring_bytes` is the sum of the entries',
/// every capture listed or evicted, and each entry's outcome is the one its finisher chose.
#[test]
fn captures_finished_on_other_threads_keep_stripes_and_lists_exact() {
    const WRITERS: usize = 8;
    const PER_WRITER: usize = 400;
    let capacity = 5;
    let inspector = Inspector::new(InspectorConfig::new().capacity(capacity));
    let svc = make_service(&inspector);
    let stop = Arc::new(AtomicBool::new(false));

    let mut readers = Group::new();
    for r in 0..2 {
        let inspector = inspector.clone();
        let stop = stop.clone();
        readers.spawn(format!("reader-{r}"), move || {
            let mut last_peak = 0;
            loop {
                let stopping = stop.load(Ordering::SeqCst);
                let t0 = Instant::now();
                let list = inspector.entries();
                assert!(
                    t0.elapsed() < READ_BOUND,
                    "entries() took {:?}",
                    t0.elapsed()
                );
                check_run_finished(&list, capacity, "reader");
                let s = inspector.stats();
                check_stats(&s, capacity, "reader stats");
                assert!(s.peak_retained_bytes >= last_peak, "peak went back");
                last_peak = s.peak_retained_bytes;
                if stopping {
                    break;
                }
            }
        });
    }

    type Pending = (usize, InspectBody<Full<Bytes>>);
    let mut finishers = Group::new();
    let mut senders = Vec::new();
    for f in 0..2 {
        let (tx, rx) = mpsc::channel::<Pending>();
        senders.push(tx);
        finishers.spawn(format!("finisher-{f}"), move || {
            let rt = current_thread_rt();
            rt.block_on(async {
                // Ends when every writer has dropped its sender.
                while let Ok((i, body)) = rx.recv_timeout(PHASE_DEADLINE) {
                    if i % 5 == 4 {
                        drop(body); // aborted, on this thread
                    } else if body.collect().await.is_err() {
                        panic!("response body failed");
                    }
                }
            });
        });
    }
    {
        let _stop = SetOnDrop(stop.clone());
        let mut writers = Group::new();
        for w in 0..WRITERS {
            let svc = svc.clone();
            let tx = senders[w % 2].clone();
            writers.spawn(format!("writer-{w}"), move || {
                let rt = current_thread_rt();
                rt.block_on(async {
                    for i in 0..PER_WRITER {
                        let tag = tag(w, i);
                        let req = Request::builder()
                            .method(method_for(i))
                            .uri(format!("/w/{w}/{i}?n={i}"))
                            .header("x-request-id", tag.as_str())
                            .header("x-tag", tag.as_str())
                            .header("x-status", status_for(i).to_string())
                            .body(Full::new(Bytes::from(format!("req:{tag}"))))
                            .unwrap();
                        let resp = svc.clone().oneshot(req).await.unwrap();
                        tx.send((i, resp.into_body())).unwrap();
                    }
                });
            });
        }
        drop(senders);
        writers.wait_all("writers");
        finishers.wait_all("finishers");
    }
    readers.wait_all("readers");

    let total = (WRITERS * PER_WRITER) as u64;
    let s = inspector.stats();
    assert_eq!(s.captured, total, "{s:?}");
    assert_eq!(s.in_flight_bytes, 0, "every capture finished: {s:?}");
    let list = inspector.entries();
    check_run_finished(&list, capacity, "quiescent");
    assert_eq!(list.len(), capacity);
    assert_eq!(list[0].id, total);
    assert_eq!(s.ring_len, list.len(), "{s:?}");
    assert_eq!(
        s.ring_bytes,
        list.iter().map(|e| e.retained_bytes()).sum::<usize>(),
        "{s:?}"
    );
    assert_eq!(s.evicted, total - capacity as u64, "{s:?}");
    check_stats(&s, capacity, "quiescent");
}

/// Like `check_run`, for captures finished by a finisher thread: `i % 5 == 4` was dropped
/// unread (`aborted`, response body incomplete and empty), the others read to the end.
fn check_run_finished(list: &[Arc<Entry>], capacity: usize, what: &str) {
    assert!(list.len() <= capacity, "{what}: {} entries", list.len());
    for pair in list.windows(2) {
        assert_eq!(
            pair[0].id,
            pair[1].id + 1,
            "{what}: not consecutive: {:?}",
            ids(list)
        );
    }
    for e in list {
        let (w, i) = origin(e);
        let tag = tag(w, i);
        assert_eq!(e.path, format!("/w/{w}/{i}"), "{what}: entry {}", e.id);
        assert_eq!(e.method, method_for(i).as_str(), "{what}: entry {}", e.id);
        assert_eq!(e.status, Some(status_for(i)), "{what}: entry {}", e.id);
        assert_eq!(
            e.request_body.text(),
            format!("req:{tag}"),
            "{what}: entry {}",
            e.id
        );
        if i % 5 == 4 {
            assert_eq!(
                e.outcome,
                Outcome::Aborted,
                "{what}: entry {} ({tag})",
                e.id
            );
            assert!(
                !e.response_body.complete(),
                "{what}: entry {} ({tag})",
                e.id
            );
        } else {
            assert_eq!(
                e.outcome,
                Outcome::Complete,
                "{what}: entry {} ({tag})",
                e.id
            );
            assert_eq!(
                e.response_body.text(),
                format!("resp:{tag}"),
                "{what}: entry {}",
                e.id
            );
        }
    }
}

/// `Inspector::entries`: "once writers are quiet, exactly the newest `min(captured, capacity)`
/// since the last [`clear`]". Two clearers race each other and the writers; then the clearers
/// stop (joined) and every writer pushes `capacity + 1` more: once quiet the ring must be full
/// with the newest `capacity` ids (whatever the racing clears and the pushes that landed
/// during them left behind).
#[test]
fn after_racing_clears_stop_the_ring_fills_again_exactly() {
    const WRITERS: usize = 10;
    for capacity in [1usize, 2, 64, 65] {
        let inspector = Inspector::new(InspectorConfig::new().capacity(capacity));
        let svc = make_service(&inspector);
        let progress = Arc::new(AtomicU64::new(0));
        let clearers_done = Arc::new(AtomicBool::new(false));
        let stop_readers = Arc::new(AtomicBool::new(false));

        let mut readers = Group::new();
        let reads = Arc::new(AtomicU64::new(0));
        spawn_reader(
            &mut readers,
            format!("cap{capacity}-reader"),
            inspector.clone(),
            stop_readers.clone(),
            reads,
        );

        let mut clearers = Group::new();
        for c in 0..2 {
            let inspector = inspector.clone();
            let progress = progress.clone();
            clearers.spawn(format!("clearer-{c}"), move || {
                let mut n = 0u32;
                // Ends on its own: writers keep making progress until the clearers are done.
                while progress.load(Ordering::SeqCst) < 3000 {
                    inspector.clear();
                    n += 1;
                    if n.is_multiple_of(4) {
                        thread::yield_now();
                    }
                }
            });
        }
        let mut writers = Group::new();
        let finals = Arc::new(AtomicU64::new(0));
        for w in 0..WRITERS {
            let svc = svc.clone();
            let progress = progress.clone();
            let clearers_done = clearers_done.clone();
            let finals = finals.clone();
            writers.spawn(format!("writer-{w}"), move || {
                let rt = current_thread_rt();
                rt.block_on(async {
                    let mut i = 0;
                    while !clearers_done.load(Ordering::SeqCst) && i < 50_000 {
                        exchange(&svc, w, i).await;
                        progress.fetch_add(1, Ordering::SeqCst);
                        i += 1;
                    }
                    for _ in 0..=capacity {
                        exchange(&svc, w, i).await;
                        i += 1;
                    }
                    finals.fetch_add(1, Ordering::SeqCst);
                });
            });
        }
        {
            let _stop = SetOnDrop(stop_readers.clone());
            {
                let _done = SetOnDrop(clearers_done.clone());
                clearers.wait_all("racing clearers");
            }
            writers.wait_all("writers");
        }
        readers.wait_all("reader");
        assert_eq!(finals.load(Ordering::SeqCst), WRITERS as u64);
        let what = format!("cap {capacity}: quiet after racing clears");
        let s = inspector.stats();
        // At least WRITERS * (capacity + 1) pushes after the last clear returned.
        check_quiescent(
            &inspector,
            s.captured.min((WRITERS * (capacity + 1)) as u64),
            &what,
        );
    }
}

/// Gauges ("each push, eviction and clear by what it changed ... an inspector that is dropped
/// takes its part out of them"): one long-lived inspector under writers and two racing
/// clearers, while six short-lived inspectors (capacities 1 to 65) each capture, clear and are
/// dropped on their own threads. Once quiet, the summed gauge moves equal the survivor's
/// `ring_len` and `ring_bytes + ring_slot_bytes` alone.
#[test]
fn gauges_exact_with_racing_clearers_and_short_lived_inspectors() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let (stable, short): (Inspector, Vec<Inspector>) =
        metrics::with_local_recorder(&recorder, || {
            (
                Inspector::new(InspectorConfig::new().capacity(64)),
                [1usize, 2, 3, 63, 64, 65]
                    .into_iter()
                    .map(|c| Inspector::new(InspectorConfig::new().capacity(c)))
                    .collect(),
            )
        });
    let mut acc = HashMap::new();
    let svc = make_service(&stable);
    let progress = Arc::new(AtomicU64::new(0));
    let mut clearers = Group::new();
    for c in 0..2 {
        let stable = stable.clone();
        let progress = progress.clone();
        clearers.spawn(format!("clearer-{c}"), move || {
            let mut n = 0u32;
            while progress.load(Ordering::SeqCst) < 2000 {
                stable.clear();
                n += 1;
                if n.is_multiple_of(4) {
                    thread::yield_now();
                }
            }
        });
    }
    let mut workers = Group::new();
    for (k, insp) in short.into_iter().enumerate() {
        let progress = progress.clone();
        workers.spawn(format!("short-{k}"), move || {
            let svc = make_service(&insp);
            let rt = current_thread_rt();
            rt.block_on(async {
                for i in 0..300 {
                    exchange(&svc, 100 + k, i).await;
                    progress.fetch_add(1, Ordering::SeqCst);
                    if i % 50 == 49 {
                        insp.clear();
                    }
                }
            });
            // Dropped here, holding entries: its part must leave the gauges.
            drop(svc);
            drop(insp);
        });
    }
    for w in 0..4 {
        let svc = svc.clone();
        let progress = progress.clone();
        workers.spawn(format!("writer-{w}"), move || {
            let rt = current_thread_rt();
            rt.block_on(async {
                // Keeps going until the clearers can stop (bounded).
                let mut i = 0;
                while (progress.load(Ordering::SeqCst) < 2000 || i < 300) && i < 50_000 {
                    exchange(&svc, w, i).await;
                    progress.fetch_add(1, Ordering::SeqCst);
                    i += 1;
                }
            });
        });
    }
    clearers.wait_all("clearers");
    workers.wait_all("workers");
    drain_gauges(&snap, &mut acc);
    let s = stable.stats();
    assert_eq!(s.ring_len, stable.entries().len(), "{s:?}");
    assert_eq!(
        gauge(&acc, "inspector.ring.entries"),
        s.ring_len as f64,
        "entries gauge; {s:?}"
    );
    assert_eq!(
        gauge(&acc, "inspector.ring.bytes"),
        (s.ring_bytes + s.ring_slot_bytes) as f64,
        "bytes gauge; {s:?}"
    );
    drop(svc);
    drop(stable);
    drain_gauges(&snap, &mut acc);
    assert_eq!(gauge(&acc, "inspector.ring.entries"), 0.0);
    assert_eq!(gauge(&acc, "inspector.ring.bytes"), 0.0);
}

/// "an inspector that is dropped takes its part out of them" — also when a capture is still in
/// flight as the inspector, its layer and its service go: the capture lands when its body ends
/// (moving the gauges up), and when its body (the last hold) goes, the gauges are back to zero.
#[tokio::test(start_paused = true)]
async fn gauges_return_to_zero_when_a_capture_outlives_the_inspector() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let inspector = metrics::with_local_recorder(&recorder, || {
        Inspector::new(InspectorConfig::new().capacity(2))
    });
    let svc = make_service(&inspector);
    for i in 0..3 {
        exchange(&svc, 0, i).await;
    }
    let req = Request::builder()
        .method(Method::POST)
        .uri("/w/0/3?n=3")
        .header("x-request-id", "w0-3")
        .header("x-tag", "w0-3")
        .header("x-status", "200")
        .body(Full::new(Bytes::from("req:w0-3")))
        .unwrap();
    let body = svc.clone().oneshot(req).await.unwrap().into_body();
    let mut acc = HashMap::new();
    drain_gauges(&snap, &mut acc);
    let s = inspector.stats();
    assert_eq!(gauge(&acc, "inspector.ring.entries"), 2.0, "{s:?}");
    assert_eq!(
        gauge(&acc, "inspector.ring.bytes"),
        (s.ring_bytes + s.ring_slot_bytes) as f64
    );
    drop(svc);
    drop(inspector);
    // The capture in flight ends after every handle is gone.
    let collected = body.collect().await;
    assert!(collected.is_ok());
    drain_gauges(&snap, &mut acc);
    assert_eq!(
        gauge(&acc, "inspector.ring.entries"),
        0.0,
        "entries gauge after the last hold went"
    );
    assert_eq!(
        gauge(&acc, "inspector.ring.bytes"),
        0.0,
        "bytes gauge after the last hold went"
    );
}
