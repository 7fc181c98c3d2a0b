//! The request log: a bounded ring of the latest requests, with exact counts of every request.

use std::collections::{HashMap, VecDeque};

use super::faults::RequestRecord;

/// Requests the log keeps by default (the newest; older ones are only counted).
pub const REQUEST_LOG_CAPACITY: usize = 10_000;

/// The newest `capacity` requests in arrival order, plus counts that stay exact however many
/// requests were evicted: the total, and one count per distinct path (a test server sees a
/// bounded set of paths, so the map is bounded by what the clients ask for, not by time).
#[derive(Debug)]
pub(crate) struct RequestLog {
    ring: VecDeque<RequestRecord>,
    capacity: usize,
    total: u64,
    by_path: HashMap<String, u64>,
}

impl RequestLog {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            ring: VecDeque::new(),
            capacity: capacity.max(1),
            total: 0,
            by_path: HashMap::new(),
        }
    }

    pub(crate) fn push(&mut self, record: RequestRecord) {
        self.total += 1;
        match self.by_path.get_mut(&record.path) {
            Some(count) => *count += 1,
            None => {
                self.by_path.insert(record.path.clone(), 1);
            }
        }
        while self.ring.len() >= self.capacity {
            self.ring.pop_front();
        }
        self.ring.push_back(record);
    }

    pub(crate) fn records(&self) -> Vec<RequestRecord> {
        self.ring.iter().cloned().collect()
    }

    pub(crate) fn count(&self, path: &str) -> u64 {
        self.by_path.get(path).copied().unwrap_or(0)
    }

    pub(crate) fn count_matching(&self, keep: impl Fn(&str) -> bool) -> u64 {
        self.by_path
            .iter()
            .filter(|(path, _)| keep(path))
            .map(|(_, n)| n)
            .sum()
    }

    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    pub(crate) fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
        while self.ring.len() > self.capacity {
            self.ring.pop_front();
        }
        self.ring.shrink_to(self.capacity);
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    pub(crate) fn clear(&mut self) {
        self.ring = VecDeque::new();
        self.by_path = HashMap::new();
        self.total = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::AuthMethod;

    fn record(path: &str) -> RequestRecord {
        RequestRecord {
            method: "GET".into(),
            path: path.into(),
            query: None,
            auth: AuthMethod::None,
            status: 200,
            connection: 1,
            version: http::Version::HTTP_11,
        }
    }

    // The soak in issue #24: the log grew by every request forever. Now it keeps the newest
    // `capacity`, and the counts stay exact.
    #[test]
    fn the_log_keeps_the_newest_and_counts_everything() {
        let mut log = RequestLog::new(3);
        for i in 0..10 {
            log.push(record(if i % 2 == 0 { "/a" } else { "/b" }));
        }
        assert_eq!(log.records().len(), 3);
        assert_eq!(log.total(), 10);
        assert_eq!((log.count("/a"), log.count("/b")), (5, 5));
        assert_eq!(log.count_matching(|p| p != "/a"), 5);
        log.set_capacity(1);
        assert_eq!(log.records().len(), 1);
        assert_eq!(log.total(), 10, "shrinking keeps the counts");
        log.clear();
        assert_eq!(
            (log.total(), log.count("/a"), log.records().len()),
            (0, 0, 0)
        );
    }
}
