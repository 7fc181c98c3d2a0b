//! Black-box stress of the ring's storage (a circular array of slots in chunks of 64, each slot
//! with a lock of its own), through the public API only.
//!
//! Documented promises checked here (rustdoc of `Inspector`, `Entry`, `InspectorStats` and
//! docs/request-inspector.md):
//! - the ring holds at most `capacity` entries, newest first;
//! - `Entry::id` is the position in capture order (1, 2, …), newest = highest, never reused,
//!   (every snapshot is a run of consecutive ids: the newest run);
//! - `captured` counts every captured exchange, `evicted` every entry pushed out by a newer one,
//!   `clear()` keeps both;
//! - `ring_bytes` is the sum of `Entry::retained_bytes` over the ring, `ring_slot_bytes` is 1024
//!   bytes per chunk of 64 slots allocated as the ring first fills (kept by `clear()`), and
//!   `retained_bytes = in_flight_bytes + ring_bytes + ring_slot_bytes + spare_bytes` (evicted
//!   records' arenas kept for reuse, at most 8 × 16 KiB, freed by `clear()`);
//! - `entries()` is a consistent newest-first list, even while writers push concurrently;
//! - polling GETs are not captured.
//!
//! No real sleeps: single-task tests run in paused virtual time, the concurrent ones on OS
//! threads or a multi-thread runtime and end when their writers are done.

mod common;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;

use axum::body::Body as AxumBody;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use request_inspector::{
    Entry, EntryFilter, InspectBody, Inspector, InspectorConfig, Outcome, REQUEST_ID_HEADER,
};
use tower::{ServiceBuilder, ServiceExt, service_fn};

use common::{Rng, read_all};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Slots per chunk and bytes per chunk, as documented on `InspectorStats::ring_slot_bytes`.
const CHUNK: usize = 64;
const CHUNK_BYTES: usize = 1024;

/// The capacities around the chunk size the brief asks for.
const CAPACITIES: [usize; 9] = [1, 63, 64, 65, 127, 128, 129, 200, 1000];

const METHODS: [Method; 4] = [Method::POST, Method::PUT, Method::PATCH, Method::DELETE];
const STATUSES: [u16; 3] = [200, 201, 404];

/// A captured exchange is identified by (writer, sequence number).
type Tag = (u32, u64);

/// A list read from the ring, kept with what it said when it was read: (id, tag) per entry.
type Held = (Vec<Arc<Entry>>, Vec<(u64, Tag)>);

fn method_of((w, i): Tag) -> Method {
    METHODS[((u64::from(w) + i) % 4) as usize].clone()
}

fn status_of((w, i): Tag) -> u16 {
    STATUSES[((u64::from(w) * 7 + i) % 3) as usize]
}

fn tag_text((w, i): Tag) -> String {
    format!("{w}-{i}")
}

fn parse_tag(text: &str) -> Tag {
    let (w, i) = text
        .split_once('-')
        .unwrap_or_else(|| panic!("bad tag {text:?}"));
    (w.parse().expect("writer"), i.parse().expect("sequence"))
}

/// Bytes of slots the ring holds once `len` entries have been pushed since it was created or
/// last cleared (`len` at most the capacity).
fn slot_bytes_for(len: usize) -> usize {
    len.div_ceil(CHUNK) * CHUNK_BYTES
}

fn new_inspector(capacity: usize) -> Inspector {
    Inspector::new(
        InspectorConfig::new()
            .polling_prefixes(["/api/poll"])
            .expect("valid prefix")
            .capacity(capacity)
            .body_limit(64),
    )
}

/// The inner service: reads the request body, answers `res-<tag>` with the tag's status.
async fn handler(
    req: Request<InspectBody<Full<Bytes>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let body = read_all(req.into_body()).await;
    Ok(match path.strip_prefix("/api/r/") {
        Some(tag) => {
            assert_eq!(
                body,
                format!("req-{tag}"),
                "the handler got its request body"
            );
            Response::builder()
                .status(status_of(parse_tag(tag)))
                .body(Full::new(Bytes::from(format!("res-{tag}"))))
                .expect("response")
        }
        None => Response::new(Full::new(Bytes::from_static(b"polled"))),
    })
}

/// One captured exchange through the layer, read to its end (the entry is pushed then).
async fn exchange(inspector: &Inspector, tag: Tag) {
    let text = tag_text(tag);
    let service = ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(handler));
    let req = Request::builder()
        .method(method_of(tag))
        .uri(format!("/api/r/{text}"))
        .header(REQUEST_ID_HEADER, format!("rid-{text}"))
        .body(Full::new(Bytes::from(format!("req-{text}"))))
        .expect("request");
    let response = service.oneshot(req).await.expect("response");
    assert_eq!(response.status().as_u16(), status_of(tag));
    let body = read_all(response.into_body()).await;
    assert_eq!(body, format!("res-{text}"));
}

/// One polling GET through the layer (never captured).
async fn poll(inspector: &Inspector) {
    let service = ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(handler));
    let req = Request::builder()
        .method(Method::GET)
        .uri("/api/poll/status")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = service.oneshot(req).await.expect("response");
    let body = read_all(response.into_body()).await;
    assert_eq!(body, "polled");
}

