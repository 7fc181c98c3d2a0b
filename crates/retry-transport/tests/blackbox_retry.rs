//! Black-box tests of retry-transport against SPEC R1–R11 and X5, seed 002 and
//! docs/retry-transport.md, through the public API only. Loopback servers only (testkit's
//! rate-limiting server and a few raw TCP peers written here).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use retry_transport::{
    AdaptiveThrottle, BoxError, Credential, Error, Limits, MAX_POLICY_WAIT, MAX_TIMEOUT, Methods,
    RetryBudget, RetryClient, RetryPolicy, Sleeper, parse_retry_after,
};
use testkit::ratelimit::{Answer, RateLimitServer, RetryAfter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------
// helpers

/// Records every requested wait and returns at once.
#[derive(Debug, Default)]
struct Record(Mutex<Vec<Duration>>);

impl Record {
    fn sleeps(&self) -> Vec<Duration> {
        self.0.lock().unwrap().clone()
    }
}

impl Sleeper for Record {
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.0.lock().unwrap().push(duration);
        Box::pin(async {})
    }
}

/// Records every requested wait and naps 20 ms of real time (lets hyper pool the connection).
#[derive(Debug, Default)]
struct Nap(Mutex<Vec<Duration>>);

impl Sleeper for Nap {
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.0.lock().unwrap().push(duration);
        Box::pin(tokio::time::sleep(Duration::from_millis(20)))
    }
}

/// Holds every retry in its sleep until the gate opens; counts the parked ones.
#[derive(Debug, Clone)]
struct Gate {
    gate: Arc<Semaphore>,
    parked: Arc<watch::Sender<usize>>,
}

impl Gate {
    fn new() -> Self {
        Self {
            gate: Arc::new(Semaphore::new(0)),
            parked: Arc::new(watch::Sender::new(0)),
        }
    }

    async fn wait_parked(&self, n: usize) {
        let mut parked = self.parked.subscribe();
        let ok = tokio::time::timeout(Duration::from_secs(10), parked.wait_for(|p| *p >= n))
            .await
            .is_ok();
        assert!(ok, "only {} of {n} retries parked", *self.parked.borrow());
    }

    fn open(&self) {
        self.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }
}

impl Sleeper for Gate {
    fn sleep(&self, _duration: Duration) -> BoxFuture<'static, ()> {
        let this = self.clone();
        Box::pin(async move {
            this.parked.send_modify(|p| *p += 1);
            if let Ok(permit) = this.gate.acquire().await {
                permit.forget();
            }
            this.parked.send_modify(|p| *p -= 1);
        })
    }
}

fn defaults() -> Limits {
    Limits::from_env_with(|_| None)
}

fn client_with(limits: Limits, policy: RetryPolicy, sleeper: Arc<dyn Sleeper>) -> RetryClient {
    RetryClient::builder()
        .limits(limits)
        .policy(policy)
        .sleeper(sleeper)
        .connect_timeout(None)
        .build()
        .expect("client builds")
}

fn url(server: &RateLimitServer, path: &str) -> reqwest::Url {
    server.url(path).parse().unwrap()
}

fn raw_url(addr: SocketAddr, path: &str) -> reqwest::Url {
    format!("http://{addr}{path}").parse().unwrap()
}

async fn get_status(client: &RetryClient, u: reqwest::Url) -> u16 {
    let response = client.send(client.get(u)).await.expect("a response");
    let status = response.status().as_u16();
    response.bytes().await.expect("a body");
    status
}

async fn send_status(client: &RetryClient, method: Method, u: reqwest::Url) -> u16 {
    let response = client
        .send(client.request(method, u).body("payload"))
        .await
        .expect("a response");
    let status = response.status().as_u16();
    response.bytes().await.expect("a body");
    status
}

/// A port that refuses connections.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

/// A raw TCP peer: every accepted connection runs `handler`.
async fn raw_server<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(handler(stream));
        }
    });
    addr
}

/// Read a request head (up to the blank line).
async fn read_head(stream: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    head
}

/// A credential counting its asks; `refresh = true` can be held on a gate, fail, or hang.
#[derive(Debug, Default)]
struct Cred {
    cached: AtomicU32,
    forced: AtomicU32,
    rejected: Mutex<Vec<String>>,
    mode: RefreshMode,
    refresh_gate: Option<Arc<Semaphore>>,
    refreshing: Arc<watch::Sender<u32>>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum RefreshMode {
    #[default]
    Ok,
    Fail,
    Hang,
}

impl Credential for Cred {
    fn authorization(&self, refresh: bool) -> BoxFuture<'_, Result<HeaderValue, BoxError>> {
        Box::pin(async move {
            if !refresh {
                self.cached.fetch_add(1, Ordering::SeqCst);
                return Ok(HeaderValue::from_static("Bearer old-token"));
            }
            self.forced.fetch_add(1, Ordering::SeqCst);
            self.refreshing.send_modify(|n| *n += 1);
            match self.mode {
                RefreshMode::Fail => return Err("identity endpoint said no".into()),
                RefreshMode::Hang => futures::future::pending::<()>().await,
                RefreshMode::Ok => {}
            }
            if let Some(gate) = &self.refresh_gate {
                gate.acquire().await.unwrap().forget();
            }
            Ok(HeaderValue::from_static("Bearer new-token"))
        })
    }

    fn rejected(&self, value: &HeaderValue) {
        self.rejected
            .lock()
            .unwrap()
            .push(value.to_str().unwrap_or("?").to_string());
    }
}

// ---------------------------------------------------------------------------------------------
// X5 / R4 configuration: clamps, typed errors, environment

// X5, guide "Builder values are checked at build(): zero slots or a zero timeout is Error::Config".
#[test]
fn x5_zero_slots_and_zero_timeouts_are_typed_config_errors() {
    let cases: Vec<(&str, retry_transport::Builder)> = vec![
        (
            "max_in_use 0",
            RetryClient::builder().limits(defaults().max_in_use(0)),
        ),
        (
            "acquire 0",
            RetryClient::builder().limits(defaults().acquire_timeout(Duration::ZERO)),
        ),
        (
            "read 0 (limits)",
            RetryClient::builder().limits(defaults().read_timeout(Duration::ZERO)),
        ),
        (
            "read 0 (builder)",
            RetryClient::builder().read_timeout(Duration::ZERO),
        ),
        (
            "credential 0",
            RetryClient::builder().limits(defaults().credential_timeout(Duration::ZERO)),
        ),
        (
            "connect Some(0)",
            RetryClient::builder().connect_timeout(Some(Duration::ZERO)),
        ),
        (
            "attempt Some(0)",
            RetryClient::builder().attempt_timeout(Some(Duration::ZERO)),
        ),
    ];
    for (name, builder) in cases {
        let built = builder.build();
        assert!(matches!(built, Err(Error::Config(_))), "{name}: {built:?}");
    }
}

// X5, R4 config table: Duration::MAX / usize::MAX clamped to the documented maxima and visible
// through client.limits() ("client.limits() shows the clamped values").
#[test]
fn x5_huge_values_are_clamped_and_visible_in_limits() {
    let client = RetryClient::builder()
        .limits(
            defaults()
                .max_in_use(usize::MAX)
                .max_in_use_per_host(usize::MAX)
                .max_idle_per_host(usize::MAX)
                .idle_timeout(Duration::MAX)
                .acquire_timeout(Duration::MAX)
                .read_timeout(Duration::MAX)
                .credential_timeout(Duration::MAX)
                .drain_timeout(Duration::MAX)
                .drain_limit(usize::MAX),
        )
        .connect_timeout(Some(Duration::MAX))
        .attempt_timeout(Some(Duration::MAX))
        .policy(
            RetryPolicy::default()
                .budget(Duration::MAX)
                .retry_after_cap(Duration::MAX)
                .backoff(Duration::MAX, f32::MAX, Duration::MAX),
        )
        .build()
        .expect("huge values are clamped, not rejected");
    let limits = client.limits();
    assert_eq!(limits.max_in_use, 4096, "max_in_use range 1–4096");
    assert!(limits.idle_timeout <= MAX_TIMEOUT, "{limits:?}");
    assert_eq!(limits.acquire_timeout, MAX_TIMEOUT);
    assert_eq!(limits.read_timeout, MAX_TIMEOUT);
    assert_eq!(limits.credential_timeout, MAX_TIMEOUT);
    assert_eq!(limits.drain_timeout, Duration::from_secs(60));
    let stats = client.stats();
    assert_eq!(stats.max_in_use, 4096);
    assert!(stats.max_in_use_per_host <= stats.max_in_use, "{stats:?}");
    assert_eq!(client.policy().total_budget(), MAX_POLICY_WAIT);
    assert_eq!(client.policy().cap(), MAX_POLICY_WAIT);
}

// Guide config table: `Limits::max_idle_per_host` range 0–4096; "anything above a maximum …
// is clamped … client.limits() shows the clamped values".
#[test]
fn x5_max_idle_per_host_above_4096_is_clamped() {
    let client = RetryClient::builder()
        .limits(defaults().max_idle_per_host(usize::MAX))
        .build()
        .unwrap();
    assert_eq!(
        client.limits().max_idle_per_host,
        4096,
        "max_idle_per_host not clamped to its documented range 0–4096"
    );
}

// R11 / X5: a per-host cap of 0 is either a typed error or clamped to at least 1 — never a
// limiter that can never be acquired; a per-host cap above the total is the total.
#[test]
fn r11_per_host_cap_zero_and_above_total() {
    match RetryClient::builder()
        .limits(defaults().max_in_use(4).max_in_use_per_host(0))
        .build()
    {
        Err(Error::Config(_)) => {}
        Ok(client) => assert!(client.stats().max_in_use_per_host >= 1),
        Err(other) => panic!("unexpected {other:?}"),
    }
    let client = RetryClient::builder()
        .limits(defaults().max_in_use(4).max_in_use_per_host(100))
        .build()
        .unwrap();
    assert_eq!(client.stats().max_in_use_per_host, 4);
    let client = RetryClient::builder()
        .limits(defaults().max_in_use(4))
        .build()
        .unwrap();
    assert_eq!(client.stats().max_in_use_per_host, 4, "default = total");
}

