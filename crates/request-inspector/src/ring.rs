//! The fixed-size ring of captured entries and the inspector's counters.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use serde::Serialize;

use crate::Entry;
use crate::record::Record;
use crate::telemetry::Metrics;

/// Slots per chunk of the ring.
const CHUNK: usize = 64;
/// Slots per cache line.
const LANES: usize = 64 / size_of::<Slot>();
/// Cache lines per chunk.
const LINES: usize = CHUNK / LANES;

/// One entry's place in the ring, with a lock of its own: a push locks the one slot it writes,
/// a reader each slot in turn while it copies the handle out.
#[derive(Debug, Default)]
struct Slot(Mutex<Option<Arc<Record>>>);

impl Slot {
    fn lock(&self) -> MutexGuard<'_, Option<Arc<Record>>> {
        // A panic elsewhere cannot leave a slot inconsistent: keep serving it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// [`CHUNK`] slots, on cache lines of their own.
#[derive(Debug)]
#[repr(align(64))]
struct Chunk([Slot; CHUNK]);

/// How long a reader waits for an id being pushed before it lists only the entries below it.
/// A push holds its id only while it locks and writes one slot (no `.await`, no IO): a reader
/// waits for it as it would wait for a lock the pusher held (spinning a little, then
/// yielding), and the bound is a safety net for a pusher preempted there.
const GAP_WAIT: std::time::Duration = std::time::Duration::from_millis(10);

/// How many times a reader starts its list again past entries pushed out while it read them
/// (it starts again at the oldest id the ring can still hold, and reads a slot in tens of
/// nanoseconds where a writer pushes in a microsecond or more: it overtakes them at once).
const MAX_RESTARTS: usize = 16;

/// What a reader found in an id's slot.
enum Probe {
    Landed(Arc<Record>),
    /// Pushed out by a newer entry, or cleared.
    Gone,
    /// Not landed after [`GAP_WAIT`] yields.
    Late,
}

/// The bytes one chunk of [`CHUNK`] slots holds, counted in `ring_slot_bytes` from when the
/// ring first reaches it until the inspector is dropped.
pub(crate) const CHUNK_BYTES: usize = size_of::<Chunk>();

/// Where the entry at position `at` (`0..capacity`) lives: its chunk, and its slot there.
/// Consecutive positions go to consecutive cache lines, a line's slots [`LINES`] positions
/// apart: two threads pushing one after the other never write the same line (issue #23).
fn place(at: usize) -> (usize, usize) {
    let within = at % CHUNK;
    (at / CHUNK, within % LINES * LANES + within / LINES)
}

/// Newest-first ring of records: `capacity` slots in a circle, stored in chunks of [`CHUNK`]
/// slots, allocated as the ring first fills.
///
/// Issue #23: a push takes the next id (the one count every capture writes) and locks only the
/// slot that id names; there is no lock over the whole ring. With one lock, each push moved
/// the lock's line, the ring's head and length, its byte counts and the slot's line from the
/// other core: at 2 threads on a VM whose cores are far apart this doubled the captured POST's
/// cost. A reader locks each slot in turn, copies its handle and builds its list after.
#[derive(Debug)]
pub(crate) struct Ring {
    /// `capacity.div_ceil(CHUNK)` chunks, each allocated when the ring first reaches it.
    chunks: Box<[OnceLock<Box<Chunk>>]>,
    capacity: usize,
    /// The last id given when the ring was last cleared: entries up to it are not listed (a
    /// push that began before a `clear` and landed after it removes its entry again).
    cleared: AtomicU64,
}

/// The entries a reader copied out, newest first, consecutive ids.
pub(crate) struct Snapshot(Vec<Arc<Record>>);

impl Snapshot {
    /// The entries, newest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<Record>> {
        self.0.iter()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

/// What [`Ring::push`] did: the record it evicted, and the change in the ring's bytes.
pub(crate) struct Pushed {
    pub(crate) evicted: Option<Arc<Record>>,
    /// Bytes the ring holds now less what it held before (records and slots), as this push
    /// changed them.
    pub(crate) delta: isize,
}

impl Ring {
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            chunks: (0..capacity.div_ceil(CHUNK))
                .map(|_| OnceLock::new())
                .collect(),
            capacity,
            cleared: AtomicU64::new(0),
        }
    }