/// Every field of an entry agrees with the exchange its path names (no record mixed up with
/// another, no torn slot); returns the tag.
fn check_entry(e: &Entry) -> Tag {
    let text = e
        .path
        .strip_prefix("/api/r/")
        .unwrap_or_else(|| panic!("entry {} has an unexpected path {:?}", e.id, e.path));
    let tag = parse_tag(text);
    assert_eq!(e.method, method_of(tag).as_str(), "entry {}: method", e.id);
    assert_eq!(e.status, Some(status_of(tag)), "entry {}: status", e.id);
    assert_eq!(
        e.request_id,
        format!("rid-{text}"),
        "entry {}: request id",
        e.id
    );
    assert_eq!(
        e.request_body.text(),
        format!("req-{text}"),
        "entry {}",
        e.id
    );
    assert_eq!(
        e.response_body.text(),
        format!("res-{text}"),
        "entry {}",
        e.id
    );
    assert_eq!(e.outcome, Outcome::Complete, "entry {}: outcome", e.id);
    tag
}

fn ids(entries: &[Arc<Entry>]) -> Vec<u64> {
    entries.iter().map(|e| e.id).collect()
}

/// What must hold for any list `entries()` returns, even under concurrent writers: at most
/// `capacity` entries, newest first, and (ids being given in capture order under the ring's
/// lock) a run of consecutive ids with no duplicate; every entry intact. Returns (id, tag).
fn check_snapshot(entries: &[Arc<Entry>], capacity: usize) -> Vec<(u64, Tag)> {
    assert!(
        entries.len() <= capacity,
        "{} entries in a ring of {capacity}",
        entries.len()
    );
    for pair in entries.windows(2) {
        assert_eq!(
            pair[0].id,
            pair[1].id + 1,
            "not newest first by consecutive ids: {:?}",
            ids(entries)
        );
    }
    if let Some(oldest) = entries.last() {
        assert!(oldest.id >= 1, "ids start at 1");
    }
    entries.iter().map(|e| (e.id, check_entry(e))).collect()
}

/// A reference model of the documented ring: newest first, bounded, counters kept by clear.
#[derive(Debug)]
struct Model {
    capacity: usize,
    ring: VecDeque<(u64, Tag)>,
    captured: u64,
    evicted: u64,
    passed_through: u64,
    since_clear: usize,
    last_peak: usize,
}

impl Model {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            ring: VecDeque::new(),
            captured: 0,
            evicted: 0,
            passed_through: 0,
            since_clear: 0,
            last_peak: 0,
        }
    }

    fn push(&mut self, tag: Tag) {
        self.captured += 1;
        self.ring.push_front((self.captured, tag));
        if self.ring.len() > self.capacity {
            self.ring.pop_back();
            self.evicted += 1;
        }
        self.since_clear += 1;
    }

    fn clear(&mut self) {
        self.ring.clear();
        self.since_clear = 0;
    }

    /// Compare the inspector with the model: the counters always, the whole list when `full`,
    /// the newest few through `entries_matching(limit)` always.
    fn check(&mut self, inspector: &Inspector, full: bool, context: &str) {
        let stats = inspector.stats();
        assert_eq!(stats.captured, self.captured, "{context}: captured");
        assert_eq!(stats.evicted, self.evicted, "{context}: evicted");
        assert_eq!(stats.passed_through, self.passed_through, "{context}");
        assert_eq!(stats.ring_len, self.ring.len(), "{context}: ring_len");
        assert_eq!(stats.in_flight_bytes, 0, "{context}: nothing in flight");
        // The slots of every position reached since the inspector was made: a clear keeps
        // them, and ids (which name the positions) keep increasing.
        assert_eq!(
            stats.ring_slot_bytes,
            slot_bytes_for((self.captured as usize).min(self.capacity)),
            "{context}: slot bytes ({} pushed)",
            self.captured
        );
        assert_eq!(
            stats.retained_bytes,
            stats.in_flight_bytes + stats.ring_bytes + stats.ring_slot_bytes + stats.spare_bytes,
            "{context}: {stats:?}"
        );
        assert!(
            stats.peak_retained_bytes >= stats.retained_bytes,
            "{context}: {stats:?}"
        );
        assert!(
            stats.peak_retained_bytes >= self.last_peak,
            "{context}: the peak went down"
        );
        self.last_peak = stats.peak_retained_bytes;
        assert_eq!(stats.ring_bytes == 0, self.ring.is_empty(), "{context}");

        let newest = inspector.entries_matching(&EntryFilter::new().limit(3));
        let want: Vec<(u64, Tag)> = self.ring.iter().take(3).copied().collect();
        assert_eq!(
            check_snapshot(&newest, self.capacity),
            want,
            "{context}: the newest three"
        );

        if full {
            let entries = inspector.entries();
            let want: Vec<(u64, Tag)> = self.ring.iter().copied().collect();
            assert_eq!(
                check_snapshot(&entries, self.capacity),
                want,
                "{context}: the whole ring"
            );
            assert_eq!(
                stats.ring_bytes,
                entries.iter().map(|e| e.retained_bytes()).sum::<usize>(),
                "{context}: ring_bytes is the sum of Entry::retained_bytes"
            );
        }
    }
}

