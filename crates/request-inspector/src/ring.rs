//! The fixed-size ring of captured entries and the inspector's counters.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use crate::Entry;
use crate::record::Record;
use crate::telemetry::Metrics;

/// Entries per chunk of the ring.
const CHUNK: usize = 64;

/// [`CHUNK`] slots of the ring. Shared (`Arc`) so that a reader copies a chunk handle under the
/// lock, not every entry handle; a writer copies a chunk (at most [`CHUNK`] handles) only when a
/// reader still holds it.
type Chunk = Arc<[Option<Arc<Record>>; CHUNK]>;

/// The bytes one chunk holds: its `Arc` allocation (two counts and [`CHUNK`] entry handles).
/// Counted in `ring_slot_bytes` while the chunk is in the ring.
pub(crate) const CHUNK_BYTES: usize =
    2 * size_of::<usize>() + CHUNK * size_of::<Option<Arc<Record>>>();

/// Newest-first ring of records: `capacity` slots in a circle, stored in chunks of [`CHUNK`]
/// slots, allocated as the ring first fills.
///
/// A push writes the next slot and takes out what it held, which is the oldest record once the
/// ring is full (issue #23: the push touches one slot's line, where the chunked deque it
/// replaced pushed at one end and popped at the other, two chunks and their headers, each a
/// line the other threads' pushes had just written). The lock is held only to push (and
/// evict) one entry or to copy the chunk handles out — `capacity / 64` handles, not
/// `capacity` — and never across an `.await`; readers build their list of entries after
/// releasing it (issue #23: at 100 000 entries the lock was held for the whole copy).
///
/// On a cache line of its own: every capture writes its lock and length, and every request
/// reads the configuration beside it.
#[derive(Debug)]
#[repr(align(64))]
pub(crate) struct Ring {
    slots: Mutex<Slots>,
    capacity: usize,
    /// Entries in the ring, kept under the lock and read without it ([`Inspector::stats`]).
    ///
    /// [`Inspector::stats`]: crate::Inspector::stats
    len: AtomicUsize,
}

/// The ring's slots, under its lock.
#[derive(Debug, Default)]
struct Slots {
    /// `capacity.div_ceil(CHUNK)` chunks once the ring has filled; fewer before.
    chunks: Vec<Chunk>,
    /// The slot the next push writes (`0..capacity`).
    head: usize,
}

/// The chunk handles and the ring's place in them, copied under the lock; [`Snapshot::iter`]
/// walks them newest first.
pub(crate) struct Snapshot {
    chunks: Vec<Chunk>,
    head: usize,
    len: usize,
    capacity: usize,
}

