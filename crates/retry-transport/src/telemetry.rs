//! Metrics through the `metrics` facade (feature `metrics`): handles registered once per client
//! and per host, OpenTelemetry HTTP-client names.
//!
//! Without the feature every type here is empty and every call compiles to nothing. With it,
//! nothing is recorded unless the application installed a recorder before building the client.

#[cfg(feature = "metrics")]
use std::collections::HashMap;
#[cfg(feature = "metrics")]
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::Error;
use crate::stats::{GiveUpReason, RetryCause};

/// Distinct `server.address` values one client labels; later hosts are labelled `_OTHER`.
#[cfg(feature = "metrics")]
pub(crate) const MAX_HOST_LABELS: usize = 64;

/// Distinct (method, status, error) series of `http.client.request.duration` kept per host.
#[cfg(feature = "metrics")]
const MAX_DURATION_SERIES: usize = 256;

#[cfg(feature = "metrics")]
type Counter = metrics::Counter;
#[cfg(feature = "metrics")]
type Gauge = metrics::Gauge;
#[cfg(feature = "metrics")]
type Histogram = metrics::Histogram;

/// The client-wide series: connection slots in the `db.client.connection.*` pattern.
#[derive(Debug, Default)]
pub(crate) struct ClientMetrics {
    #[cfg(feature = "metrics")]
    inner: Option<Arc<ClientInner>>,
}

#[cfg(feature = "metrics")]
#[derive(Debug)]
struct ClientInner {
    used: Gauge,
    idle: Gauge,
    max: Gauge,
    max_per_host: Gauge,
    pending: Gauge,
    timeouts: Counter,
    wait_time: Histogram,
    max_in_use: usize,
    hosts: Mutex<HashMap<String, Host>>,
}

/// One host's series (`server.address`), shared by every request to it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Host {
    #[cfg(feature = "metrics")]
    inner: Option<Arc<HostInner>>,
}

#[cfg(feature = "metrics")]
#[derive(Debug)]
struct HostInner {
    address: metrics::SharedString,
    active: Gauge,
    attempts: Counter,
    retries: [Counter; 4],
    give_ups: [Counter; 6],
    rejected: Counter,
    in_use: Gauge,
    budget_balance: Gauge,
    throttle_probability: Gauge,
    durations: Mutex<HashMap<(&'static str, u16, &'static str), Histogram>>,
}

/// A slot's share of the gauges: held by the slot, given back when it is dropped.
#[derive(Debug, Default)]
pub(crate) struct SlotUse {
    #[cfg(feature = "metrics")]
    held: Option<(Arc<ClientInner>, Host)>,
}

/// Counts a request as active until dropped (the send finished or was cancelled).
#[derive(Debug, Default)]
pub(crate) struct Active {
    #[cfg(feature = "metrics")]
    host: Host,
}

/// Counts a caller as waiting for a slot until dropped.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    #[cfg(feature = "metrics")]
    client: Option<Arc<ClientInner>>,
}

#[cfg(feature = "metrics")]
const CAUSES: [&str; 4] = ["throttled", "unavailable", "transport", "unauthorized"];

#[cfg(feature = "metrics")]
fn cause_index(cause: RetryCause) -> usize {
    match cause {
        RetryCause::Throttled => 0,
        RetryCause::Unavailable => 1,
        RetryCause::Transport => 2,
        RetryCause::Unauthorized => 3,
    }
}

#[cfg(feature = "metrics")]
const REASONS: [&str; 6] = [
    "attempts_exhausted",
    "budget_exhausted",
    "retry_after_over_cap",
    "body_not_cloneable",
    "retry_budget_exhausted",
    "throttled",
];

#[cfg(feature = "metrics")]
fn reason_index(reason: GiveUpReason) -> usize {
    match reason {
        GiveUpReason::AttemptsExhausted => 0,
        GiveUpReason::BudgetExhausted => 1,
        GiveUpReason::RetryAfterOverCap => 2,
        GiveUpReason::BodyNotCloneable => 3,
        GiveUpReason::RetryBudgetExhausted => 4,
        GiveUpReason::Throttled => 5,
    }
}

/// The `http.request.method` value: a known method, else `_OTHER` (OpenTelemetry).
pub(crate) fn method_label(method: &http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        "CONNECT" => "CONNECT",
        "TRACE" => "TRACE",
        _ => "_OTHER",
    }
}

