//! What the ring holds: one captured exchange, its headers and its (bounded) bodies.

use std::fmt;

use bytes::Bytes;
use http::HeaderMap;
use serde::{Serialize, Serializer};

use crate::InspectorConfig;
use crate::config::{HEADERS_CUT, REDACTED};

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
    /// The query string with every credential parameter's value replaced by [`REDACTED`]
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
}

impl Entry {
    /// Bytes this entry keeps alive, as the allocator sees them: the entry itself (in its `Arc`),
    /// the capacity of each of its strings and header lists, and its body copies.
    ///
    /// This is a size model, not an estimate: `tests/memory.rs` checks it against a counting
    /// allocator (issue #23: counting only text lengths missed a third of an entry).
    pub fn retained_bytes(&self) -> usize {
        // `Arc<Entry>`: the strong and weak counts, then the entry.
        2 * size_of::<usize>()
            + size_of::<Entry>()
            + self.request_id.capacity()
            + self.method.capacity()
            + self.path.capacity()
            + self.query.as_ref().map_or(0, String::capacity)
            + self.owner.as_ref().map_or(0, String::capacity)
            + headers_bytes(&self.request_headers)
            + headers_bytes(&self.response_headers)
            + self.request_body.held_bytes()
            + self.response_body.held_bytes()
    }
}

/// The bytes a recorded header list holds: its buffer and each name's and value's.
pub(crate) fn headers_bytes(headers: &Vec<Header>) -> usize {
    headers.capacity() * size_of::<Header>()
        + headers
            .iter()
            .map(|h| h.name.capacity() + h.value.capacity())
            .sum::<usize>()
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

/// One header as recorded: lowercase name, value as text (lossy UTF-8) or [`REDACTED`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Header {
    /// The lowercase header name.
    pub name: String,
    /// The value, or [`REDACTED`] for a secret header.
    pub value: String,
}

/// Record `headers`, replacing the values of redacted headers (I5, I6), keeping at most the
/// configured header limit of name and value bytes; what is left out is summed up in a last
/// [`HEADERS_CUT`] pseudo-header (I6).
pub(crate) fn record_headers(headers: &HeaderMap, config: &InspectorConfig) -> Vec<Header> {
    let limit = config.header_limit_bytes();
    let mut kept = Vec::with_capacity(headers.len());
    let (mut used, mut cut, mut cut_bytes) = (0_usize, 0_usize, 0_usize);
    for (name, value) in headers {
        let redacted = config.is_redacted(name);
        let kept_len = if redacted {
            REDACTED.len()
        } else {
            value.len()
        };
        let size = name.as_str().len().saturating_add(kept_len);
        if cut == 0 && used.saturating_add(size) <= limit {
            used += size;
            let value = if redacted {
                REDACTED.to_owned()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            kept.push(Header {
                name: name.as_str().to_owned(),
                value,
            });
        } else {
            // Once one header is cut, the rest are too: the record stays a prefix of the list.
            cut += 1;
            cut_bytes = cut_bytes.saturating_add(size);
        }
    }
    if cut > 0 {
        kept.push(Header {
            name: HEADERS_CUT.to_owned(),
            value: format!("{cut} headers ({cut_bytes} bytes) not recorded"),
        });
    }
    kept
}

/// Record `query` with the values of credential parameters replaced by [`REDACTED`] (I6), cut
/// at the configured header limit (on a character boundary). Parameters are split on `&`; a
/// parameter's name is its text before `=`, percent-decoded before it is matched (`%73ig` is
/// `sig`, `access%5Ftoken` is `access_token`) and recorded as written.
pub(crate) fn record_query(query: &str, config: &InspectorConfig) -> String {
    let limit = config.header_limit_bytes();
    let mut out = String::with_capacity(query.len().min(limit));
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((name, _)) if config.is_redacted_query_param(name) => {
                out.push_str(name);
                out.push('=');
                out.push_str(REDACTED);
            }
            _ => out.push_str(pair),
        }
        if out.len() > limit {
            break;
        }
    }
    if out.len() > limit {
        let mut cut = limit;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out.shrink_to_fit();
    out
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

    /// The bytes of memory the copy holds (its buffer is allocated to size, never cloned).
    pub(crate) fn held_bytes(&self) -> usize {
        self.bytes.len()
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
    use super::*;

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
