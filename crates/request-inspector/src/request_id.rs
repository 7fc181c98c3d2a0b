//! Request ids: validate an incoming `x-request-id` or generate a fresh one.

use std::cell::RefCell;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::header::Entry;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::RequestIdError;

/// The header that carries the request id, on requests and responses.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The longest incoming request id that is propagated, in bytes; longer ones are replaced.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// A request id: 1 to [`MAX_REQUEST_ID_LEN`] bytes of visible ASCII (`!` to `~`).
///
/// The layer inserts it into the request's extensions (handlers can take it with
/// `Extension<RequestId>`, unless
/// [`InspectorConfig::request_id_extension`](crate::InspectorConfig::request_id_extension) turned
/// that off), into the request and response `x-request-id` headers, and into the `request`
/// tracing span. With the feature `axum`, `RequestId` is also an extractor: a handler's
/// `id: RequestId` argument reads the extension when there is one and the header otherwise.
///
/// ```
/// use request_inspector::RequestId;
///
/// assert_eq!(RequestId::parse("abc-123")?.as_str(), "abc-123");
/// assert!(RequestId::parse("has space").is_err());
/// assert_eq!(RequestId::generate().as_str().len(), 32);
/// # Ok::<(), request_inspector::RequestIdError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RequestId(HeaderValue);

/// 1 to [`MAX_REQUEST_ID_LEN`] bytes of visible ASCII.
fn validate(bytes: &[u8]) -> Result<(), RequestIdError> {
    if bytes.is_empty() {
        return Err(RequestIdError::Empty);
    }
    if bytes.len() > MAX_REQUEST_ID_LEN {
        return Err(RequestIdError::TooLong {
            len: bytes.len(),
            max: MAX_REQUEST_ID_LEN,
        });
    }
    match bytes.iter().position(|b| !(0x21..=0x7e).contains(b)) {
        Some(position) => Err(RequestIdError::InvalidByte { position }),
        None => Ok(()),
    }
}

/// `value` as 16 lowercase hex digits, most significant first, into `out` (two digits per byte
/// of the value).
fn hex_into(out: &mut [u8; 16], value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, byte) in out.chunks_exact_mut(2).zip(value.to_be_bytes()) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
}

/// Length of a generated id.
const ID_LEN: usize = 32;
/// Ids written into one buffer by [`RequestId::generate`].
const IDS_PER_BATCH: usize = 16;
/// Counter values a thread takes at a time (a multiple of [`IDS_PER_BATCH`]).
const COUNTER_BLOCK: u64 = 1024;

thread_local! {
    /// This thread's counter block and its current batch of ids.
    static ID_BATCH: RefCell<IdBatch> = const { RefCell::new(IdBatch::new()) };
}

/// A thread's counter block (`next..end`) and its batch of written ids, `used` of them handed
/// out.
struct IdBatch {
    next: u64,
    end: u64,
    digits: Bytes,
    used: usize,
}

impl IdBatch {
    /// No counter block yet, and a used-up batch.
    const fn new() -> Self {
        Self {
            next: 0,
            end: 0,
            digits: Bytes::new(),
            used: IDS_PER_BATCH,
        }
    }

    /// The first of `count` consecutive counter values, from this thread's block; a new block is
    /// taken when fewer than `count` are left in it.
    fn take_values(&mut self, count: u64) -> u64 {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        if self.end - self.next < count {
            self.next = COUNTER.fetch_add(COUNTER_BLOCK, Ordering::Relaxed);
            self.end = self.next + COUNTER_BLOCK;
        }
        let first = self.next;
        self.next += count;
        first
    }

    /// The next id of the batch, a new batch written when this one is used up.
    fn next(&mut self) -> Bytes {
        if self.used == IDS_PER_BATCH {
            // One block holds whole batches (1 024 is a multiple of 16).
            let first = self.take_values(IDS_PER_BATCH as u64);
            let mut all = [0_u8; ID_LEN * IDS_PER_BATCH];
            for (value, id) in (first..).zip(all.chunks_exact_mut(ID_LEN)) {
                write_id(id, value);
            }
            self.digits = Bytes::from_owner(all);
            self.used = 0;
        }
        let at = self.used * ID_LEN;
        self.used += 1;
        self.digits.slice(at..at + ID_LEN)
    }
}

