//! Unit tests of the retry decisions (R2, R3).

use std::time::{Duration, SystemTime};

use http::header::RETRY_AFTER;
use http::{HeaderMap, HeaderValue, Method, StatusCode};

use super::{Attempt, Decision, Methods, RetryPolicy};
use crate::stats::{GiveUpReason, RetryCause};

fn attempt(method: &Method, number: u32, elapsed: Duration) -> Attempt<'_> {
    Attempt {
        method,
        number,
        elapsed,
        wall_now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
    }
}

fn retry_after(value: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
    headers
}

fn decide(policy: &RetryPolicy, method: Method, status: u16, headers: &HeaderMap) -> Decision {
    let mut schedule = policy.schedule();
    let ctx = attempt(&method, 1, Duration::ZERO);
    policy.on_status(
        &ctx,
        StatusCode::from_u16(status).unwrap(),
        headers,
        &mut schedule,
    )
}

// covers R3: the documented default table of status × method.
#[test]
fn default_table_retries_throttling_for_all_and_gateway_errors_for_idempotent_methods() {
    let policy = RetryPolicy::default();
    let none = HeaderMap::new();
    let retried = |d: Decision| matches!(d, Decision::Retry { .. });
    for method in [
        Method::GET,
        Method::PUT,
        Method::DELETE,
        Method::POST,
        Method::PATCH,
    ] {
        assert!(
            retried(decide(&policy, method.clone(), 429, &none)),
            "429 {method}"
        );
        assert!(
            retried(decide(&policy, method.clone(), 503, &none)),
            "503 {method}"
        );
        let idempotent = method != Method::POST && method != Method::PATCH;
        assert_eq!(
            retried(decide(&policy, method.clone(), 502, &none)),
            idempotent,
            "502 {method}"
        );
        assert_eq!(
            retried(decide(&policy, method.clone(), 504, &none)),
            idempotent,
            "504 {method}"
        );
        for status in [200, 400, 401, 404, 500] {
            assert_eq!(
                decide(&policy, method.clone(), status, &none),
                Decision::Done
            );
        }
    }
}

#[test]
fn statuses_are_configurable() {
    let policy = RetryPolicy::default()
        .retry_status(StatusCode::INTERNAL_SERVER_ERROR, Methods::Idempotent)
        .retry_status(StatusCode::TOO_MANY_REQUESTS, Methods::None);
    let none = HeaderMap::new();
    assert!(matches!(
        decide(&policy, Method::GET, 500, &none),
        Decision::Retry { .. }
    ));
    assert_eq!(decide(&policy, Method::GET, 429, &none), Decision::Done);
    assert_eq!(
        decide(&RetryPolicy::never(), Method::GET, 503, &none),
        Decision::Done
    );
}

// covers R2: Retry-After honoured, clamped: over the cap → give up and return the response.
#[test]
fn retry_after_is_used_as_is_up_to_the_cap() {
    let policy = RetryPolicy::default().retry_after_cap(Duration::from_secs(30));
    assert_eq!(
        decide(&policy, Method::GET, 429, &retry_after("30")),
        Decision::Retry {
            delay: Duration::from_secs(30),
            cause: RetryCause::Throttled
        }
    );
    assert_eq!(
        decide(&policy, Method::GET, 503, &retry_after("31")),
        Decision::GiveUp(GiveUpReason::RetryAfterOverCap)
    );
    assert_eq!(
        decide(
            &policy,
            Method::GET,
            429,
            &retry_after("99999999999999999999999")
        ),
        Decision::GiveUp(GiveUpReason::RetryAfterOverCap)
    );
    // A date: 1_000_000 s after the epoch is "Mon, 12 Jan 1970 13:46:40 GMT".
    assert_eq!(
        decide(
            &policy,
            Method::GET,
            429,
            &retry_after("Mon, 12 Jan 1970 13:46:50 GMT")
        ),
        Decision::Retry {
            delay: Duration::from_secs(10),
            cause: RetryCause::Throttled
        }
    );
    assert_eq!(
        decide(
            &policy,
            Method::GET,
            429,
            &retry_after("Mon, 12 Jan 1970 13:00:00 GMT")
        ),
        Decision::Retry {
            delay: Duration::ZERO,
            cause: RetryCause::Throttled
        }
    );
}