// R4 config table: unparseable env values → default; out-of-range → clamped.
#[test]
fn r4_environment_values_are_defaulted_or_clamped() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        Limits::from_env_with(move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_string())
        })
    };
    let l = env(&[("RETRY_TRANSPORT_MAX_CONNECTIONS", "abc")]);
    assert_eq!(l.max_in_use, 50, "unparseable → default");
    let l = env(&[("RETRY_TRANSPORT_MAX_CONNECTIONS", "0")]);
    assert_eq!(l.max_in_use, 1, "0 clamped to 1");
    let l = env(&[("RETRY_TRANSPORT_MAX_CONNECTIONS", "100000")]);
    assert_eq!(l.max_in_use, 4096);
    for weird in ["-3", "18446744073709551616", " 7 ", "", "1e3", "５"] {
        let l = Limits::from_env_with(|name| {
            (name == "RETRY_TRANSPORT_MAX_CONNECTIONS").then(|| weird.to_string())
        });
        assert!((1..=4096).contains(&l.max_in_use), "{weird:?} → {l:?}");
    }
    let l = env(&[
        ("RETRY_TRANSPORT_READ_TIMEOUT_SECONDS", "0"),
        ("RETRY_TRANSPORT_ACQUIRE_TIMEOUT_SECONDS", "999999999"),
        ("RETRY_TRANSPORT_IDLE_TIMEOUT_SECONDS", "0"),
        ("RETRY_TRANSPORT_CREDENTIAL_TIMEOUT_SECONDS", "nope"),
        ("RETRY_TRANSPORT_MAX_IDLE_PER_HOST", "5000"),
        ("RETRY_TRANSPORT_MAX_CONNECTIONS_PER_HOST", "2"),
    ]);
    assert_eq!(l.read_timeout, Duration::from_secs(1));
    assert_eq!(l.acquire_timeout, Duration::from_secs(3600));
    assert_eq!(l.idle_timeout, Duration::from_secs(1));
    assert_eq!(l.credential_timeout, Duration::from_secs(30));
    assert_eq!(l.max_idle_per_host, 4096);
    assert_eq!(l.max_in_use_per_host, 2);
    // The built client must accept whatever the environment produced.
    RetryClient::builder().limits(l).build().unwrap();
}

// R9 config table: RETRY_TRANSPORT_BUDGET_* clamped (percent 0–1000, floor ≤ 100 000, window 1–60 s).
#[test]
fn r9_budget_environment_values_are_defaulted_or_clamped() {
    let b = RetryBudget::from_env_with(|name| match name {
        "RETRY_TRANSPORT_BUDGET_PERCENT" => Some("1001".into()),
        "RETRY_TRANSPORT_BUDGET_FLOOR_PER_SECOND" => Some("100001".into()),
        "RETRY_TRANSPORT_BUDGET_WINDOW_SECONDS" => Some("0".into()),
        _ => None,
    });
    assert!((b.ratio - 10.0).abs() < 1e-6, "{b:?}");
    assert_eq!(b.floor_per_second, 100_000);
    assert_eq!(b.window, Duration::from_secs(1));
    let b = RetryBudget::from_env_with(|name| match name {
        "RETRY_TRANSPORT_BUDGET_PERCENT" => Some("33".into()),
        "RETRY_TRANSPORT_BUDGET_WINDOW_SECONDS" => Some("61".into()),
        "RETRY_TRANSPORT_BUDGET_FLOOR_PER_SECOND" => Some("lots".into()),
        _ => None,
    });
    assert!((b.ratio - 0.33).abs() < 1e-6, "{b:?}");
    assert_eq!(b.window, Duration::from_secs(60));
    assert_eq!(b.floor_per_second, 10);
    assert!(b.enabled);
}

// R9 / X5: RetryBudget ratio "Clamped to [0, 10]", window "clamped to [1 s, 60 s]", floor "at
// most 100 000" — including NaN and infinities; client.retry_budget() is "as clamped".
#[test]
fn r9_budget_knobs_nan_and_infinities_are_clamped() {
    for ratio in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -1.0, 1e30] {
        let client = RetryClient::builder()
            .retry_budget(
                RetryBudget::default()
                    .ratio(ratio)
                    .floor_per_second(u32::MAX)
                    .window(Duration::MAX),
            )
            .build()
            .expect("clamped, not rejected");
        let b = client.retry_budget();
        assert!(
            (0.0..=10.0).contains(&b.ratio),
            "ratio {ratio} stored as {}",
            b.ratio
        );
        assert_eq!(b.floor_per_second, 100_000);
        assert_eq!(b.window, Duration::from_secs(60));
    }
    let client = RetryClient::builder()
        .retry_budget(RetryBudget::default().window(Duration::ZERO))
        .build()
        .unwrap();
    assert_eq!(client.retry_budget().window, Duration::from_secs(1));
}

// R2 / X5 policy accessors: attempts at least 1, waits clamped to MAX_POLICY_WAIT.
#[test]
fn r2_policy_knobs_are_clamped() {
    let p = RetryPolicy::default().max_attempts(0);
    assert_eq!(p.attempts(), 1, "at least 1");
    let p = RetryPolicy::default()
        .budget(Duration::MAX)
        .retry_after_cap(Duration::MAX);
    assert_eq!(p.total_budget(), MAX_POLICY_WAIT);
    assert_eq!(p.cap(), MAX_POLICY_WAIT);
    let d = RetryPolicy::default();
    assert_eq!(d.attempts(), 5);
    assert_eq!(d.total_budget(), Duration::from_secs(120));
    assert_eq!(d.cap(), Duration::from_secs(60));
    assert_eq!(RetryPolicy::never().attempts(), 1);
}

// R3 guide table of defaults.
#[test]
fn r3_default_policy_table_matches_the_guide() {
    let p = RetryPolicy::default();
    assert_eq!(
        p.status_methods(StatusCode::TOO_MANY_REQUESTS),
        Some(Methods::All)
    );
    assert_eq!(
        p.status_methods(StatusCode::SERVICE_UNAVAILABLE),
        Some(Methods::All)
    );
    assert_eq!(
        p.status_methods(StatusCode::BAD_GATEWAY),
        Some(Methods::Idempotent)
    );
    assert_eq!(
        p.status_methods(StatusCode::GATEWAY_TIMEOUT),
        Some(Methods::Idempotent)
    );
    for s in [500u16, 501, 408, 400, 404, 200, 401] {
        let s = StatusCode::from_u16(s).unwrap();
        assert!(
            matches!(p.status_methods(s), None | Some(Methods::None)),
            "{s} should not be retryable by default"
        );
    }
    for m in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
        assert!(
            Methods::Idempotent.allows(&Method::from_bytes(m.as_bytes()).unwrap()),
            "{m}"
        );
    }
    for m in ["POST", "PATCH", "CONNECT"] {
        assert!(
            !Methods::Idempotent.allows(&Method::from_bytes(m.as_bytes()).unwrap()),
            "{m}"
        );
    }
    assert!(Methods::All.allows(&Method::POST));
    assert!(!Methods::None.allows(&Method::GET));
}

// R2: parse_retry_after — "delta-seconds → that many seconds; a number too large for a u64 →
// Duration::MAX; an HTTP-date (IMF-fixdate, RFC 850 or asctime) → the time until it, or zero
// if it has passed; anything else → None". No panic on any input.
#[test]
fn r2_parse_retry_after_every_form() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_770); // 08:49:30 GMT
    let p = |s: &str| parse_retry_after(&HeaderValue::from_str(s).unwrap(), now);
    assert_eq!(p("0"), Some(Duration::ZERO));
    assert_eq!(p("120"), Some(Duration::from_secs(120)));
    assert_eq!(p("99999999999999999999999999"), Some(Duration::MAX));
    assert_eq!(
        p("Sun, 06 Nov 1994 08:49:37 GMT"),
        Some(Duration::from_secs(7))
    );
    assert_eq!(
        p("Sunday, 06-Nov-94 08:49:37 GMT"),
        Some(Duration::from_secs(7))
    );
    assert_eq!(p("Sun Nov  6 08:49:37 1994"), Some(Duration::from_secs(7)));
    assert_eq!(
        p("Sun, 06 Nov 1994 08:00:00 GMT"),
        Some(Duration::ZERO),
        "past → now"
    );
    assert_eq!(p("Thu, 01 Jan 1970 00:00:00 GMT"), Some(Duration::ZERO));
    for garbage in [
        "1.5",
        "-1",
        "soon",
        "",
        "1 2",
        "0x10",
        "Sun, 32 Nov 1994 08:49:37 GMT",
        "NaN",
        "inf",
    ] {
        assert_eq!(p(garbage), None, "{garbage:?} is not a Retry-After");
    }
    // Non-ASCII / opaque bytes.
    let opaque = HeaderValue::from_bytes(b"\xff\xfe12").unwrap();
    assert_eq!(parse_retry_after(&opaque, now), None);
    // A far future date, at the edge of SystemTime.
    let far = p("Fri, 31 Dec 9999 23:59:59 GMT");
    assert!(
        far.is_some_and(|d| d > Duration::from_secs(86_400 * 365 * 1000)),
        "{far:?}"
    );
    // Extreme `now` values never panic.
    let _ = parse_retry_after(&HeaderValue::from_static("5"), SystemTime::UNIX_EPOCH);
    let _ = parse_retry_after(
        &HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        SystemTime::UNIX_EPOCH,
    );
}

// R2: RFC 9110 delta-seconds is 1*DIGIT; the doc says anything else → None. A leading sign is
// not delta-seconds.
#[test]
fn r2_parse_retry_after_rejects_a_plus_sign() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_770);
    assert_eq!(
        parse_retry_after(&HeaderValue::from_static("+3"), now),
        None,
        "\"+3\" is not delta-seconds (1*DIGIT)"
    );
}

// R9/R10/R11: partitions and hosts are `host:port`, including a scheme's default port.
#[test]
fn r9_partition_is_host_and_port_even_for_default_ports() {
    let client = RetryClient::builder().build().unwrap();
    let p = |u: &str| client.partition_for(&u.parse().unwrap());
    assert_eq!(p("http://example.com/a"), "example.com:80");
    assert_eq!(p("http://example.com:80/b?x=1"), "example.com:80");
    assert_eq!(p("https://example.com/"), "example.com:443");
    assert_eq!(p("http://EXAMPLE.com:8080/"), "example.com:8080");
    let named = client.with_partition("billing");
    assert_eq!(
        named.partition_for(&"http://a.example:1/".parse().unwrap()),
        "billing"
    );
    assert_eq!(client.retry_budget_balance("never-used:1"), None);
    assert_eq!(
        client.throttle_probability("x:1"),
        None,
        "throttling is off"
    );
}

// Guide: "Default headers never appear in Debug output (names only)"; the builder marks them
// sensitive.
#[test]
fn secrets_in_default_headers_never_appear_in_debug() {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_static("Bearer SUPERSECRET-default"),
    );
    headers.insert("x-api-key", HeaderValue::from_static("APIKEY-SECRET-42"));
    let builder = RetryClient::builder().default_headers(headers);
    let builder_debug = format!("{builder:?}");
    let client = builder.build().unwrap();
    let view = client.with_policy(RetryPolicy::never()).with_partition("p");
    for text in [
        builder_debug,
        format!("{client:?}"),
        format!("{view:?}"),
        format!("{client:#?}"),
    ] {
        assert!(!text.contains("SUPERSECRET"), "{text}");
        assert!(!text.contains("APIKEY-SECRET"), "{text}");
    }
}

// ---------------------------------------------------------------------------------------------
// R1 / R4 / R11: slots and connections under storms

