//! `ReadError`: why one Kubernetes read degraded, in a short form fit for a dashboard.

/// Why a Kubernetes read failed (and degraded to its default).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The API server answered with a non-2xx status.
    #[error("HTTP {code} {reason}: {message}")]
    Status {
        /// The HTTP status code.
        code: u16,
        /// The `Status.reason` (e.g. `NotFound`), possibly empty.
        reason: String,
        /// The `Status.message` (or the start of a non-JSON error body), at most 200 characters.
        message: String,
    },
    /// The response was 2xx but its body was not the JSON expected.
    #[error("undecodable response body")]
    Decode(#[source] serde_json::Error),
    /// The request did not complete (connection refused or reset, TLS, a timeout below us …).
    #[error("request failed")]
    Request(#[source] kube::Error),
}

impl From<kube::Error> for ReadError {
    fn from(error: kube::Error) -> Self {
        match error {
            kube::Error::Api(status) => ReadError::Status {
                code: status.code,
                reason: status.reason.clone(),
                message: truncate(&status.message, 200),
            },
            kube::Error::SerdeError(source) => ReadError::Decode(source),
            other => ReadError::Request(other),
        }
    }
}

fn truncate(text: &str, max_chars: usize) -> String {
    let text = text.trim();
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_statuses_read_as_code_reason_message() {
        let status = kube::core::Status::failure("configmaps \"warmup\" not found", "NotFound")
            .with_code(404);
        let error = ReadError::from(kube::Error::Api(status.boxed()));
        assert_eq!(
            error.to_string(),
            "HTTP 404 NotFound: configmaps \"warmup\" not found"
        );
    }

    #[test]
    fn long_error_bodies_are_cut() {
        let body = "x".repeat(1000);
        let status = kube::core::Status::failure(&body, "").with_code(502);
        let ReadError::Status { message, .. } = ReadError::from(kube::Error::Api(status.boxed()))
        else {
            panic!("expected a status error");
        };
        assert_eq!(message.chars().count(), 201);
    }

    #[test]
    fn decode_errors_keep_their_cause() {
        let source = serde_json::from_str::<u32>("{garbage").unwrap_err();
        let error = ReadError::from(kube::Error::SerdeError(source));
        assert_eq!(error.to_string(), "undecodable response body");
        assert!(std::error::Error::source(&error).is_some());
    }
}
