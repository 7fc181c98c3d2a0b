//! Black-box review of request-id generation (`RequestId::generate`, issue #23: per-thread
//! counter blocks of 1 024, 16 ids written at a time into one shared 512-byte buffer, an id a
//! slice of it, a fallback path during thread-local teardown) and of how the layer assigns or
//! propagates `x-request-id` (SPEC I1).
//!
//! Written black-box from docs/request-inspector.md, the crate's rustdoc and SPEC I1 only,
//! through the public API; the implementation under `src/` was not read. Covered: format (32
//! lowercase hex, one 16-digit prefix per process, a per-thread strictly increasing counter),
//! uniqueness across OS threads, short-lived threads, tokio runtimes and thread-local
//! destructors, ids outliving their thread and their batch, value semantics (clone, `Eq`,
//! `Hash`, `Display`, header value), the allocation cost and the absence of leaks (in a child
//! process, with a counting allocator), and through the layer: the request header, the
//! extension, the response header and the captured entry agree for every request.
//!
//! Every generated id seen by any test of this binary goes through `check_generated` and
//! `register`, so uniqueness is checked across the whole process, whatever the test order.

use std::cell::RefCell;
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::hash::{Hash, Hasher};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::thread;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use request_inspector::{
    InspectBody, Inspector, InspectorConfig, MAX_REQUEST_ID_LEN, REQUEST_ID_HEADER, RequestId,
    RequestIdError,
};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

// A counting allocator, read only by `alloc_probe_child` (run alone in a child process: the
// counts are process-wide). The other tests only pay the counting.
#[global_allocator]
static GLOBAL: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

// ---------------------------------------------------------------------------------------------
// Process-wide bookkeeping
// ---------------------------------------------------------------------------------------------

/// The prefix of the first generated id this process saw.
static PREFIX: OnceLock<String> = OnceLock::new();
/// Every generated id any test of this process saw.
static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();

/// Checks the documented shape of a generated id and returns its counter part.
fn check_generated(id: &RequestId) -> u64 {
    let s = id.as_str();
    assert_eq!(s.len(), 32, "generated id {s:?} is not 32 bytes long");
    assert!(
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "generated id {s:?} is not lowercase hex"
    );
    assert_eq!(
        id.header_value().as_bytes(),
        s.as_bytes(),
        "header_value differs from as_str"
    );
    assert_eq!(id.to_string(), s, "Display differs from as_str");
    let prefix = PREFIX.get_or_init(|| s[..16].to_owned());
    assert_eq!(
        &s[..16],
        prefix.as_str(),
        "generated id {s:?} does not carry the process prefix {prefix:?}"
    );
    u64::from_str_radix(&s[16..], 16).expect("counter is hex")
}

/// Records ids as generated in this process; panics on an id seen before.
fn register<'a>(ids: impl IntoIterator<Item = &'a str>) {
    let mut seen = SEEN
        .get_or_init(|| Mutex::new(HashSet::new()))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    for id in ids {
        assert!(
            seen.insert(id.to_owned()),
            "id {id:?} was generated twice in this process"
        );
    }
}

/// Asserts that the counter parts strictly increase, in generation order.
fn assert_increasing(what: &str, counters: &[u64]) {
    for (i, w) in counters.windows(2).enumerate() {
        assert!(
            w[0] < w[1],
            "{what}: counter did not increase at position {}: {:#018x} then {:#018x}",
            i + 1,
            w[0],
            w[1]
        );
    }
}

/// Ids generated on one thread, with a copy of their text taken when they were generated.
struct Generated {
    ids: Vec<RequestId>,
    text: Vec<String>,
}

/// Generates `n` ids on the current thread and checks shape and per-thread order.
fn generate_checked(n: usize, what: &str) -> Generated {
    let ids: Vec<RequestId> = (0..n).map(|_| RequestId::generate()).collect();
    let counters: Vec<u64> = ids.iter().map(check_generated).collect();
    assert_increasing(what, &counters);
    let text = ids.iter().map(|id| id.as_str().to_owned()).collect();
    Generated { ids, text }
}

/// Asserts that held ids still read as they did when generated, and still work.
fn assert_unchanged(ids: &[RequestId], text: &[String]) {
    assert_eq!(ids.len(), text.len());
    for (id, text) in ids.iter().zip(text) {
        assert_eq!(
            id.as_str(),
            text,
            "an id's text changed after it was generated"
        );
        assert_eq!(id.header_value().as_bytes(), text.as_bytes());
        assert_eq!(id.to_string(), *text);
        let parsed = RequestId::parse(id.as_str()).expect("a generated id parses");
        assert_eq!(&parsed, id);
        check_generated(id);
    }
}

fn hash_of(id: &RequestId) -> u64 {
    let mut hasher = DefaultHasher::new();
    id.hash(&mut hasher);
    hasher.finish()
}

// ---------------------------------------------------------------------------------------------
// Format and value semantics
// ---------------------------------------------------------------------------------------------