// R1, R4, seed 002: 24 requests on 3 slots, every first answer a 429 + Retry-After; while all
// 24 sit in their sleep nothing is held (0 permits, 0 requests in flight at the server) and a
// fresh request gets a slot at once; afterwards all succeed, the server never saw more than 3
// requests at once, and no request hit a pool timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r1_a_429_storm_on_three_slots_holds_nothing_while_asleep() {
    let server = Arc::new(RateLimitServer::start().await.unwrap());
    server.every_path_starts_with([Answer::too_many(1).body_len(100)]);
    server.set_default(Answer::ok(64));
    server.script("/fresh", [Answer::ok(1)]);
    let gate = Gate::new();
    let client = client_with(
        defaults()
            .max_in_use(3)
            .acquire_timeout(Duration::from_secs(5)),
        RetryPolicy::default(),
        Arc::new(gate.clone()),
    );
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let (client, u) = (client.clone(), url(&server, &format!("/storm/{i}")));
            tokio::spawn(async move { get_status(&client, u).await })
        })
        .collect();
    gate.wait_parked(24).await;
    assert_eq!(client.stats().permits_in_use, 0, "a sleeper holds a slot");
    assert_eq!(
        server.stats().in_flight,
        0,
        "a sleeper holds a server request"
    );
    // A fresh request gets a slot while everyone sleeps.
    let fresh = tokio::time::timeout(
        Duration::from_secs(3),
        get_status(&client, url(&server, "/fresh")),
    )
    .await;
    assert!(
        fresh.is_ok(),
        "no slot for a fresh request while 24 retries sleep"
    );
    gate.open();
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    let stats = client.stats();
    assert_eq!(stats.pool_timeouts, 0);
    assert_eq!(stats.permits_in_use, 0);
    assert_eq!(stats.retries.throttled, 24);
    assert!(
        server.stats().peak_in_flight <= 3,
        "peak in flight {} > 3 slots",
        server.stats().peak_in_flight
    );
}

// R11 + R1: total 3, per host 2, two hosts each with 12 requests throttled once: each host
// never sees more than 2 requests at once, both together never more than 3 (sampled), all
// succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r11_per_host_and_total_caps_hold_during_a_two_host_storm() {
    let a = Arc::new(RateLimitServer::start().await.unwrap());
    let b = Arc::new(RateLimitServer::start().await.unwrap());
    for s in [&a, &b] {
        s.every_path_starts_with([Answer::too_many(0).body_len(10)]);
        s.set_default(Answer::ok(4096).slow_body(1024, Duration::from_millis(2)));
    }
    let client = client_with(
        defaults()
            .max_in_use(3)
            .max_in_use_per_host(2)
            .acquire_timeout(Duration::from_secs(20)),
        RetryPolicy::default(),
        Arc::new(Record::default()),
    );
    assert_eq!(client.stats().max_in_use_per_host, 2);
    let peaks = Arc::new((AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)));
    let stop = Arc::new(AtomicU32::new(0));
    let sampler = tokio::spawn({
        let (a, b, peaks, stop) = (a.clone(), b.clone(), peaks.clone(), stop.clone());
        async move {
            while stop.load(Ordering::SeqCst) == 0 {
                let (x, y) = (a.stats().in_flight, b.stats().in_flight);
                peaks.0.fetch_max(x, Ordering::SeqCst);
                peaks.1.fetch_max(y, Ordering::SeqCst);
                peaks.2.fetch_max(x + y, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_micros(300)).await;
            }
        }
    });
    let mut tasks = Vec::new();
    for i in 0..12 {
        for s in [&a, &b] {
            let (client, u) = (client.clone(), url(s, &format!("/h/{i}")));
            tasks.push(tokio::spawn(async move { get_status(&client, u).await }));
        }
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    stop.store(1, Ordering::SeqCst);
    sampler.await.unwrap();
    assert!(
        a.stats().peak_in_flight <= 2,
        "host A peak {}",
        a.stats().peak_in_flight
    );
    assert!(
        b.stats().peak_in_flight <= 2,
        "host B peak {}",
        b.stats().peak_in_flight
    );
    assert!(
        peaks.2.load(Ordering::SeqCst) <= 3,
        "total sampled peak {}",
        peaks.2.load(Ordering::SeqCst)
    );
    assert_eq!(client.stats().pool_timeouts, 0);
    assert_eq!(client.stats().permits_in_use, 0);
}

// R11, guide: "Over the cap: Error::PoolTimeout whose max_in_use is the per-host cap"; "A
// request queued behind a busy host holds nothing of the total". Virtual time.
#[tokio::test(start_paused = true)]
async fn r11_a_request_queued_behind_a_busy_host_times_out_typed_and_holds_no_total_slot() {
    let a = RateLimitServer::start().await.unwrap();
    let b = RateLimitServer::start().await.unwrap();
    a.set_default(Answer::ok(100).stall_body_after(1));
    b.set_default(Answer::ok(100).stall_body_after(1));
    let client = client_with(
        defaults()
            .max_in_use(3)
            .max_in_use_per_host(1)
            .acquire_timeout(Duration::from_secs(5)),
        RetryPolicy::default(),
        Arc::new(Record::default()),
    );
    let held_a = client.send(client.get(url(&a, "/held"))).await.unwrap();
    assert_eq!(client.permits_in_use_for(&a.addr().to_string()), 1);
    let waiter = tokio::spawn({
        let (client, u) = (client.clone(), url(&a, "/queued"));
        async move {
            let started = Instant::now();
            (
                client.send(client.get(u)).await.map(|_| ()),
                started.elapsed(),
            )
        }
    });
    tokio::task::yield_now().await;
    // Two total slots are still free for host B while the A request waits... but B's cap is 1.
    let held_b = client.send(client.get(url(&b, "/b"))).await.unwrap();
    assert_eq!(
        client.stats().permits_in_use,
        2,
        "the queued A request holds a total slot"
    );
    let (result, waited) = waiter.await.unwrap();
    assert!(
        matches!(result, Err(Error::PoolTimeout { max_in_use: 1, .. })),
        "{result:?}"
    );
    assert_eq!(waited, Duration::from_secs(5));
    assert_eq!(a.requests_on("/queued"), 0, "nothing sent");
    assert_eq!(client.stats().pool_timeouts, 1);
    drop((held_a, held_b));
    assert_eq!(client.stats().permits_in_use, 0);
}

// R4: the acquire timeout is one deadline for both waits (host permit, then total permit), not
// one per stage ("both within the one acquire_timeout"). Virtual time.
#[tokio::test(start_paused = true)]
async fn r4_one_acquire_deadline_spans_the_host_and_the_total_wait() {
    let a = RateLimitServer::start().await.unwrap();
    let b = RateLimitServer::start().await.unwrap();
    let c = RateLimitServer::start().await.unwrap();
    for s in [&a, &b, &c] {
        s.set_default(Answer::ok(100).stall_body_after(1));
    }
    let client = client_with(
        defaults()
            .max_in_use(2)
            .max_in_use_per_host(1)
            .acquire_timeout(Duration::from_secs(5)),
        RetryPolicy::default(),
        Arc::new(Record::default()),
    );
    let held_a = client.send(client.get(url(&a, "/a1"))).await.unwrap();
    let _held_b = client.send(client.get(url(&b, "/b1"))).await.unwrap();
    // C waits for a total slot (its host is free); A2 waits for host A.
    let timed = |client: RetryClient, u: reqwest::Url| async move {
        let started = Instant::now();
        let result = client.send(client.get(u)).await;
        (result, started.elapsed())
    };
    let c_task = tokio::spawn(timed(client.clone(), url(&c, "/c1")));
    let a2 = tokio::spawn(timed(client.clone(), url(&a, "/a2")));
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A1 ends: A2 gets host A's permit; one of A2 and C gets the freed total slot and keeps it
    // (stalled body), the other must give up within the one 5 s acquire timeout.
    drop(held_a);
    let (a2_result, a2_waited) = a2.await.unwrap();
    let (c_result, c_waited) = c_task.await.unwrap();
    assert!(
        a2_result.is_ok() != c_result.is_ok(),
        "exactly one gets the slot: {a2_result:?} {c_result:?}"
    );
    for (result, waited) in [(&a2_result, a2_waited), (&c_result, c_waited)] {
        if let Err(e) = result {
            assert!(e.is_pool_timeout(), "{e:?}");
            assert!(
                waited <= Duration::from_secs(5) + Duration::from_millis(10),
                "waited {waited:?} for a slot with a 5 s acquire timeout"
            );
        }
    }
}

// R4: "A permit lives as long as the response body, not longer"; "an empty body releases it at
// once" — a 204, a Content-Length: 0 and a HEAD response hold no slot once the head is back.
#[tokio::test]
async fn r4_an_empty_body_releases_its_slot_at_once() {
    let server = RateLimitServer::start().await.unwrap();
    server.script("/empty", [Answer::ok(0)]);
    server.script("/nocontent", [Answer::status(204)]);
    server.set_default(Answer::ok(1000));
    let client = client_with(
        defaults()
            .max_in_use(1)
            .acquire_timeout(Duration::from_secs(2)),
        RetryPolicy::default(),
        Arc::new(Record::default()),
    );
    let r1 = client
        .send(client.get(url(&server, "/empty")))
        .await
        .unwrap();
    tokio::task::yield_now().await;
    assert_eq!(
        client.stats().permits_in_use,
        0,
        "Content-Length: 0 body held its slot"
    );
    let r2 = client
        .send(client.get(url(&server, "/nocontent")))
        .await
        .expect("the only slot was free");
    tokio::task::yield_now().await;
    assert_eq!(client.stats().permits_in_use, 0, "204 held its slot");
    let r3 = client
        .send(client.request(Method::HEAD, url(&server, "/head")))
        .await
        .expect("the only slot was free");
    assert_eq!(r3.status(), 200);
    tokio::task::yield_now().await;
    assert_eq!(
        client.stats().permits_in_use,
        0,
        "a HEAD response (no body, Content-Length 1000) held its slot"
    );
    drop((r1, r2, r3));
}

// R4: the slot is held after the head and mid-body, released at the body's end and on drop.
#[tokio::test]
async fn r4_the_slot_lives_exactly_as_long_as_the_body() {
    let server = RateLimitServer::start().await.unwrap();
    server.script(
        "/slow",
        [Answer::ok(3000).slow_body(1000, Duration::from_millis(30))],
    );
    server.script("/drop", [Answer::ok(100).stall_body_after(10)]);
    let client = client_with(
        defaults().max_in_use(2),
        RetryPolicy::default(),
        Arc::new(Record::default()),
    );
    let mut slow = client
        .send(client.get(url(&server, "/slow")))
        .await
        .unwrap();
    assert_eq!(client.stats().permits_in_use, 1, "held after the head");
    let first = slow.chunk().await.unwrap();
    assert!(first.is_some());
    assert_eq!(client.stats().permits_in_use, 1, "held mid-body");
    while slow.chunk().await.unwrap().is_some() {}
    assert_eq!(
        client.stats().permits_in_use,
        0,
        "released at the end of the body"
    );
    let dropped = client
        .send(client.get(url(&server, "/drop")))
        .await
        .unwrap();
    assert_eq!(client.stats().permits_in_use, 1);
    drop(dropped);
    assert_eq!(client.stats().permits_in_use, 0, "released on drop");
    assert_eq!(client.permits_in_use_for(&server.addr().to_string()), 0);
}

