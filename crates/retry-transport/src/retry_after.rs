//! Parsing `Retry-After`: delta-seconds or an HTTP-date (RFC 9110 §10.2.3).

use std::time::{Duration, SystemTime};

use http::HeaderValue;

/// How long a `Retry-After` value asks the client to wait, seen at `now`.
///
/// - delta-seconds (`"120"`) → that many seconds; a number too large for a `u64` → `Duration::MAX`;
/// - an HTTP-date (IMF-fixdate, RFC 850 or asctime) → the time until it, or zero if it has passed;
/// - anything else (`"1.5"`, `"-1"`, `"soon"`, non-ASCII) → `None`: the caller falls back to
///   its own back-off.
///
/// `now` is a parameter so the date form can be tested without a wall clock; the client passes
/// `SystemTime::now()` (the one wall-clock read, at the boundary).
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use http::HeaderValue;
/// use retry_transport::parse_retry_after;
///
/// let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_770);
/// assert_eq!(parse_retry_after(&HeaderValue::from_static("3"), now), Some(Duration::from_secs(3)));
/// let date = HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT");
/// assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(7)));
/// assert_eq!(parse_retry_after(&HeaderValue::from_static("soon"), now), None);
/// ```
pub fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if text.is_empty() {
        return None;
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        // Only digits: delta-seconds. Overflow means "very long", not "invalid".
        return Some(
            text.parse::<u64>()
                .map_or(Duration::MAX, Duration::from_secs),
        );
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn parse(value: &str, now: SystemTime) -> Option<Duration> {
        parse_retry_after(&HeaderValue::from_str(value).unwrap(), now)
    }

    // covers R2: both forms of Retry-After.
    #[test]
    fn delta_seconds_and_all_three_date_formats_parse() {
        let now = at(784_111_777 - 10);
        assert_eq!(parse("0", now), Some(Duration::ZERO));
        assert_eq!(parse(" 42 ", now), Some(Duration::from_secs(42)));
        let ten = Some(Duration::from_secs(10));
        assert_eq!(parse("Sun, 06 Nov 1994 08:49:37 GMT", now), ten);
        assert_eq!(parse("Sunday, 06-Nov-94 08:49:37 GMT", now), ten);
        assert_eq!(parse("Sun Nov  6 08:49:37 1994", now), ten);
    }

    #[test]
    fn a_past_date_means_now() {
        let now = at(784_111_777 + 3600);
        assert_eq!(
            parse("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn huge_values_saturate_instead_of_failing() {
        let now = at(0);
        assert_eq!(parse("99999999999999999999999", now), Some(Duration::MAX));
        assert_eq!(
            parse("4000000000", now),
            Some(Duration::from_secs(4_000_000_000))
        );
    }

    #[test]
    fn garbage_is_none() {
        let now = at(0);
        for garbage in [
            "",
            "  ",
            "1.5",
            "-1",
            "+3",
            "soon",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "3s",
        ] {
            assert_eq!(parse(garbage, now), None, "{garbage:?}");
        }
        let opaque = HeaderValue::from_bytes(&[0xff, 0x31]).unwrap();
        assert_eq!(parse_retry_after(&opaque, now), None);
    }
}
