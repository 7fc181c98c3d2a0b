//! The compact record the ring holds for one captured exchange, written while the exchange is in
//! flight and turned into a public [`Entry`] only when someone reads the ring.
//!
//! Issue #23: an `Entry` costs about twenty small allocations (a `String` per field and per
//! header name and value, two header lists, two body copies, its `Arc`). A record costs four:
//! its `Arc` (the in-flight state, which becomes the ring's entry as it is), and one arena
//! holding the request id, method, path, redacted query, owner, every recorded header name and
//! value (each header preceded by its two lengths) and the captured body bytes, sized from the
//! bodies' `size_hint`s. A body whose bytes arrive after something else was written behind them
//! (a request body still streaming when the response starts) continues in a buffer of its own.
//! Readers copy what they need out of it after copying its handle out of the ring.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use tokio::time::Instant;

use crate::config::{HEADERS_CUT, REDACTED};
use crate::entry::{CapturedBody, Header};
use crate::inspector::Shard;
use crate::{Entry, EntryFilter, InspectorConfig, Outcome};

/// Bytes of an `Arc`'s allocation besides its value: the strong and weak counts.
const ARC_COUNTS: usize = 2 * size_of::<usize>();

/// Room left in the text arena for the response's headers when the request's part is written,
/// so that a typical response (a content type, a length, the request id) needs no reallocation.
const RESPONSE_HEADERS_ROOM: usize = 192;

/// Unused arena capacity kept when the record is finished; more is given back (one `realloc`).
const SLACK_KEPT: usize = 128;

/// One captured exchange: in flight until [`Record::finish`], then the ring's entry.
#[derive(Debug)]
pub(crate) struct Record {
    state: Mutex<State>,
    /// [`Record::retained_bytes`], set once when the record is finished (before the ring sees it),
    /// so the ring can count an evicted record without locking it.
    retained: AtomicUsize,
    /// The entry id, given as the record is pushed (one atomic add); the id names its slot, so
    /// ids follow the ring's order even when several threads finish records at once.
    pub(crate) id: AtomicU64,
}

/// Where each field of the text arena ends (its start is the previous field's end).
#[derive(Debug, Clone, Copy, Default)]
struct Ends {
    request_id: usize,
    method: usize,
    path: usize,
    /// `query == path`: no query. Otherwise the query (possibly empty) is `path..query`.
    query: usize,
    has_query: bool,
    owner: usize,
    has_owner: bool,
    request_headers: usize,
    /// The response headers' place in the arena (written when the response head arrives).
    response_headers: (usize, usize),
}

/// Which body's arena bytes end where the arena ends (it can go on growing in place).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tail {
    Other,
    Request,
    Response,
}

#[derive(Debug)]
struct State {
    started: Instant,
    started_unix_ms: u64,
    status: Option<u16>,
    response_after_us: Option<u64>,
    duration_us: u64,
    outcome: Outcome,
    /// The inspector, until the record is finished (then `None`: nothing changes any more, and
    /// the ring's record does not keep the inspector alive). The one clone of it a capture
    /// makes: the taps reach it through the record (issue #23: every clone and drop is a write
    /// to a line all threads share).
    shared: Option<Arc<Shard>>,
    text: Vec<u8>,
    ends: Ends,
    tail: Tail,
    request: BodyBuf,
    response: BodyBuf,
    /// Bytes counted in `Counters::in_flight` for this record until it is finished.
    in_flight: usize,
}

/// The first `limit` bytes of one body, plus what was seen of the rest: the bytes sit in the
/// arena (`at..at + in_arena`), then, if something else was written behind them before the body
/// ended, in `spill`.
#[derive(Debug, Default)]
struct BodyBuf {
    at: usize,
    in_arena: usize,
    spill: Vec<u8>,
    total: u64,
    truncated: bool,
    complete: bool,
}

impl BodyBuf {
    fn len(&self) -> usize {
        self.in_arena + self.spill.len()
    }

    /// Give back unused capacity of the spill buffer.
    fn shrink(&mut self) {
        if self.spill.capacity() > self.spill.len() {
            self.spill.shrink_to_fit();
        }
    }

    fn to_public(&self, arena: &[u8]) -> CapturedBody {
        let mut bytes = Vec::with_capacity(self.len());
        bytes.extend_from_slice(&arena[self.at..self.at + self.in_arena]);
        bytes.extend_from_slice(&self.spill);
        CapturedBody {
            bytes: Bytes::from(bytes),
            total_bytes: self.total,
            truncated: self.truncated,
            complete: self.complete,
        }
    }
}

