//! The response side of one in-flight capture: it finishes the record exactly once.

use std::sync::Arc;

use http::HeaderMap;

use crate::Outcome;
use crate::record::Record;

/// Finishes one captured exchange's record exactly once: when the response body ends, fails or
/// is dropped, or when the exchange fails first (also when dropped before any of these).
#[derive(Debug)]
pub(crate) struct Finisher {
    record: Arc<Record>,
    /// The response head arrived: a drop from now on is an abort, not a cancellation.
    responded: bool,
    done: bool,
}

impl Finisher {
    pub(crate) fn new(record: Arc<Record>) -> Self {
        Self {
            record,
            responded: false,
            done: false,
        }
    }

    /// The response head arrived.
    /// The response head arrived; `body_hint` is its body's `size_hint().lower()`.
    pub(crate) fn response(&mut self, status: u16, headers: &HeaderMap, body_hint: u64) {
        self.responded = true;
        self.record.response(status, headers, body_hint);
    }

    /// Response body bytes passed through; `remaining` is the body's announced rest, `end`
    /// says no frame follows: the record is then finished (`complete`) under the same lock.
    pub(crate) fn append(&mut self, data: &[u8], remaining: u64, end: bool) {
        if self.done {
            return;
        }
        self.done = end;
        self.record.append(true, data, remaining, end);
    }

    /// Record the entry (once).
    pub(crate) fn finish(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        self.record.finish(outcome);
    }
}

impl Drop for Finisher {
    fn drop(&mut self) {
        let outcome = if self.responded {
            Outcome::Aborted
        } else {
            Outcome::Cancelled
        };
        self.finish(outcome);
    }
}
