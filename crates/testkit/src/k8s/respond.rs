//! Building responses: JSON bodies, metav1 `Status` errors, plain text, ARM error bodies.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ListMeta, Status};
use serde::Serialize;

/// What every handler answers.
pub(crate) type Resp = Response<Full<Bytes>>;

fn with_body(code: u16, content_type: &'static str, body: Vec<u8>) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// `body` as JSON with status `code`.
pub(crate) fn json<T: Serialize>(code: u16, body: &T) -> Resp {
    match serde_json::to_vec(body) {
        Ok(bytes) => with_body(code, "application/json", bytes),
        Err(e) => status(500, &format!("testkit could not serialise the answer: {e}")),
    }
}

/// Plain text with status 200 (pod logs).
pub(crate) fn text(body: String) -> Resp {
    with_body(200, "text/plain", body.into_bytes())
}

/// A body that is not JSON, labelled as JSON (fault injection).
pub(crate) fn garbage() -> Resp {
    with_body(
        200,
        "application/json",
        b"\x00{\"kind\": garbage <<<".to_vec(),
    )
}

/// The `reason` kube-apiserver puts in a `Status` for an HTTP status.
fn reason(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        410 => "Expired",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    }
}

/// A metav1 `Status` failure with `code` and `message`, as kube-apiserver sends errors.
pub(crate) fn status(code: u16, message: &str) -> Resp {
    let body = Status {
        code: Some(i32::from(code)),
        message: Some(message.to_owned()),
        reason: Some(reason(code).to_owned()),
        status: Some("Failure".to_owned()),
        metadata: ListMeta::default(),
        details: None,
    };
    json(code, &body)
}

/// An ARM error body `{"error":{"code":…,"message":…}}`.
pub(crate) fn arm_error(status_code: u16, code: &str, message: &str) -> Resp {
    json(
        status_code,
        &serde_json::json!({ "error": { "code": code, "message": message } }),
    )
}