/// Room for `want` more bytes in `buf`: exactly that when the body's size is known (`exact`),
/// else at least double (a body of unknown size, frame after frame, is copied a few times, not
/// once per frame).
fn reserve(buf: &mut Vec<u8>, want: usize, exact: bool) {
    if buf.capacity() - buf.len() >= want {
        return;
    }
    if exact {
        buf.reserve_exact(want);
    } else {
        buf.reserve(want);
    }
}

impl State {
    /// The bytes the record keeps alive, as the allocator sees them: the record in its `Arc`,
    /// its text arena and its two body copies (capacities).
    fn retained_bytes(&self) -> usize {
        ARC_COUNTS
            + size_of::<Record>()
            + self.text.capacity()
            + self.request.spill.capacity()
            + self.response.spill.capacity()
    }

    /// Copy what fits under `limit` of one body's frame (I5); everything beyond it is only
    /// counted. `remaining`: the body's announced rest after this frame (`size_hint().lower()`);
    /// `end`: no frame follows. Returns the bytes of capacity added.
    fn append(
        &mut self,
        which: Tail,
        data: &[u8],
        remaining: u64,
        end: bool,
        limit: usize,
    ) -> usize {
        let at_tail = self.tail == which;
        let body = if which == Tail::Response {
            &mut self.response
        } else {
            &mut self.request
        };
        body.total += data.len() as u64;
        let len = body.len();
        let take = (limit - len).min(data.len());
        if take < data.len() {
            body.truncated = true;
        }
        if take == 0 {
            return 0;
        }
        let room = limit - len;
        // This frame and the announced rest, up to the limit.
        let want = take.max(
            usize::try_from(remaining)
                .unwrap_or(usize::MAX)
                .saturating_add(take)
                .min(room),
        );
        let exact = end || remaining > 0;
        let data = &data[..take];
        if at_tail || len == 0 {
            let before = self.text.capacity();
            if !at_tail {
                body.at = self.text.len();
                self.tail = which;
            }
            reserve(&mut self.text, want, exact);
            self.text.extend_from_slice(data);
            body.in_arena += take;
            self.text.capacity() - before
        } else {
            let before = body.spill.capacity();
            reserve(&mut body.spill, want, exact);
            body.spill.extend_from_slice(data);
            body.spill.capacity() - before
        }
    }
}

/// Text of the arena between `start` and `end` (always valid UTF-8: only `&str` and
/// lossy-converted header values are written; the lossy read is a guard, not a path taken).
fn text(arena: &[u8], start: usize, end: usize) -> String {
    String::from_utf8_lossy(&arena[start..end]).into_owned()
}

/// A header's name and value lengths, 4 bytes each (both are bounded by the header limit, at
/// most 1 MiB).
fn put_lens(arena: &mut Vec<u8>, name: usize, value: usize) {
    let mut lens = [0_u8; 8];
    lens[..4].copy_from_slice(&u32::try_from(name).unwrap_or(u32::MAX).to_le_bytes());
    lens[4..].copy_from_slice(&u32::try_from(value).unwrap_or(u32::MAX).to_le_bytes());
    arena.extend_from_slice(&lens);
}

fn get_len(arena: &[u8], at: usize) -> usize {
    let mut raw = [0_u8; 4];
    raw.copy_from_slice(&arena[at..at + 4]);
    u32::from_le_bytes(raw) as usize
}