// R1: a small retryable body is drained so the retry reuses the keep-alive connection; a body
// over the drain limit is dropped with its connection.
#[tokio::test]
async fn r1_small_bodies_are_drained_and_their_connection_reused_large_ones_dropped() {
    let server = RateLimitServer::start().await.unwrap();
    server.script("/small", [Answer::status(503).body_len(1000)]);
    server.set_default(Answer::ok(5));
    let client = client_with(
        defaults().max_in_use(1).drain_limit(4096),
        RetryPolicy::default(),
        Arc::new(Nap::default()),
    );
    assert_eq!(get_status(&client, url(&server, "/small")).await, 200);
    let seen = server.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].connection, seen[1].connection,
        "retry did not reuse the drained connection"
    );
    assert_eq!((client.stats().drained, client.stats().discarded), (1, 0));

    server.script("/large", [Answer::status(503).body_len(100_000)]);
    assert_eq!(get_status(&client, url(&server, "/large")).await, 200);
    let seen = server.requests();
    assert_ne!(
        seen[2].connection, seen[3].connection,
        "an over-limit body's connection was reused"
    );
    assert_eq!((client.stats().drained, client.stats().discarded), (1, 1));
}

// R1 + drain_timeout: a retryable response whose body stalls is not drained forever: after
// drain_timeout (2 s) it is dropped, the slot released, and the retry proceeds. Virtual time.
#[tokio::test(start_paused = true)]
async fn r1_a_stalled_retryable_body_is_dropped_after_the_drain_timeout() {
    let server = RateLimitServer::start().await.unwrap();
    server.script(
        "/stall",
        [Answer::status(503).body_len(1000).stall_body_after(10)],
    );
    server.set_default(Answer::ok(5));
    let client = client_with(
        defaults().max_in_use(1),
        RetryPolicy::default(),
        Arc::new(Record::default()),
    );
    let started = Instant::now();
    assert_eq!(get_status(&client, url(&server, "/stall")).await, 200);
    assert!(
        started.elapsed() <= Duration::from_secs(3),
        "draining took {:?}",
        started.elapsed()
    );
    assert_eq!(client.stats().discarded, 1);
    assert_eq!(client.stats().permits_in_use, 0);
}

// ---------------------------------------------------------------------------------------------
// R2: Retry-After, back-off, bounds

// R2 guide: "Retry-After is read as delta-seconds or an HTTP-date (all three formats); a past
// date means now (no sleep); garbage is ignored (back-off instead)". Each path: one 429/503,
// then 200; the recorded sleep shows what was honoured.
#[tokio::test]
async fn r2_retry_after_forms_through_the_client() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::ok(2));
    let ra = |v: RetryAfter| Answer::status(429).retry_after(v);
    server.script("/secs", [ra(RetryAfter::Seconds(7))]);
    server.script("/zero", [ra(RetryAfter::Seconds(0))]);
    server.script("/date", [ra(RetryAfter::In(Duration::from_secs(20)))]);
    server.script(
        "/past",
        [ra(RetryAfter::At(
            SystemTime::now() - Duration::from_secs(3600),
        ))],
    );
    server.script("/garbage", [ra(RetryAfter::Raw("soon-ish".into()))]);
    server.script("/negative", [ra(RetryAfter::Raw("-5".into()))]);
    server.script("/fraction", [ra(RetryAfter::Raw("2.5".into()))]);
    server.script(
        "/503date",
        [Answer::status(503).retry_after(RetryAfter::In(Duration::from_secs(15)))],
    );
    server.script(
        "/502secs",
        [Answer::status(502).retry_after(RetryAfter::Seconds(4))],
    );
    for path in [
        "/502secs",
        "/secs",
        "/zero",
        "/date",
        "/past",
        "/garbage",
        "/negative",
        "/fraction",
        "/503date",
    ] {
        let sleeper = Arc::new(Record::default());
        let client = client_with(defaults(), RetryPolicy::default(), sleeper.clone());
        assert_eq!(get_status(&client, url(&server, path)).await, 200, "{path}");
        let sleeps = sleeper.sleeps();
        let slept = sleeps.iter().copied().sum::<Duration>();
        let ok = match path {
            "/secs" => slept == Duration::from_secs(7),
            "/502secs" => slept == Duration::from_secs(4),
            "/zero" | "/past" => slept == Duration::ZERO,
            "/date" => (Duration::from_secs(18)..=Duration::from_secs(21)).contains(&slept),
            "/503date" => (Duration::from_secs(13)..=Duration::from_secs(16)).contains(&slept),
            // Back-off for the first retry: uniform in [0, 200 ms].
            _ => slept <= Duration::from_millis(200),
        };
        assert!(ok, "{path}: slept {sleeps:?}");
        assert_eq!(server.requests_on(path), 2, "{path}");
    }
}

// R2 guide: "a value above retry_after_cap (default 60 s) ends the retries and the response is
// returned as is, so the caller can see the 429 and its Retry-After" — no sleep at all.
#[tokio::test]
async fn r2_retry_after_over_the_cap_returns_the_response_at_once() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::ok(2));
    let far = SystemTime::now() + Duration::from_secs(86_400 * 365 * 50);
    let cases: Vec<(&str, Answer)> = vec![
        ("/61", Answer::too_many(61)),
        (
            "/huge",
            Answer::status(429).retry_after(RetryAfter::Raw("99999999999999999999999".into())),
        ),
        (
            "/u64max",
            Answer::status(503).retry_after(RetryAfter::Seconds(u64::MAX)),
        ),
        (
            "/far-date",
            Answer::status(429).retry_after(RetryAfter::At(far)),
        ),
    ];
    for (path, answer) in cases {
        server.script(path, [answer]);
        let sleeper = Arc::new(Record::default());
        let client = client_with(defaults(), RetryPolicy::default(), sleeper.clone());
        let response = client.send(client.get(url(&server, path))).await.unwrap();
        assert!(
            matches!(response.status().as_u16(), 429 | 503),
            "{path}: {}",
            response.status()
        );
        assert!(
            response.headers().contains_key("retry-after"),
            "{path}: header kept"
        );
        assert!(
            sleeper.sleeps().is_empty(),
            "{path}: slept {:?}",
            sleeper.sleeps()
        );
        assert_eq!(server.requests_on(path), 1, "{path}");
        assert_eq!(client.stats().gave_up.retry_after_over_cap, 1, "{path}");
    }
    // Exactly the cap is honoured.
    server.script("/60", [Answer::too_many(60)]);
    let sleeper = Arc::new(Record::default());
    let client = client_with(defaults(), RetryPolicy::default(), sleeper.clone());
    assert_eq!(get_status(&client, url(&server, "/60")).await, 200);
    assert_eq!(sleeper.sleeps(), vec![Duration::from_secs(60)]);
}

// R2: several Retry-After headers (a proxy appending its own): whatever is picked, never a
// panic and never a sleep beyond the cap.
#[tokio::test]
async fn r2_duplicate_retry_after_headers_never_sleep_beyond_the_cap() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::ok(2));
    server.script(
        "/dup",
        [Answer::status(429)
            .header("retry-after", "3")
            .header("retry-after", "100000")],
    );
    server.script(
        "/dup2",
        [Answer::status(503)
            .header("retry-after", "garbage")
            .header("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")],
    );
    for path in ["/dup", "/dup2"] {
        let sleeper = Arc::new(Record::default());
        let client = client_with(defaults(), RetryPolicy::default(), sleeper.clone());
        let status = get_status(&client, url(&server, path)).await;
        assert!(matches!(status, 200 | 429 | 503), "{path}: {status}");
        for d in sleeper.sleeps() {
            assert!(d <= Duration::from_secs(60), "{path}: slept {d:?}");
        }
    }
}

// R2 guide: "the n-th retry waits uniform [0, min(200 ms × 2^(n-1), 10 s)]"; "5 attempts in
// all"; then "the last response is returned (not an error)", counted attempts_exhausted.
#[tokio::test]
async fn r2_backoff_is_capped_full_jitter_and_attempts_are_bounded() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::status(503));
    let mut all: Vec<Vec<Duration>> = Vec::new();
    for _ in 0..20 {
        let sleeper = Arc::new(Record::default());
        let client = RetryClient::builder()
            .limits(defaults())
            .policy(RetryPolicy::default().max_attempts(10))
            .sleeper(sleeper.clone())
            .retry_budget(RetryBudget::disabled())
            .build()
            .unwrap();
        assert_eq!(get_status(&client, url(&server, "/b")).await, 503);
        let stats = client.stats();
        assert_eq!(stats.attempts, 10);
        assert_eq!(stats.gave_up.attempts_exhausted, 1);
        all.push(sleeper.sleeps());
    }
    for sleeps in &all {
        assert_eq!(sleeps.len(), 9);
        for (i, d) in sleeps.iter().enumerate() {
            let ceiling = Duration::from_millis(200 * (1u64 << i)).min(Duration::from_secs(10));
            assert!(*d <= ceiling, "retry {}: {d:?} > {ceiling:?}", i + 1);
        }
    }
    // Full jitter: the 9th retry's ceiling is 10 s; 20 draws are not all at the ceiling, nor
    // all tiny.
    let ninth: Vec<_> = all.iter().map(|s| s[8]).collect();
    assert!(
        ninth.iter().any(|d| *d < Duration::from_secs(9)),
        "{ninth:?}"
    );
    assert!(
        ninth.iter().any(|d| *d > Duration::from_secs(1)),
        "{ninth:?}"
    );
    // Default: 5 attempts.
    let client = RetryClient::builder()
        .sleeper(Arc::new(Record::default()))
        .build()
        .unwrap();
    assert_eq!(get_status(&client, url(&server, "/d")).await, 503);
    assert_eq!(client.stats().attempts, 5);
}

// X5, R2: extreme back-off parameters (NaN, ±inf, negative, huge) never panic and never sleep
// beyond the clamped maximum.
#[tokio::test]
async fn x5_extreme_backoff_parameters_never_panic() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::status(503));
    let cases = [
        (
            Duration::from_millis(200),
            f32::INFINITY,
            Duration::from_secs(10),
        ),
        (
            Duration::from_millis(200),
            f32::NAN,
            Duration::from_secs(10),
        ),
        (Duration::from_millis(200), -2.0, Duration::from_secs(10)),
        (Duration::from_millis(200), 0.0, Duration::from_secs(10)),
        (Duration::MAX, f32::MAX, Duration::MAX),
        (Duration::ZERO, 2.0, Duration::ZERO),
        (Duration::from_secs(1), 1e30, Duration::from_secs(5)),
    ];
    for (base, factor, max) in cases {
        let sleeper = Arc::new(Record::default());
        let client = RetryClient::builder()
            .policy(
                RetryPolicy::default()
                    .backoff(base, factor, max)
                    .max_attempts(6)
                    .budget(Duration::MAX),
            )
            .sleeper(sleeper.clone())
            .retry_budget(RetryBudget::disabled())
            .build()
            .unwrap();
        let status = get_status(&client, url(&server, "/x")).await;
        assert_eq!(status, 503);
        let cap = max.min(MAX_POLICY_WAIT);
        for d in sleeper.sleeps() {
            assert!(
                d <= cap,
                "base {base:?} factor {factor} max {max:?}: slept {d:?}"
            );
        }
    }
}