// Promise: `generate()` gives 32 lowercase hex digits, a 16-digit per-process prefix and a
// counter that strictly increases within one thread, across the 16-id and 1 024-id boundaries.
#[test]
fn generated_ids_have_the_documented_shape_across_batch_and_block_boundaries() {
    let ids = thread::spawn(|| {
        // 3 blocks of 1 024 and then some, one id at a time, on a fresh thread.
        generate_checked(3 * 1024 + 17, "one thread, 3089 ids")
    })
    .join()
    .expect("generator thread");
    register(ids.text.iter().map(String::as_str));
    assert_unchanged(&ids.ids, &ids.text);
    // And on this (already used) test thread, in sizes that straddle the boundaries.
    for n in [1, 15, 16, 17, 31, 32, 33, 1023, 1024, 1025] {
        let more = generate_checked(n, &format!("test thread, run of {n}"));
        register(more.text.iter().map(String::as_str));
    }
}

// Promise: an id is a value: a clone equals it, `Eq`/`Hash` follow the text (a parsed copy of a
// generated id is equal and hashes the same), `Display` is `as_str`, and two generated ids
// differ.
#[test]
fn ids_are_values_clone_eq_hash_display_follow_the_text() {
    let a = RequestId::generate();
    let b = RequestId::generate();
    register([a.as_str(), b.as_str()]);
    assert_ne!(a, b, "two generated ids are equal");
    assert_ne!(a.as_str(), b.as_str());
    let a2 = a.clone();
    assert_eq!(a, a2);
    assert_eq!(hash_of(&a), hash_of(&a2));
    let parsed = RequestId::parse(a.as_str()).expect("parses");
    assert_eq!(a, parsed, "a generated id differs from its parsed copy");
    assert_eq!(
        hash_of(&a),
        hash_of(&parsed),
        "a generated id hashes differently from its parsed copy"
    );
    assert_eq!(a.header_value(), parsed.header_value());
    assert_eq!(format!("{a}"), a.as_str());
    assert_eq!(format!("{parsed}"), a.as_str());
    // A clone outlives its original and the rest of the batch.
    let text = a.as_str().to_owned();
    drop(a);
    drop(parsed);
    let more: Vec<RequestId> = (0..40).map(|_| RequestId::generate()).collect();
    register(more.iter().map(RequestId::as_str));
    assert_eq!(a2.as_str(), text);
    // In a HashSet, generated and parsed copies collapse to one.
    let set: HashSet<RequestId> = [
        a2.clone(),
        RequestId::parse(&text).unwrap(),
        b.clone(),
        b.clone(),
    ]
    .into_iter()
    .collect();
    assert_eq!(set.len(), 2);
    // Debug must not panic (its shape is not documented).
    let _ = format!("{a2:?}");
}

// Promise: `RequestId` can go in `http::Extensions` and across threads.
#[test]
fn request_id_is_send_sync_static() {
    fn assert_traits<T: Clone + Send + Sync + 'static>() {}
    assert_traits::<RequestId>();
    assert_traits::<RequestIdError>();
}

// Promise: `parse` accepts 1..=MAX_REQUEST_ID_LEN bytes of `!`..=`~` and names the first bad
// byte otherwise.
#[test]
fn parse_accepts_exactly_visible_ascii_up_to_the_limit() {
    assert_eq!(MAX_REQUEST_ID_LEN, 128);
    let all_visible: String = (b'!'..=b'~').map(char::from).collect();
    assert_eq!(
        RequestId::parse(&all_visible)
            .expect("visible ASCII")
            .as_str(),
        all_visible
    );
    let max = "x".repeat(MAX_REQUEST_ID_LEN);
    assert_eq!(RequestId::parse(&max).expect("128 bytes").as_str(), max);
    assert_eq!(RequestId::parse("!").unwrap().as_str(), "!");
    assert_eq!(RequestId::parse("~").unwrap().as_str(), "~");
    assert_eq!(RequestId::parse(""), Err(RequestIdError::Empty));
    assert_eq!(
        RequestId::parse(&"x".repeat(MAX_REQUEST_ID_LEN + 1)),
        Err(RequestIdError::TooLong {
            len: MAX_REQUEST_ID_LEN + 1,
            max: MAX_REQUEST_ID_LEN
        })
    );
    for (bad, position) in [
        ("ab c", 2),
        (" abc", 0),
        ("abc\t", 3),
        ("a\u{7f}", 1),
        ("ok\u{e9}", 2),
        ("\u{0}", 0),
    ] {
        assert_eq!(
            RequestId::parse(bad),
            Err(RequestIdError::InvalidByte { position }),
            "{bad:?}"
        );
    }
    // A parsed id's header value carries the same bytes.
    let id = RequestId::parse("req-1").unwrap();
    assert_eq!(id.header_value().as_bytes(), b"req-1");
    assert_eq!(id.to_string(), "req-1");
}