    /// Where the entry with id `id` (1, 2, …) lives: position `(id - 1) % capacity`.
    fn place_of(&self, id: u64) -> (usize, usize) {
        place(usize::try_from((id - 1) % self.capacity as u64).unwrap_or(0))
    }

    /// Chunk `n`, allocated (and counted) on first use; `added`: the chunk's bytes if this call
    /// allocated it.
    fn chunk(&self, n: usize, counters: &Counters, metrics: &Metrics, added: &mut usize) -> &Chunk {
        self.chunks[n].get_or_init(|| {
            counters
                .loose
                .slot_bytes
                .fetch_add(CHUNK_BYTES, Ordering::Relaxed);
            metrics.ring_bytes.increment(CHUNK_BYTES);
            *added = CHUNK_BYTES;
            Box::new(Chunk(std::array::from_fn(|_| Slot::default())))
        })
    }

    /// Push the newest record, which keeps `added` bytes alive; the one it replaces (the oldest,
    /// once the ring is full) is returned, to be dropped by the caller outside any lock.
    pub(crate) fn push(
        &self,
        entry: Arc<Record>,
        added: usize,
        counters: &Counters,
        metrics: &Metrics,
    ) -> Pushed {
        // The id gives the entry its place: ids follow the ring's order (newest = highest).
        let id = counters.ids.0.fetch_add(1, Ordering::Relaxed) + 1;
        entry.id.store(id, Ordering::Relaxed);
        let mut slot_bytes = 0;
        let (chunk, index) = self.place_of(id);
        let slot = &self.chunk(chunk, counters, metrics, &mut slot_bytes).0[index];
        let mut held = slot.lock();
        let (evicted, kept) = match held.as_ref() {
            // A later lap wrote this slot first (this push was held up while `capacity` others
            // went through): the entry is already older than every entry the ring keeps.
            Some(newer) if newer.id.load(Ordering::Relaxed) > id => (Some(entry), false),
            _ => (held.replace(entry), true),
        };
        drop(held);
        let line = counters.line();
        let removed = evicted
            .as_ref()
            .filter(|_| kept)
            .map_or(0, |oldest| oldest.retained_bytes());
        let records = if kept { added as isize } else { 0 } - removed as isize;
        // One change of this thread's count, and of the gauge (one update of a line every
        // thread writes, with a recorder).
        line.ring_bytes
            .fetch_add(records as i64 as u64, Ordering::Relaxed);
        metrics.ring_bytes.change(records);
        if kept && evicted.is_none() {
            line.ring_len.fetch_add(1, Ordering::Relaxed);
            metrics.ring_entries.increment(1);
        }
        if evicted.is_some() {
            // Release: a reader that sees this count sees the id given before it.
            line.evicted.fetch_add(1, Ordering::Release);
            metrics.evictions.add(1);
        }
        // A `clear` that began after this id was given and swept this slot before the entry
        // landed: the entry is taken out again, as the sweep would have.
        let mut delta = slot_bytes as isize + records;
        if kept && id <= self.cleared.load(Ordering::SeqCst) {
            let mut held = slot.lock();
            if held
                .as_ref()
                .is_some_and(|e| e.id.load(Ordering::Relaxed) == id)
            {
                let taken = held.take();
                drop(held);
                delta -= self.forget(taken.as_deref(), counters, metrics) as isize;
            }
        }
        Pushed { evicted, delta }
    }

