//! Measuring helpers shared by the reliability suites: open TCP connections to a port, live
//! tokio tasks, resident memory, and the temp dir's contents.

#![allow(
    dead_code,
    reason = "each suite binary uses a different subset of the helpers"
)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

/// TCP connections (either end) on `port` that are not closed: every state except LISTEN,
/// TIME_WAIT and CLOSE, read from `/proc/net/tcp` and `/proc/net/tcp6` (the whole network
/// namespace, but ports are unique, so this counts the connections to one test server).
/// Connects in progress and closes in transit count: what a leak check needs.
pub(crate) fn open_connections(port: u16) -> usize {
    // 0A LISTEN, 06 TIME_WAIT, 07 CLOSE.
    sockets(port, |state| !matches!(state, "0A" | "06" | "07"))
}

/// TCP connections (either end) on `port` in the ESTABLISHED state only: the connections a
/// client can send on (no connect still in its handshake, no close in transit), for bounds on
/// how many a pool keeps.
pub(crate) fn established_connections(port: u16) -> usize {
    sockets(port, |state| state == "01")
}

/// Sockets on `port` (local or remote) whose `/proc/net/tcp` state (two hex digits) `keep`s.
fn sockets(port: u16, keep: impl Fn(&str) -> bool) -> usize {
    let mut count = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 4 {
                continue;
            }
            let port_of = |addr: &str| {
                addr.rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
            };
            if keep(fields[3])
                && (port_of(fields[1]) == Some(port) || port_of(fields[2]) == Some(port))
            {
                count += 1;
            }
        }
    }
    count
}

/// Tasks alive on the current tokio runtime (stable `RuntimeMetrics::num_alive_tasks`).
pub(crate) fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Poll (real time, every 20 ms, at most `within`) until `done()`; the last value of `probe`.
pub(crate) async fn settle<T: std::fmt::Debug>(
    within: Duration,
    mut probe: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = std::time::Instant::now() + within;
    loop {
        let value = probe();
        if done(&value) || std::time::Instant::now() >= deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Resident set size of this process in KiB (from `/proc/self/status`), 0 if unknown.
pub(crate) fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Every path under `std::env::temp_dir()` (one level deep, plus one level into directories).
pub(crate) fn temp_entries() -> BTreeSet<PathBuf> {
    let mut entries = BTreeSet::new();
    let root = std::env::temp_dir();
    if let Ok(dir) = std::fs::read_dir(&root) {
        for entry in dir.flatten() {
            let path = entry.path();
            if path.is_dir()
                && let Ok(inner) = std::fs::read_dir(&path)
            {
                entries.extend(inner.flatten().map(|e| e.path()));
            }
            entries.insert(path);
        }
    }
    entries
}

/// Files this process holds open under `std::env::temp_dir()` (from `/proc/self/fd`), other
/// than its standard streams (a runner may redirect those to a file there).
pub(crate) fn open_temp_files() -> Vec<PathBuf> {
    let root = std::env::temp_dir();
    let mut open = Vec::new();
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        for fd in fds.flatten() {
            let stdio = fd
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|n| n <= 2);
            if stdio {
                continue;
            }
            if let Ok(target) = std::fs::read_link(fd.path())
                && target.starts_with(&root)
            {
                open.push(target);
            }
        }
    }
    open
}

/// A tiny deterministic PRNG (xorshift64*) for seeded fault schedules.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