/// Append `headers` to the arena: for each one its name's and value's lengths (4 bytes each),
/// then the lowercase name and the value as text (lossy UTF-8) or [`REDACTED`] (I5, I6); at most
/// the configured header limit of name and value bytes; what is left out is summed up in a last
/// [`HEADERS_CUT`] pseudo-header (I6).
pub(crate) fn write_headers(arena: &mut Vec<u8>, headers: &HeaderMap, config: &InspectorConfig) {
    let limit = config.header_limit_bytes();
    let (mut used, mut cut, mut cut_bytes) = (0_usize, 0_usize, 0_usize);
    for (header, value) in headers {
        let name = header.as_str();
        let redacted = config.is_redacted_name(header, name);
        let kept_len = if redacted {
            REDACTED.len()
        } else {
            value.len()
        };
        let size = name.len().saturating_add(kept_len);
        if cut == 0 && used.saturating_add(size) <= limit {
            used += size;
            let name = name.as_bytes();
            let lossy;
            let value: &[u8] = if redacted {
                REDACTED.as_bytes()
            } else if value.as_bytes().is_ascii() || std::str::from_utf8(value.as_bytes()).is_ok() {
                value.as_bytes()
            } else {
                lossy = String::from_utf8_lossy(value.as_bytes()).into_owned();
                lossy.as_bytes()
            };
            put_lens(arena, name.len(), value.len());
            arena.extend_from_slice(name);
            arena.extend_from_slice(value);
        } else {
            // Once one header is cut, the rest are too: the record stays a prefix of the list.
            cut += 1;
            cut_bytes = cut_bytes.saturating_add(size);
        }
    }
    if cut > 0 {
        let value = format!("{cut} headers ({cut_bytes} bytes) not recorded");
        put_lens(arena, HEADERS_CUT.len(), value.len());
        arena.extend_from_slice(HEADERS_CUT.as_bytes());
        arena.extend_from_slice(value.as_bytes());
    }
}

/// An upper bound of what [`write_headers`] appends for `headers` when nothing is cut and every
/// value is valid UTF-8 (the common case): the arena is allocated once with it.
fn headers_size(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| 8 + name.as_str().len() + value.len().max(REDACTED.len()))
        .sum()
}

/// The recorded headers between `start` and `end` of the arena.
fn read_headers(arena: &[u8], start: usize, end: usize) -> Vec<Header> {
    let mut headers = Vec::new();
    let mut at = start;
    while at + 8 <= end {
        let (name_len, value_len) = (get_len(arena, at), get_len(arena, at + 4));
        let name_at = at + 8;
        let value_at = name_at + name_len;
        at = value_at + value_len;
        headers.push(Header {
            name: text(arena, name_at, value_at),
            value: text(arena, value_at, at),
        });
    }
    headers
}

/// A finished record's figures, handed from [`Record::close`] to [`Record::publish`].
struct Closed {
    shared: Arc<Shard>,
    retained: usize,
    in_flight: usize,
    truncated: u64,
}

/// What the request side of a capture knows when the layer sees the request.
pub(crate) struct RequestParts<'a> {
    pub(crate) request_id: &'a str,
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) query: Option<&'a str>,
    pub(crate) owner: Option<String>,
    pub(crate) headers: &'a HeaderMap,
    /// The request body's `size_hint().lower()`: room for that much (up to the body limit) is
    /// made in the arena now.
    pub(crate) body_hint: u64,
}

impl Record {
    /// Start recording an exchange: the request's text goes into a new arena, counted in
    /// `in_flight_bytes`.
    pub(crate) fn start(shared: Arc<Shard>, request: RequestParts<'_>) -> Arc<Self> {
        let config = &shared.config;
        let owner = request.owner.as_deref();
        let query_room = request
            .query
            .map_or(0, |q| q.len().min(config.header_limit) + 32);
        let room = request.request_id.len()
            + request.method.len()
            + request.path.len()
            + query_room
            + owner.map_or(0, str::len)
            + headers_size(request.headers).min(config.header_limit.saturating_add(64))
            + RESPONSE_HEADERS_ROOM
            + usize::try_from(request.body_hint)
                .unwrap_or(usize::MAX)
                .min(config.body_limit);
        // An evicted record this thread kept, when its arena has room for the request's part
        // (issue #23): its `Arc` and its arena are reused; the response's room is made when
        // the response comes.
        let mut spare = shared.spares.take(room - RESPONSE_HEADERS_ROOM);
        let mut arena = match spare.as_mut().and_then(Arc::get_mut) {
            Some(old) => std::mem::take(&mut old.state_mut().text),
            None => Vec::with_capacity(room),
        };
        let mut ends = Ends::default();
        arena.extend_from_slice(request.request_id.as_bytes());
        ends.request_id = arena.len();
        arena.extend_from_slice(request.method.as_bytes());
        ends.method = arena.len();
        arena.extend_from_slice(request.path.as_bytes());
        ends.path = arena.len();
        if let Some(query) = request.query {
            write_query(&mut arena, query, config);
            ends.has_query = true;
        }
        ends.query = arena.len();
        if let Some(owner) = owner {
            arena.extend_from_slice(owner.as_bytes());
            ends.has_owner = true;
        }
        ends.owner = arena.len();
        write_headers(&mut arena, request.headers, config);
        ends.request_headers = arena.len();
        let in_flight = arena.capacity();
        shared.counters.hold(in_flight);
        let started = Instant::now();
        let record = Self {
            state: Mutex::new(State {
                started,
                started_unix_ms: shared.epoch.unix_ms(started),
                status: None,
                response_after_us: None,
                duration_us: 0,
                outcome: Outcome::Cancelled,
                shared: Some(shared),
                text: arena,
                ends,
                tail: Tail::Other,
                request: BodyBuf::default(),
                response: BodyBuf::default(),
                in_flight,
            }),
            retained: AtomicUsize::new(0),
            id: AtomicU64::new(0),
        };
        if let Some(mut reused) = spare
            && let Some(old) = Arc::get_mut(&mut reused)
        {
            *old = record;
            return reused;
        }
        Arc::new(record)
    }