// R2 guide: "a 120 s budget — a retry whose sleep would end after the budget is not started and
// the last response is returned"; counted budget_exhausted. Virtual time, real sleeps.
#[tokio::test(start_paused = true)]
async fn r2_the_time_budget_stops_retries() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::too_many(50));
    let client = RetryClient::builder()
        .limits(defaults())
        .connect_timeout(None)
        .build()
        .unwrap();
    let started = Instant::now();
    let status = get_status(&client, url(&server, "/budget")).await;
    assert_eq!(status, 429);
    assert!(
        started.elapsed() <= Duration::from_secs(120),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        server.requests_on("/budget"),
        3,
        "0, 50, 100 s; a third sleep would end at 150 s"
    );
    assert_eq!(client.stats().gave_up.budget_exhausted, 1);
}

// R2: a Retry-After within the cap but longer than the time budget left is not slept: the
// response goes back at once, counted budget_exhausted.
#[tokio::test]
async fn r2_a_retry_after_beyond_the_time_budget_is_not_slept() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::ok(2));
    server.script("/ra", [Answer::too_many(45)]);
    let sleeper = Arc::new(Record::default());
    let client = client_with(
        defaults(),
        RetryPolicy::default().budget(Duration::from_secs(30)),
        sleeper.clone(),
    );
    assert_eq!(get_status(&client, url(&server, "/ra")).await, 429);
    assert!(sleeper.sleeps().is_empty(), "{:?}", sleeper.sleeps());
    assert_eq!(client.stats().gave_up.budget_exhausted, 1);
}
// ---------------------------------------------------------------------------------------------
// R3 / R8: methods × outcomes, one-shot bodies

// R3 guide table: POST/PATCH are not retried after a reset, a 502 or a 504 (the upstream may
// have acted) but are retried after a 429 or a 503; idempotent methods are retried on all.
#[tokio::test]
async fn r3_methods_by_outcome_follow_the_documented_table() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::ok(2));
    let client = client_with(
        defaults(),
        RetryPolicy::default(),
        Arc::new(Record::default()),
    );
    for (method, path, first, retried) in [
        (Method::POST, "/post-502", Answer::status(502), false),
        (Method::PATCH, "/patch-504", Answer::status(504), false),
        (Method::POST, "/post-429", Answer::too_many(0), true),
        (Method::PATCH, "/patch-503", Answer::status(503), true),
        (Method::PUT, "/put-502", Answer::status(502), true),
        (Method::DELETE, "/delete-504", Answer::status(504), true),
        (Method::GET, "/get-500", Answer::status(500), false),
        (Method::PUT, "/put-reset", Answer::reset(), true),
        (Method::DELETE, "/delete-reset", Answer::reset(), true),
        (Method::GET, "/get-reset", Answer::reset(), true),
    ] {
        server.script(path, [first.clone()]);
        let outcome = client
            .send(client.request(method.clone(), url(&server, path)).body("x"))
            .await;
        let expected_requests = if retried { 2 } else { 1 };
        assert_eq!(
            server.requests_on(path),
            expected_requests,
            "{method} {path}: {outcome:?}"
        );
        if retried {
            assert_eq!(outcome.unwrap().status(), 200, "{method} {path}");
        }
    }
    for (method, path) in [
        (Method::POST, "/post-reset"),
        (Method::PATCH, "/patch-reset"),
    ] {
        server.script(path, [Answer::reset()]);
        let outcome = client
            .send(client.request(method.clone(), url(&server, path)).body("x"))
            .await;
        assert!(
            matches!(outcome, Err(Error::Transport { attempts: 1, .. })),
            "{method} {path}: {outcome:?}"
        );
        assert_eq!(
            server.requests_on(path),
            1,
            "{method} {path} was retried after a reset"
        );
    }
    assert_eq!(client.stats().permits_in_use, 0);
}

// R3 guide: "connect error (nothing was sent) → retried" for every method, back-off, then
// Error::Transport { attempts } once attempts run out.
#[tokio::test]
async fn r3_connect_errors_are_retried_for_post_and_end_typed() {
    let addr = closed_port().await;
    let sleeper = Arc::new(Record::default());
    let client = client_with(defaults(), RetryPolicy::default(), sleeper.clone());
    let outcome = client
        .send(client.request(Method::POST, raw_url(addr, "/p")).body("x"))
        .await;
    assert!(
        matches!(outcome, Err(Error::Transport { attempts: 5, .. })),
        "{outcome:?}"
    );
    assert_eq!(sleeper.sleeps().len(), 4);
    assert_eq!(client.stats().retries.transport, 4);
    assert_eq!(client.stats().permits_in_use, 0);
    // connect_errors(None): not retried.
    let client = client_with(
        defaults(),
        RetryPolicy::default().connect_errors(Methods::None),
        Arc::new(Record::default()),
    );
    let outcome = client.send(client.get(raw_url(addr, "/g"))).await;
    assert!(
        matches!(outcome, Err(Error::Transport { attempts: 1, .. })),
        "{outcome:?}"
    );
}

// R3: "which methods are retried on which outcomes is a documented, configurable policy".
#[tokio::test]
async fn r3_the_policy_is_configurable() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::ok(2));
    let policy = RetryPolicy::default()
        .retry_status(StatusCode::INTERNAL_SERVER_ERROR, Methods::Idempotent)
        .retry_status(StatusCode::TOO_MANY_REQUESTS, Methods::None)
        .transport_errors(Methods::All);
    let client = client_with(defaults(), policy, Arc::new(Record::default()));
    server.script("/500", [Answer::status(500)]);
    assert_eq!(get_status(&client, url(&server, "/500")).await, 200);
    server.script("/429", [Answer::too_many(1)]);
    assert_eq!(get_status(&client, url(&server, "/429")).await, 429);
    assert_eq!(server.requests_on("/429"), 1);
    server.script("/post-reset", [Answer::reset()]);
    assert_eq!(
        send_status(&client, Method::POST, url(&server, "/post-reset")).await,
        200
    );
    // never(): one attempt, the 503 returned.
    let never = client.with_policy(RetryPolicy::never());
    server.script("/never", [Answer::status(503)]);
    assert_eq!(get_status(&never, url(&server, "/never")).await, 503);
    assert_eq!(server.requests_on("/never"), 1);
}

fn one_shot_body() -> reqwest::Body {
    reqwest::Body::wrap_stream(futures::stream::iter(vec![
        Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"chunk-1;")),
        Ok(bytes::Bytes::from_static(b"chunk-2")),
    ]))
}

// R8: a body that cannot be cloned is sent once and never retried — on a 429/503, a transport
// error, and a 401 with a credential; counted body_not_cloneable.
#[tokio::test]
async fn r8_a_streaming_body_is_sent_exactly_once() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::ok(2));
    let cred = Arc::new(Cred::default());
    let client = RetryClient::builder()
        .limits(defaults())
        .sleeper(Arc::new(Record::default()))
        .credential(cred.clone())
        .build()
        .unwrap();
    server.script("/503", [Answer::status(503)]);
    let r = client
        .send(
            client
                .request(Method::PUT, url(&server, "/503"))
                .body(one_shot_body()),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(server.requests_on("/503"), 1);
    assert_eq!(client.stats().gave_up.body_not_cloneable, 1);
    server.script("/429", [Answer::too_many(0)]);
    let r = client
        .send(
            client
                .request(Method::POST, url(&server, "/429"))
                .body(one_shot_body()),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(server.requests_on("/429"), 1);
    server.script("/reset", [Answer::reset()]);
    let r = client
        .send(
            client
                .request(Method::PUT, url(&server, "/reset"))
                .body(one_shot_body()),
        )
        .await;
    assert!(
        matches!(r, Err(Error::Transport { attempts: 1, .. })),
        "{r:?}"
    );
    assert_eq!(server.requests_on("/reset"), 1);
    server.script("/401", [Answer::status(401)]);
    let r = client
        .send(
            client
                .request(Method::PUT, url(&server, "/401"))
                .body(one_shot_body()),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(server.requests_on("/401"), 1);
    let seen = server.requests();
    assert!(
        seen.iter().all(|r| r.body_len == 15 || r.body_len == 0),
        "{seen:?}"
    );
    assert_eq!(client.stats().permits_in_use, 0);
}

// ---------------------------------------------------------------------------------------------
// R7: 401 and the credential hook

// R7: a 401 refreshes once (rejected() told the value sent) and retries once with the new
// value; a second 401 is returned.
#[tokio::test]
async fn r7_one_refresh_one_retry_and_a_second_401_is_returned() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::ok(2));
    let cred = Arc::new(Cred::default());
    let client = RetryClient::builder()
        .limits(defaults())
        .sleeper(Arc::new(Record::default()))
        .credential(cred.clone())
        .build()
        .unwrap();
    server.script("/once", [Answer::status(401)]);
    assert_eq!(get_status(&client, url(&server, "/once")).await, 200);
    let seen = server.requests();
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer old-token"));
    assert_eq!(seen[1].authorization.as_deref(), Some("Bearer new-token"));
    assert_eq!(cred.forced.load(Ordering::SeqCst), 1);
    assert_eq!(
        *cred.rejected.lock().unwrap(),
        vec!["Bearer old-token".to_string()]
    );
    server.script("/twice", [Answer::status(401), Answer::status(401)]);
    assert_eq!(get_status(&client, url(&server, "/twice")).await, 401);
    assert_eq!(server.requests_on("/twice"), 2);
    assert_eq!(
        cred.forced.load(Ordering::SeqCst),
        2,
        "one refresh per send"
    );
    assert_eq!(client.stats().retries.unauthorized, 2);
    // Without a credential hook a 401 is just returned.
    let plain = client_with(
        defaults(),
        RetryPolicy::default(),
        Arc::new(Record::default()),
    );
    server.script("/plain", [Answer::status(401)]);
    assert_eq!(get_status(&plain, url(&server, "/plain")).await, 401);
    assert_eq!(server.requests_on("/plain"), 1);
}

