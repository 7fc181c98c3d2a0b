//! The crate's error types: configuration, request ids and ring filters.

/// A configuration value was rejected when the inspector was built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A polling prefix is not a plain absolute path (see [`PollingPrefixes`](crate::PollingPrefixes)).
    #[error("invalid polling prefix {prefix:?}: {reason}")]
    InvalidPrefix {
        /// The prefix as given.
        prefix: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A header name given for redaction is not a valid HTTP header name.
    #[error("invalid header name {name:?} for redaction")]
    InvalidHeaderName {
        /// The name as given.
        name: String,
        /// What `http` said about it.
        #[source]
        source: http::header::InvalidHeaderName,
    },
}

/// An `x-request-id` value that this layer does not accept (it then generates a fresh id).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestIdError {
    /// The value is empty.
    #[error("request id is empty")]
    Empty,
    /// The value is longer than [`MAX_REQUEST_ID_LEN`](crate::MAX_REQUEST_ID_LEN) bytes.
    #[error("request id is {len} bytes long; at most {max} are accepted")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The maximum accepted length.
        max: usize,
    },
    /// The request carries more than one `x-request-id` header, so none is *the* id.
    #[error("request carries several x-request-id headers")]
    Repeated,
    /// The value holds a byte outside visible ASCII (`!` to `~`): a space, a control byte or
    /// non-ASCII.
    #[error("request id has a byte outside visible ASCII at position {position}")]
    InvalidByte {
        /// The position of the first offending byte.
        position: usize,
    },
}

/// A filter for the ring (`?method=…&status=…`) that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FilterError {
    /// `status` is neither a code (`404`) nor a class (`4xx`).
    #[error("status filter {value:?} is neither a status code (e.g. 404) nor a class (e.g. 4xx)")]
    InvalidStatus {
        /// The value as given.
        value: String,
    },
    /// `method` is not a valid HTTP method token.
    #[error("method filter {value:?} is not an HTTP method")]
    InvalidMethod {
        /// The value as given.
        value: String,
    },
}