// Promise: `from_request_headers` reads back the one valid id (a generated id round-trips
// through its header value); `from_headers_or_generate` propagates it, and generates a fresh id
// (reporting the error) when the header is missing, invalid or repeated.
#[test]
fn header_round_trip_and_from_headers_or_generate() {
    let id = RequestId::generate();
    register([id.as_str()]);
    let mut headers = HeaderMap::new();
    assert_eq!(RequestId::from_request_headers(&headers), None);
    headers.insert(REQUEST_ID_HEADER, id.header_value().clone());
    let back = RequestId::from_request_headers(&headers).expect("round trip");
    assert_eq!(back, id);
    assert_eq!(hash_of(&back), hash_of(&id));
    let (same, err) = RequestId::from_headers_or_generate(&headers);
    assert_eq!(same, id);
    assert_eq!(err, None);

    // Missing: a fresh id, no error.
    let (fresh, err) = RequestId::from_headers_or_generate(&HeaderMap::new());
    check_generated(&fresh);
    register([fresh.as_str()]);
    assert_eq!(err, None);

    // Invalid values: a fresh id and the reason.
    for (value, expected) in [
        (HeaderValue::from_static(""), RequestIdError::Empty),
        (
            HeaderValue::from_static("a b"),
            RequestIdError::InvalidByte { position: 1 },
        ),
        (
            HeaderValue::from_bytes(b"ab\x80").unwrap(),
            RequestIdError::InvalidByte { position: 2 },
        ),
        (
            HeaderValue::from_str(&"y".repeat(129)).unwrap(),
            RequestIdError::TooLong { len: 129, max: 128 },
        ),
    ] {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID_HEADER, value.clone());
        assert_eq!(RequestId::from_request_headers(&headers), None, "{value:?}");
        let (fresh, err) = RequestId::from_headers_or_generate(&headers);
        check_generated(&fresh);
        register([fresh.as_str()]);
        assert_eq!(err, Some(expected), "{value:?}");
    }

    // Repeated (even two equal valid values): no id, a fresh one, `Repeated`.
    let mut headers = HeaderMap::new();
    headers.append(REQUEST_ID_HEADER, HeaderValue::from_static("one"));
    headers.append(REQUEST_ID_HEADER, HeaderValue::from_static("one"));
    assert_eq!(RequestId::from_request_headers(&headers), None);
    let (fresh, err) = RequestId::from_headers_or_generate(&headers);
    check_generated(&fresh);
    register([fresh.as_str()]);
    assert_eq!(err, Some(RequestIdError::Repeated));
}

// ---------------------------------------------------------------------------------------------
// Uniqueness across threads
// ---------------------------------------------------------------------------------------------

// Promise: ids never repeat within a process: 12 OS threads released together, 3 000 ids each
// (each thread crosses two block boundaries), all distinct, each thread's counter increasing.
#[test]
fn concurrent_threads_never_share_an_id() {
    const THREADS: usize = 12;
    const PER_THREAD: usize = 3_000;
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                generate_checked(PER_THREAD, &format!("thread {t}"))
            })
        })
        .collect();
    let results: Vec<Generated> = handles
        .into_iter()
        .map(|h| h.join().expect("generator thread"))
        .collect();
    let mut all = HashSet::new();
    for r in &results {
        for s in &r.text {
            assert!(all.insert(s.as_str()), "id {s:?} generated by two threads");
        }
    }
    assert_eq!(all.len(), THREADS * PER_THREAD);
    // Every id outlived its thread.
    for r in &results {
        assert_unchanged(&r.ids, &r.text);
    }
    register(
        results
            .iter()
            .flat_map(|r| r.text.iter().map(String::as_str)),
    );
}

// Promise: blocks and batches abandoned half-used by threads that end never lead to a repeated
// id: 320 short-lived threads (8 at a time) generating 0 to 49 ids each; the ids, held after
// every thread ended, still read as generated.
#[test]
fn short_lived_threads_abandoning_blocks_never_repeat_an_id() {
    let mut held: Vec<Generated> = Vec::new();
    for wave in 0..40 {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let n = (wave * 8 + t) * 7 % 50;
                thread::spawn(move || generate_checked(n, &format!("wave {wave} thread {t}")))
            })
            .collect();
        held.extend(handles.into_iter().map(|h| h.join().expect("thread")));
    }
    let total: usize = held.iter().map(|g| g.ids.len()).sum();
    let distinct: HashSet<&str> = held
        .iter()
        .flat_map(|g| g.text.iter().map(String::as_str))
        .collect();
    assert_eq!(distinct.len(), total, "short-lived threads repeated an id");
    // Churn the allocator a little, then check that every id still reads the same.
    let noise: Vec<Vec<u8>> = (0..256).map(|i| vec![b'Z' ^ (i as u8); 512]).collect();
    drop(noise);
    for g in &held {
        assert_unchanged(&g.ids, &g.text);
    }
    register(distinct);
}

// Promise: an id kept alive keeps its batch alive and unchanged after every other id of the
// batch is dropped and its thread goes on generating (and then ends).
#[test]
fn an_id_outlives_the_rest_of_its_batch_and_its_thread() {
    let (kept, text) = thread::spawn(|| {
        let mut kept = Vec::new();
        let mut text = Vec::new();
        for round in 0..64usize {
            // Keep one id out of each run of 16, at a different position every time; drop the
            // others right away.
            let keep_at = round % 16;
            for i in 0..16 {
                let id = RequestId::generate();
                if i == keep_at {
                    text.push(id.as_str().to_owned());
                    kept.push(id);
                }
            }
        }
        // More generation on the same thread, while only single ids hold each old batch.
        for _ in 0..3 {
            let burst = generate_checked(1024, "burst after dropping");
            register(burst.text.iter().map(String::as_str));
        }
        (kept, text)
    })
    .join()
    .expect("thread");
    let noise: Vec<Vec<u8>> = (0..256).map(|_| vec![0xff; 512]).collect();
    drop(noise);
    assert_unchanged(&kept, &text);
    // Each kept id also survives its own clones coming and going.
    for id in &kept {
        let c = id.clone();
        drop(c);
    }
    assert_unchanged(&kept, &text);
    let distinct: HashSet<&str> = text.iter().map(String::as_str).collect();
    assert_eq!(distinct.len(), text.len());
    register(text.iter().map(String::as_str));
}