/// Whether to read the whole ring after this push: always for small rings, around chunk
/// boundaries and wrap points (and every so often) for large ones, to keep debug runs short.
fn full_check_due(model: &Model) -> bool {
    let cap = model.capacity;
    let since = model.since_clear;
    let wrap = (model.captured as usize) % cap;
    cap <= 129
        || since % CHUNK <= 1
        || since % CHUNK == CHUNK - 1
        || wrap <= 1
        || wrap == cap - 1
        || since.is_multiple_of(97)
}

// ---------------------------------------------------------------------------------------------
// Single-task tests (virtual time)
// ---------------------------------------------------------------------------------------------

// The ring against a reference model at every capacity around the chunk size: several
// wrap-arounds, with polling GETs in between (never captured); after every push the counters,
// slot bytes and newest entries match, and the whole newest-first list matches around every
// chunk boundary and wrap point.
#[tokio::test(start_paused = true)]
async fn ring_matches_the_model_through_many_wraps() {
    for capacity in CAPACITIES {
        let inspector = new_inspector(capacity);
        assert_eq!(inspector.capacity(), capacity);
        let mut model = Model::new(capacity);
        model.check(&inspector, true, &format!("capacity {capacity}, empty"));
        // Wrap at least 3 times (at least 5 times for the small rings).
        let total = if capacity >= 200 {
            3 * capacity + 70
        } else {
            5 * capacity.max(40) + 70
        };
        for i in 1..=total as u64 {
            if i % 17 == 0 {
                poll(&inspector).await;
                model.passed_through += 1;
            }
            exchange(&inspector, (0, i)).await;
            model.push((0, i));
            let full = full_check_due(&model);
            model.check(&inspector, full, &format!("capacity {capacity}, push {i}"));
        }
        assert_eq!(model.evicted, (total - capacity) as u64);
    }
}

// Random interleavings of pushes, clears, polling GETs and held snapshots against the model
// (deterministic seed per capacity): clear at any position of the circular array (mid-chunk,
// at a chunk edge, right after a wrap, on an empty ring, twice in a row).
#[tokio::test(start_paused = true)]
async fn random_pushes_and_clears_match_the_model() {
    for capacity in CAPACITIES {
        let mut rng = Rng::new(capacity as u64);
        let inspector = new_inspector(capacity);
        let mut model = Model::new(capacity);
        let mut held: Vec<Held> = Vec::new();
        let ops = if capacity >= 200 { 3 * capacity } else { 700 };
        let mut seq = 0u64;
        for op in 0..ops {
            let context = format!("capacity {capacity}, op {op}");
            match rng.below(100) {
                0..=1 => {
                    inspector.clear();
                    model.clear();
                    model.check(&inspector, true, &format!("{context}: after clear"));
                }
                2..=4 => {
                    poll(&inspector).await;
                    model.passed_through += 1;
                    model.check(&inspector, false, &context);
                }
                5..=6 => {
                    let snapshot = inspector.entries();
                    let summary = check_snapshot(&snapshot, capacity);
                    assert_eq!(
                        summary,
                        model.ring.iter().copied().collect::<Vec<_>>(),
                        "{context}: snapshot"
                    );
                    held.push((snapshot, summary));
                }
                _ => {
                    // Sometimes a burst that crosses a chunk edge or wraps in one go.
                    let burst = if rng.below(10) == 0 {
                        1 + rng.below(2 * CHUNK)
                    } else {
                        1
                    };
                    for _ in 0..burst {
                        seq += 1;
                        exchange(&inspector, (0, seq)).await;
                        model.push((0, seq));
                    }
                    let full = full_check_due(&model) || burst > 1;
                    model.check(&inspector, full, &context);
                }
            }
        }
        // Snapshots taken along the way are untouched by everything pushed and cleared since.
        for (k, (snapshot, summary)) in held.iter().enumerate() {
            assert_eq!(
                &check_snapshot(snapshot, capacity),
                summary,
                "capacity {capacity}: held snapshot {k} changed"
            );
        }
        model.check(&inspector, true, &format!("capacity {capacity}, end"));
    }
}

/// Push `n` exchanges with the next sequence numbers, into the inspector and the model.
async fn push_n(inspector: &Inspector, n: usize, model: &mut Model, seq: &mut u64) {
    for _ in 0..n {
        *seq += 1;
        exchange(inspector, (0, *seq)).await;
        model.push((0, *seq));
    }
}

