//! One in-flight capture: the bounded body copies and the entry recorded when it ends.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::time::Instant;

use crate::entry::{CapturedBody, Header, headers_bytes};
use crate::inspector::Shared;
use crate::telemetry::Counter;
use crate::{Entry, Outcome};

/// The first `limit` bytes of one body, plus what was seen of the rest.
#[derive(Debug)]
pub(crate) struct CaptureBuf {
    buf: Vec<u8>,
    limit: usize,
    total: u64,
    truncated: bool,
    pub(crate) complete: bool,
    /// Once the entry is recorded, later bytes are neither copied nor counted.
    closed: bool,
    /// Bytes of allocation counted in `Counters::in_flight_bytes` for this buffer.
    held: usize,
}

impl CaptureBuf {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            limit,
            total: 0,
            truncated: false,
            complete: false,
            closed: false,
            held: 0,
        }
    }

    /// Copy what fits under the limit; everything beyond it is only counted (I5).
    pub(crate) fn append(&mut self, data: &[u8], shared: &Shared) {
        self.total += data.len() as u64;
        if self.closed {
            return;
        }
        let take = (self.limit - self.buf.len()).min(data.len());
        if take < data.len() {
            self.truncated = true;
        }
        if take > 0 {
            let before = self.buf.capacity();
            self.buf.reserve_exact(take);
            self.buf.extend_from_slice(&data[..take]);
            let grown = self.buf.capacity() - before;
            self.held += grown;
            shared.counters.hold(grown);
        }
    }

    /// Hand the bytes over to an entry; the in-flight count drops by what this buffer held.
    /// `copied` counts the bytes kept (`inspector.captured.bytes` for this body).
    fn close(&mut self, shared: &Shared, copied: &Counter) -> CapturedBody {
        self.closed = true;
        let mut buf = std::mem::take(&mut self.buf);
        // Allocated to size, so `Bytes::from` takes it over without a second allocation and
        // `CapturedBody::held_bytes` is its length.
        buf.shrink_to_fit();
        shared.counters.release(std::mem::take(&mut self.held));
        copied.add(buf.len() as u64);
        if self.truncated {
            shared
                .counters
                .truncated_bodies
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            shared.metrics.truncated.add(1);
        }
        CapturedBody {
            bytes: Bytes::from(buf),
            total_bytes: self.total,
            truncated: self.truncated,
            complete: self.complete,
        }
    }
}

pub(crate) fn lock(buf: &Mutex<CaptureBuf>) -> MutexGuard<'_, CaptureBuf> {
    buf.lock().unwrap_or_else(|e| e.into_inner())
}

/// Everything known about one captured exchange until it ends; it records its entry exactly
/// once, when the response body ends, fails or is dropped, or when the exchange fails first.
#[derive(Debug)]
pub(crate) struct Finisher {
    pub(crate) shared: Arc<Shared>,
    started: Instant,
    started_unix_ms: u64,
    request_id: String,
    method: String,
    path: String,
    query: Option<String>,
    owner: Option<String>,
    request_headers: Vec<Header>,
    /// Header bytes counted in `in_flight_bytes` until the entry is recorded.
    headers_held: usize,
    request: Arc<Mutex<CaptureBuf>>,
    status: Option<u16>,
    response_after: Option<Duration>,
    response_headers: Vec<Header>,
    pub(crate) response: CaptureBuf,
    done: bool,
}

impl Finisher {
    #[allow(
        clippy::too_many_arguments,
        reason = "one private constructor taking each recorded field once"
    )]
    pub(crate) fn new(
        shared: Arc<Shared>,
        request_id: String,
        method: String,
        path: String,
        query: Option<String>,
        owner: Option<String>,
        request_headers: Vec<Header>,
        request: Arc<Mutex<CaptureBuf>>,
    ) -> Self {
        let headers_held = headers_bytes(&request_headers)
            + query.as_ref().map_or(0, String::capacity)
            + owner.as_ref().map_or(0, String::capacity);
        shared.counters.hold(headers_held);
        let limit = shared.config.body_limit;
        Self {
            shared,
            started: Instant::now(),
            started_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            request_id,
            method,
            path,
            query,
            owner,
            request_headers,
            headers_held,
            request,
            status: None,
            response_after: None,
            response_headers: Vec::new(),
            response: CaptureBuf::new(limit),
            done: false,
        }
    }

    /// The response head arrived.
    pub(crate) fn response(&mut self, status: u16, headers: Vec<Header>) {
        let held = headers_bytes(&headers);
        self.shared.counters.hold(held);
        self.headers_held += held;
        self.status = Some(status);
        self.response_after = Some(self.started.elapsed());
        self.response_headers = headers;
    }

    /// Record the entry (once).
    pub(crate) fn finish(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let shared = Arc::clone(&self.shared);
        let metrics = &shared.metrics;
        let request_body = lock(&self.request).close(&shared, &metrics.request_bytes);
        let response_body = self.response.close(&shared, &metrics.response_bytes);
        shared
            .counters
            .release(std::mem::take(&mut self.headers_held));
        let counters = &shared.counters;
        let entry = Entry {
            id: counters
                .next_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1,
            request_id: std::mem::take(&mut self.request_id),
            method: std::mem::take(&mut self.method),
            path: std::mem::take(&mut self.path),
            query: self.query.take(),
            owner: self.owner.take(),
            status: self.status,
            started_at_unix_ms: self.started_unix_ms,
            response_after_us: self.response_after.map(micros),
            duration_us: micros(self.started.elapsed()),
            outcome,
            request_headers: std::mem::take(&mut self.request_headers),
            response_headers: std::mem::take(&mut self.response_headers),
            request_body,
            response_body,
        };
        counters
            .captured
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics.captured.add(1);
        tracing::debug!(
            request_id = %entry.request_id,
            status = ?entry.status,
            outcome = ?entry.outcome,
            "request captured"
        );
        // Evicted entries are dropped here, after the ring's lock is released.
        let _evicted = shared.ring.push(Arc::new(entry), counters, metrics);
        counters.note_ring_peak();
    }
}

impl Drop for Finisher {
    fn drop(&mut self) {
        let outcome = if self.status.is_some() {
            Outcome::Aborted
        } else {
            Outcome::Cancelled
        };
        self.finish(outcome);
    }
}

/// Whole microseconds, saturating at `u64::MAX` instead of wrapping.
fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}