// R7 + R4: while the credential refreshes after a 401, the 401's slot is free: with one slot,
// another request completes during the refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r7_a_slow_refresh_after_a_401_holds_no_slot() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::ok(2));
    server.script("/a", [Answer::status(401).body_len(100)]);
    let gate = Arc::new(Semaphore::new(0));
    let cred = Arc::new(Cred {
        refresh_gate: Some(gate.clone()),
        ..Cred::default()
    });
    let client = RetryClient::builder()
        .limits(
            defaults()
                .max_in_use(1)
                .acquire_timeout(Duration::from_secs(3)),
        )
        .sleeper(Arc::new(Record::default()))
        .credential(cred.clone())
        .build()
        .unwrap();
    let a = tokio::spawn({
        let (client, u) = (client.clone(), url(&server, "/a"));
        async move { get_status(&client, u).await }
    });
    let mut refreshing = cred.refreshing.subscribe();
    tokio::time::timeout(Duration::from_secs(10), refreshing.wait_for(|n| *n == 1))
        .await
        .expect("refresh started")
        .unwrap();
    assert_eq!(
        client.stats().permits_in_use,
        0,
        "the 401 response kept its slot during the refresh"
    );
    let b = client.send(client.get(url(&server, "/b"))).await;
    assert!(b.is_ok(), "{b:?}");
    drop(b);
    gate.add_permits(1);
    assert_eq!(a.await.unwrap(), 200);
}

// R7, guide: "credential hook fails → Error::Credential (no slot was taken)"; "never answers →
// Error::CredentialTimeout after credential_timeout; nothing sent". On the refresh path too.
#[tokio::test(start_paused = true)]
async fn r7_a_failing_or_hung_refresh_is_typed_and_bounded() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::status(401));
    for mode in [RefreshMode::Fail, RefreshMode::Hang] {
        let cred = Arc::new(Cred {
            mode,
            ..Cred::default()
        });
        let client = RetryClient::builder()
            .limits(defaults())
            .connect_timeout(None)
            .credential(cred.clone())
            .build()
            .unwrap();
        let path = format!("/{mode:?}");
        let started = Instant::now();
        let outcome = tokio::time::timeout(
            Duration::from_secs(3600),
            client.send(client.get(url(&server, &path))),
        )
        .await
        .expect("a hung refresh hung the request");
        match mode {
            RefreshMode::Fail => {
                assert!(matches!(outcome, Err(Error::Credential(_))), "{outcome:?}")
            }
            _ => {
                assert!(
                    matches!(outcome, Err(Error::CredentialTimeout { .. })),
                    "{outcome:?}"
                );
                assert_eq!(started.elapsed(), Duration::from_secs(30));
            }
        }
        assert_eq!(
            server.requests_on(&path),
            1,
            "nothing sent after the failed refresh"
        );
        assert_eq!(client.stats().permits_in_use, 0);
    }
}

// Guide: "The 401 refresh retry (R7) is a credential repair, not load: neither the budget nor
// the throttle applies to it."
#[tokio::test]
async fn r7_the_401_retry_is_not_charged_to_an_empty_retry_budget() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::ok(2));
    let cred = Arc::new(Cred::default());
    let client = RetryClient::builder()
        .limits(defaults())
        .sleeper(Arc::new(Record::default()))
        .credential(cred.clone())
        .retry_budget(RetryBudget::default().ratio(0.0).floor_per_second(0))
        .build()
        .unwrap();
    // The budget is empty: a 503 is handed back at once.
    server.script("/503", [Answer::status(503)]);
    assert_eq!(get_status(&client, url(&server, "/503")).await, 503);
    assert_eq!(client.stats().gave_up.retry_budget_exhausted, 1);
    // A 401 is still refreshed and retried.
    server.script("/401", [Answer::status(401)]);
    assert_eq!(get_status(&client, url(&server, "/401")).await, 200);
    assert_eq!(cred.forced.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------------------------
// R9: the retry budget

// R9: with no floor, retries ≤ 20 % of the first attempts; past it the 503 comes back at once
// (no sleep), counted retry_budget_exhausted.
#[tokio::test]
async fn r9_retries_are_at_most_the_ratio_of_first_attempts() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::status(503));
    let sleeper = Arc::new(Record::default());
    let client = RetryClient::builder()
        .limits(defaults())
        .sleeper(sleeper.clone())
        .retry_budget(RetryBudget::default().ratio(0.2).floor_per_second(0))
        .build()
        .unwrap();
    for i in 0..50 {
        assert_eq!(
            get_status(&client, url(&server, &format!("/r/{i}"))).await,
            503
        );
    }
    let stats = client.stats();
    let retries = stats.attempts - 50;
    assert!(
        retries <= 10,
        "{retries} retries for 50 first attempts at 20 %"
    );
    assert!(
        retries >= 9,
        "the budget allowed only {retries} of 10 retries"
    );
    assert_eq!(server.stats().requests_seen, stats.attempts);
    assert_eq!(
        sleeper.sleeps().len() as u64,
        retries,
        "a refused retry slept"
    );
    assert_eq!(
        stats.gave_up.retry_budget_exhausted,
        50 - stats.gave_up.attempts_exhausted
    );
}

// R9 with the defaults: a concurrent storm of 150 requests against an all-503 upstream adds
// at most 20 % + the 100-retry floor reserve (10/s × 10 s) within one window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r9_the_default_budget_bounds_a_storm() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::status(503).body_len(10));
    let client = RetryClient::builder()
        .limits(defaults())
        .sleeper(Arc::new(Record::default()))
        .retry_budget(RetryBudget::default())
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..150)
        .map(|i| {
            let (client, u) = (client.clone(), url(&server, &format!("/s/{i}")));
            tokio::spawn(async move { get_status(&client, u).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 503);
    }
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "the storm outlived the window"
    );
    let seen = server.stats().requests_seen;
    assert!(
        seen <= 150 + 30 + 100,
        "upstream saw {seen} requests for 150 calls"
    );
    assert!(seen > 150, "the floor allows some retries: {seen}");
    assert_eq!(client.stats().permits_in_use, 0);
}

// R9: "Every clone and every with_policy/with_partition view shares the same budgets;
// separately built clients do not"; partitions are per host:port; the budget recovers once
// the window has passed.
#[tokio::test]
async fn r9_budget_is_shared_by_views_per_partition_and_recovers() {
    let a = RateLimitServer::start().await.unwrap();
    let b = RateLimitServer::start().await.unwrap();
    a.set_default(Answer::status(503));
    b.set_default(Answer::status(503));
    let budget = RetryBudget::default()
        .ratio(0.0)
        .floor_per_second(2)
        .window(Duration::from_secs(1));
    let client = RetryClient::builder()
        .limits(defaults())
        .policy(RetryPolicy::default().max_attempts(2))
        .sleeper(Arc::new(Record::default()))
        .retry_budget(budget.clone())
        .build()
        .unwrap();
    let view = client.with_policy(RetryPolicy::default().max_attempts(2));
    let clone = client.clone();
    // Two retries for host A in this window: spent through three handles.
    for c in [&client, &view, &clone, &client] {
        get_status(c, url(&a, "/a")).await;
    }
    assert_eq!(
        a.stats().requests_seen,
        4 + 2,
        "views did not share host A's budget"
    );
    let pa = client.partition_for(&url(&a, "/"));
    let left = client.retry_budget_balance(&pa).unwrap();
    assert!(left < 1.0, "balance {left}");
    // Host B is a separate partition: its own two retries.
    get_status(&client, url(&b, "/b")).await;
    assert_eq!(b.stats().requests_seen, 2);
    // A separately built client has its own budget.
    let other = RetryClient::builder()
        .limits(defaults())
        .policy(RetryPolicy::default().max_attempts(2))
        .sleeper(Arc::new(Record::default()))
        .retry_budget(budget)
        .build()
        .unwrap();
    get_status(&other, url(&a, "/other")).await;
    assert_eq!(a.requests_on("/other"), 2);
    // After the window the budget is back.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before = a.stats().requests_seen;
    get_status(&client, url(&a, "/later")).await;
    assert_eq!(
        a.stats().requests_seen - before,
        2,
        "the budget did not recover after its window"
    );
}

// R9: a named partition spans hosts; the overflow beyond MAX_PARTITIONS never panics.
#[tokio::test]
async fn r9_named_partitions_span_hosts() {
    let a = RateLimitServer::start().await.unwrap();
    let b = RateLimitServer::start().await.unwrap();
    a.set_default(Answer::status(503));
    b.set_default(Answer::status(503));
    let client = RetryClient::builder()
        .limits(defaults())
        .policy(RetryPolicy::default().max_attempts(2))
        .sleeper(Arc::new(Record::default()))
        .retry_budget(RetryBudget::default().ratio(0.0).floor_per_second(1))
        .build()
        .unwrap();
    let svc = client.with_partition("service");
    // 1/s × 10 s = 10 retries for "service", whatever the host.
    for i in 0..8 {
        get_status(&svc, url(&a, &format!("/a{i}"))).await;
        get_status(&svc, url(&b, &format!("/b{i}"))).await;
    }
    let total = a.stats().requests_seen + b.stats().requests_seen;
    assert_eq!(total, 16 + 10, "named partition did not span both hosts");
    // The hosts' own partitions were untouched.
    get_status(&client, url(&a, "/own")).await;
    assert_eq!(a.requests_on("/own"), 2);
    assert!(client.retry_budget_balance("service").unwrap() < 1.0);
}

// ---------------------------------------------------------------------------------------------
// R10: adaptive throttling