// A list read mid-way and held while the ring wraps several times, is cleared and refills stays
// exactly what it was (same ids, same records, newest first); lists read later reflect the new
// state, and the held entries still count nothing in the ring's bytes.
#[tokio::test(start_paused = true)]
async fn held_lists_stay_intact_while_the_ring_wraps_and_clears() {
    for capacity in CAPACITIES {
        let inspector = new_inspector(capacity);
        let mut model = Model::new(capacity);
        let mut seq = 0u64;
        push_n(&inspector, capacity / 2 + 3, &mut model, &mut seq).await;
        let first = inspector.entries();
        let first_summary = check_snapshot(&first, capacity);
        assert_eq!(
            first_summary,
            model.ring.iter().copied().collect::<Vec<_>>()
        );

        push_n(&inspector, capacity + CHUNK + 1, &mut model, &mut seq).await;
        let second = inspector.entries();
        let second_summary = check_snapshot(&second, capacity);
        assert_eq!(second.len(), capacity, "full after a wrap");
        assert_eq!(
            second_summary,
            model.ring.iter().copied().collect::<Vec<_>>()
        );

        push_n(&inspector, 2 * capacity + 5, &mut model, &mut seq).await;
        model.check(&inspector, true, &format!("capacity {capacity}, wrapped"));
        let third = inspector.entries();
        assert!(
            third[0].id > second[0].id,
            "a later read shows the newer entries"
        );

        inspector.clear();
        model.clear();
        let empty = inspector.entries();
        assert!(empty.is_empty(), "capacity {capacity}: a read after clear");
        push_n(&inspector, CHUNK + 2, &mut model, &mut seq).await;
        model.check(&inspector, true, &format!("capacity {capacity}, refilled"));

        // The held lists are as they were read.
        assert_eq!(check_snapshot(&first, capacity), first_summary);
        assert_eq!(check_snapshot(&second, capacity), second_summary);
        // Holding them does not count in what the ring holds.
        let stats = inspector.stats();
        let now = inspector.entries();
        assert_eq!(
            stats.ring_bytes,
            now.iter().map(|e| e.retained_bytes()).sum::<usize>()
        );
        drop((first, second, third));
        assert_eq!(inspector.stats().ring_bytes, stats.ring_bytes);
    }
}

// clear() in the middle: the ring empties, its records' bytes drop to 0 and its slots are kept
// (1 024 bytes per chunk of 64 reached so far), captured and evicted are kept, ids keep
// increasing from where they were, and the slot bytes grow chunk by chunk as the positions
// reach new chunks, up to the capacity's chunks.
#[tokio::test(start_paused = true)]
async fn clear_restarts_the_slots_and_ids_keep_increasing() {
    for capacity in CAPACITIES {
        let inspector = new_inspector(capacity);
        let mut seq = 0u64;
        let mut evicted = 0u64;
        // Clear at several points: full and wrapped, part-filled, right after a chunk edge,
        // already empty.
        for (round, before) in [
            capacity + 37,
            capacity / 2 + 1,
            CHUNK + 1,
            0,
            1,
            2 * capacity,
        ]
        .into_iter()
        .enumerate()
        {
            let context = format!("capacity {capacity}, round {round}");
            for _ in 0..before {
                seq += 1;
                exchange(&inspector, (0, seq)).await;
            }
            evicted += before.saturating_sub(capacity) as u64;
            let stats = inspector.stats();
            assert_eq!(stats.ring_len, before.min(capacity), "{context}");
            assert_eq!(stats.evicted, evicted, "{context}");
            let peak = stats.peak_retained_bytes;

            let slots = stats.ring_slot_bytes;
            assert_eq!(
                slots,
                slot_bytes_for((seq as usize).min(capacity)),
                "{context}"
            );
            inspector.clear();
            let stats = inspector.stats();
            assert!(inspector.entries().is_empty(), "{context}");
            assert_eq!(
                (
                    stats.ring_len,
                    stats.ring_bytes,
                    stats.ring_slot_bytes,
                    stats.retained_bytes
                ),
                (0, 0, slots, slots),
                "{context}: clear frees the records and keeps the slots: {stats:?}"
            );
            assert_eq!(stats.captured, seq, "{context}: clear keeps captured");
            assert_eq!(stats.evicted, evicted, "{context}: clear evicts nothing");
            assert_eq!(stats.peak_retained_bytes, peak, "{context}: the peak stays");

            // Refill past the capacity: ids go on from seq, slot bytes grow chunk by chunk.
            let refill = capacity + 2;
            for k in 1..=refill {
                seq += 1;
                exchange(&inspector, (0, seq)).await;
                let stats = inspector.stats();
                assert_eq!(
                    stats.ring_slot_bytes,
                    slot_bytes_for((seq as usize).min(capacity)),
                    "{context}: {k} pushed since clear"
                );
                let newest = inspector.entries_matching(&EntryFilter::new().limit(1));
                assert_eq!(
                    ids(&newest),
                    vec![seq],
                    "{context}: ids continue after clear"
                );
            }
            evicted += (refill - capacity) as u64;
            let entries = inspector.entries();
            let want: Vec<u64> = (seq + 1 - capacity as u64..=seq).rev().collect();
            assert_eq!(
                ids(&entries),
                want,
                "{context}: the newest after the refill"
            );
            check_snapshot(&entries, capacity);
            let stats = inspector.stats();
            assert_eq!(stats.evicted, evicted, "{context}");
            assert_eq!(stats.captured, seq, "{context}");
            assert_eq!(
                stats.ring_bytes,
                entries.iter().map(|e| e.retained_bytes()).sum::<usize>(),
                "{context}"
            );
            inspector.clear();
        }
    }
}

