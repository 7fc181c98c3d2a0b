//! What a reader of the ring gets: one captured exchange, its headers and its (bounded) bodies,
//! copied out of the ring's compact record (`record.rs`).

use std::fmt;

use bytes::Bytes;
use serde::{Serialize, Serializer};

/// One captured request/response exchange, as served by the JSON handler.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Entry {
    /// Position in capture order (1, 2, …) within this inspector; later entries have larger ids.
    pub id: u64,
    /// The request id the layer propagated or generated.
    pub request_id: String,
    /// The request method.
    pub method: String,
    /// The request path, without the query.
    pub path: String,
    /// The query string with every credential parameter's value replaced by [`REDACTED`](crate::REDACTED)
    /// (see [`REDACTED_QUERY_PARAMS`](crate::REDACTED_QUERY_PARAMS)), cut at the header limit;
    /// `None` when the request had no query.
    pub query: Option<String>,
    /// Who sent it, as the configured [`OwnerFn`](crate::OwnerFn) said; `None` without one.
    pub owner: Option<String>,
    /// The response status; `None` if the inner service failed or was cancelled first.
    pub status: Option<u16>,
    /// When the request reached the layer, in milliseconds since the Unix epoch (display only).
    pub started_at_unix_ms: u64,
    /// Microseconds from the request reaching the layer to the response head.
    pub response_after_us: Option<u64>,
    /// Microseconds from the request reaching the layer to the end of the response body (or to
    /// the moment the exchange ended otherwise, see [`outcome`](Self::outcome)).
    pub duration_us: u64,
    /// How the exchange ended.
    pub outcome: Outcome,
    /// Request headers, secrets redacted.
    pub request_headers: Vec<Header>,
    /// Response headers, secrets redacted.
    pub response_headers: Vec<Header>,
    /// The request body, up to the body limit.
    pub request_body: CapturedBody,
    /// The response body, up to the body limit.
    pub response_body: CapturedBody,
    /// What the ring holds for this entry, in bytes ([`retained_bytes`](Self::retained_bytes)).
    #[serde(skip)]
    pub(crate) ring_bytes: usize,
}

impl Entry {
    /// Bytes the ring keeps alive for this entry, as the allocator sees them: its compact
    /// record (the record in its `Arc`, one text arena holding the request id, method, path,
    /// query, owner and every recorded header name and value, and the two body copies, each
    /// allocated to size). This `Entry` is a copy made when the ring was read and is not part
    /// of it.
    ///
    /// This is a size model, not an estimate: `tests/memory.rs` checks the sum over the ring
    /// against a counting allocator (issue #23).
    pub fn retained_bytes(&self) -> usize {
        self.ring_bytes
    }
}

/// How a captured exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Outcome {
    /// The response body was streamed to its end.
    Complete,
    /// The response body returned an error part-way.
    BodyError,
    /// The response body was dropped before its end (e.g. the client went away).
    Aborted,
    /// The inner service returned an error instead of a response.
    ServiceError,
    /// The response future was dropped before the response head arrived.
    Cancelled,
}

/// One header as recorded: lowercase name, value as text (lossy UTF-8) or [`REDACTED`](crate::REDACTED).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Header {
    /// The lowercase header name.
    pub name: String,
    /// The value, or [`REDACTED`](crate::REDACTED) for a secret header.
    pub value: String,
}

/// Up to the body limit of one body, with what was seen of the whole.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct CapturedBody {
    pub(crate) bytes: Bytes,
    pub(crate) total_bytes: u64,
    pub(crate) truncated: bool,
    pub(crate) complete: bool,
}

impl CapturedBody {
    /// The captured bytes (the first `body_limit` bytes of the body at most).
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// How many bytes were captured.
    pub fn captured_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// How many bytes of the body passed through the layer, captured or not.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Whether bytes beyond the limit passed through uncaptured.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// Whether the body was seen to its end (not dropped or failed part-way, or still
    /// unread when the exchange ended).
    pub fn complete(&self) -> bool {
        self.complete
    }

    /// The captured bytes as text (invalid UTF-8 replaced by U+FFFD).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

impl fmt::Debug for CapturedBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CapturedBody")
            .field("captured_bytes", &self.bytes.len())
            .field("total_bytes", &self.total_bytes)
            .field("truncated", &self.truncated)
            .field("complete", &self.complete)
            .finish()
    }
}

impl Serialize for CapturedBody {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Wire {
            text: String,
            captured_bytes: usize,
            total_bytes: u64,
            truncated: bool,
            complete: bool,
        }
        Wire {
            text: self.text(),
            captured_bytes: self.bytes.len(),
            total_bytes: self.total_bytes,
            truncated: self.truncated,
            complete: self.complete,
        }
        .serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use crate::InspectorConfig;

    /// The query as the record writes it into its arena.
    fn record_query(query: &str, config: &InspectorConfig) -> String {
        let mut arena = Vec::new();
        crate::record::write_query(&mut arena, query, config);
        String::from_utf8(arena).expect("the recorded query is text")
    }

    // covers I6: a SAS URL and an OAuth callback keep their shape, not their secrets.
    #[test]
    fn recorded_queries_lose_their_credentials() {
        let config = InspectorConfig::new();
        assert_eq!(
            record_query(
                "sv=2024-08-04&se=2030-01-01&sp=r&sig=abc%2Fdef&limit=20",
                &config
            ),
            "sv=[redacted]&se=[redacted]&sp=[redacted]&sig=[redacted]&limit=20"
        );
        assert_eq!(
            record_query("code=xyz&access_token=t&cluster=aks-1&flag", &config),
            "code=[redacted]&access_token=[redacted]&cluster=aks-1&flag"
        );
        // Names are percent-decoded before matching (#24); the value stays redacted and the
        // name is recorded as written.
        assert_eq!(
            record_query(
                "%73ig=abc&access%5Ftoken=t&%53%49%47=x&cluster=aks%2D1&%=1&%7=2",
                &config
            ),
            "%73ig=[redacted]&access%5Ftoken=[redacted]&%53%49%47=[redacted]&cluster=aks%2D1\
             &%=1&%7=2"
        );
        let small = InspectorConfig::new().header_limit(8);
        assert_eq!(record_query("cluster=aks-eastus", &small), "cluster=");
    }
}
