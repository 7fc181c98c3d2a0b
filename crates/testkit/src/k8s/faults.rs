//! Per-route fault injection (latency, status, garbage body, connection reset, stream reset,
//! stalled connection) and the request log.

use std::sync::Mutex;
use std::time::Duration;

/// Which requests a [`Fault`] applies to, matched on the URL path (no query).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Route {
    /// Exactly this path, e.g. `/api/v1/nodes`.
    Exact(String),
    /// Every path starting with this prefix, e.g. `/api/v1/namespaces/testkit/pods/`.
    Prefix(String),
    /// Every request.
    Any,
}

impl Route {
    /// Exactly `path`.
    pub fn exact(path: impl Into<String>) -> Self {
        Self::Exact(path.into())
    }

    /// Every path starting with `prefix`.
    pub fn prefix(prefix: impl Into<String>) -> Self {
        Self::Prefix(prefix.into())
    }

    /// Whether `path` is matched.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(p) => p == path,
            Self::Prefix(p) => path.starts_with(p.as_str()),
            Self::Any => true,
        }
    }
}

impl From<&str> for Route {
    /// An exact route.
    fn from(path: &str) -> Self {
        Self::exact(path)
    }
}

/// What to do to a matching request, before authentication (as a proxy or a sick server would).
///
/// Effects combine: the latency is waited first, then the connection is reset, or the status is
/// answered, or a garbage body is sent. Build one with the constructors and chain the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Fault {
    /// Wait this long before answering (real time: the server runs on real sockets).
    pub latency: Option<Duration>,
    /// Answer this status with a metav1 `Status` body instead of the real answer.
    pub status: Option<u16>,
    /// With `status`: a `Retry-After` header, in seconds.
    pub retry_after_secs: Option<u64>,
    /// Answer 200 with a body that is not JSON.
    pub garbage_body: bool,
    /// Reset the TCP connection (RST) instead of answering: every request on it fails.
    pub reset: bool,
    /// Reset only this request's stream instead of answering: over HTTP/2 an `RST_STREAM`
    /// (the connection's other streams carry on); over HTTP/1.1, where a request is its
    /// connection, the connection closes.
    pub reset_stream: bool,
    /// Stop serving the connection instead of answering: the socket stays open but nothing is
    /// read or written on it again (no answers, no HTTP/2 PING acknowledgements), as a
    /// half-dead peer or a black-holing middlebox would.
    pub stall_connection: bool,
    /// Apply to this many matching requests, then stop (`None`: forever).
    pub times: Option<u32>,
}

impl Fault {
    /// Delay matching requests by `latency`.
    pub fn latency(latency: Duration) -> Self {
        Self {
            latency: Some(latency),
            ..Self::default()
        }
    }

    /// Answer matching requests with `status` and a metav1 `Status` body.
    pub fn status(status: u16) -> Self {
        Self {
            status: Some(status),
            ..Self::default()
        }
    }

    /// Answer matching requests 200 with a body that does not parse.
    pub fn garbage_body() -> Self {
        Self {
            garbage_body: true,
            ..Self::default()
        }
    }

    /// Reset the connection of matching requests.
    pub fn reset() -> Self {
        Self {
            reset: true,
            ..Self::default()
        }
    }

    /// Reset the stream of matching requests (HTTP/2 `RST_STREAM`; HTTP/1.1: the connection).
    pub fn reset_stream() -> Self {
        Self {
            reset_stream: true,
            ..Self::default()
        }
    }

    /// Stall the connection of matching requests: open, never read or written again.
    pub fn stall_connection() -> Self {
        Self {
            stall_connection: true,
            ..Self::default()
        }
    }

    /// Also delay by `latency`.
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = Some(latency);
        self
    }

    /// Add a `Retry-After: <secs>` header to the injected status.
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    /// Apply only to the next `n` matching requests.
    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }
}

/// How a request was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthMethod {
    /// A client certificate signed by the server's CA.
    ClientCert,
    /// A bearer token the server accepts (a cluster token, or an ARM JWT on the ARM routes).
    Bearer,
    /// Neither, or a token the server refused (answered 401).
    None,
}

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestRecord {
    /// `GET`, `POST`, …
    pub method: String,
    /// The URL path, e.g. `/api/v1/namespaces/testkit/pods`.
    pub path: String,
    /// The raw query string, if any (still percent-encoded).
    pub query: Option<String>,
    /// How it authenticated (decided after faults, so a faulted request says `None`).
    pub auth: AuthMethod,
    /// The status answered (0 for a reset connection).
    pub status: u16,
    /// Which TLS connection carried it (1, 2, … in accept order).
    pub connection: u64,
    /// The HTTP version it came over (`HTTP/2.0` or `HTTP/1.1`).
    pub version: http::Version,
}

impl RequestRecord {
    /// `path?query`, or just `path`.
    pub fn url(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }
}

/// The server's fault table.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    rules: Mutex<Vec<(Route, Fault)>>,
}

impl Faults {
    pub(crate) fn add(&self, route: Route, fault: Fault) {
        self.rules.lock().expect("fault table").push((route, fault));
    }

    pub(crate) fn clear(&self) {
        self.rules.lock().expect("fault table").clear();
    }

    /// The first rule matching `path` that still has uses left (one use is consumed).
    pub(crate) fn take(&self, path: &str) -> Option<Fault> {
        let mut rules = self.rules.lock().expect("fault table");
        let index = rules
            .iter()
            .position(|(route, fault)| route.matches(path) && fault.times != Some(0))?;
        let fault = &mut rules[index].1;
        if let Some(n) = fault.times.as_mut() {
            *n -= 1;
        }
        Some(fault.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limited_faults_run_out_and_later_rules_take_over() {
        let faults = Faults::default();
        faults.add(Route::exact("/a"), Fault::status(503).times(2));
        faults.add(Route::prefix("/"), Fault::status(500));
        assert_eq!(faults.take("/a").unwrap().status, Some(503));
        assert_eq!(faults.take("/a").unwrap().status, Some(503));
        assert_eq!(faults.take("/a").unwrap().status, Some(500));
        assert_eq!(faults.take("/b").unwrap().status, Some(500));
        faults.clear();
        assert!(faults.take("/a").is_none());
    }

    #[test]
    fn routes_match_exactly_or_by_prefix() {
        assert!(Route::from("/api").matches("/api"));
        assert!(!Route::from("/api").matches("/api/v1"));
        assert!(Route::prefix("/api/").matches("/api/v1"));
        assert!(Route::Any.matches("/x"));
    }
}