// Exchanges still in flight (response heads sent, bodies unread) across a wrap and a clear:
// each is pushed when its body ends, so the ring lists them in the order they end, with the
// next consecutive ids, after the entries pushed meanwhile; while they are open their bytes are
// counted in flight (and in retained_bytes), once they end nothing is.
#[tokio::test(start_paused = true)]
async fn in_flight_exchanges_land_in_completion_order_across_wrap_and_clear() {
    for capacity in [1usize, 64, 65, 129] {
        let inspector = new_inspector(capacity);
        let service = ServiceBuilder::new()
            .layer(inspector.layer())
            .service(service_fn(handler));
        let mut open = Vec::new();
        for i in 0..10u64 {
            let tag = (1, i);
            let text = tag_text(tag);
            let req = Request::builder()
                .method(method_of(tag))
                .uri(format!("/api/r/{text}"))
                .header(REQUEST_ID_HEADER, format!("rid-{text}"))
                .body(Full::new(Bytes::from(format!("req-{text}"))))
                .expect("request");
            let response = service.clone().oneshot(req).await.expect("response");
            open.push((tag, response));
        }
        let stats = inspector.stats();
        assert_eq!(stats.captured, 0, "nothing is pushed before its body ends");
        assert!(stats.in_flight_bytes > 0, "{stats:?}");
        assert_eq!(
            stats.retained_bytes,
            stats.in_flight_bytes + stats.ring_bytes + stats.ring_slot_bytes + stats.spare_bytes
        );

        // Meanwhile the ring wraps, then is cleared, then gets a few more.
        let mut model = Model::new(capacity);
        let mut seq = 0;
        push_n(&inspector, 2 * capacity + 3, &mut model, &mut seq).await;
        let stats = inspector.stats();
        assert!(stats.in_flight_bytes > 0);
        assert_eq!(
            stats.retained_bytes,
            stats.in_flight_bytes + stats.ring_bytes + stats.ring_slot_bytes + stats.spare_bytes
        );
        inspector.clear();
        model.clear();
        push_n(&inspector, 3, &mut model, &mut seq).await;

        // The open exchanges end in a scrambled order.
        let order = [7usize, 0, 9, 3, 1, 8, 2, 6, 4, 5];
        let mut slots: Vec<Option<_>> = open.into_iter().map(Some).collect();
        for &k in &order {
            let (tag, response) = slots[k].take().expect("each once");
            let body = read_all(response.into_body()).await;
            assert_eq!(body, format!("res-{}", tag_text(tag)));
            model.push(tag);
        }
        model.check(
            &inspector,
            true,
            &format!("capacity {capacity}, after the open ones"),
        );
        let entries = inspector.entries();
        let landed: Vec<u64> = entries
            .iter()
            .map(|e| check_entry(e))
            .filter(|&(w, _)| w == 1)
            .map(|(_, i)| i)
            .collect();
        let want: Vec<u64> = order
            .iter()
            .rev()
            .take(capacity)
            .map(|&k| k as u64)
            .collect();
        assert_eq!(
            landed, want,
            "capacity {capacity}: newest first = last ended first"
        );
    }
}

// entries_matching (method, status, limit) agrees with filtering entries() at every wrap
// position: same entries, same newest-first order, limit keeps the newest.
#[tokio::test(start_paused = true)]
async fn entries_matching_agrees_with_entries_across_wraps() {
    for capacity in [1usize, 63, 64, 65, 129, 200] {
        let inspector = new_inspector(capacity);
        for i in 1..=(3 * capacity + 11) as u64 {
            exchange(&inspector, (0, i)).await;
            if i % 7 != 0 && i > 4 && capacity > 1 {
                continue;
            }
            let all = inspector.entries();
            check_snapshot(&all, capacity);
            for method in &METHODS {
                for limit in [0usize, 1, 5, capacity, usize::MAX] {
                    let got = inspector
                        .entries_matching(&EntryFilter::new().method(method.clone()).limit(limit));
                    let want: Vec<u64> = all
                        .iter()
                        .filter(|e| e.method == method.as_str())
                        .take(limit)
                        .map(|e| e.id)
                        .collect();
                    assert_eq!(
                        ids(&got),
                        want,
                        "capacity {capacity}, {method}, limit {limit}"
                    );
                }
            }
            for status in STATUSES {
                let got = inspector.entries_matching(&EntryFilter::new().status(status));
                let want: Vec<u64> = all
                    .iter()
                    .filter(|e| e.status == Some(status))
                    .map(|e| e.id)
                    .collect();
                assert_eq!(ids(&got), want, "capacity {capacity}, status {status}");
            }
            let got = inspector.entries_matching(&EntryFilter::new());
            assert_eq!(ids(&got), ids(&all), "capacity {capacity}: no filter");
        }
    }
}

