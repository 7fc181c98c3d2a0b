//! What the rate-limiting server answers: scripted [`Answer`]s and their `Retry-After` forms.

use std::time::{Duration, SystemTime};

/// The `Retry-After` header an answer carries.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryAfter {
    /// Delta-seconds: `Retry-After: 1`.
    Seconds(u64),
    /// An HTTP-date (`Retry-After: Wed, 21 Oct 2026 07:28:00 GMT`), formatted when the answer is sent.
    At(SystemTime),
    /// An HTTP-date this far from the moment the answer is sent (negative offsets are not
    /// expressible: use [`RetryAfter::At`] with a past time for a date in the past).
    In(Duration),
    /// Any raw header value, e.g. garbage for parser tests.
    Raw(String),
}

impl RetryAfter {
    /// The header value as sent at `now`.
    pub fn header_value(&self, now: SystemTime) -> String {
        match self {
            RetryAfter::Seconds(secs) => secs.to_string(),
            RetryAfter::At(at) => httpdate::fmt_http_date(*at),
            RetryAfter::In(delta) => httpdate::fmt_http_date(now + *delta),
            RetryAfter::Raw(raw) => raw.clone(),
        }
    }
}

/// How a response body is paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pace {
    /// All at once.
    Whole,
    /// `chunk` bytes, then a pause of `interval`, until done.
    Slow { chunk: usize, interval: Duration },
    /// The first `sent` bytes, then nothing ever again (the connection stays open).
    StallAfter { sent: usize },
}

/// What happens to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Send a response.
    Respond,
    /// Never answer (until the client goes away or the server stops).
    Hang,
    /// Close the connection without answering: the client sees a transport error.
    Reset,
}

/// One scripted answer to one request.
///
/// ```
/// use std::time::Duration;
/// use testkit::ratelimit::{Answer, RetryAfter};
///
/// let throttled = Answer::status(429).retry_after(RetryAfter::Seconds(1));
/// let big_and_slow = Answer::ok(64 * 1024).slow_body(4096, Duration::from_millis(10));
/// let stuck = Answer::ok(1024).stall_body_after(10);
/// # let _ = (throttled, big_and_slow, stuck);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub(crate) kind: Kind,
    pub(crate) status: u16,
    pub(crate) retry_after: Option<RetryAfter>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body_len: usize,
    pub(crate) head_delay: Duration,
    pub(crate) pace: Pace,
}

impl Answer {
    /// `200 OK` with a body of `body_len` bytes.
    pub fn ok(body_len: usize) -> Self {
        Self::status(200).body_len(body_len)
    }

    /// A response with this status code and an empty body.
    pub fn status(status: u16) -> Self {
        Self {
            kind: Kind::Respond,
            status,
            retry_after: None,
            headers: Vec::new(),
            body_len: 0,
            head_delay: Duration::ZERO,
            pace: Pace::Whole,
        }
    }

    /// `429 Too Many Requests` with `Retry-After: <secs>`.
    pub fn too_many(secs: u64) -> Self {
        Self::status(429).retry_after(RetryAfter::Seconds(secs))
    }

    /// Never answer: the request stays in flight until the client gives up or the server stops.
    pub fn hang() -> Self {
        Self {
            kind: Kind::Hang,
            ..Self::status(200)
        }
    }

    /// Close the connection without answering (a transport error for the client).
    pub fn reset() -> Self {
        Self {
            kind: Kind::Reset,
            ..Self::status(200)
        }
    }

    /// Add a `Retry-After` header.
    pub fn retry_after(mut self, retry_after: RetryAfter) -> Self {
        self.retry_after = Some(retry_after);
        self
    }

    /// Add a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Set the body length (bytes of `x`; `Content-Length` is always sent).
    pub fn body_len(mut self, body_len: usize) -> Self {
        self.body_len = body_len;
        self
    }

    /// Wait this long (tokio time) before sending the response head.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.head_delay = delay;
        self
    }

    /// Send the body `chunk` bytes at a time with `interval` (tokio time) between chunks.
    pub fn slow_body(mut self, chunk: usize, interval: Duration) -> Self {
        self.pace = Pace::Slow {
            chunk: chunk.max(1),
            interval,
        };
        self
    }

    /// Send the head and the first `sent` bytes of the body, then stall forever.
    pub fn stall_body_after(mut self, sent: usize) -> Self {
        self.pace = Pace::StallAfter { sent };
        self
    }

    /// The status code this answer sends (meaningless for [`Answer::hang`] and [`Answer::reset`]).
    pub fn status_code(&self) -> u16 {
        self.status
    }
}