#[test]
fn garbage_retry_after_falls_back_to_the_jittered_backoff() {
    let policy =
        RetryPolicy::default().backoff(Duration::from_millis(500), 2.0, Duration::from_secs(5));
    for _ in 0..200 {
        match decide(&policy, Method::GET, 429, &retry_after("soon")) {
            Decision::Retry { delay, .. } => assert!(delay <= Duration::from_millis(500)),
            other => panic!("expected a retry, got {other:?}"),
        }
    }
}

// covers R2: exponential ceilings with full jitter, bounded by the max.
#[test]
fn backoff_is_full_jitter_under_exponential_ceilings() {
    let policy =
        RetryPolicy::default().backoff(Duration::from_millis(100), 2.0, Duration::from_millis(800));
    let ceilings = [100, 200, 400, 800, 800, 800].map(Duration::from_millis);
    let mut sums = [Duration::ZERO; 6];
    let runs = 2000;
    for _ in 0..runs {
        let mut schedule = policy.schedule();
        for (i, ceiling) in ceilings.iter().enumerate() {
            let delay = schedule.next_jittered();
            assert!(delay <= *ceiling, "retry {i}: {delay:?} > {ceiling:?}");
            sums[i] += delay;
        }
    }
    // Uniform on [0, ceiling]: the mean is about half the ceiling (not the ceiling: jitter is full).
    for (sum, ceiling) in sums.iter().zip(ceilings) {
        let mean = sum.as_secs_f64() / f64::from(runs);
        let half = ceiling.as_secs_f64() / 2.0;
        assert!((mean - half).abs() < half * 0.15, "mean {mean} vs {half}");
    }
}

#[test]
fn attempts_and_budget_bound_the_retries() {
    let policy = RetryPolicy::default()
        .max_attempts(3)
        .budget(Duration::from_secs(10));
    let headers = retry_after("4");
    let mut schedule = policy.schedule();
    let status = StatusCode::TOO_MANY_REQUESTS;
    let get = Method::GET;
    let at = |n, secs| attempt(&get, n, Duration::from_secs(secs));
    assert!(matches!(
        policy.on_status(&at(2, 0), status, &headers, &mut schedule),
        Decision::Retry { .. }
    ));
    assert_eq!(
        policy.on_status(&at(3, 0), status, &headers, &mut schedule),
        Decision::GiveUp(GiveUpReason::AttemptsExhausted)
    );
    assert_eq!(
        policy.on_status(&at(1, 7), status, &headers, &mut schedule),
        Decision::GiveUp(GiveUpReason::BudgetExhausted)
    );
}

// covers R3: transport errors — connect errors for every method, others only when idempotent.
#[test]
fn transport_errors_follow_the_method_policy() {
    let policy = RetryPolicy::default();
    let decide = |method: Method, connect: bool| {
        let mut schedule = policy.schedule();
        policy.on_transport_error(&attempt(&method, 1, Duration::ZERO), connect, &mut schedule)
    };
    assert!(matches!(
        decide(Method::POST, true),
        Decision::Retry {
            cause: RetryCause::Transport,
            ..
        }
    ));
    assert_eq!(decide(Method::POST, false), Decision::Done);
    assert!(matches!(decide(Method::GET, false), Decision::Retry { .. }));
    assert!(matches!(decide(Method::PUT, false), Decision::Retry { .. }));
    let strict = RetryPolicy::default().connect_errors(Methods::Idempotent);
    let mut schedule = strict.schedule();
    assert_eq!(
        strict.on_transport_error(
            &attempt(&Method::POST, 1, Duration::ZERO),
            true,
            &mut schedule
        ),
        Decision::Done
    );
}