// Promise: uniqueness holds on tokio multi-thread runtimes, with tasks hopping between worker
// threads and blocking-pool threads that come and go; 4 runtimes in turn, each dropped (its
// threads end, abandoning their blocks).
#[test]
fn tokio_multi_thread_runtimes_never_repeat_an_id() {
    let mut all: Vec<RequestId> = Vec::new();
    for round in 0..4usize {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(3)
            .max_blocking_threads(4)
            .build()
            .expect("runtime");
        let ids = runtime.block_on(async move {
            let mut set = tokio::task::JoinSet::new();
            for t in 0..48usize {
                set.spawn(async move {
                    let mut v = Vec::new();
                    for i in 0..(20 + (t * 13 + round) % 40) {
                        v.push(RequestId::generate());
                        if i % 5 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                    v
                });
            }
            for t in 0..8usize {
                set.spawn(async move {
                    tokio::task::spawn_blocking(move || {
                        (0..(17 * t + 3)).map(|_| RequestId::generate()).collect()
                    })
                    .await
                    .expect("blocking task")
                });
            }
            let mut ids: Vec<RequestId> = Vec::new();
            while let Some(v) = set.join_next().await {
                ids.extend(v.expect("task"));
            }
            ids
        });
        drop(runtime);
        all.extend(ids);
    }
    let mut distinct = HashSet::new();
    for id in &all {
        check_generated(id);
        assert!(
            distinct.insert(id.as_str()),
            "id {:?} generated twice across tokio tasks",
            id.as_str()
        );
    }
    register(distinct);
}

// ---------------------------------------------------------------------------------------------
// Thread-local teardown (the fallback path)
// ---------------------------------------------------------------------------------------------

/// What a destructor reports: the ids it generated and their text at generation time, or the
/// panic message.
type DropReport = Result<(Vec<RequestId>, Vec<String>), String>;

/// Generates `count` ids when dropped (i.e. from a thread-local destructor) and sends them.
struct GenerateOnDrop {
    count: usize,
    tx: mpsc::Sender<DropReport>,
}

impl Drop for GenerateOnDrop {
    fn drop(&mut self) {
        let count = self.count;
        let report = std::panic::catch_unwind(move || {
            let ids: Vec<RequestId> = (0..count).map(|_| RequestId::generate()).collect();
            let text = ids.iter().map(|id| id.as_str().to_owned()).collect();
            (ids, text)
        })
        .map_err(|panic| {
            panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic".to_owned())
        });
        let _ = self.tx.send(report);
    }
}

thread_local! {
    static ON_EXIT: RefCell<Option<GenerateOnDrop>> = const { RefCell::new(None) };
}

/// When, relative to the thread's own use of `generate()`, the destructor is registered.
#[derive(Clone, Copy, Debug)]
enum Order {
    /// Registered before the thread first generates: on Linux thread-local destructors run in
    /// reverse order of registration, so it runs after the crate's thread-local is gone.
    BeforeFirstGenerate,
    /// Registered after: it runs while the crate's thread-local is still there.
    AfterFirstGenerate,
    /// The thread never generates before its teardown.
    NeverGenerated,
}

/// Runs threads whose thread-local destructor generates ids, next to ordinary generator
/// threads; returns, per destructor thread, the ids generated before teardown then those
/// generated in the destructor (in order), and the ordinary threads' ids.
fn run_teardown_threads(
    in_destructor: usize,
) -> (Vec<(Order, Generated, Generated)>, Vec<Generated>) {
    let orders = [
        Order::BeforeFirstGenerate,
        Order::AfterFirstGenerate,
        Order::NeverGenerated,
    ];
    let mut teardown = Vec::new();
    let mut ordinary = Vec::new();
    for wave in 0..4 {
        let mut pending = Vec::new();
        for (k, order) in orders.into_iter().enumerate() {
            for copy in 0..2 {
                let (tx, rx) = mpsc::channel();
                let before = 5 + wave * 7 + k * 3 + copy;
                let handle = thread::spawn(move || {
                    let install = || {
                        ON_EXIT.with(|slot| {
                            *slot.borrow_mut() = Some(GenerateOnDrop {
                                count: in_destructor,
                                tx,
                            })
                        })
                    };
                    match order {
                        Order::BeforeFirstGenerate => {
                            install();
                            generate_checked(before, "before teardown")
                        }
                        Order::AfterFirstGenerate => {
                            let g = generate_checked(before, "before teardown");
                            install();
                            g
                        }
                        Order::NeverGenerated => {
                            install();
                            Generated {
                                ids: Vec::new(),
                                text: Vec::new(),
                            }
                        }
                    }
                });
                pending.push((order, handle, rx));
            }
        }
        let plain: Vec<_> = (0..2)
            .map(|_| thread::spawn(|| generate_checked(100, "ordinary thread")))
            .collect();
        for (order, handle, rx) in pending {
            let before = handle.join().expect("teardown thread");
            let report = rx.recv().expect("the destructor reported");
            let (ids, text) = match report {
                Ok(r) => r,
                Err(message) => {
                    panic!(
                        "generate() panicked in a thread-local destructor ({order:?}): {message}"
                    )
                }
            };
            teardown.push((order, before, Generated { ids, text }));
        }
        ordinary.extend(
            plain
                .into_iter()
                .map(|h| h.join().expect("ordinary thread")),
        );
    }
    (teardown, ordinary)
}

// Promise: `generate()` called from another thread-local's destructor (before, after or
// without the crate's own thread-local being torn down) does not panic and returns valid ids
// (32 lowercase hex, the process prefix) that are unique against every other id, including
// 40 in a row (past a 16-id batch) and ids generated by ordinary threads at the same time.
#[test]
fn generate_in_thread_local_destructor_is_valid_and_unique() {
    let (teardown, ordinary) = run_teardown_threads(40);
    let mut all: HashSet<&str> = HashSet::new();
    for (order, before, during) in &teardown {
        assert_eq!(during.ids.len(), 40, "{order:?}");
        // They outlived their thread: unchanged, valid.
        assert_unchanged(&during.ids, &during.text);
        assert_unchanged(&before.ids, &before.text);
        for s in before.text.iter().chain(&during.text) {
            assert!(
                all.insert(s.as_str()),
                "id {s:?} repeated ({order:?}, generated in or before a thread-local destructor)"
            );
        }
    }
    for g in &ordinary {
        for s in &g.text {
            assert!(
                all.insert(s.as_str()),
                "id {s:?} of an ordinary thread repeats a teardown id"
            );
        }
    }
    register(all);
}

// Promise: the counter part strictly increases within one thread, also for the ids a thread
// generates in its thread-local destructors after its earlier ones.
#[test]
fn thread_local_destructor_ids_keep_the_thread_counter_increasing() {
    let (teardown, ordinary) = run_teardown_threads(20);
    for (order, before, during) in &teardown {
        let counters: Vec<u64> = before
            .ids
            .iter()
            .chain(&during.ids)
            .map(check_generated)
            .collect();
        assert_increasing(
            &format!("thread with a generating destructor ({order:?})"),
            &counters,
        );
    }
    register(
        teardown
            .iter()
            .flat_map(|(_, b, d)| b.text.iter().chain(&d.text).map(String::as_str))
            .chain(
                ordinary
                    .iter()
                    .flat_map(|g| g.text.iter().map(String::as_str)),
            ),
    );
}

// Promise: the fallback path keeps its promises for long runs too: 1 100 ids (past a 1 024
// block) generated in a destructor that runs after the crate's thread-local is gone, on two
// threads at once, are valid, distinct, and increasing within each thread.
#[test]
fn long_runs_in_thread_local_destructors_stay_unique_and_increasing() {
    let runs: Vec<Generated> = (0..2)
        .map(|_| {
            let (tx, rx) = mpsc::channel();
            let handle = thread::spawn(move || {
                ON_EXIT.with(|slot| *slot.borrow_mut() = Some(GenerateOnDrop { count: 1100, tx }));
                generate_checked(3, "before teardown")
            });
            (handle, rx)
        })
        .collect::<Vec<_>>()
        .into_iter()
        .flat_map(|(handle, rx)| {
            let before = handle.join().expect("thread");
            let (ids, text) = rx
                .recv()
                .expect("the destructor reported")
                .unwrap_or_else(|m| panic!("generate() panicked in a destructor: {m}"));
            [before, Generated { ids, text }]
        })
        .collect();
    let mut all = HashSet::new();
    for pair in runs.chunks(2) {
        let counters: Vec<u64> = pair
            .iter()
            .flat_map(|g| g.ids.iter())
            .map(check_generated)
            .collect();
        assert_increasing("1 100 ids in a destructor", &counters);
        for g in pair {
            assert_unchanged(&g.ids, &g.text);
            for s in &g.text {
                assert!(all.insert(s.as_str()), "id {s:?} repeated in a destructor");
            }
        }
    }
    assert_eq!(all.len(), 2 * (3 + 1100));
    register(all);
}

// ---------------------------------------------------------------------------------------------
// Other processes, allocation cost, leaks (child processes)
// ---------------------------------------------------------------------------------------------

const CHILD_ENV: &str = "BLACKBOX_REQUEST_ID_CHILD";

fn run_child(test: &str, mode: &str) -> String {
    let output = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", test, "--test-threads=1", "--nocapture"])
        .env(CHILD_ENV, mode)
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "child {test} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("1 passed"),
        "the child did not run:\n{stdout}"
    );
    stdout
}