// The JSON handler serves the same ring: newest first, limit keeps the newest, its stats carry
// the slot bytes, after the ring wrapped around a partly used last chunk.
#[tokio::test(start_paused = true)]
async fn json_handler_serves_the_wrapped_ring() {
    let capacity = 65;
    let inspector = new_inspector(capacity);
    let total = 3 * capacity as u64 + 7;
    for i in 1..=total {
        exchange(&inspector, (0, i)).await;
    }
    let response = inspector
        .router::<()>()
        .oneshot(
            Request::get("/?limit=10")
                .body(AxumBody::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = read_all(response.into_body()).await;
    let page: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
    assert_eq!(page["capacity"], capacity);
    assert_eq!(page["stats"]["ring_len"], capacity);
    assert_eq!(page["stats"]["captured"], total);
    assert_eq!(page["stats"]["evicted"], total - capacity as u64);
    assert_eq!(page["stats"]["ring_slot_bytes"], 2 * CHUNK_BYTES);
    let listed: Vec<u64> = page["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["id"].as_u64().expect("id"))
        .collect();
    assert_eq!(listed, (total - 9..=total).rev().collect::<Vec<_>>());
}

// Extreme capacities: 0 is clamped to 1 and behaves as 1; the 100 000 maximum allocates its
// slots only as it fills (one chunk per 64 entries pushed), not all 1 563 chunks up front.
#[tokio::test(start_paused = true)]
async fn extreme_capacities_allocate_slots_as_they_fill() {
    let inspector = new_inspector(0);
    assert_eq!(inspector.capacity(), 1);
    let mut model = Model::new(1);
    for i in 1..=130 {
        exchange(&inspector, (0, i)).await;
        model.push((0, i));
        model.check(&inspector, true, &format!("capacity 0→1, push {i}"));
    }

    let inspector = new_inspector(usize::MAX);
    assert_eq!(inspector.capacity(), 100_000);
    assert_eq!(
        inspector.stats().ring_slot_bytes,
        0,
        "nothing allocated yet"
    );
    let mut model = Model::new(100_000);
    for i in 1..=130 {
        exchange(&inspector, (0, i)).await;
        model.push((0, i));
        let full = i % 64 <= 1 || i == 130;
        model.check(&inspector, full, &format!("capacity 100 000, push {i}"));
    }
    assert_eq!(inspector.stats().ring_slot_bytes, 3 * CHUNK_BYTES);
    inspector.clear();
    assert_eq!(
        inspector.stats().ring_slot_bytes,
        3 * CHUNK_BYTES,
        "clear keeps the slots"
    );
}

// ---------------------------------------------------------------------------------------------
// Concurrent tests
// ---------------------------------------------------------------------------------------------

/// What one reader saw across its reads, checked as it goes.
#[derive(Debug, Default)]
struct Seen {
    by_id: HashMap<u64, Tag>,
    by_tag: HashMap<Tag, u64>,
    reads: u64,
    max_id: u64,
    captured: u64,
    evicted: u64,
    peak: usize,
}

impl Seen {
    /// Record one `entries()` list: consistent on its own, and with every earlier list (an id
    /// always names the same exchange, an exchange always has the same id, the newest id never
    /// goes back). Without clears, the list is exactly the newest `min(newest id, capacity)`.
    fn entries(&mut self, entries: &[Arc<Entry>], capacity: usize, clears: bool) {
        let summary = check_snapshot(entries, capacity);
        for &(id, tag) in &summary {
            let old = self.by_id.insert(id, tag);
            assert!(
                old.is_none() || old == Some(tag),
                "id {id} named {old:?} before and {tag:?} now"
            );
            let old = self.by_tag.insert(tag, id);
            assert!(
                old.is_none() || old == Some(id),
                "exchange {tag:?} had id {old:?} before and {id} now"
            );
        }
        if let Some(&(newest, _)) = summary.first() {
            assert!(
                newest >= self.max_id,
                "the newest id went back from {} to {newest}",
                self.max_id
            );
            self.max_id = newest;
            if !clears {
                assert_eq!(
                    entries.len() as u64,
                    newest.min(capacity as u64),
                    "without clears the ring holds the newest min(n, capacity): {:?}",
                    ids(entries)
                );
            }
        }
        self.reads += 1;
    }

    /// Record one `stats()` read taken after an `entries()` read. `stats()` reads its atomics
    /// one by one (documented: no lock), so under concurrent writers only per-field facts are
    /// checked: each counter never goes back, the length stays within the capacity, the slot
    /// bytes are whole chunks, `retained_bytes` is the sum of its three parts. (Other relations
    /// between fields are not a consistent snapshot: a reader preempted inside `stats()` was
    /// seen reporting `captured: 0` with `evicted: 36`, and `peak_retained_bytes` a little below
    /// `retained_bytes`; they are checked once everything is quiet.)
    fn stats(&mut self, inspector: &Inspector, capacity: usize) {
        let stats = inspector.stats();
        assert!(stats.ring_len <= capacity, "{stats:?}");
        assert!(stats.captured >= self.captured, "captured went back");
        assert!(stats.evicted >= self.evicted, "evicted went back");
        assert!(stats.peak_retained_bytes >= self.peak, "the peak went back");
        assert!(
            stats.captured >= self.max_id,
            "an entry with id {} was listed before captured reached it: {stats:?}",
            self.max_id
        );
        assert_eq!(
            stats.retained_bytes,
            stats.in_flight_bytes + stats.ring_bytes + stats.ring_slot_bytes + stats.spare_bytes,
            "retained_bytes is documented as the sum of the three: {stats:?}"
        );
        assert_eq!(stats.ring_slot_bytes % CHUNK_BYTES, 0, "{stats:?}");
        assert!(
            stats.ring_slot_bytes <= slot_bytes_for(capacity),
            "more slot bytes than the capacity's chunks: {stats:?}"
        );
        self.captured = stats.captured;
        self.evicted = stats.evicted;
        self.peak = stats.peak_retained_bytes;
    }

    /// Each writer sends its exchanges one after the other, so its ids increase with its
    /// sequence numbers.
    fn check_writer_order(&self) {
        let mut per_writer: HashMap<u32, Vec<(u64, u64)>> = HashMap::new();
        for (&(w, i), &id) in &self.by_tag {
            per_writer.entry(w).or_default().push((i, id));
        }
        for (w, mut list) in per_writer {
            list.sort_unstable();
            for pair in list.windows(2) {
                assert!(
                    pair[0].1 < pair[1].1,
                    "writer {w}: exchange {} got id {} but the later {} got id {}",
                    pair[0].0,
                    pair[0].1,
                    pair[1].0,
                    pair[1].1
                );
            }
        }
    }
}

/// Shared between the writers and the readers of a concurrent test: the writers go on until
/// the readers have read enough non-empty lists (so reads really overlap the pushes, whatever
/// the scheduler does), then say they are done.
#[derive(Debug, Default)]
struct Progress {
    done: AtomicBool,
    nonempty_reads: AtomicU64,
}

/// Non-empty lists the readers must have read before the writers may stop.
const OVERLAPPING_READS: u64 = 200;

impl Progress {
    /// Whether a writer that has sent `sent` exchanges should send another.
    fn more(&self, sent: u64, at_least: u64) -> bool {
        sent < at_least
            || (self.nonempty_reads.load(Ordering::SeqCst) < OVERLAPPING_READS && sent < 20_000)
    }
}

/// A reader loop on its own OS thread: `entries()`, `stats()` and a limited
/// `entries_matching` until the writers are done (and at least `min_reads` times), keeping the
/// last few lists it read and checking they stay intact while it goes on.
fn reader(
    inspector: Inspector,
    capacity: usize,
    clears: bool,
    progress: Arc<Progress>,
    min_reads: u64,
) -> thread::JoinHandle<Seen> {
    thread::spawn(move || {
        let mut seen = Seen::default();
        let mut held: VecDeque<Held> = VecDeque::new();
        while !progress.done.load(Ordering::SeqCst) || seen.reads < min_reads {
            let entries = inspector.entries();
            seen.entries(&entries, capacity, clears);
            if !entries.is_empty() {
                progress.nonempty_reads.fetch_add(1, Ordering::SeqCst);
            }
            seen.stats(&inspector, capacity);
            let newest = inspector.entries_matching(&EntryFilter::new().limit(5));
            assert!(newest.len() <= 5);
            check_snapshot(&newest, capacity);
            if let Some(e) = newest.first() {
                assert!(e.id >= seen.max_id, "a later read went back");
            }
            if seen.reads % 16 == 0 {
                let summary = check_snapshot(&entries, capacity);
                held.push_back((entries, summary));
                if held.len() > 4 {
                    held.pop_front();
                }
            }
            if let Some((list, summary)) = held.front() {
                assert_eq!(
                    &check_snapshot(list, capacity),
                    summary,
                    "a held list changed"
                );
            }
        }
        seen
    })
}

/// After the writers and readers are done: the exact documented state.
fn check_quiescent(inspector: &Inspector, capacity: usize, captured: u64, clears: bool) {
    let stats = inspector.stats();
    let entries = inspector.entries();
    let summary = check_snapshot(&entries, capacity);
    assert_eq!(stats.captured, captured, "{stats:?}");
    assert_eq!(stats.ring_len, entries.len(), "{stats:?}");
    assert_eq!(stats.in_flight_bytes, 0, "{stats:?}");
    assert_eq!(
        stats.ring_bytes,
        entries.iter().map(|e| e.retained_bytes()).sum::<usize>(),
        "{stats:?}"
    );
    assert_eq!(
        stats.ring_slot_bytes,
        slot_bytes_for((captured as usize).min(capacity)),
        "the slots are the chunks the positions reached need (a clear keeps them): {stats:?}"
    );
    assert_eq!(
        stats.retained_bytes,
        stats.ring_bytes + stats.ring_slot_bytes + stats.spare_bytes,
        "{stats:?}"
    );
    assert!(stats.peak_retained_bytes >= stats.retained_bytes);
    if clears {
        assert!(
            stats.evicted + stats.ring_len as u64 <= captured,
            "{stats:?}"
        );
    } else {
        let len = captured.min(capacity as u64);
        assert_eq!(stats.evicted, captured - len, "{stats:?}");
        let want: Vec<u64> = (captured + 1 - len..=captured).rev().collect();
        assert_eq!(ids(&entries), want);
    }
    // Each writer's entries still in the ring are a run of its latest exchanges, in id order.
    let mut per_writer: HashMap<u32, Vec<(u64, u64)>> = HashMap::new();
    for &(id, (w, i)) in &summary {
        per_writer.entry(w).or_default().push((i, id));
    }
    for (w, mut list) in per_writer {
        list.sort_unstable();
        for pair in list.windows(2) {
            assert_eq!(
                pair[0].0 + 1,
                pair[1].0,
                "writer {w}: a gap in its latest run"
            );
            assert!(pair[0].1 < pair[1].1, "writer {w}: ids out of order");
        }
    }
}

// Several OS threads (each with its own current-thread runtime) push at once while two other
// threads keep reading entries() and stats(): every list read is bounded, newest first by
// consecutive ids, exactly the newest min(n, capacity), with intact records, an id never names
// two exchanges, held lists stay intact; once everyone is done the counters and bytes are exact.
#[test]
fn os_threads_push_while_readers_check_every_list() {
    for capacity in [1usize, 63, 64, 65, 128, 129, 200] {
        let writers = 3u32;
        let at_least = (capacity.max(CHUNK) + 40) as u64;
        let inspector = new_inspector(capacity);
        let progress = Arc::new(Progress::default());
        let readers: Vec<_> = (0..2)
            .map(|_| {
                reader(
                    inspector.clone(),
                    capacity,
                    false,
                    Arc::clone(&progress),
                    20,
                )
            })
            .collect();
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let inspector = inspector.clone();
                let progress = Arc::clone(&progress);
                thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_time()
                        .build()
                        .expect("runtime");
                    runtime.block_on(async {
                        let mut sent = 0;
                        while progress.more(sent, at_least) {
                            exchange(&inspector, (w, sent)).await;
                            sent += 1;
                        }
                        sent
                    })
                })
            })
            .collect();
        let total: u64 = handles.into_iter().map(|h| h.join().expect("writer")).sum();
        progress.done.store(true, Ordering::SeqCst);
        for r in readers {
            let seen = r.join().expect("reader");
            assert!(seen.reads >= 20);
            seen.check_writer_order();
        }
        check_quiescent(&inspector, capacity, total, false);
    }
}