    /// The state of a record only this thread can reach (no lock taken).
    fn state_mut(&mut self) -> &mut State {
        self.state.get_mut().unwrap_or_else(|e| e.into_inner())
    }

    /// Make a finished record that nothing else holds ready to be kept as a spare: its spill
    /// buffers are freed and its arena emptied (its capacity kept). Returns the bytes it still
    /// holds, as [`retained_bytes`](Self::retained_bytes) counts them; `None` if the record is
    /// shared or too large to keep (`max_arena`).
    pub(crate) fn empty_for_reuse(self: &mut Arc<Self>, max_arena: usize) -> Option<usize> {
        let state = Arc::get_mut(self)?.state_mut();
        if state.text.capacity() > max_arena {
            return None;
        }
        state.text.clear();
        state.request.spill = Vec::new();
        state.response.spill = Vec::new();
        Some(state.retained_bytes())
    }

    /// The capacity of the arena of a record only this thread can reach.
    pub(crate) fn arena_capacity(self: &mut Arc<Self>) -> usize {
        Arc::get_mut(self).map_or(0, |record| record.state_mut().text.capacity())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere cannot leave the state inconsistent: keep using it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes of request (`response == false`) or response body data passed through; the first
    /// `body_limit` are copied. `remaining`: the body's announced rest; `end`: the body ended
    /// with this frame (for a request body: it is complete). Nothing changes once the record is
    /// finished.
    ///
    /// The end of the response body finishes the record under the same lock.
    pub(crate) fn append(self: &Arc<Self>, response: bool, data: &[u8], remaining: u64, end: bool) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(limit) = state.shared.as_ref().map(|s| s.config.body_limit) else {
            return;
        };
        let which = if response {
            Tail::Response
        } else {
            Tail::Request
        };
        let grown = state.append(which, data, remaining, end, limit);
        if end && !response {
            state.request.complete = true;
        }
        if grown > 0 {
            state.in_flight += grown;
            if let Some(shared) = &state.shared {
                shared.counters.hold(grown);
            }
        }
        if end && response {
            let closed = Self::close(state, Outcome::Complete);
            drop(guard);
            if let Some(closed) = closed {
                self.publish(closed);
            }
        }
    }

    /// The request or response body was seen to its end.
    pub(crate) fn body_complete(&self, response: bool) {
        let mut state = self.lock();
        if state.shared.is_some() {
            if response {
                state.response.complete = true;
            } else {
                state.request.complete = true;
            }
        }
    }