    /// Uncount a record taken out by a clear; returns its bytes.
    fn forget(&self, record: Option<&Record>, counters: &Counters, metrics: &Metrics) -> usize {
        let Some(record) = record else { return 0 };
        let bytes = record.retained_bytes();
        let line = counters.line();
        line.ring_bytes.fetch_sub(bytes as u64, Ordering::Relaxed);
        line.ring_len.fetch_sub(1, Ordering::Relaxed);
        metrics.ring_bytes.decrement(bytes);
        metrics.ring_entries.decrement(1);
        bytes
    }

    /// The entries, newest first: a run of consecutive ids, the newest `capacity` above the
    /// last clear. Copied out slot by slot, oldest first, each slot's lock held only to copy
    /// its handle; no lock is held over the whole ring, so writers go on meanwhile:
    /// - an entry pushed out while the list is being read (a writer reached its slot first)
    ///   starts the list again at the oldest id the ring can still hold, and the list reaches
    ///   as many newer ids further up;
    /// - an id given but not landed yet (its push between taking the id and locking its slot)
    ///   is waited for, [`GAP_WAIT`] at most; the list then ends below it.
    pub(crate) fn snapshot(&self, counters: &Counters) -> Snapshot {
        self.snapshot_from(counters, counters.ids.0.load(Ordering::Acquire))
    }

    /// [`snapshot`](Self::snapshot) with the newest id given read as `top` (a reader that read
    /// it and was then held up, in tests).
    fn snapshot_from(&self, counters: &Counters, mut top: u64) -> Snapshot {
        let capacity = self.capacity as u64;
        let given = || counters.ids.0.load(Ordering::Acquire);
        let cleared = || self.cleared.load(Ordering::SeqCst);
        let oldest = |newest: u64| newest.saturating_sub(capacity).max(cleared()) + 1;
        let mut from = oldest(top);
        // Oldest first; reversed at the end.
        let mut listed: Vec<Arc<Record>> =
            Vec::with_capacity(usize::try_from(top + 1 - from.min(top + 1)).unwrap_or(0));
        let mut id = from;
        let mut restarts = 0;
        while id <= top {
            match self.probe(id) {
                Probe::Landed(record) => {
                    listed.push(record);
                    id += 1;
                }
                // Pushed out (or cleared) while this list was read: so is everything older.
                Probe::Gone if restarts < MAX_RESTARTS => {
                    restarts += 1;
                    listed.clear();
                    let newest = given();
                    from = (id + 1).max(oldest(newest));
                    top = top.max(newest.min(from + capacity - 1));
                    id = from;
                }
                Probe::Gone | Probe::Late => break,
            }
        }
        listed.reverse();
        Snapshot(listed)
    }