/// The id of counter value `value` into `out` ([`ID_LEN`] bytes): the process's prefix, then
/// the value, as hex digits.
fn write_id(out: &mut [u8], value: u64) {
    static PREFIX: OnceLock<[u8; 16]> = OnceLock::new();
    // `RandomState` is seeded from the OS's randomness: a random u64 without a dependency. Its
    // digits are written once.
    let prefix = PREFIX.get_or_init(|| {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        let mut digits = [0_u8; 16];
        hex_into(&mut digits, hasher.finish());
        digits
    });
    let mut low = [0_u8; 16];
    hex_into(&mut low, value);
    out[..16].copy_from_slice(prefix);
    out[16..ID_LEN].copy_from_slice(&low);
}

impl RequestId {
    /// Validate `value` as a request id.
    pub fn parse(value: &str) -> Result<Self, RequestIdError> {
        Self::from_bytes(value.as_bytes())
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, RequestIdError> {
        validate(bytes)?;
        HeaderValue::from_bytes(bytes)
            .map(Self)
            .map_err(|_| RequestIdError::InvalidByte { position: 0 })
    }

    /// A fresh id: 32 lowercase hex digits, a random per-process prefix followed by a
    /// per-process counter, so ids never repeat within a process and rarely across processes.
    ///
    /// Cheap enough for every request (issue #23): no formatting, no shared counter and, most of
    /// the time, no allocation. Each thread takes its counter values in blocks of 1 024 and
    /// writes the digits of 16 ids at a time into one buffer; an id is a slice of that buffer
    /// (a reference count, not an allocation). So a generated id keeps its batch's 512 bytes
    /// alive: an application that holds on to many ids for long can keep a copy instead
    /// (`RequestId::parse(id.as_str())`).
    ///
    /// Ids are unique, not secret: the counter starts at 0 in every process, so two ids tell
    /// their order and roughly how many were generated between them. Do not use them as tokens.
    pub fn generate() -> Self {
        let digits = ID_BATCH
            .try_with(|batch| batch.borrow_mut().next())
            // Only while this thread's locals are torn down: an id of its own, from a counter
            // block of its own (unique still; the block's other values go unused).
            .unwrap_or_else(|_| {
                let mut id = [0_u8; ID_LEN];
                write_id(&mut id, IdBatch::new().take_values(1));
                Bytes::copy_from_slice(&id)
            });
        // Hex digits are always a valid header value.
        let value = HeaderValue::from_maybe_shared(digits)
            .unwrap_or_else(|_| HeaderValue::from_static("0"));
        Self(value)
    }

    /// The incoming id if the headers carry exactly one valid `x-request-id`, else a fresh one.
    /// The second value says whether an incoming value was present but rejected.
    pub fn from_headers_or_generate(headers: &HeaderMap) -> (Self, Option<RequestIdError>) {
        let mut values = headers.get_all(&REQUEST_ID_HEADER).iter();
        Self::accept_or_generate(values.next(), values.next().is_some())
    }

    /// The id of `first`, the first incoming value, if it is valid and the only one (`!more`);
    /// else a fresh one, with the reason when a value was present.
    fn accept_or_generate(
        first: Option<&HeaderValue>,
        more: bool,
    ) -> (Self, Option<RequestIdError>) {
        match first {
            None => (Self::generate(), None),
            // Two ids for one request: neither can be trusted to be *the* id.
            Some(_) if more => (Self::generate(), Some(RequestIdError::Repeated)),
            Some(value) => match validate(value.as_bytes()) {
                // Shared, not copied.
                Ok(()) => (Self(value.clone()), None),
                Err(err) => (Self::generate(), Some(err)),
            },
        }
    }

    /// The id the layer put on a request: its one valid `x-request-id`, or `None` when the
    /// header is missing, repeated or invalid (the request did not pass through the layer).
    ///
    /// ```
    /// use http::{HeaderMap, HeaderValue};
    /// use request_inspector::{REQUEST_ID_HEADER, RequestId};
    ///
    /// let mut headers = HeaderMap::new();
    /// assert!(RequestId::from_request_headers(&headers).is_none());
    /// headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static("abc-123"));
    /// assert_eq!(RequestId::from_request_headers(&headers).unwrap().as_str(), "abc-123");
    /// ```
    pub fn from_request_headers(headers: &HeaderMap) -> Option<Self> {
        let mut values = headers.get_all(&REQUEST_ID_HEADER).iter();
        match (values.next(), values.next()) {
            (Some(value), None) => validate(value.as_bytes())
                .ok()
                .map(|()| Self(value.clone())),
            _ => None,
        }
    }

    /// Like [`from_headers_or_generate`](Self::from_headers_or_generate), and the request's
    /// `x-request-id` becomes the id's only value: one lookup of the header, not two (issue #23).
    pub(crate) fn take_or_insert(headers: &mut HeaderMap) -> (Self, Option<RequestIdError>) {
        match headers.entry(REQUEST_ID_HEADER) {
            Entry::Vacant(slot) => {
                let id = Self::generate();
                slot.insert(id.0.clone());
                (id, None)
            }
            Entry::Occupied(mut slot) => {
                let mut values = slot.iter();
                let (id, rejected) =
                    Self::accept_or_generate(values.next(), values.next().is_some());
                if rejected.is_some() {
                    // Replaces every incoming value.
                    slot.insert(id.0.clone());
                }
                (id, rejected)
            }
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only visible ASCII is ever stored.
        self.0.to_str().unwrap_or_default()
    }

    /// The id as a header value.
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }

    /// The id's header value, moved out (no reference count written).
    pub(crate) fn into_header_value(self) -> HeaderValue {
        self.0
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({})", self.as_str())
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`: width, fill and alignment apply, as for a `str`.
        f.pad(self.as_str())
    }
}

/// The extractor (feature `axum`): the request's [`RequestId`] extension when there is one,
/// else its `x-request-id` header. Behind the layer one of the two is always there; a handler
/// reached without the layer gets `500 Internal Server Error`.
#[cfg(feature = "axum")]
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for RequestId {
    type Rejection = (http::StatusCode, &'static str);

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<Self>() {
            Some(id) => Ok(id.clone()),
            None => Self::from_request_headers(&parts.headers).ok_or((
                http::StatusCode::INTERNAL_SERVER_ERROR,
                "no request id: the request did not pass through the inspector layer",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_bounds_length_and_bytes() {
        assert_eq!(RequestId::parse(""), Err(RequestIdError::Empty));
        let long = "a".repeat(MAX_REQUEST_ID_LEN + 1);
        assert!(matches!(
            RequestId::parse(&long),
            Err(RequestIdError::TooLong { len: 129, .. })
        ));
        assert!(RequestId::parse(&"a".repeat(MAX_REQUEST_ID_LEN)).is_ok());
        assert_eq!(
            RequestId::parse("ab c"),
            Err(RequestIdError::InvalidByte { position: 2 })
        );
        assert!(RequestId::parse("tab\there").is_err());
        assert!(RequestId::parse("caf\u{e9}").is_err());
        assert!(RequestId::parse("0f3c-Ab_9.~!").is_ok());
    }

    #[test]
    fn generated_ids_are_unique_hex_and_valid() {
        let ids: std::collections::HashSet<String> = (0..1000)
            .map(|_| RequestId::generate().as_str().to_string())
            .collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            assert_eq!(id.len(), 32);
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
            assert!(RequestId::parse(id).is_ok());
        }
    }

    // `Display` pads like a `str` (a helper's black-box review found width ignored).
    #[test]
    fn display_honours_width_and_alignment() {
        let id = RequestId::parse("abc").unwrap();
        assert_eq!(
            format!("{id:>6}|{id:<5}|{id:^7}|{id}"),
            "   abc|abc  |  abc  |abc"
        );
    }

    #[test]
    fn hex_digits_match_formatting() {
        for value in [0, 1, 0xabc, u64::MAX, 0x0123_4567_89ab_cdef] {
            let mut out = [0_u8; 16];
            hex_into(&mut out, value);
            assert_eq!(std::str::from_utf8(&out).unwrap(), format!("{value:016x}"));
        }
    }

    #[test]
    fn ids_generated_on_several_threads_never_repeat() {
        let ids: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        (0..3000)
                            .map(|_| RequestId::generate().as_str().to_string())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let unique: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), 12_000);
    }

    #[test]
    fn headers_with_invalid_or_repeated_ids_get_a_fresh_one() {
        let mut headers = HeaderMap::new();
        let (_, rejected) = RequestId::from_headers_or_generate(&headers);
        assert_eq!(rejected, None);

        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static("abc"));
        let (id, rejected) = RequestId::from_headers_or_generate(&headers);
        assert_eq!((id.as_str(), rejected), ("abc", None));

        headers.append(REQUEST_ID_HEADER, HeaderValue::from_static("def"));
        let (id, rejected) = RequestId::from_headers_or_generate(&headers);
        assert_ne!(id.as_str(), "abc");
        assert_eq!(rejected, Some(RequestIdError::Repeated));

        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static("has space"));
        let (id, rejected) = RequestId::from_headers_or_generate(&headers);
        assert_eq!(id.as_str().len(), 32);
        assert_eq!(rejected, Some(RequestIdError::InvalidByte { position: 3 }));
    }
}