/// The `error.type` value of a failed send.
pub(crate) fn error_label(error: &Error) -> &'static str {
    match error {
        Error::PoolTimeout { .. } => "pool_timeout",
        Error::Timeout { .. } => "timeout",
        Error::Transport { .. } => "transport",
        Error::Throttled { .. } => "throttled",
        Error::Credential(_) => "credential",
        Error::CredentialTimeout { .. } => "credential_timeout",
        Error::Request(_) => "request",
        Error::Build(_) | Error::Config(_) => "config",
    }
}

impl ClientMetrics {
    /// Register the client's series: `max_in_use` slots, `max_in_use_per_host` per host.
    #[cfg(feature = "metrics")]
    pub(crate) fn new(max_in_use: usize, max_in_use_per_host: usize) -> Self {
        use metrics::{counter, gauge, histogram};
        describe();
        let inner = ClientInner {
            used: gauge!("http.client.slot.count", "state" => "used"),
            idle: gauge!("http.client.slot.count", "state" => "idle"),
            max: gauge!("http.client.slot.max"),
            max_per_host: gauge!("http.client.slot.max_per_host"),
            pending: gauge!("http.client.slot.pending_requests"),
            timeouts: counter!("http.client.slot.timeouts"),
            wait_time: histogram!("http.client.slot.wait_time"),
            max_in_use,
            hosts: Mutex::new(HashMap::new()),
        };
        // Gauges add up over the clients of a process: each adds its share and takes it back
        // when dropped.
        inner.idle.increment(max_in_use as f64);
        inner.max.increment(max_in_use as f64);
        inner.max_per_host.increment(max_in_use_per_host as f64);
        Self {
            inner: Some(Arc::new(inner)),
        }
    }

    #[cfg(not(feature = "metrics"))]
    pub(crate) fn new(_max_in_use: usize, _max_in_use_per_host: usize) -> Self {
        Self {}
    }

    /// The series of `host` (the URL's host, without port). Past [`MAX_HOST_LABELS`] distinct
    /// hosts, new ones share the `_OTHER` series.
    pub(crate) fn host(&self, host: &str) -> Host {
        #[cfg(feature = "metrics")]
        if let Some(inner) = &self.inner {
            let mut hosts = inner.hosts.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(found) = hosts.get(host) {
                return found.clone();
            }
            let label = if hosts.len() < MAX_HOST_LABELS {
                host
            } else {
                "_OTHER"
            };
            if let Some(other) = hosts.get(label) {
                return other.clone();
            }
            let made = Host::new(label);
            hosts.insert(label.to_owned(), made.clone());
            return made;
        }
        let _ = host;
        Host::default()
    }

    /// A caller starts waiting for a slot.
    pub(crate) fn pending(&self) -> Pending {
        #[cfg(feature = "metrics")]
        if let Some(inner) = &self.inner {
            inner.pending.increment(1.0);
            return Pending {
                client: Some(inner.clone()),
            };
        }
        Pending::default()
    }

    /// A slot was acquired after `waited`.
    pub(crate) fn acquired(&self, host: &Host, waited: Duration) -> SlotUse {
        #[cfg(feature = "metrics")]
        if let Some(inner) = &self.inner {
            inner.wait_time.record(waited.as_secs_f64());
            inner.used.increment(1.0);
            inner.idle.decrement(1.0);
            if let Some(h) = &host.inner {
                h.in_use.increment(1.0);
            }
            return SlotUse {
                held: Some((inner.clone(), host.clone())),
            };
        }
        let _ = (host, waited);
        SlotUse::default()
    }

    /// No slot came within the acquire timeout.
    pub(crate) fn timed_out(&self, waited: Duration) {
        #[cfg(feature = "metrics")]
        if let Some(inner) = &self.inner {
            inner.timeouts.increment(1);
            inner.wait_time.record(waited.as_secs_f64());
        }
        let _ = waited;
    }
}

#[cfg(feature = "metrics")]
impl Drop for ClientInner {
    fn drop(&mut self) {
        self.idle.decrement(self.max_in_use as f64);
        self.max.decrement(self.max_in_use as f64);
    }
}