    /// Whether `id`'s record is in its slot: waited for while its push is on its way
    /// ([`GAP_WAIT`] at most).
    fn probe(&self, id: u64) -> Probe {
        let (chunk, index) = self.place_of(id);
        let (mut spins, mut deadline) = (0, None);
        loop {
            if let Some(chunk) = self.chunks[chunk].get() {
                match chunk.0[index].lock().as_ref() {
                    Some(record) if record.id.load(Ordering::Relaxed) == id => {
                        return Probe::Landed(Arc::clone(record));
                    }
                    Some(record) if record.id.load(Ordering::Relaxed) > id => return Probe::Gone,
                    _ => {}
                }
            }
            if id <= self.cleared.load(Ordering::SeqCst) {
                return Probe::Gone;
            }
            if spins < 64 {
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            let now = std::time::Instant::now();
            if now >= *deadline.get_or_insert(now + GAP_WAIT) {
                return Probe::Late;
            }
            std::thread::yield_now();
        }
    }

    /// The entries, newest first, made from the records outside any lock.
    pub(crate) fn entries(&self, counters: &Counters) -> Vec<Arc<Entry>> {
        let snapshot = self.snapshot(counters);
        let mut entries = Vec::with_capacity(snapshot.len());
        entries.extend(snapshot.iter().map(|record| Arc::new(record.to_entry())));
        entries
    }

    /// Empty the ring: every slot is emptied (each under its own lock); the records are
    /// returned to be dropped outside the locks. The slots stay allocated.
    pub(crate) fn clear(&self, counters: &Counters, metrics: &Metrics) -> Vec<Arc<Record>> {
        let upto = counters.ids.0.load(Ordering::SeqCst);
        self.cleared.fetch_max(upto, Ordering::SeqCst);
        let mut taken = Vec::new();
        // Every chunk an id up to `upto` names, made here if its first push is still on its way
        // (it would make it anyway): that push then finds it made, and either lands before this
        // sweep locks its slot (and is swept) or after (and sees `cleared`, and takes its entry
        // out again). A chunk no such id names holds none of them.
        let reached = usize::try_from(upto.min(self.capacity as u64)).unwrap_or(self.capacity);
        for n in 0..reached.div_ceil(CHUNK) {
            let chunk = self.chunk(n, counters, metrics, &mut 0);
            for slot in &chunk.0 {
                let mut held = slot.lock();
                if held
                    .as_ref()
                    .is_some_and(|e| e.id.load(Ordering::Relaxed) <= upto)
                {
                    let record = held.take();
                    drop(held);
                    self.forget(record.as_deref(), counters, metrics);
                    taken.extend(record);
                }
            }
        }
        taken
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

/// An `AtomicU64` alone on its cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
pub(crate) struct Line(pub(crate) AtomicU64);

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
    /// Adds `n` to this thread's stripe.
    pub(crate) fn add(&self, n: u64) {
        self.0[stripe()].0.fetch_add(n, Ordering::Relaxed);
    }

    /// The wrapping sum of the stripes.
    pub(crate) fn get(&self) -> u64 {
        self.0
            .iter()
            .map(|line| line.0.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
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

/// Cheap atomic counters behind [`InspectorStats`], each on cache lines of its own.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// The last entry id given; ids start at 1 and are never reused, so this is also the number
    /// of records ever captured. The one count every capture writes.
    pub(crate) ids: Line,
    /// Bumped by every polling GET: striped.
    pub(crate) passed_through: Striped,
    pub(crate) unowned: Striped,
    /// The captures' and the ring's counts, one line per thread stripe: a capture writes only
    /// its own thread's line (issue #23: one shared count was a line both cores wrote on every
    /// capture). A count moves between stripes (added on one thread, taken off on another),
    /// so a stripe can wrap below zero; the wrapping sum is the count.
    held: [HeldLine; STRIPES],
    /// Written rarely, read by every finish.
    pub(crate) loose: LooseCounts,
}

/// One thread stripe's part of the counts that move with captures and the ring.
#[derive(Debug, Default)]
#[repr(align(64))]
pub(crate) struct HeldLine {
    /// Bytes held by captures in flight.
    in_flight: AtomicU64,
    /// The ring's records' retained bytes ([`Entry::retained_bytes`]).
    pub(crate) ring_bytes: AtomicU64,
    /// Entries in the ring.
    pub(crate) ring_len: AtomicU64,
    /// Entries pushed out by newer ones.
    pub(crate) evicted: AtomicU64,
}

/// The counts captures write outside the ring, on a line of their own.
#[derive(Debug, Default)]
#[repr(align(64))]
pub(crate) struct LooseCounts {
    pub(crate) peak_retained: AtomicUsize,
    pub(crate) truncated_bodies: AtomicU64,
    /// The ring's chunks ([`CHUNK_BYTES`] each).
    pub(crate) slot_bytes: AtomicUsize,
}

/// A count read as a sum of wrapping stripes: a sum caught below zero (a subtraction seen
/// before its addition, the stripes being read one after the other) reads 0.
fn clamped(sum: u64) -> usize {
    if sum > u64::MAX / 2 {
        0
    } else {
        usize::try_from(sum).unwrap_or(usize::MAX)
    }
}

impl Counters {
    /// This thread's stripe of the held counts.
    pub(crate) fn line(&self) -> &HeldLine {
        &self.held[stripe()]
    }

    /// One held count, summed over the stripes.
    pub(crate) fn sum(&self, field: impl Fn(&HeldLine) -> &AtomicU64) -> usize {
        clamped(
            self.held
                .iter()
                .map(|line| field(line).load(Ordering::Relaxed))
                .fold(0, u64::wrapping_add),
        )
    }

    /// `n` more bytes held by an in-flight capture: added to this thread's stripe, nothing
    /// else (the peak is noted when a capture finishes, and by every read).
    pub(crate) fn hold(&self, n: usize) {
        if n != 0 {
            self.line().in_flight.fetch_add(n as u64, Ordering::Relaxed);
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
            self.line().in_flight.fetch_sub(n as u64, Ordering::Relaxed);
        }
    }

    /// A capture is about to finish: the peak is raised to what is held now (every capture's
    /// in-flight bytes, its own included, and the ring), before its own bytes are released, so
    /// that of two captures finishing together, the first to get here still sees the other's.
    /// Returns the total read; the caller notes the total after its push too (this one plus
    /// what its own push changed). Between two finishes the bytes only grow (captures start
    /// and grow; only a finish or a `clear`, which notes the peak first, evicts or shrinks),
    /// so the highest `retained_bytes` is always the total just before or after some finish
    /// or clear, or the current one, which every read notes (spares aside: they are counted
    /// from the first read that sees them).
    pub(crate) fn note_before_finish(&self) -> usize {
        let (mut in_flight, mut ring) = (0_u64, 0_u64);
        for line in &self.held {
            in_flight = in_flight.wrapping_add(line.in_flight.load(Ordering::Relaxed));
            ring = ring.wrapping_add(line.ring_bytes.load(Ordering::Relaxed));
        }
        let total =
            clamped(in_flight) + clamped(ring) + self.loose.slot_bytes.load(Ordering::Relaxed);
        self.note_peak(total);
        total
    }

    /// The counters, read without a lock but consistent with themselves: `evicted` is read
    /// before `captured` (so `evicted <= captured`), and the peak is at least the
    /// `retained_bytes` read here (a finishing capture raises the peak to the bytes held
    /// around its push; a read that sees more raises it itself, so the peak never goes back).
    pub(crate) fn snapshot(&self, capacity: usize, spares: &Spares) -> InspectorStats {
        let evicted = self
            .held
            .iter()
            .map(|line| line.evicted.load(Ordering::Acquire))
            .fold(0, u64::wrapping_add);
        let captured = self.ids.0.load(Ordering::Relaxed);
        let in_flight = self.sum(|line| &line.in_flight);
        let ring = self.sum(|line| &line.ring_bytes);
        let slots = self.loose.slot_bytes.load(Ordering::Relaxed);
        let spare = spares.bytes();
        let retained = in_flight + ring + slots + spare;
        InspectorStats {
            captured,
            passed_through: self.passed_through.get(),
            not_recorded_unowned: self.unowned.get(),
            evicted,
            truncated_bodies: self.loose.truncated_bodies.load(Ordering::Relaxed),
            ring_len: self.sum(|line| &line.ring_len).min(capacity),
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
/// Read from atomics, without any lock, while requests go on: two reads differ, but one
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
    /// Bytes of the ring's own slots: chunks of 64 slots (1 024 bytes each on 64-bit targets,
    /// 16 bytes per entry), allocated as the ring first reaches them and kept by `clear()`.
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
        push_full(ring, shared, id).evicted
    }

    fn ids(entries: &[Arc<Entry>]) -> Vec<u64> {
        entries.iter().map(|e| e.id).collect()
    }

    // The in-flight bytes are added on one thread's stripe and taken off another's; the sum is
    // the count, and a sum caught below zero (a subtraction seen before its addition) reads 0.
    #[test]
    fn held_counts_sum_across_threads_and_never_read_below_zero() {
        let counters = Counters::default();
        let in_flight = |c: &Counters| c.sum(|line| &line.in_flight);
        counters.hold(100);
        std::thread::scope(|scope| {
            scope.spawn(|| counters.release(100));
        });
        assert_eq!(in_flight(&counters), 0);
        std::thread::scope(|scope| {
            scope.spawn(|| counters.release(40));
        });
        assert_eq!(in_flight(&counters), 0);
        counters.hold(47);
        assert_eq!(in_flight(&counters), 7);
    }

    // Consecutive positions land on different cache lines, and every slot of a chunk is used
    // exactly once.
    #[test]
    fn places_spread_consecutive_positions_over_lines() {
        let mut seen = [false; CHUNK];
        for at in 0..CHUNK {
            let (chunk, index) = place(at);
            assert_eq!(chunk, 0);
            assert!(!std::mem::replace(&mut seen[index], true), "{at}");
            let (_, next) = place(at + 1);
            assert_ne!(
                index / LANES,
                next / LANES,
                "{at} and {} share a line",
                at + 1
            );
        }
        assert_eq!(place(CHUNK + 3).0, 1);
        assert_eq!(size_of::<Slot>() * LANES, 64);
    }

    // Newest first across chunks, bounded, and the counts follow the slots; a clear empties the
    // slots and keeps them.
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
        let entries = ring.entries(&shared.counters);
        assert_eq!(ids(&entries), (51..=200).rev().collect::<Vec<_>>());
        let stats = counters.snapshot(ring.capacity(), &Spares::default());
        assert_eq!(
            (stats.ring_len, stats.evicted, stats.captured),
            (150, 50, 200)
        );
        assert_eq!(
            stats.ring_bytes,
            entries.iter().map(|e| e.retained_bytes()).sum::<usize>()
        );
        // 150 slots: three chunks (the third one's last 42 slots unused).
        assert_eq!(stats.ring_slot_bytes, 3 * CHUNK_BYTES);
        assert_eq!(ring.clear(counters, metrics).len(), 150);
        let stats = counters.snapshot(ring.capacity(), &Spares::default());
        assert_eq!(
            (stats.ring_len, stats.ring_bytes, stats.ring_slot_bytes),
            (0, 0, 3 * CHUNK_BYTES)
        );
        assert!(ring.entries(&shared.counters).is_empty());
        push(&ring, &shared, 201);
        assert_eq!(ids(&ring.entries(&shared.counters)), [201]);
    }

    // A reader's snapshot holds its records: writers pushing and evicting meanwhile do not
    // change it.
    #[test]
    fn a_snapshot_stays_intact_while_writers_push() {
        let shared = shared();
        let ring = Ring::new(1000);
        for id in 1..=1000 {
            push(&ring, &shared, id);
        }
        let snapshot = ring.snapshot(&shared.counters);
        assert!(snapshot.iter().all(|e| Arc::strong_count(e) == 2));
        for id in 1001..=1100 {
            assert!(push(&ring, &shared, id).is_some());
        }
        let held: Vec<u64> = snapshot.iter().map(|e| e.to_entry().id).collect();
        assert_eq!(held, (1..=1000).rev().collect::<Vec<_>>());
        drop(snapshot);
        assert_eq!(
            ids(&ring.entries(&shared.counters)),
            (101..=1100).rev().collect::<Vec<_>>()
        );
    }

    // A push held up while `capacity` others went through finds a newer entry in its slot: its
    // own entry is the one evicted. While an id is still being pushed, a reader lists a run of
    // consecutive ids below it (never an older lap's entry beside the newer ones).
    #[test]
    fn a_late_push_never_replaces_a_newer_entry() {
        let shared = shared();
        let (counters, metrics) = (&shared.counters, &shared.metrics);
        let ring = Ring::new(4);
        for id in 1..=4 {
            push(&ring, &shared, id);
        }
        // Id 5 is given but its record not yet written: 6 and 7 land first.
        let late = finished(&shared, 5);
        let late_bytes = late.retained_bytes();
        counters.ids.0.fetch_add(1, Ordering::Relaxed);
        for id in 6..=7 {
            push(&ring, &shared, id);
        }
        // 1 still sits in 5's slot: a reader waits for 5 (`GAP_WAIT`), then lists the run
        // below it.
        assert_eq!(ids(&ring.entries(&shared.counters)), [4]);
        // Then 8 and 9: 9 takes the slot 5 would have.
        for id in 8..=9 {
            push(&ring, &shared, id);
        }
        assert_eq!(ids(&ring.entries(&shared.counters)), [9, 8, 7, 6]);
        // 5 lands now, as id 5 (its place): evicted at once.
        counters.ids.0.fetch_sub(5, Ordering::Relaxed);
        let pushed = ring.push(late, late_bytes, counters, metrics);
        counters.ids.0.fetch_add(4, Ordering::Relaxed);
        assert_eq!(
            pushed.evicted.map(|e| e.id.load(Ordering::Relaxed)),
            Some(5)
        );
        assert_eq!(pushed.delta, 0);
        assert_eq!(ids(&ring.entries(&shared.counters)), [9, 8, 7, 6]);
        let stats = counters.snapshot(ring.capacity(), &Spares::default());
        assert_eq!((stats.ring_len, stats.captured, stats.evicted), (4, 9, 5));
    }

    // A push whose id was given before a clear and whose record landed after it is taken out
    // again: the clear's promise (nothing captured before it is listed) holds, and the counts
    // stay with the slots.
    #[test]
    fn a_push_straddling_a_clear_is_taken_out_again() {
        let shared = shared();
        let (counters, metrics) = (&shared.counters, &shared.metrics);
        let ring = Ring::new(8);
        push(&ring, &shared, 1);
        // Id 2 is given, then the ring is cleared, then 2 lands.
        counters.ids.0.fetch_add(1, Ordering::Relaxed);
        assert_eq!(ring.clear(counters, metrics).len(), 1);
        counters.ids.0.fetch_sub(1, Ordering::Relaxed);
        let pushed = push_full(&ring, &shared, 2);
        assert!(pushed.evicted.is_none());
        assert_eq!(pushed.delta, 0, "its bytes were counted and uncounted");
        assert!(ring.entries(&shared.counters).is_empty());
        let stats = counters.snapshot(ring.capacity(), &Spares::default());
        assert_eq!((stats.ring_len, stats.ring_bytes), (0, 0));
        push(&ring, &shared, 3);
        assert_eq!(ids(&ring.entries(&shared.counters)), [3]);
    }

    // A reader held up while more than `MAX_RESTARTS` entries were pushed out under it starts
    // again at the oldest id the ring still holds, not one id further each time (which ran out
    // of restarts and listed nothing).
    #[test]
    fn a_reader_lapped_by_writers_lists_the_ring_as_it_is_now() {
        let shared = shared();
        let ring = Ring::new(4);
        for id in 1..=24 {
            push(&ring, &shared, id);
        }
        // The reader read 4 as the newest id, then 20 more were pushed.
        let listed = ring.snapshot_from(&shared.counters, 4);
        let ids: Vec<u64> = listed
            .iter()
            .map(|r| r.id.load(Ordering::Relaxed))
            .collect();
        assert_eq!(ids, [24, 23, 22, 21]);
    }

    fn push_full(ring: &Ring, shared: &Arc<Shard>, id: u64) -> Pushed {
        let record = finished(shared, id);
        let bytes = record.retained_bytes();
        ring.push(record, bytes, &shared.counters, &shared.metrics)
    }
}