impl Snapshot {
    /// The entries, newest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<Record>> {
        (1..=self.len).filter_map(move |back| {
            let at = (self.head + self.capacity - back) % self.capacity;
            self.chunks[at / CHUNK][at % CHUNK].as_ref()
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

/// What [`Ring::push`] did: the record it evicted, and the ring's bytes (records and slots)
/// after it.
pub(crate) struct Pushed {
    pub(crate) evicted: Option<Arc<Record>>,
    pub(crate) after: usize,
}

/// `chunk`'s slots, copied first if a reader still holds it (at most [`CHUNK`] handles).
fn writable(chunk: &mut Chunk) -> &mut [Option<Arc<Record>>; CHUNK] {
    if Arc::get_mut(chunk).is_none() {
        *chunk = Arc::new((**chunk).clone());
    }
    Arc::get_mut(chunk).unwrap_or_else(|| unreachable!("a chunk just made is not shared"))
}

impl Ring {
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            // Room for every chunk a full ring holds, so the list never grows.
            slots: Mutex::new(Slots {
                chunks: Vec::with_capacity(capacity.div_ceil(CHUNK)),
                head: 0,
            }),
            capacity,
            len: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Slots> {
        // A panic elsewhere cannot leave the slots inconsistent: keep serving them.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Push the newest record, which keeps `added` bytes alive; the oldest one, which it
    /// replaces once the ring is full, is returned (dropped by the caller, outside the lock),
    /// with the ring's bytes before and after. Under the lock: one slot written, and the counts.
    pub(crate) fn push(
        &self,
        entry: Arc<Record>,
        added: usize,
        counters: &Counters,
        metrics: &Metrics,
    ) -> Pushed {
        let mut slots_added = 0;
        let mut guard = self.lock();
        let slots = &mut *guard;
        // The id is given under the lock: ids follow the ring's order (newest first = highest).
        let id = counters.locked.next_id.load(Ordering::Relaxed) + 1;
        counters.locked.next_id.store(id, Ordering::Relaxed);
        entry.id.store(id, Ordering::Relaxed);
        let at = slots.head;
        if at / CHUNK == slots.chunks.len() {
            slots.chunks.push(Arc::new([const { None }; CHUNK]));
            slots_added = CHUNK_BYTES;
        }
        let evicted = writable(&mut slots.chunks[at / CHUNK])[at % CHUNK].replace(entry);
        slots.head = if at + 1 == self.capacity { 0 } else { at + 1 };
        let removed = evicted.as_ref().map_or(0, |oldest| oldest.retained_bytes());
        // Under the lock, so `len` and the byte counts always match the slots.
        let len = (self.len.load(Ordering::Relaxed) + 1).min(self.capacity);
        self.len.store(len, Ordering::Relaxed);
        let bytes = counters.locked.ring_bytes.load(Ordering::Relaxed) + added - removed;
        counters.locked.ring_bytes.store(bytes, Ordering::Relaxed);
        let slot_bytes = counters.locked.slot_bytes.load(Ordering::Relaxed) + slots_added;
        counters
            .locked
            .slot_bytes
            .store(slot_bytes, Ordering::Relaxed);
        if evicted.is_some() {
            let evictions = counters.locked.evicted.load(Ordering::Relaxed) + 1;
            // Release: a reader that sees this count sees the entry id given before it.
            counters.locked.evicted.store(evictions, Ordering::Release);
        }
        drop(guard);
        metrics.ring_entries.set(len);
        metrics.ring_bytes.set(bytes + slot_bytes);
        if evicted.is_some() {
            metrics.evictions.add(1);
        }
        Pushed {
            evicted,
            after: bytes + slot_bytes,
        }
    }

    /// The chunk handles, copied under the lock; walk them with [`Snapshot::iter`].
    pub(crate) fn snapshot(&self) -> Snapshot {
        let slots = self.lock();
        Snapshot {
            chunks: slots.chunks.clone(),
            head: slots.head,
            len: self.len.load(Ordering::Relaxed),
            capacity: self.capacity,
        }
    }

    /// The entries, newest first, made from the records outside the lock.
    pub(crate) fn entries(&self) -> Vec<Arc<Entry>> {
        let snapshot = self.snapshot();
        let mut entries = Vec::with_capacity(snapshot.len());
        entries.extend(snapshot.iter().map(|record| Arc::new(record.to_entry())));
        entries
    }

    /// Entries in the ring, without taking the lock.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Empty the ring; the chunks are returned to be dropped outside the lock.
    pub(crate) fn clear(&self, counters: &Counters, metrics: &Metrics) -> Vec<Chunk> {
        let mut slots = self.lock();
        let all = std::mem::replace(
            &mut slots.chunks,
            Vec::with_capacity(self.capacity.div_ceil(CHUNK)),
        );
        slots.head = 0;
        self.len.store(0, Ordering::Relaxed);
        counters.locked.ring_bytes.store(0, Ordering::Relaxed);
        counters.locked.slot_bytes.store(0, Ordering::Relaxed);
        drop(slots);
        metrics.ring_entries.set(0);
        metrics.ring_bytes.set(0);
        all
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }
}

/// A counter every request may bump, striped over cache lines: each thread adds to its own
/// stripe, so two threads passing polling GETs through never write the same line (issue #23:
/// one shared counter was a line that bounced between cores on every request). Reads sum the
/// stripes.
#[derive(Debug, Default)]
pub(crate) struct Striped([Line; STRIPES]);

/// Stripes of a [`Striped`] counter: threads beyond this share stripes, round-robin.
pub(crate) const STRIPES: usize = 8;

#[derive(Debug, Default)]
#[repr(align(64))]
struct Line(AtomicU64);

/// This thread's stripe (`0..STRIPES`), given round-robin on first use.
pub(crate) fn stripe() -> usize {
    use std::cell::Cell;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    STRIPE.with(|stripe| {
        if stripe.get() == usize::MAX {
            stripe.set(NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES);
        }
        stripe.get()
    })
}

impl Striped {
    /// Adds `n` to this thread's stripe (wrapping, as [`sub`](Self::sub) may have wrapped it
    /// below zero).
    pub(crate) fn add(&self, n: u64) {
        self.0[stripe()].0.fetch_add(n, Ordering::Relaxed);
    }

    /// Takes `n` from this thread's stripe, which may wrap below zero when another thread
    /// added it: the wrapping sum of the stripes is still the count.
    fn sub(&self, n: u64) {
        self.0[stripe()].0.fetch_sub(n, Ordering::Relaxed);
    }

    /// The wrapping sum of the stripes.
    pub(crate) fn get(&self) -> u64 {
        self.0
            .iter()
            .map(|line| line.0.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

/// A byte count every capture changes, a [`Striped`] counter: a capture adds to the stripe
/// of the thread it runs on and subtracts from the stripe of the thread that finishes it, so a
/// stripe can wrap below zero; the wrapping sum of the stripes is the count (issue #23: one
/// shared count was two writes of a contended line per capture).
#[derive(Debug, Default)]
pub(crate) struct StripedBytes(Striped);

impl StripedBytes {
    fn add(&self, n: usize) {
        self.0.add(n as u64);
    }

    fn sub(&self, n: usize) {
        self.0.sub(n as u64);
    }

    /// The count. The stripes are read one after the other, so a read racing captures that
    /// move between threads can see a subtraction without its addition (a sum below zero reads
    /// as zero) or an addition without its later subtraction (a little high, as a read of the
    /// one shared counter before it could be between its in-flight and ring reads).
    pub(crate) fn get(&self) -> usize {
        let sum = self.0.get();
        if sum > u64::MAX / 2 {
            0
        } else {
            usize::try_from(sum).unwrap_or(usize::MAX)
        }
    }
}

/// The largest arena kept for reuse; a larger one is freed.
const SPARE_MAX: usize = 16 * 1024;

/// Evicted records, kept for the next captures of the thread that evicted them: their `Arc`
/// and their text arena are reused. One per stripe (the newest), only with an arena of at most
/// [`SPARE_MAX`] bytes, counted in [`InspectorStats::spare_bytes`].
///
/// Issue #23: a full ring evicts a record on every capture, and with several threads the record
/// was mostly captured by another thread, so its arena was freed into another thread's
/// allocator arena. glibc takes that arena's lock for a chunk of more than 1 KiB, and two
/// threads capturing were seen parking on those locks (tens of thousands of `futex` calls per
/// run, the captured POST at 3.4–4.4× instead of 2.5× in the bench). Reused, the record and its
/// arena are never freed on the hot path, and a capture allocates neither.
#[derive(Debug, Default)]
pub(crate) struct Spares([SpareLine; STRIPES]);

#[derive(Debug, Default)]
#[repr(align(64))]
struct SpareLine {
    record: Mutex<Option<Arc<Record>>>,
    /// The spare's bytes, read by [`Spares::bytes`] without the lock.
    bytes: AtomicUsize,
}

impl Spares {
    /// Keep `record` (finished, evicted) for this thread's next capture if nothing else holds
    /// it and its arena is not too large; it replaces the spare kept before (the newest is the
    /// likeliest to fit the next capture; one that did not fit would otherwise stay for good),
    /// which is freed.
    pub(crate) fn put(&self, mut record: Arc<Record>) {
        let Some(bytes) = record.empty_for_reuse(SPARE_MAX) else {
            return;
        };
        let line = &self.0[stripe()];
        let replaced = match line.record.try_lock() {
            Ok(mut slot) => {
                line.bytes.store(bytes, Ordering::Relaxed);
                slot.replace(record)
            }
            Err(_) => Some(record),
        };
        drop(replaced);
    }

    /// This thread's spare record, if its arena has room for `need` bytes (the new request's
    /// text and announced body; the response's room is made when the response comes, and a
    /// larger arena is shrunk when the record is finished, as a new one would be).
    pub(crate) fn take(&self, need: usize) -> Option<Arc<Record>> {
        let line = &self.0[stripe()];
        let mut slot = line.record.try_lock().ok()?;
        if slot.as_mut().map_or(0, Record::arena_capacity) < need.max(1) {
            return None;
        }
        line.bytes.store(0, Ordering::Relaxed);
        slot.take()
    }

    /// Free every spare.
    pub(crate) fn clear(&self) {
        for line in &self.0 {
            let record = {
                let mut slot = line.record.lock().unwrap_or_else(|e| e.into_inner());
                line.bytes.store(0, Ordering::Relaxed);
                slot.take()
            };
            drop(record);
        }
    }

    /// The spares' bytes (as `Entry::retained_bytes` counts a record: its `Arc` and its
    /// arena's capacity).
    pub(crate) fn bytes(&self) -> usize {
        self.0
            .iter()
            .map(|line| line.bytes.load(Ordering::Relaxed))
            .sum()
    }
}

/// Cheap atomic counters behind [`InspectorStats`], on their own cache lines (every thread
/// writes them; the configuration beside them is only read).
#[derive(Debug, Default)]
#[repr(align(64))]
pub(crate) struct Counters {
    /// Written only under the ring's lock (plain loads and stores, no read-modify-write).
    pub(crate) locked: LockedCounts,
    /// Bumped by every polling GET: striped.
    pub(crate) passed_through: Striped,
    pub(crate) unowned: Striped,
    /// Bytes held by captures in flight: every capture writes them, so striped.
    pub(crate) in_flight: StripedBytes,
    /// Written by captures outside the ring's lock.
    pub(crate) loose: LooseCounts,
}

/// The counts the ring keeps under its lock, together on one line, which moves between cores
/// with the lock (issue #23: they shared a line with the in-flight bytes, which every capture
/// writes outside the lock).
#[derive(Debug, Default)]
#[repr(align(64))]
pub(crate) struct LockedCounts {
    /// The last entry id given; ids start at 1 and are never reused, so this is also the number
    /// of records ever captured.
    pub(crate) next_id: AtomicU64,
    pub(crate) evicted: AtomicU64,
    /// The records' retained bytes ([`Entry::retained_bytes`]) summed over the ring.
    pub(crate) ring_bytes: AtomicUsize,
    /// The ring's chunks ([`CHUNK_BYTES`] each).
    pub(crate) slot_bytes: AtomicUsize,
}

/// The counts captures write outside the ring's lock, on a line of their own.
#[derive(Debug, Default)]
#[repr(align(64))]
pub(crate) struct LooseCounts {
    pub(crate) peak_retained: AtomicUsize,
    pub(crate) truncated_bodies: AtomicU64,
}

impl Counters {
    /// `n` more bytes held by an in-flight capture: added to this thread's stripe, nothing
    /// else (the peak is noted when a capture finishes, and by every read).
    pub(crate) fn hold(&self, n: usize) {
        if n != 0 {
            self.in_flight.add(n);
        }
    }

    /// Raise the peak to `total` if it is higher; a read only, most of the time (no write to a
    /// line the other threads read).
    pub(crate) fn note_peak(&self, total: usize) {
        if total > self.loose.peak_retained.load(Ordering::Relaxed) {
            self.loose.peak_retained.fetch_max(total, Ordering::Relaxed);
        }
    }

    /// `n` bytes no longer held by an in-flight capture.
    pub(crate) fn release(&self, n: usize) {
        if n != 0 {
            self.in_flight.sub(n);
        }
    }

    /// A capture is about to finish: the peak is raised to what is held now (every capture's
    /// in-flight bytes, its own included, and the ring), before its own bytes are released, so
    /// that of two captures finishing together, the first to get here still sees the other's.
    /// Returns the in-flight bytes read; the caller notes what the ring holds after its push
    /// too. Between two finishes the bytes only grow (captures start and grow; only a finish or
    /// a `clear`, which notes the peak first, evicts or shrinks), so the highest
    /// `retained_bytes` is always the total just before some finish or clear, or the current
    /// one, which every read notes (spares aside: they are counted from the first read that
    /// sees them).
    pub(crate) fn note_before_finish(&self) -> usize {
        let held = self.in_flight.get();
        self.note_peak(held + self.held_by_ring());
        held
    }

    /// The ring's records and slots, read without its lock.
    fn held_by_ring(&self) -> usize {
        self.locked.ring_bytes.load(Ordering::Relaxed)
            + self.locked.slot_bytes.load(Ordering::Relaxed)
    }

    /// The counters, read without a lock but consistent with themselves: `evicted` is read
    /// before `captured` (so `evicted <= captured`), and the peak is at least the
    /// `retained_bytes` read here (a finishing capture raises the peak to the bytes held
    /// around its push; a read that sees more raises it itself, so the peak never goes back).
    pub(crate) fn snapshot(&self, ring_len: usize, spares: &Spares) -> InspectorStats {
        let evicted = self.locked.evicted.load(Ordering::Acquire);
        let captured = self.locked.next_id.load(Ordering::Relaxed);
        let in_flight = self.in_flight.get();
        let ring = self.locked.ring_bytes.load(Ordering::Relaxed);
        let slots = self.locked.slot_bytes.load(Ordering::Relaxed);
        let spare = spares.bytes();
        let retained = in_flight + ring + slots + spare;
        InspectorStats {
            captured,
            passed_through: self.passed_through.get(),
            not_recorded_unowned: self.unowned.get(),
            evicted,
            truncated_bodies: self.loose.truncated_bodies.load(Ordering::Relaxed),
            ring_len,
            in_flight_bytes: in_flight,
            ring_bytes: ring,
            ring_slot_bytes: slots,
            spare_bytes: spare,
            retained_bytes: retained,
            // Raised to what this read saw, so that the peak never goes back between reads.
            peak_retained_bytes: {
                self.note_peak(retained);
                self.loose
                    .peak_retained
                    .load(Ordering::Relaxed)
                    .max(retained)
            },
        }
    }
}

/// What the inspector has done and what it holds, counted (not estimated from RSS).
///
/// Read from atomics, without the ring's lock, while requests go on: two reads differ, but one
/// read agrees with itself where it matters: `evicted <= captured`, `retained_bytes` is the sum
/// of its four parts, and `peak_retained_bytes >= retained_bytes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct InspectorStats {
    /// Exchanges recorded into the ring.
    pub captured: u64,
    /// Polling GETs passed through untouched (not buffered, not recorded).
    pub passed_through: u64,
    /// Requests not recorded because their owner was unknown (with
    /// [`InspectorConfig::require_owner`](crate::InspectorConfig::require_owner)): counted, not
    /// stored.
    pub not_recorded_unowned: u64,
    /// Entries pushed out of the ring by newer ones.
    pub evicted: u64,
    /// Bodies cut at the body limit.
    pub truncated_bodies: u64,
    /// Entries currently in the ring.
    pub ring_len: usize,
    /// Bytes held right now by captures still in flight (body copies and recorded headers).
    pub in_flight_bytes: usize,
    /// Bytes held by the ring's records: their [`Entry::retained_bytes`] summed (the record in
    /// its `Arc`, its arena and any spill buffer; an `Entry` read from it is a copy, not counted).
    pub ring_bytes: usize,
    /// Bytes of the ring's own slots: chunks of 64 entry handles (528 bytes each on 64-bit
    /// targets, about 8 bytes per entry), allocated as the ring first fills.
    pub ring_slot_bytes: usize,
    /// Bytes of evicted records kept for reuse by the next captures, each counted as
    /// [`Entry::retained_bytes`] counts it (the record and its emptied arena's capacity): at
    /// most one per thread stripe (8), with an arena of at most 16 KiB; freed by `clear()`.
    pub spare_bytes: usize,
    /// `in_flight_bytes + ring_bytes + ring_slot_bytes + spare_bytes`: the layer's own memory
    /// for captured data. `tests/memory.rs` checks it against a counting allocator.
    pub retained_bytes: usize,
    /// The highest `retained_bytes` seen since the inspector was created.
    pub peak_retained_bytes: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InspectorConfig;
    use crate::inspector::Shard;
    use crate::record::tests::finished;

    // Adds from more threads than stripes all land in the sum.
    #[test]
    fn striped_counter_sums_every_threads_adds() {
        let counter = Striped::default();
        std::thread::scope(|scope| {
            for _ in 0..(STRIPES + 3) {
                scope.spawn(|| {
                    for _ in 0..1000 {
                        counter.add(1);
                    }
                });
            }
        });
        assert_eq!(counter.get(), (STRIPES as u64 + 3) * 1000);
    }

    // Issue #23: one spare record per stripe (the newest), kept only when nothing else holds
    // it, taken only when its arena fits, counted while kept.
    #[test]
    fn spares_keep_one_unshared_record_per_thread() {
        let shared = shared();
        let spares = Spares::default();
        let held = finished(&shared, 1);
        let reader = Arc::clone(&held);
        spares.put(held);
        assert_eq!(spares.bytes(), 0, "a record a reader holds is not kept");
        drop(reader);
        let first = finished(&shared, 2);
        spares.put(first);
        let second = finished(&shared, 3);
        let bytes = second.retained_bytes();
        spares.put(second);
        assert_eq!(
            spares.bytes(),
            bytes,
            "the newest replaces the one kept before"
        );
        assert!(
            spares.take(SPARE_MAX).is_none(),
            "too small for what is needed"
        );
        let reused = spares.take(16).expect("fits");
        assert_eq!((Arc::strong_count(&reused), spares.bytes()), (1, 0));
        assert!(spares.take(1).is_none(), "taken once");
        // Another thread's spare is counted too, and `clear` frees every stripe's.
        std::thread::scope(|scope| {
            scope.spawn(|| spares.put(reused));
        });
        assert_eq!(spares.bytes(), bytes);
        spares.clear();
        assert_eq!(spares.bytes(), 0);
    }

    fn shared() -> Arc<Shard> {
        crate::record::tests::shared(InspectorConfig::new().capacity(1))
    }

    fn push(ring: &Ring, shared: &Arc<Shard>, id: u64) -> Option<Arc<Record>> {
        let record = finished(shared, id);
        let bytes = record.retained_bytes();
        ring.push(record, bytes, &shared.counters, &shared.metrics)
            .evicted
    }

    fn ids(entries: &[Arc<Entry>]) -> Vec<u64> {
        entries.iter().map(|e| e.id).collect()
    }

    // The in-flight bytes are added on one thread's stripe and taken off another's; the sum is
    // the count, and a sum caught below zero (a subtraction seen before its addition) reads 0.
    #[test]
    fn striped_bytes_sum_across_threads_and_never_read_below_zero() {
        let bytes = StripedBytes::default();
        bytes.add(100);
        std::thread::scope(|scope| {
            scope.spawn(|| bytes.sub(100));
        });
        assert_eq!(bytes.get(), 0);
        std::thread::scope(|scope| {
            scope.spawn(|| bytes.sub(40));
        });
        assert_eq!(bytes.get(), 0);
        bytes.add(47);
        assert_eq!(bytes.get(), 7);
    }

    // Newest first across chunks, bounded, and the counts follow the chunks.
    #[test]
    fn ring_spans_chunks_newest_first_and_evicts_the_oldest() {
        let shared = shared();
        let (counters, metrics) = (&shared.counters, &shared.metrics);
        let ring = Ring::new(150);
        for id in 1..=200 {
            let evicted = push(&ring, &shared, id);
            assert_eq!(
                evicted.map(|e| e.to_entry().id),
                id.checked_sub(150).filter(|&n| n > 0)
            );
        }
        let entries = ring.entries();
        assert_eq!(ids(&entries), (51..=200).rev().collect::<Vec<_>>());
        assert_eq!(ring.len(), 150);
        let stats = counters.snapshot(ring.len(), &Spares::default());
        assert_eq!(stats.evicted, 50);
        assert_eq!(
            stats.ring_bytes,
            entries.iter().map(|e| e.retained_bytes()).sum::<usize>()
        );
        // 150 slots: three chunks (the third one's last 42 slots unused).
        assert_eq!(stats.ring_slot_bytes, 3 * CHUNK_BYTES);
        drop(ring.clear(counters, metrics));
        let stats = counters.snapshot(ring.len(), &Spares::default());
        assert_eq!(
            (stats.ring_len, stats.ring_bytes, stats.ring_slot_bytes),
            (0, 0, 0)
        );
        assert!(ring.entries().is_empty());
    }

    // Issue #23: a reader copies one handle per chunk under the lock, never one per entry; the
    // snapshot stays intact while writers push and evict (they copy a chunk a reader holds).
    #[test]
    fn snapshot_copies_chunk_handles_not_entries() {
        let shared = shared();
        let ring = Ring::new(1000);
        for id in 1..=1000 {
            push(&ring, &shared, id);
        }
        let snapshot = ring.snapshot();
        assert_eq!(snapshot.chunks.len(), 1000_usize.div_ceil(CHUNK));
        assert!(snapshot.iter().all(|e| Arc::strong_count(e) == 1));
        for id in 1001..=1100 {
            push(&ring, &shared, id);
        }
        let held: Vec<u64> = snapshot.iter().map(|e| e.to_entry().id).collect();
        assert_eq!(held, (1..=1000).rev().collect::<Vec<_>>());
        drop(snapshot);
        assert_eq!(ids(&ring.entries()), (101..=1100).rev().collect::<Vec<_>>());
        // A chunk copied on write replaces the one the reader held: the count stays the same.
        assert_eq!(ring.lock().chunks.len(), 1000_usize.div_ceil(CHUNK));
    }
}