#[cfg(feature = "metrics")]
impl Drop for SlotUse {
    fn drop(&mut self) {
        if let Some((client, host)) = self.held.take() {
            client.used.decrement(1.0);
            client.idle.increment(1.0);
            if let Some(h) = &host.inner {
                h.in_use.decrement(1.0);
            }
        }
    }
}

#[cfg(feature = "metrics")]
impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            client.pending.decrement(1.0);
        }
    }
}

#[cfg(feature = "metrics")]
impl Drop for Active {
    fn drop(&mut self) {
        if let Some(h) = &self.host.inner {
            h.active.decrement(1.0);
        }
    }
}

impl Host {
    #[cfg(feature = "metrics")]
    fn new(address: &str) -> Self {
        use metrics::{counter, gauge};
        let address = metrics::SharedString::from(address.to_owned());
        let a = || address.clone();
        Self {
            inner: Some(Arc::new(HostInner {
                active: gauge!("http.client.active_requests", "server.address" => a()),
                attempts: counter!("http.client.attempts", "server.address" => a()),
                retries: CAUSES.map(|cause| {
                    counter!("http.client.retries", "server.address" => a(), "cause" => cause)
                }),
                give_ups: REASONS.map(|reason| {
                    counter!("http.client.give_ups", "server.address" => a(), "reason" => reason)
                }),
                rejected: counter!("http.client.throttle.rejections", "server.address" => a()),
                in_use: gauge!("http.client.slot.host_used", "server.address" => a()),
                budget_balance: gauge!("http.client.retry_budget.balance", "server.address" => a()),
                throttle_probability: gauge!(
                    "http.client.throttle.probability",
                    "server.address" => a()
                ),
                durations: Mutex::new(HashMap::new()),
                address,
            })),
        }
    }

    /// A send to this host starts.
    pub(crate) fn active(&self) -> Active {
        #[cfg(feature = "metrics")]
        if let Some(h) = &self.inner {
            h.active.increment(1.0);
            return Active { host: self.clone() };
        }
        Active::default()
    }

    /// An attempt was sent.
    pub(crate) fn attempt(&self) {
        #[cfg(feature = "metrics")]
        if let Some(h) = &self.inner {
            h.attempts.increment(1);
        }
    }

    /// A retry for `cause` is about to be sent.
    pub(crate) fn retry(&self, cause: RetryCause) {
        #[cfg(feature = "metrics")]
        if let Some(h) = &self.inner {
            h.retries[cause_index(cause)].increment(1);
        }
        let _ = cause;
    }

    /// Retrying stopped for `reason` while the outcome was retryable.
    pub(crate) fn gave_up(&self, reason: GiveUpReason) {
        #[cfg(feature = "metrics")]
        if let Some(h) = &self.inner {
            h.give_ups[reason_index(reason)].increment(1);
        }
        let _ = reason;
    }

    /// Adaptive throttling rejected a first attempt locally (R10).
    pub(crate) fn rejected(&self) {
        #[cfg(feature = "metrics")]
        if let Some(h) = &self.inner {
            h.rejected.increment(1);
        }
    }

    /// The retry budget (R9) of this host's last partition now holds `balance` retries.
    pub(crate) fn budget_balance(&self, balance: Option<f64>) {
        #[cfg(feature = "metrics")]
        if let (Some(h), Some(balance)) = (&self.inner, balance) {
            h.budget_balance.set(balance);
        }
        let _ = balance;
    }

    /// Adaptive throttling (R10) rejects this host's last partition's requests with
    /// `probability`.
    pub(crate) fn throttle_probability(&self, probability: f64) {
        #[cfg(feature = "metrics")]
        if let Some(h) = &self.inner {
            h.throttle_probability.set(probability);
        }
        let _ = probability;
    }

    /// A send ended after `elapsed`, with a status or an error.
    pub(crate) fn request_duration(
        &self,
        method: &'static str,
        outcome: Result<u16, &'static str>,
        elapsed: Duration,
    ) {
        #[cfg(feature = "metrics")]
        if let Some(h) = &self.inner {
            let (status, error) = match outcome {
                Ok(status) => (status, status_error(status)),
                Err(error) => (0, error),
            };
            let key = (method, status, error);
            let mut durations = h.durations.lock().unwrap_or_else(|p| p.into_inner());
            let histogram = match durations.get(&key) {
                Some(histogram) => histogram.clone(),
                None => {
                    let histogram = duration_histogram(&h.address, method, status, error);
                    if durations.len() < MAX_DURATION_SERIES {
                        durations.insert(key, histogram.clone());
                    }
                    histogram
                }
            };
            drop(durations);
            histogram.record(elapsed.as_secs_f64());
        }
        let _ = (method, outcome, elapsed);
    }
}