    /// The response head arrived.
    /// `body_hint`: the response body's `size_hint().lower()`; room for the headers and that
    /// much of the body (up to the limit) is made in the arena at once.
    pub(crate) fn response(&self, status: u16, headers: &HeaderMap, body_hint: u64) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(shared) = &state.shared else {
            return;
        };
        state.status = Some(status);
        state.response_after_us = Some(micros(state.started.elapsed()));
        let config = &shared.config;
        let before = state.text.capacity();
        let body_room = usize::try_from(body_hint)
            .unwrap_or(usize::MAX)
            .min(config.body_limit);
        let headers_room = headers_size(headers).min(config.header_limit.saturating_add(64));
        reserve(&mut state.text, headers_room + body_room, true);
        let start = state.text.len();
        write_headers(&mut state.text, headers, config);
        state.ends.response_headers = (start, state.text.len());
        state.tail = Tail::Other;
        let grown = state.text.capacity() - before;
        if grown > 0 {
            state.in_flight += grown;
            shared.counters.hold(grown);
        }
    }

    /// Finish the record (once; later calls do nothing) and push it into the ring.
    pub(crate) fn finish(self: &Arc<Self>, outcome: Outcome) {
        let closed = Self::close(&mut self.lock(), outcome);
        if let Some(closed) = closed {
            self.publish(closed);
        }
    }

    /// The part of [`finish`](Self::finish) under the record's lock: the outcome, the end time,
    /// unused capacity given back, the retained bytes; `None` if already finished.
    fn close(state: &mut State, outcome: Outcome) -> Option<Closed> {
        let shared = state.shared.take()?;
        let metrics = &shared.metrics;
        state.outcome = outcome;
        if outcome == Outcome::Complete {
            state.response.complete = true;
        }
        state.duration_us = micros(state.started.elapsed());
        // Unused capacity is given back; the in-flight count drops by all it counted.
        state.request.shrink();
        state.response.shrink();
        if state.text.capacity() - state.text.len() > SLACK_KEPT {
            state.text.shrink_to_fit();
        }
        let retained = state.retained_bytes();
        metrics.request_bytes.add(state.request.len() as u64);
        metrics.response_bytes.add(state.response.len() as u64);
        tracing::debug!(
            request_id = %String::from_utf8_lossy(&state.text[..state.ends.request_id]),
            status = ?state.status,
            outcome = ?state.outcome,
            "request captured"
        );
        let truncated = u64::from(state.request.truncated) + u64::from(state.response.truncated);
        Some(Closed {
            shared,
            retained,
            in_flight: std::mem::take(&mut state.in_flight),
            truncated,
        })
    }

    /// The part of [`finish`](Self::finish) after the record's lock: counts, and the push.
    fn publish(self: &Arc<Self>, closed: Closed) {
        let Closed {
            shared,
            retained,
            in_flight,
            truncated,
        } = closed;
        let counters = &shared.counters;
        let metrics = &shared.metrics;
        self.retained.store(retained, Ordering::Relaxed);
        if truncated > 0 {
            counters
                .loose
                .truncated_bodies
                .fetch_add(truncated, Ordering::Relaxed);
            metrics.truncated.add(truncated);
        }
        // The peak, before this capture's bytes are released (see `note_before_finish`).
        let before = counters.note_before_finish();
        // The in-flight bytes become the ring's.
        counters.release(in_flight);
        // Counted by the push (the entry id is the count).
        metrics.captured.add(1);
        // Evicted records are dropped here, outside the slot's lock; an evicted record no
        // reader holds is kept, with its arena, for this thread's next capture.
        let pushed = shared
            .ring
            .push(Arc::clone(self), retained, counters, metrics);
        // And after: what was read before, changed by this finish (the total when nothing
        // else moved in between; a finish that adds more than it frees is noted here).
        let after = before
            .saturating_sub(in_flight)
            .saturating_add_signed(pushed.delta);
        counters.note_peak(after);
        if let Some(oldest) = pushed.evicted {
            shared.spares.put(oldest);
        }
    }

    /// The bytes this record keeps alive while the ring holds it, as the allocator sees them:
    /// the record in its `Arc`, its text arena and its two body copies (capacities, all
    /// allocated to size). Set when the record is finished.
    pub(crate) fn retained_bytes(&self) -> usize {
        self.retained.load(Ordering::Relaxed)
    }

    /// Whether `filter` keeps this record (read without materialising it).
    pub(crate) fn matches(&self, filter: &EntryFilter) -> bool {
        let state = self.lock();
        let ends = &state.ends;
        let method = &state.text[ends.request_id..ends.method];
        let owner = ends.has_owner.then(|| &state.text[ends.query..ends.owner]);
        filter.matches_parts(method, state.status, owner)
    }

    /// The public entry: every field copied out of the record.
    pub(crate) fn to_entry(&self) -> Entry {
        let retained = self.retained_bytes();
        let state = self.lock();
        let (arena, ends) = (&state.text, &state.ends);
        Entry {
            id: self.id.load(Ordering::Relaxed),
            request_id: text(arena, 0, ends.request_id),
            method: text(arena, ends.request_id, ends.method),
            path: text(arena, ends.method, ends.path),
            query: ends.has_query.then(|| text(arena, ends.path, ends.query)),
            owner: ends.has_owner.then(|| text(arena, ends.query, ends.owner)),
            status: state.status,
            started_at_unix_ms: state.started_unix_ms,
            response_after_us: state.response_after_us,
            duration_us: state.duration_us,
            outcome: state.outcome,
            request_headers: read_headers(arena, ends.owner, ends.request_headers),
            response_headers: read_headers(arena, ends.response_headers.0, ends.response_headers.1),
            request_body: state.request.to_public(arena),
            response_body: state.response.to_public(arena),
            ring_bytes: retained,
        }
    }
}