// R10: p = max(0, (requests − 2·accepts)/(requests + 1)) over every attempt (rejected ones
// included); a rejected first attempt is Error::Throttled { partition, probability } with
// nothing sent and no credential asked.
#[tokio::test]
async fn r10_throttling_follows_the_formula_and_rejects_locally() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::status(429));
    let cred = Arc::new(Cred::default());
    let client = RetryClient::builder()
        .limits(defaults())
        .policy(RetryPolicy::never())
        .sleeper(Arc::new(Record::default()))
        .credential(cred.clone())
        .adaptive_throttle(AdaptiveThrottle::default().seed(7))
        .build()
        .unwrap();
    let partition = client.partition_for(&url(&server, "/"));
    assert_eq!(partition, format!("127.0.0.1:{}", server.addr().port()));
    let (mut requests, mut accepts, mut rejected) = (0f64, 0f64, 0u64);
    let expect = |r: f64, a: f64| ((r - 2.0 * a) / (r + 1.0)).max(0.0);
    for phase in 0..2 {
        if phase == 1 {
            server.set_default(Answer::ok(1));
        }
        for i in 0..60 {
            let p = client.throttle_probability(&partition).unwrap_or(0.0);
            assert!(
                (p - expect(requests, accepts)).abs() < 1e-9,
                "p {p} after {requests} requests, {accepts} accepts"
            );
            let asked = cred.cached.load(Ordering::SeqCst);
            let seen = server.stats().requests_seen;
            let outcome = client
                .send(client.get(url(&server, &format!("/t{phase}/{i}"))))
                .await;
            requests += 1.0;
            match outcome {
                Ok(r) => {
                    if r.status() != 429 {
                        accepts += 1.0;
                    }
                }
                Err(Error::Throttled {
                    partition: part,
                    probability,
                }) => {
                    rejected += 1;
                    assert_eq!(part, partition);
                    assert!((probability - p).abs() < 1e-9, "{probability} vs {p}");
                    assert_eq!(
                        server.stats().requests_seen,
                        seen,
                        "a rejected request was sent"
                    );
                    assert_eq!(
                        cred.cached.load(Ordering::SeqCst),
                        asked,
                        "credential asked"
                    );
                }
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
    }
    assert!(rejected > 10, "only {rejected} rejections");
    assert_eq!(client.stats().throttled, rejected);
    assert_eq!(client.stats().permits_in_use, 0);
}

// R10: "no connection, no slot": a throttled request is rejected at once even when every slot
// is taken (it neither waits for one nor times out on it).
#[tokio::test]
async fn r10_a_throttled_request_does_not_wait_for_a_slot() {
    let a = RateLimitServer::start().await.unwrap();
    let b = RateLimitServer::start().await.unwrap();
    a.set_default(Answer::status(503));
    b.set_default(Answer::ok(100).stall_body_after(1));
    let client = RetryClient::builder()
        .limits(
            defaults()
                .max_in_use(1)
                .acquire_timeout(Duration::from_secs(5)),
        )
        .policy(RetryPolicy::never())
        .adaptive_throttle(AdaptiveThrottle::default().seed(1).k(1.0))
        .build()
        .unwrap();
    let view = client.with_partition("upstream-a");
    for i in 0..40 {
        let _ = view.send(view.get(url(&a, &format!("/x{i}")))).await;
    }
    let p = view.throttle_probability("upstream-a").unwrap();
    assert!(p > 0.8, "p {p}");
    // Hold the only slot through another partition.
    let held = client.send(client.get(url(&b, "/held"))).await.unwrap();
    let seen = a.stats().requests_seen;
    let started = std::time::Instant::now();
    let mut throttled = 0;
    let mut pool_timeouts = 0;
    while throttled == 0 && pool_timeouts < 2 {
        match view.send(view.get(url(&a, "/y"))).await {
            Err(Error::Throttled { partition, .. }) => {
                assert_eq!(partition, "upstream-a");
                throttled += 1;
            }
            Err(e) if e.is_pool_timeout() => pool_timeouts += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(throttled, 1, "p {p} yet no rejection");
    assert!(
        started.elapsed() < Duration::from_secs(5) * (pool_timeouts + 1),
        "a rejected request waited for a slot"
    );
    assert_eq!(
        a.stats().requests_seen,
        seen,
        "nothing reached the throttled upstream"
    );
    assert_eq!(client.stats().permits_in_use, 1);
    drop(held);
}

// R10 guide: recovery "as accepted requests or the window passing bring p down"; and a backend
// accepting half the requests is never throttled at K = 2.
#[tokio::test]
async fn r10_throttling_recovers_after_the_window() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::status(429));
    let client = RetryClient::builder()
        .limits(defaults())
        .policy(RetryPolicy::never())
        .adaptive_throttle(
            AdaptiveThrottle::default()
                .seed(3)
                .window(Duration::from_secs(1)),
        )
        .build()
        .unwrap();
    let partition = client.partition_for(&url(&server, "/"));
    for i in 0..30 {
        let _ = client
            .send(client.get(url(&server, &format!("/a{i}"))))
            .await;
    }
    assert!(client.throttle_probability(&partition).unwrap() > 0.5);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        client.throttle_probability(&partition),
        Some(0.0),
        "window passed"
    );
    // Half accepted: never throttled.
    server.set_default(Answer::ok(1));
    for i in 0..40 {
        if i % 2 == 1 {
            server.script(&format!("/h{i}"), [Answer::status(503)]);
        }
        let outcome = client
            .send(client.get(url(&server, &format!("/h{i}"))))
            .await;
        assert!(outcome.is_ok(), "request {i}: {outcome:?}");
    }
}

// R10 / X5: extreme throttle knobs are clamped, never a panic ("k clamped to [1, 100] (NaN:
// 2)", "window clamped to [1 s, 1 h]").
#[tokio::test]
async fn x5_extreme_throttle_knobs_never_panic() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::status(429));
    for (k, window) in [
        (f64::NAN, Duration::ZERO),
        (f64::INFINITY, Duration::MAX),
        (-5.0, Duration::from_nanos(1)),
        (0.0, Duration::MAX),
    ] {
        let client = RetryClient::builder()
            .policy(RetryPolicy::never())
            .adaptive_throttle(AdaptiveThrottle::default().k(k).window(window).seed(5))
            .build()
            .unwrap();
        let partition = client.partition_for(&url(&server, "/"));
        for i in 0..10 {
            let _ = client
                .send(client.get(url(&server, &format!("/k{i}"))))
                .await;
            let p = client.throttle_probability(&partition).unwrap();
            assert!((0.0..=1.0).contains(&p), "k {k}: p {p}");
        }
    }
}

// R10: "a rejected retry ends the retries (the last response goes back)", gave_up.throttled.
#[tokio::test]
async fn r10_a_throttled_retry_returns_the_last_response() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::status(503));
    let client = RetryClient::builder()
        .limits(defaults())
        .policy(RetryPolicy::default().max_attempts(50))
        .sleeper(Arc::new(Record::default()))
        .retry_budget(RetryBudget::disabled())
        .adaptive_throttle(AdaptiveThrottle::default().seed(11).k(1.0))
        .build()
        .unwrap();
    let response = client.send(client.get(url(&server, "/r"))).await.unwrap();
    assert_eq!(response.status(), 503);
    let stats = client.stats();
    assert_eq!(stats.gave_up.throttled, 1, "{stats:?}");
    assert!(stats.attempts < 50, "{stats:?}");
    assert_eq!(
        stats.throttled, 0,
        "a retry rejection is not a first-attempt rejection"
    );
}
// ---------------------------------------------------------------------------------------------
// R5 / R6: views and reset keep the same limits

// R5, R6: a policy view, a partition view and a reset client all share the one slot limit:
// with the only slot held, each of them times out typed after the acquire timeout. Virtual time.
#[tokio::test(start_paused = true)]
async fn r5_views_and_reset_share_the_one_slot_limit() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::ok(2));
    server.script("/held", [Answer::ok(100).stall_body_after(1)]);
    let client = client_with(
        defaults()
            .max_in_use(1)
            .acquire_timeout(Duration::from_secs(4)),
        RetryPolicy::default(),
        Arc::new(Record::default()),
    );
    let held = client
        .send(client.get(url(&server, "/held")))
        .await
        .unwrap();
    let more = client.with_policy(RetryPolicy::default().max_attempts(50));
    let named = client.with_partition("x");
    client.reset().unwrap();
    for (name, c) in [
        ("policy view", &more),
        ("partition view", &named),
        ("after reset", &client),
    ] {
        let outcome = c.send(c.get(url(&server, "/next"))).await;
        assert!(
            matches!(outcome, Err(Error::PoolTimeout { max_in_use: 1, waited }) if waited == Duration::from_secs(4)),
            "{name}: {outcome:?}"
        );
        assert_eq!(c.limits().max_in_use, 1, "{name}");
        assert_eq!(c.stats().max_in_use, 1, "{name}");
    }
    assert_eq!(server.requests_on("/next"), 0);
    assert_eq!(client.stats().pool_timeouts, 3);
    drop(held);
    assert_eq!(get_status(&more, url(&server, "/next")).await, 200);
    assert_eq!(client.stats().resets, 1);
}

// R6: reset() keeps default headers and customizations, opens a fresh pool, and a request in
// flight (body mid-stream) finishes on the old client.
#[tokio::test]
async fn r6_reset_keeps_configuration_and_in_flight_requests_finish() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::ok(2));
    server.script(
        "/slow",
        [Answer::ok(4000).slow_body(1000, Duration::from_millis(20))],
    );
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_static("Bearer from-default-headers"),
    );
    let customized = Arc::new(AtomicU32::new(0));
    let client = RetryClient::builder()
        .limits(defaults().max_in_use(2))
        .default_headers(headers)
        .customize({
            let customized = customized.clone();
            move |b: reqwest::ClientBuilder| {
                customized.fetch_add(1, Ordering::SeqCst);
                b.http1_only()
            }
        })
        .build()
        .unwrap();
    let mut slow = client
        .send(client.get(url(&server, "/slow")))
        .await
        .unwrap();
    let first = slow.chunk().await.unwrap().unwrap();
    client.reset().unwrap();
    let mut len = first.len();
    while let Some(chunk) = slow.chunk().await.unwrap() {
        len += chunk.len();
    }
    assert_eq!(len, 4000, "the in-flight body was cut by reset()");
    drop(slow);
    assert_eq!(get_status(&client, url(&server, "/after")).await, 200);
    let after = server
        .requests()
        .into_iter()
        .find(|r| r.path == "/after")
        .unwrap();
    assert_eq!(
        after.authorization.as_deref(),
        Some("Bearer from-default-headers")
    );
    assert_eq!(after.connection, 2, "reset() kept the old pool");
    assert!(
        customized.load(Ordering::SeqCst) >= 2,
        "customize not re-applied on reset"
    );
    assert_eq!(client.stats().permits_in_use, 0);
    assert_eq!(client.limits().max_in_use, 2);
}

// R6: reset() under concurrent load loses no request and never exceeds the slot limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r6_reset_under_load_loses_nothing_and_keeps_the_limit() {
    let server = Arc::new(RateLimitServer::start().await.unwrap());
    server.every_path_starts_with([Answer::too_many(0)]);
    server.set_default(Answer::ok(2000).slow_body(500, Duration::from_millis(1)));
    let client = client_with(
        defaults()
            .max_in_use(3)
            .acquire_timeout(Duration::from_secs(20)),
        RetryPolicy::default(),
        Arc::new(Nap::default()),
    );
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let (client, u) = (client.clone(), url(&server, &format!("/l/{i}")));
            tokio::spawn(async move { get_status(&client, u).await })
        })
        .collect();
    for _ in 0..10 {
        client.reset().unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert!(server.stats().peak_in_flight <= 3, "{:?}", server.stats());
    assert_eq!(client.stats().resets, 10);
    assert_eq!(client.stats().permits_in_use, 0);
}

// ---------------------------------------------------------------------------------------------
// Every request with the DEFAULT configuration is bounded in time (SPEC R, seed 002 issue #16)

async fn default_client_is_bounded(
    addr: SocketAddr,
    what: &str,
) -> (RetryClient, Result<reqwest::Response, Error>) {
    let client = RetryClient::builder().limits(defaults()).build().unwrap();
    let started = Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(24 * 3600),
        client.send(client.get(raw_url(addr, "/x"))),
    )
    .await;
    let outcome = match outcome {
        Ok(o) => o,
        Err(_) => panic!("{what}: a default-configured GET was still waiting after 24 h"),
    };
    // Guide: "in the worst case — slot waits included — after at most 120 s + 30 s + 60 s".
    assert!(
        started.elapsed() <= Duration::from_secs(210),
        "{what}: took {:?} (documented worst case 210 s)",
        started.elapsed()
    );
    if outcome.is_err() {
        assert_eq!(client.stats().permits_in_use, 0, "{what}");
    }
    (client, outcome)
}