/// OpenTelemetry: a client's `error.type` is the status code when it is 400 or more.
#[cfg(feature = "metrics")]
fn status_error(status: u16) -> &'static str {
    if status < 400 {
        return "";
    }
    // The codes HTTP defines; anything else is `_OTHER`.
    const CODES: [&str; 29] = [
        "400", "401", "402", "403", "404", "405", "406", "407", "408", "409", "410", "411", "412",
        "413", "414", "415", "416", "417", "421", "422", "425", "428", "429", "431", "451", "500",
        "501", "502", "503",
    ];
    const MORE: [&str; 5] = ["504", "505", "506", "507", "511"];
    let text = status.to_string();
    CODES
        .iter()
        .chain(MORE.iter())
        .find(|code| **code == text)
        .copied()
        .unwrap_or("_OTHER")
}

#[cfg(feature = "metrics")]
fn duration_histogram(
    address: &metrics::SharedString,
    method: &'static str,
    status: u16,
    error: &'static str,
) -> Histogram {
    let mut labels = vec![
        metrics::Label::new("http.request.method", method),
        metrics::Label::new("server.address", address.clone()),
    ];
    if status != 0 {
        labels.push(metrics::Label::new(
            "http.response.status_code",
            status.to_string(),
        ));
    }
    if !error.is_empty() {
        labels.push(metrics::Label::new("error.type", error));
    }
    metrics::histogram!("http.client.request.duration", labels)
}

/// Describe every series to the current recorder, each time handles are registered (not once per
/// process: a recorder installed later, or a test's local one, gets the units too).
#[cfg(feature = "metrics")]
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(
        "http.client.request.duration",
        Unit::Seconds,
        "Duration of one send, retries and waits included, until the response headers \
         (OpenTelemetry HTTP client)."
    );
    describe_gauge!(
        "http.client.active_requests",
        Unit::Count,
        "Sends in progress (OpenTelemetry HTTP client)."
    );
    describe_counter!(
        "http.client.attempts",
        Unit::Count,
        "Attempts sent, first tries and retries."
    );
    describe_counter!(
        "http.client.retries",
        Unit::Count,
        "Retries sent, by cause."
    );
    describe_counter!(
        "http.client.give_ups",
        Unit::Count,
        "Retryable outcomes handed back because retrying stopped, by reason."
    );
    describe_counter!(
        "http.client.throttle.rejections",
        Unit::Count,
        "First attempts rejected locally by adaptive throttling (R10): nothing was sent."
    );
    describe_gauge!(
        "http.client.throttle.probability",
        "Adaptive throttling's rejection probability for the host's last partition (R10)."
    );
    describe_gauge!(
        "http.client.retry_budget.balance",
        Unit::Count,
        "Retries the host's last partition's retry budget allows now (R9)."
    );
    describe_gauge!(
        "http.client.slot.count",
        Unit::Count,
        "Connection slots by state (used, idle)."
    );
    describe_gauge!(
        "http.client.slot.host_used",
        Unit::Count,
        "Connection slots held for one host (R11)."
    );
    describe_gauge!(
        "http.client.slot.max",
        Unit::Count,
        "The connection-slot limit (R4)."
    );
    describe_gauge!(
        "http.client.slot.max_per_host",
        Unit::Count,
        "The per-host connection-slot limit (R11)."
    );
    describe_gauge!(
        "http.client.slot.pending_requests",
        Unit::Count,
        "Requests waiting for a connection slot."
    );
    describe_counter!(
        "http.client.slot.timeouts",
        Unit::Count,
        "Requests that got no slot within the acquire timeout (Error::PoolTimeout)."
    );
    describe_histogram!(
        "http.client.slot.wait_time",
        Unit::Seconds,
        "Time spent waiting for a connection slot, timeouts included."
    );
}