/// Only does something in a child process (see the tests below).
#[test]
fn ids_child() {
    if std::env::var(CHILD_ENV).as_deref() != Ok("ids") {
        return;
    }
    for _ in 0..20 {
        println!("ID:{}", RequestId::generate());
    }
}

// Promise: the prefix is random per process ("rarely repeat across processes"): two other runs
// of this binary get prefixes different from this process's and from each other, and none of
// their ids is one of ours.
#[test]
fn other_processes_get_other_prefixes() {
    let ours = RequestId::generate();
    check_generated(&ours);
    register([ours.as_str()]);
    let mut prefixes = HashSet::new();
    prefixes.insert(ours.as_str()[..16].to_owned());
    for _ in 0..2 {
        let out = run_child("ids_child", "ids");
        // The first line follows the harness's "test ids_child ... ".
        let ids: Vec<&str> = out
            .lines()
            .filter_map(|l| l.split_once("ID:").map(|(_, id)| id))
            .collect();
        assert_eq!(ids.len(), 20, "child output:\n{out}");
        let child_prefix = ids[0][..16].to_owned();
        for id in &ids {
            let parsed = RequestId::parse(id).expect("child id parses");
            assert_eq!(id.len(), 32);
            assert_eq!(&id[..16], child_prefix, "one child, two prefixes");
            assert_ne!(parsed, ours);
        }
        assert!(
            prefixes.insert(child_prefix.clone()),
            "prefix {child_prefix} repeated across processes"
        );
    }
}