// A multi-thread runtime: many tasks push at once, a task clears the ring every so often, two
// OS threads read; every list read is a consistent newest-first run, the newest id never goes
// back, an id never names two exchanges. Once everything is done the counters and bytes are
// exact, a final clear frees everything and the next exchange gets the next id.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn multi_thread_runtime_with_clears_and_readers() {
    for capacity in [1usize, 64, 65, 129, 1000] {
        let tasks = 6u32;
        let at_least = (capacity / 3 + 40) as u64;
        let inspector = new_inspector(capacity);
        let progress = Arc::new(Progress::default());
        let readers: Vec<_> = (0..2)
            .map(|_| reader(inspector.clone(), capacity, true, Arc::clone(&progress), 10))
            .collect();
        let clearer = {
            let inspector = inspector.clone();
            let progress = Arc::clone(&progress);
            tokio::spawn(async move {
                let mut n = 0u64;
                while !progress.done.load(Ordering::SeqCst) {
                    n += 1;
                    if n.is_multiple_of(50) {
                        inspector.clear();
                    }
                    tokio::task::yield_now().await;
                }
            })
        };
        let writers: Vec<_> = (0..tasks)
            .map(|w| {
                let inspector = inspector.clone();
                let progress = Arc::clone(&progress);
                tokio::spawn(async move {
                    let mut sent = 0;
                    while progress.more(sent, at_least) {
                        exchange(&inspector, (w, sent)).await;
                        if sent % 3 == 0 {
                            tokio::task::yield_now().await;
                        }
                        sent += 1;
                    }
                    sent
                })
            })
            .collect();
        let mut total = 0;
        for w in writers {
            total += w.await.expect("writer");
        }
        progress.done.store(true, Ordering::SeqCst);
        clearer.await.expect("clearer");
        let mut max_id = 0;
        for r in readers {
            let seen = tokio::task::spawn_blocking(move || r.join().expect("reader"))
                .await
                .expect("join");
            seen.check_writer_order();
            max_id = max_id.max(seen.max_id);
        }
        assert!(max_id <= total);
        check_quiescent(&inspector, capacity, total, true);

        inspector.clear();
        let stats = inspector.stats();
        let slots = slot_bytes_for((total as usize).min(capacity));
        assert_eq!(
            (stats.ring_len, stats.ring_bytes, stats.ring_slot_bytes),
            (0, 0, slots),
            "capacity {capacity}: {stats:?}"
        );
        assert_eq!(stats.captured, total);
        exchange(&inspector, (99, 0)).await;
        let entries = inspector.entries();
        assert_eq!(ids(&entries), vec![total + 1], "capacity {capacity}");
        assert_eq!(inspector.stats().ring_slot_bytes, slots);
    }
}

// One `stats()` call is consistent with itself while a writer pushes and evicts: `evicted` never
// exceeds `captured`, and the peak is never below the `retained_bytes` of the same read (a
// reader paused between two fields used to see `captured: 0, evicted: 36`).
#[test]
fn every_stats_read_is_consistent_with_itself() {
    let inspector = new_inspector(64);
    let done = AtomicBool::new(false);
    let reads = AtomicU64::new(0);
    thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                while !done.load(Ordering::Relaxed) {
                    let stats = inspector.stats();
                    assert!(stats.evicted <= stats.captured, "{stats:?}");
                    assert!(
                        stats.peak_retained_bytes >= stats.retained_bytes,
                        "{stats:?}"
                    );
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let mut seq = 0;
            // At least 2 000 exchanges, and on until the readers have read 1 000 times.
            while seq < 2_000 || reads.load(Ordering::Relaxed) < 1_000 {
                exchange(&inspector, (0, seq)).await;
                seq += 1;
            }
        });
        done.store(true, Ordering::Relaxed);
    });
    let stats = inspector.stats();
    assert_eq!(stats.evicted, stats.captured - 64);
}