/// Append `query` with the values of credential parameters replaced by [`REDACTED`] (I6), cut
/// at the configured header limit (on a character boundary). Parameters are split on `&`; a
/// parameter's name is its text before `=`, percent-decoded before it is matched (`%73ig` is
/// `sig`, `access%5Ftoken` is `access_token`) and recorded as written.
pub(crate) fn write_query(arena: &mut Vec<u8>, query: &str, config: &InspectorConfig) {
    let limit = config.header_limit_bytes();
    let start = arena.len();
    let out = |s: &str, arena: &mut Vec<u8>| arena.extend_from_slice(s.as_bytes());
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out("&", arena);
        }
        match pair.split_once('=') {
            Some((name, _)) if config.is_redacted_query_param(name) => {
                out(name, arena);
                out("=", arena);
                out(REDACTED, arena);
            }
            _ => out(pair, arena),
        }
        if arena.len() - start > limit {
            break;
        }
    }
    if arena.len() - start > limit {
        // Only `&str`s were written: cut on a character boundary of the recorded text.
        let recorded = &arena[start..];
        let mut cut = limit;
        while cut > 0 && (recorded[cut] & 0xc0) == 0x80 {
            cut -= 1;
        }
        arena.truncate(start + cut);
    }
}

/// Whole microseconds, saturating at `u64::MAX` instead of wrapping.
fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::inspector::Shared;
    use http::HeaderValue;

    /// A finished record with `id`, for the ring's unit tests (not pushed anywhere).
    /// (The ring gives it its id when it is pushed; `id` names its request id.)
    pub(crate) fn finished(shared: &Arc<Shard>, id: u64) -> Arc<Record> {
        let headers = HeaderMap::new();
        let request_id = format!("req-{id}");
        let record = Record::start(
            Arc::clone(shared),
            RequestParts {
                request_id: &request_id,
                method: "POST",
                path: "/api/jobs",
                query: None,
                owner: None,
                headers: &headers,
                body_hint: 0,
            },
        );
        {
            let mut state = record.lock();
            state.shared = None;
            state.status = Some(200);
            state.outcome = Outcome::Complete;
            shared
                .counters
                .release(std::mem::take(&mut state.in_flight));
            let retained = state.retained_bytes();
            record.retained.store(retained, Ordering::Relaxed);
        }
        record
    }

    // The arena's header encoding reads back what was written: names, values, redaction, lossy
    // UTF-8, and the cut pseudo-header.
    #[test]
    fn headers_round_trip_through_the_arena() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert("authorization", HeaderValue::from_static("Bearer secret"));
        headers.insert("x-latin", HeaderValue::from_bytes(b"caf\xe9").unwrap());
        headers.insert("x-empty", HeaderValue::from_static(""));
        let config = InspectorConfig::new();
        let mut arena = b"prefix".to_vec();
        write_headers(&mut arena, &headers, &config);
        let end = arena.len();
        let read = read_headers(&arena, 6, end);
        let pairs: Vec<(&str, &str)> = read
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("content-type", "application/json"),
                ("authorization", REDACTED),
                ("x-latin", "caf\u{fffd}"),
                ("x-empty", ""),
            ]
        );
        // Cut at the limit: a prefix of the list, then the pseudo-header.
        let small = InspectorConfig::new().header_limit(40);
        let mut arena = Vec::new();
        write_headers(&mut arena, &headers, &small);
        let end = arena.len();
        let read = read_headers(&arena, 0, end);
        assert_eq!(read.len(), 2);
        assert_eq!(read[0].name, "content-type");
        assert_eq!(read[1].name, HEADERS_CUT);
        assert_eq!(read[1].value, "3 headers (41 bytes) not recorded");
    }

    /// A shard over a new inspector's state with `config`.
    pub(crate) fn shared(config: InspectorConfig) -> Arc<Shard> {
        Shard::new(Arc::new(Shared {
            ring: crate::ring::Ring::new(config.capacity),
            config,
            counters: crate::ring::Counters::default(),
            spares: crate::ring::Spares::default(),
            metrics: crate::telemetry::Metrics::new(),
            epoch: crate::inspector::Epoch::now(),
            stripes: std::sync::OnceLock::new(),
        }))
    }

    fn start(shared: &Arc<Shard>, body_hint: u64) -> Arc<Record> {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        Record::start(
            Arc::clone(shared),
            RequestParts {
                request_id: "req-1",
                method: "POST",
                path: "/api/upload",
                query: Some("sig=abc&n=1"),
                owner: Some("alice".to_owned()),
                headers: &headers,
                body_hint,
            },
        )
    }

    // A body that arrives in many frames is copied up to the limit, flagged truncated past it,
    // and counted whole; the in-flight bytes follow the arena and are handed to the ring.
    #[test]
    fn bodies_split_over_many_frames_are_copied_up_to_the_limit() {
        let shared = shared(InspectorConfig::new().body_limit(500));
        let record = start(&shared, 0);
        for i in 0..100_u8 {
            record.append(false, &[i; 7], 0, i == 99);
        }
        record.response(200, &HeaderMap::new(), 0);
        for i in 0..10_u8 {
            record.append(true, &[i; 3], 0, false);
        }
        assert!(shared.counters.snapshot(1, &shared.spares).in_flight_bytes >= 530);
        record.finish(Outcome::Complete);
        let entry = record.to_entry();
        let expected: Vec<u8> = (0..100_u8).flat_map(|i| [i; 7]).take(500).collect();
        let body = &entry.request_body;
        assert_eq!(body.bytes().as_ref(), expected.as_slice());
        assert_eq!(
            (body.total_bytes(), body.truncated(), body.complete()),
            (700, true, true)
        );
        let expected: Vec<u8> = (0..10_u8).flat_map(|i| [i; 3]).collect();
        assert_eq!(entry.response_body.bytes().as_ref(), expected.as_slice());
        assert!(!entry.response_body.truncated() && entry.response_body.complete());
        assert_eq!(entry.query.as_deref(), Some("sig=[redacted]&n=1"));
        assert_eq!(entry.owner.as_deref(), Some("alice"));
        assert_eq!(entry.request_headers[0].value, "text/plain");
        let stats = shared
            .counters
            .snapshot(shared.ring.capacity(), &shared.spares);
        assert_eq!(stats.in_flight_bytes, 0);
        assert_eq!(stats.ring_bytes, entry.retained_bytes());
    }

    // A request body still streaming when the response started (an echo): its later frames
    // go on in a buffer of their own, and both bodies read back in order.
    #[test]
    fn interleaved_bodies_read_back_in_order() {
        let shared = shared(InspectorConfig::new().body_limit(1000));
        let record = start(&shared, 100);
        let mut response_headers = HeaderMap::new();
        response_headers.insert("x-reply", HeaderValue::from_static("yes"));
        record.append(false, b"req-1,", 94, false);
        record.response(201, &response_headers, 0);
        record.append(true, b"res-1,", 0, false);
        record.append(false, b"req-2,", 88, false);
        record.append(true, b"res-2,", 0, false);
        record.append(false, b"req-3", 0, true);
        record.append(true, b"res-3", 0, false);
        record.finish(Outcome::Complete);
        // Nothing changes once finished.
        record.append(true, b"late", 0, true);
        let entry = record.to_entry();
        assert_eq!(entry.request_body.text(), "req-1,req-2,req-3");
        assert_eq!(entry.response_body.text(), "res-1,res-2,res-3");
        assert!(entry.request_body.complete() && entry.response_body.complete());
        assert_eq!(entry.response_headers.len(), 1);
        assert_eq!(
            (entry.response_headers[0].name.as_str(), entry.status),
            ("x-reply", Some(201))
        );
        let state = record.lock();
        assert!(!state.request.spill.is_empty(), "the request body spilled");
        assert!(
            state.response.spill.is_empty(),
            "the response body stayed at the tail"
        );
    }

    // The guide's sizing: a record's fixed part (in its `Arc`) is 320 bytes on 64-bit targets.
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn record_fixed_part_matches_the_guide() {
        assert_eq!(ARC_COUNTS + size_of::<Record>(), 320);
    }
}