fn live(region: &stats_alloc::Region<'_, std::alloc::System>) -> isize {
    let change = region.change();
    change.bytes_allocated as isize - change.bytes_deallocated as isize
}

/// Only does something in a child process (see the test below): prints measurements.
#[test]
fn alloc_probe_child() {
    if std::env::var(CHILD_ENV).as_deref() != Ok("alloc") {
        return;
    }
    // Warm up: the process prefix, thread spawning.
    thread::spawn(|| drop((0..100).map(|_| RequestId::generate()).collect::<Vec<_>>()))
        .join()
        .unwrap();

    // Allocations per generated id (the fewest of 3 windows: other threads only add).
    const N: usize = 1600;
    let allocations = thread::spawn(|| {
        let mut best = usize::MAX;
        for _ in 0..3 {
            let mut ids = Vec::with_capacity(N);
            drop(RequestId::generate());
            let region = stats_alloc::Region::new(GLOBAL);
            for _ in 0..N {
                ids.push(RequestId::generate());
            }
            best = best.min(region.change().allocations);
            drop(ids);
        }
        best
    })
    .join()
    .unwrap();
    println!("ALLOCS:{allocations}");

    // Net bytes after threads generated, held and dropped ids, and ended (fewest of 3).
    let mut leaked = isize::MAX;
    for _ in 0..3 {
        let region = stats_alloc::Region::new(GLOBAL);
        for t in 0..20 {
            thread::spawn(move || {
                drop(
                    (0..(1000 + t))
                        .map(|_| RequestId::generate())
                        .collect::<Vec<_>>(),
                )
            })
            .join()
            .unwrap();
        }
        leaked = leaked.min(live(&region));
    }
    println!("LEAKED:{leaked}");

    // Ids kept past their thread keep their batches; dropping them frees everything.
    let mut after_drop = isize::MAX;
    let mut while_held = isize::MAX;
    for _ in 0..3 {
        let region = stats_alloc::Region::new(GLOBAL);
        let kept: Vec<RequestId> = thread::spawn(|| {
            let mut kept = Vec::with_capacity(32);
            for i in 0..(32 * 16) {
                let id = RequestId::generate();
                if i % 16 == 0 {
                    kept.push(id);
                }
            }
            kept
        })
        .join()
        .unwrap();
        while_held = while_held.min(live(&region));
        drop(kept);
        after_drop = after_drop.min(live(&region));
    }
    println!("HELD:{while_held}");
    println!("AFTER_DROP:{after_drop}");

    // `RequestId::parse(id.as_str())` is the documented way to keep an id without its batch.
    let mut copied = isize::MAX;
    for _ in 0..3 {
        let region = stats_alloc::Region::new(GLOBAL);
        let copies: Vec<RequestId> = thread::spawn(|| {
            let mut copies = Vec::with_capacity(32);
            for i in 0..(32 * 16) {
                let id = RequestId::generate();
                if i % 16 == 0 {
                    copies.push(RequestId::parse(id.as_str()).expect("parses"));
                }
            }
            copies
        })
        .join()
        .unwrap();
        copied = copied.min(live(&region));
        drop(copies);
    }
    println!("COPIED:{copied}");
}

fn probe_value(out: &str, key: &str) -> isize {
    out.lines()
        .find_map(|l| l.split_once(key).map(|(_, v)| v))
        .unwrap_or_else(|| panic!("no {key} in the probe's output:\n{out}"))
        .trim()
        .parse()
        .expect("a number")
}

// Promise: generating an id usually allocates nothing (the docs count 1/16 of an allocation per
// id; allowed here: 1/8), ids dropped with their threads leave nothing behind, ids kept past
// their thread are freed with their last holder, and a parsed copy does not keep the batch.
#[test]
fn generation_allocates_rarely_and_leaks_nothing() {
    let out = run_child("alloc_probe_child", "alloc");
    let allocs = probe_value(&out, "ALLOCS:");
    let leaked = probe_value(&out, "LEAKED:");
    let held = probe_value(&out, "HELD:");
    let after_drop = probe_value(&out, "AFTER_DROP:");
    assert!(
        allocs <= 1600 / 8,
        "1600 generated ids took {allocs} allocations (docs: about 1 per 16 ids)"
    );
    assert!(
        leaked < 512,
        "20 threads generating ~1000 ids each left {leaked} bytes allocated after they ended"
    );
    assert!(held > 0, "kept ids hold no memory? {held}");
    let copied = probe_value(&out, "COPIED:");
    assert!(
        copied <= 32 * 128,
        "32 parsed copies of ids (whose originals were dropped) still hold {copied} bytes \
         (32 kept originals hold {held}): the copies keep their batches alive"
    );
    assert!(
        after_drop < 512,
        "after the kept ids were dropped, {after_drop} bytes were still allocated"
    );
}

// ---------------------------------------------------------------------------------------------
// Through the layer (I1)
// ---------------------------------------------------------------------------------------------