// A peer that accepts the connection and never reads or answers.
#[tokio::test(start_paused = true)]
async fn bound_a_peer_that_accepts_and_never_reads() {
    let addr = raw_server(|stream| async move {
        let _keep = stream;
        futures::future::pending::<()>().await;
    })
    .await;
    let (_c, outcome) = default_client_is_bounded(addr, "accept-and-ignore").await;
    assert!(matches!(outcome, Err(Error::Timeout { .. })), "{outcome:?}");
}

// A peer that sends half a response head, then nothing.
#[tokio::test(start_paused = true)]
async fn bound_a_peer_that_stalls_mid_head() {
    let addr = raw_server(|mut stream| async move {
        read_head(&mut stream).await;
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Le").await;
        futures::future::pending::<()>().await;
    })
    .await;
    let (_c, outcome) = default_client_is_bounded(addr, "half a head").await;
    assert!(matches!(outcome, Err(Error::Timeout { .. })), "{outcome:?}");
}

// Guide: "The read timeout bounds the wait for the response head (from the start of the
// attempt)": a peer trickling its head one byte every 5 s is cut at 60 s per attempt.
#[tokio::test(start_paused = true)]
async fn bound_a_peer_that_trickles_its_head() {
    let addr = raw_server(|mut stream| async move {
        read_head(&mut stream).await;
        let mut head = b"HTTP/1.1 200 OK\r\nx-pad: ".to_vec();
        head.extend(std::iter::repeat_n(b'a', 100_000));
        for byte in head {
            if stream.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    })
    .await;
    let (_c, outcome) = default_client_is_bounded(addr, "trickled head").await;
    assert!(outcome.is_err(), "{outcome:?}");
}

// A peer that reads the request and half-closes (FIN) without answering; then one that
// answers a head and closes mid-body.
#[tokio::test(start_paused = true)]
async fn bound_half_close_and_truncated_body() {
    let addr = raw_server(|mut stream| async move {
        read_head(&mut stream).await;
        let _ = stream.shutdown().await;
        futures::future::pending::<()>().await;
    })
    .await;
    let (_c, outcome) = default_client_is_bounded(addr, "half-close").await;
    assert!(
        matches!(
            outcome,
            Err(Error::Transport { .. } | Error::Timeout { .. })
        ),
        "{outcome:?}"
    );
    let addr = raw_server(|mut stream| async move {
        read_head(&mut stream).await;
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            .await;
    })
    .await;
    let (client, outcome) = default_client_is_bounded(addr, "truncated body").await;
    let body = outcome.unwrap().bytes().await;
    assert!(body.is_err(), "a truncated body read as complete");
    assert_eq!(
        client.stats().permits_in_use,
        0,
        "a failed body kept its slot"
    );
}

// Guide: "A stalled body (after the head was returned) fails the body read with a reqwest
// timeout error and frees the slot" — after the 60 s default read timeout.
#[tokio::test(start_paused = true)]
async fn bound_a_body_that_stalls_with_the_default_configuration() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::ok(1000).stall_body_after(10));
    let client = RetryClient::builder().limits(defaults()).build().unwrap();
    let response = client
        .send(client.get(url(&server, "/stall")))
        .await
        .unwrap();
    assert_eq!(client.stats().permits_in_use, 1);
    let started = Instant::now();
    let body = tokio::time::timeout(Duration::from_secs(3600), response.bytes())
        .await
        .expect("a stalled body hung the caller");
    let err = body.expect_err("a stalled body completed");
    assert!(err.is_timeout(), "{err:?}");
    assert!(
        started.elapsed() <= Duration::from_secs(61),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(client.stats().permits_in_use, 0);
}

// Builder::attempt_timeout bounds a peer that trickles its body (guide).
#[tokio::test(start_paused = true)]
async fn bound_attempt_timeout_cuts_a_trickling_body() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::ok(1000).slow_body(1, Duration::from_secs(1)));
    let client = RetryClient::builder()
        .limits(defaults())
        .attempt_timeout(Some(Duration::from_secs(20)))
        .build()
        .unwrap();
    let started = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(3600), async {
        let r = client.send(client.get(url(&server, "/trickle"))).await?;
        r.bytes().await.map_err(|e| Error::Transport {
            attempts: 0,
            source: e,
        })
    })
    .await
    .expect("attempt_timeout did not bound a trickling body");
    assert!(outcome.is_err());
    assert!(
        started.elapsed() <= Duration::from_secs(21),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(client.stats().permits_in_use, 0);
}

// ---------------------------------------------------------------------------------------------
// Bad input and secrets

// Guide: "request cannot be built (bad header, URL) → Error::Request; nothing sent, no slot".
#[tokio::test]
async fn bad_request_input_is_a_typed_error_and_takes_no_slot() {
    let server = RateLimitServer::start().await.unwrap();
    let client = client_with(
        defaults().max_in_use(1),
        RetryPolicy::default(),
        Arc::new(Record::default()),
    );
    let outcome = client
        .send(
            client
                .get(url(&server, "/h"))
                .header("x-bad", "line\nbreak"),
        )
        .await;
    assert!(matches!(outcome, Err(Error::Request(_))), "{outcome:?}");
    let outcome = client
        .send(
            client
                .get(url(&server, "/h"))
                .header("bad header name", "v"),
        )
        .await;
    assert!(matches!(outcome, Err(Error::Request(_))), "{outcome:?}");
    // A non-HTTP scheme: an error, never a panic, nothing sent.
    let outcome = client
        .send(client.get("ftp://127.0.0.1/x".parse().unwrap()))
        .await;
    assert!(outcome.is_err(), "{outcome:?}");
    assert_eq!(server.stats().requests_seen, 0);
    assert_eq!(client.stats().permits_in_use, 0);
    assert_eq!(get_status(&client, url(&server, "/ok")).await, 200);
}

// Secrets: an Authorization value and a query token never appear in an error's Display chain
// or Debug (guide: "never the query string, which may hold a SAS token").
#[tokio::test]
async fn secrets_never_appear_in_errors() {
    let addr = closed_port().await;
    let cred = Arc::new(Cred::default());
    let client = RetryClient::builder()
        .limits(defaults())
        .sleeper(Arc::new(Record::default()))
        .credential(cred)
        .build()
        .unwrap();
    let err = client
        .send(
            client
                .get(raw_url(addr, "/blob?sig=SAS-SECRET-SIG&sv=1"))
                .header("x-api-key", "HEADER-SECRET"),
        )
        .await
        .unwrap_err();
    let mut text = format!("{err} | {err:?}");
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        text.push_str(&format!(" | {s}"));
        source = s.source();
    }
    assert!(!text.contains("old-token"), "{text}");
    assert!(!text.contains("HEADER-SECRET"), "{text}");
    assert!(
        !text.contains("SAS-SECRET-SIG"),
        "query token in the error: {text}"
    );
}

// Cancellation: a send dropped mid-attempt, mid-slot-wait or mid-sleep leaves nothing held.
#[tokio::test]
async fn cancelled_sends_leave_no_slot_behind() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::ok(2));
    server.script("/hang", [Answer::hang()]);
    server.script("/sleepy", [Answer::too_many(30)]);
    let client = RetryClient::builder()
        .limits(
            defaults()
                .max_in_use(1)
                .acquire_timeout(Duration::from_secs(5)),
        )
        .build()
        .unwrap();
    // Mid-attempt.
    let r = tokio::time::timeout(
        Duration::from_millis(200),
        client.send(client.get(url(&server, "/hang"))),
    )
    .await;
    assert!(r.is_err());
    assert_eq!(client.stats().permits_in_use, 0, "cancelled mid-attempt");
    // Mid-sleep (a 30 s Retry-After under the real TokioSleep).
    let r = tokio::time::timeout(
        Duration::from_millis(300),
        client.send(client.get(url(&server, "/sleepy"))),
    )
    .await;
    assert!(r.is_err());
    assert_eq!(client.stats().permits_in_use, 0, "cancelled mid-sleep");
    // Mid-slot-wait.
    server.script("/held", [Answer::ok(10).stall_body_after(1)]);
    let held = client
        .send(client.get(url(&server, "/held")))
        .await
        .unwrap();
    let r = tokio::time::timeout(
        Duration::from_millis(100),
        client.send(client.get(url(&server, "/w"))),
    )
    .await;
    assert!(r.is_err());
    drop(held);
    assert_eq!(client.stats().permits_in_use, 0);
    assert_eq!(get_status(&client, url(&server, "/ok")).await, 200);
}

// Limits::drain_timeout range "0–60 s": zero is accepted and a retryable body is then dropped,
// not drained; idle_timeout zero is a typed error or at least 1 s (range 1–3600 s).
#[tokio::test]
async fn zero_drain_timeout_drops_and_zero_idle_timeout_is_checked() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::ok(2));
    server.script("/r", [Answer::status(503).body_len(50_000)]);
    let client = client_with(
        defaults().drain_timeout(Duration::ZERO),
        RetryPolicy::default(),
        Arc::new(Record::default()),
    );
    assert_eq!(get_status(&client, url(&server, "/r")).await, 200);
    assert_eq!(client.stats().drained + client.stats().discarded, 1);
    match RetryClient::builder()
        .limits(defaults().idle_timeout(Duration::ZERO))
        .build()
    {
        Err(Error::Config(_)) => {}
        Ok(c) => assert!(
            c.limits().idle_timeout >= Duration::from_secs(1),
            "{:?}",
            c.limits()
        ),
        Err(e) => panic!("{e:?}"),
    }
}

// R11 and redirects: reqwest's default policy would follow A's 302 to B on a connection to B
// under A's slot, past B's cap of 1. The guide: "Redirects are answered, not followed": the 302
// comes back to the caller and B never sees a second request.
#[tokio::test]
async fn r11_a_redirect_to_a_capped_host_respects_its_cap() {
    let a = RateLimitServer::start().await.unwrap();
    let b = RateLimitServer::start().await.unwrap();
    b.set_default(Answer::ok(100).stall_body_after(1));
    a.set_default(Answer::status(302).header("location", b.url("/via-a")));
    let client = client_with(
        defaults()
            .max_in_use(4)
            .max_in_use_per_host(1)
            .acquire_timeout(Duration::from_secs(1)),
        RetryPolicy::default(),
        Arc::new(Record::default()),
    );
    let held_b = client.send(client.get(url(&b, "/direct"))).await.unwrap();
    assert_eq!(b.stats().in_flight, 1);
    let via_a = client.send(client.get(url(&a, "/start"))).await;
    let b_in_flight = b.stats().in_flight;
    assert_eq!(
        via_a.as_ref().map(reqwest::Response::status).ok(),
        Some(reqwest::StatusCode::FOUND),
        "the redirect is the response"
    );
    drop((held_b, via_a));
    assert!(
        b_in_flight <= 1,
        "host B had {b_in_flight} requests in flight with a per-host cap of 1 (reached via a redirect)"
    );
}