/// What the inner service saw, sent back in the body: every `x-request-id` value of the request
/// (comma-separated), then the extension (or `<none>`).
async fn echo_ids(
    req: Request<InspectBody<Full<Bytes>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let headers: Vec<String> = req
        .headers()
        .get_all(REQUEST_ID_HEADER)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    let ext = req
        .extensions()
        .get::<RequestId>()
        .map_or_else(|| "<none>".to_owned(), |id| id.as_str().to_owned());
    let mut response = Response::new(Full::new(Bytes::from(format!(
        "{}\n{}",
        headers.join(","),
        ext
    ))));
    // The layer must overwrite whatever the handler sets.
    response.headers_mut().append(
        REQUEST_ID_HEADER,
        HeaderValue::from_static("set-by-handler"),
    );
    response
        .headers_mut()
        .append(REQUEST_ID_HEADER, HeaderValue::from_static("again"));
    Ok(response)
}

/// The response's single `x-request-id`, and what the inner service saw.
struct Seen {
    response_id: String,
    request_headers: String,
    extension: String,
}

async fn call<S>(service: S, request: Request<Full<Bytes>>) -> Seen
where
    S: Service<
            Request<Full<Bytes>>,
            Response = Response<InspectBody<Full<Bytes>>>,
            Error = Infallible,
        >,
{
    let response = service.oneshot(request).await.expect("infallible");
    let ids: Vec<String> = response
        .headers()
        .get_all(REQUEST_ID_HEADER)
        .iter()
        .map(|v| v.to_str().expect("ascii").to_owned())
        .collect();
    assert_eq!(ids.len(), 1, "the response carries {ids:?}");
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let body = String::from_utf8(body.to_vec()).expect("utf-8");
    let (headers, ext) = body.split_once('\n').expect("two lines");
    Seen {
        response_id: ids[0].clone(),
        request_headers: headers.to_owned(),
        extension: ext.to_owned(),
    }
}

fn post(id: Option<HeaderValue>) -> Request<Full<Bytes>> {
    let mut request = Request::builder()
        .method(Method::POST)
        .uri("/api/jobs")
        .body(Full::new(Bytes::from_static(b"job")))
        .expect("request");
    if let Some(id) = id {
        request.headers_mut().insert(REQUEST_ID_HEADER, id);
    }
    request
}

// Promise (I1): with thousands of concurrent requests on a multi-thread runtime, every request
// gets a distinct generated id, and the request header (the only one), the extension, the
// response header (overwriting the handler's) and the captured entry all carry it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn layer_ids_agree_everywhere_under_concurrency() {
    const REQUESTS: usize = 2_000;
    let inspector = Inspector::new(InspectorConfig::new().capacity(REQUESTS + 10));
    let service = ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(echo_ids));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..REQUESTS {
        let service = service.clone();
        set.spawn(async move { call(service, post(None)).await });
    }
    let mut seen = Vec::with_capacity(REQUESTS);
    while let Some(s) = set.join_next().await {
        seen.push(s.expect("task"));
    }
    let mut distinct = HashSet::new();
    for s in &seen {
        let id = RequestId::parse(&s.response_id).expect("valid id");
        check_generated(&id);
        assert_eq!(
            s.request_headers, s.response_id,
            "request header vs response"
        );
        assert_eq!(s.extension, s.response_id, "extension vs response header");
        assert!(
            distinct.insert(s.response_id.as_str()),
            "two concurrent requests got id {}",
            s.response_id
        );
    }
    let entries = inspector.entries();
    assert_eq!(entries.len(), REQUESTS);
    let by_id: HashMap<&str, usize> =
        entries
            .iter()
            .map(|e| e.request_id.as_str())
            .fold(HashMap::new(), |mut m, id| {
                *m.entry(id).or_default() += 1;
                m
            });
    for s in &seen {
        assert_eq!(
            by_id.get(s.response_id.as_str()),
            Some(&1),
            "the entry for response id {} is missing or repeated",
            s.response_id
        );
    }
    // The recorded response headers say what was sent: one `x-request-id`, the layer's.
    for e in &entries {
        let recorded: Vec<&str> = e
            .response_headers
            .iter()
            .filter(|h| h.name == REQUEST_ID_HEADER.as_str())
            .map(|h| h.value.as_str())
            .collect();
        assert_eq!(
            recorded,
            [e.request_id.as_str()],
            "entry {} recorded other response ids",
            e.id
        );
    }
    register(distinct);
}

// Promise (I1): a single valid incoming id (1..=128 visible ASCII bytes, any of them) is
// propagated as is; an empty, too long, invalid-byte or repeated one is replaced by a fresh
// generated id, everywhere, and the inner service sees exactly one `x-request-id`.
#[tokio::test]
async fn layer_propagates_valid_ids_and_replaces_the_rest() {
    let inspector = Inspector::new(InspectorConfig::new().capacity(100));
    let service = ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(echo_ids));

    let all_visible: String = (b'!'..=b'~').map(char::from).collect();
    let max = "m".repeat(MAX_REQUEST_ID_LEN);
    for good in ["req-1", "!", "~", all_visible.as_str(), max.as_str()] {
        let seen = call(
            service.clone(),
            post(Some(HeaderValue::from_str(good).unwrap())),
        )
        .await;
        assert_eq!(
            seen.response_id, good,
            "a valid incoming id was not propagated"
        );
        assert_eq!(seen.request_headers, good);
        assert_eq!(seen.extension, good);
        assert_eq!(inspector.entries()[0].request_id, good);
    }
    // A generated id from elsewhere in this process is just an incoming id: propagated.
    let foreign = RequestId::generate();
    register([foreign.as_str()]);
    let seen = call(service.clone(), post(Some(foreign.header_value().clone()))).await;
    assert_eq!(seen.response_id, foreign.as_str());

    let too_long = "t".repeat(MAX_REQUEST_ID_LEN + 1);
    let bad: Vec<HeaderValue> = vec![
        HeaderValue::from_static(""),
        HeaderValue::from_str(&too_long).unwrap(),
        HeaderValue::from_static("has space"),
        HeaderValue::from_static("tab\there"),
        HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        HeaderValue::from_bytes(b"obs\x80").unwrap(),
    ];
    let mut fresh = HashSet::new();
    for value in bad {
        let seen = call(service.clone(), post(Some(value.clone()))).await;
        let id = RequestId::parse(&seen.response_id).expect("valid");
        check_generated(&id);
        assert_eq!(seen.request_headers, seen.response_id, "{value:?}");
        assert_eq!(seen.extension, seen.response_id, "{value:?}");
        assert_eq!(inspector.entries()[0].request_id, seen.response_id);
        assert!(fresh.insert(seen.response_id));
    }
    // Repeated: two valid (even equal) values.
    for (a, b) in [("one", "two"), ("same", "same")] {
        let mut request = post(None);
        request
            .headers_mut()
            .append(REQUEST_ID_HEADER, HeaderValue::from_static(a));
        request
            .headers_mut()
            .append(REQUEST_ID_HEADER, HeaderValue::from_static(b));
        let seen = call(service.clone(), request).await;
        let id = RequestId::parse(&seen.response_id).expect("valid");
        check_generated(&id);
        assert_eq!(
            seen.request_headers, seen.response_id,
            "the inner service must see only the replacement"
        );
        assert_eq!(seen.extension, seen.response_id);
        assert_eq!(inspector.entries()[0].request_id, seen.response_id);
        assert!(fresh.insert(seen.response_id));
    }
    register(fresh.iter().map(String::as_str));
}

// Promise (I1, `request_id_extension`): with `true` the extension is the response's id even
// when another layer put a different `RequestId` there first; with `false` no `RequestId`
// reaches the handler (a stale one is removed) and the header still carries the id. Polling
// GETs get an id too.
#[tokio::test]
async fn layer_extension_setting_and_polling_gets() {
    for insert in [true, false] {
        let inspector = Inspector::new(
            InspectorConfig::new()
                .polling_prefixes(["/api/monitor"])
                .expect("prefix")
                .request_id_extension(insert),
        );
        let service = ServiceBuilder::new()
            .layer(inspector.layer())
            .service(service_fn(echo_ids));
        let mut request = post(None);
        request
            .extensions_mut()
            .insert(RequestId::parse("stale-from-another-layer").unwrap());
        let seen = call(service.clone(), request).await;
        check_generated(&RequestId::parse(&seen.response_id).unwrap());
        assert_eq!(seen.request_headers, seen.response_id);
        if insert {
            assert_eq!(seen.extension, seen.response_id, "insert = true");
        } else {
            assert_eq!(seen.extension, "<none>", "insert = false");
        }
        assert_eq!(inspector.entries()[0].request_id, seen.response_id);

        let poll = Request::get("/api/monitor/aks")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let polled = call(service.clone(), poll).await;
        check_generated(&RequestId::parse(&polled.response_id).unwrap());
        assert_eq!(polled.request_headers, polled.response_id);
        if insert {
            assert_eq!(polled.extension, polled.response_id);
        } else {
            assert_eq!(polled.extension, "<none>");
        }
        assert_ne!(polled.response_id, seen.response_id);
        assert_eq!(inspector.entries().len(), 1, "the polling GET was recorded");
        register([seen.response_id.as_str(), polled.response_id.as_str()]);
    }
}

// Promise (feature `axum`): the `RequestId` extractor gives the handler the response's id, from
// the extension or, with `request_id_extension(false)`, from the header; without the layer it
// answers 500.
#[tokio::test]
async fn axum_extractor_sees_the_response_id() {
    use axum::Router;
    use axum::body::Body;
    use axum::routing::post as axum_post;

    for insert in [true, false] {
        let inspector = Inspector::new(InspectorConfig::new().request_id_extension(insert));
        let app = Router::new()
            .route(
                "/api/jobs",
                axum_post(|id: RequestId| async move { id.as_str().to_owned() }),
            )
            .layer(inspector.layer());
        for incoming in [None, Some("from-client"), Some("bad id")] {
            let mut request = Request::post("/api/jobs").body(Body::empty()).unwrap();
            if let Some(v) = incoming {
                request
                    .headers_mut()
                    .insert(REQUEST_ID_HEADER, HeaderValue::from_str(v).unwrap());
            }
            let response = app.clone().oneshot(request).await.expect("infallible");
            let header = response.headers()[REQUEST_ID_HEADER]
                .to_str()
                .unwrap()
                .to_owned();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(
                body,
                header.as_bytes(),
                "insert = {insert}, incoming {incoming:?}"
            );
            if incoming == Some("from-client") {
                assert_eq!(header, "from-client");
            } else {
                let id = RequestId::parse(&header).unwrap();
                check_generated(&id);
                register([id.as_str()]);
            }
            assert_eq!(inspector.entries()[0].request_id, header);
        }
    }
    let bare = Router::new().route(
        "/api/jobs",
        axum_post(|id: RequestId| async move { id.as_str().to_owned() }),
    );
    let response = bare
        .oneshot(Request::post("/api/jobs").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
}
