//! Issue #24, tried as an attacker would, against the running dashboard: each finding
//! reproduced over real sockets. No Azurite needed: the API keys live in a file store, the
//! clusters and the upstream are testkit's in-process servers, and no test touches storage.

use std::time::{Duration, Instant};

use dashboard::local::{Simulation, SimulationOptions};
use dashboard::{
    ADMIN_TOKEN_HEADER, AdminToken, ConfigError, Dashboard, DashboardConfig, KeyStoreConfig,
    Running, StartError, StorageConfig, UpstreamConfig,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ADMIN: &str = "hardening-admin-token-0123456789";

struct Harness {
    _sim: Simulation,
    _dir: TempDir,
    dashboard: Dashboard,
    running: Running,
    http: reqwest::Client,
}

/// A directory removed on drop (the key file lives there).
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config(sim: &Simulation, dir: &std::path::Path) -> DashboardConfig {
    let upstream = url::Url::parse(&sim.upstream.url("/")).unwrap();
    let mut config = DashboardConfig::new(
        sim.clusters.iter().map(|c| c.config.clone()).collect(),
        // Never contacted by these tests.
        StorageConfig::new("https://127.0.0.1:9/devstoreaccount1", None),
        UpstreamConfig::new(upstream),
    );
    config.listen = ([127, 0, 0, 1], 0).into();
    config.keys = KeyStoreConfig::File {
        path: dir.join("keys.json"),
    };
    config.admin_token = Some(AdminToken::new(ADMIN));
    config
}

impl Harness {
    async fn start(adjust: impl FnOnce(&mut DashboardConfig), latency_ms: (u64, u64)) -> Self {
        let sim = Simulation::start(&SimulationOptions::default().latency_ms(latency_ms))
            .await
            .expect("simulation");
        let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "dashboard-hardening-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = config(&sim, &dir);
        adjust(&mut config);
        let dashboard = Dashboard::new(config, dashboard::local::credential()).expect("dashboard");
        let running = dashboard.serve().await.expect("serve");
        Self {
            _sim: sim,
            _dir: TempDir(dir),
            dashboard,
            running,
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.running.url())
    }

    async fn account(&self, id: &str) -> String {
        let response = self
            .http
            .post(self.url("/api/admin/accounts"))
            .header(ADMIN_TOKEN_HEADER, ADMIN)
            .header("content-type", "application/json")
            .body(json!({ "id": id }).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let body: Value = response
            .bytes()
            .await
            .map(|b| serde_json::from_slice(&b).unwrap())
            .unwrap();
        body["api_key"].as_str().unwrap().to_string()
    }

    /// Everything `/api/inspector` shows `key`, as text.
    async fn inspector_text(&self, key: &str) -> String {
        self.http
            .get(self.url("/api/inspector"))
            .header("x-api-key", key)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

// A path no route has answers like every other `/api/*` error: the key layer first (401 JSON
// without a key), then the JSON `not_found` envelope; a method a route does not have keeps
// axum's 405 with its `Allow` header.
#[tokio::test]
async fn an_unknown_path_answers_the_json_envelope_behind_the_key_check() {
    let h = Harness::start(|_| {}, (0, 0)).await;
    let key = h.account("alice").await;
    for path in ["/api/nothing-here", "/api/monitor/aks/x/y", "/nothing-here"] {
        let keyless = h.http.get(h.url(path)).send().await.unwrap();
        assert_eq!(keyless.status(), 401, "{path}");
        let response = h
            .http
            .get(h.url(path))
            .header("x-api-key", &key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path}");
        let body: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        assert_eq!(body["error"], "not_found", "{path}: {body}");
        assert!(body["message"].is_string(), "{path}: {body}");
    }
    let response = h
        .http
        .delete(h.url("/api/me"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET,HEAD");
}

// Finding 1: an empty admin token is refused at start, whatever builds the configuration.
#[tokio::test]
async fn an_empty_admin_token_is_refused_at_start() {
    let sim = Simulation::start(&SimulationOptions::default().latency_ms((0, 0)))
        .await
        .unwrap();
    let mut config = config(&sim, std::path::Path::new("/nonexistent"));
    config.admin_token = Some(AdminToken::new(""));
    let err = Dashboard::new(config, dashboard::local::credential()).unwrap_err();
    assert!(
        matches!(err, StartError::Config(ConfigError::AdminToken { .. })),
        "{err:?}"
    );
}

// Finding 1 and 5: an empty `x-admin-token` gets 403, and so does a missing one whatever the
// body (the token is checked before the body is parsed: no 400/415/422 oracle).
#[tokio::test]
async fn the_admin_route_checks_its_token_before_the_body() {
    let h = Harness::start(|_| {}, (0, 0)).await;
    for (token, content_type, body) in [
        (Some(""), "application/json", r#"{"id":"mallory"}"#),
        (None, "text/plain", "not json"),
        (None, "application/json", "{"),
        (
            Some("hardening-admin-token-012345678"),
            "application/json",
            r#"{"id":"m"}"#,
        ),
    ] {
        let mut request = h
            .http
            .post(h.url("/api/admin/accounts"))
            .header("content-type", content_type)
            .body(body);
        if let Some(token) = token {
            request = request.header(ADMIN_TOKEN_HEADER, token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 403, "{token:?} {content_type} {body}");
    }
    assert!(
        !h.account("alice").await.is_empty(),
        "the right token works"
    );
}

// Finding 2: an admin token (and any credential header or query parameter) sent to a
// mistyped path never shows in the inspector: keyless it is not recorded at all, with a key it
// is recorded redacted.
#[tokio::test]
async fn the_admin_header_and_credentials_never_reach_the_ring() {
    let h = Harness::start(|_| {}, (0, 0)).await;
    let key = h.account("alice").await;
    for key in [None, Some(key.as_str())] {
        let mut request = h
            .http
            .post(h.url("/api/admin/accounts/?sig=SECRET-sig&code=SECRET-code&page=2"))
            .header(ADMIN_TOKEN_HEADER, ADMIN)
            .header("x-ms-custom-sas", "SECRET-sas")
            .header("x-upstream-credential", "SECRET-cred")
            .body("{}");
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        let status = request.send().await.unwrap().status();
        assert_ne!(status, 201);
    }
    let shown = h.inspector_text(&key).await;
    let entries = h.dashboard.inspector().entries();
    assert_eq!(entries.len(), 1, "only the keyed request: {shown}");
    assert_eq!(entries[0].owner.as_deref(), Some("alice"));
    assert_eq!(
        entries[0].query.as_deref(),
        Some("sig=[redacted]&code=[redacted]&page=2")
    );
    for secret in [ADMIN, "SECRET", key.as_str()] {
        assert!(!shown.contains(secret), "{secret} shown: {shown}");
    }
    assert_eq!(h.dashboard.stats().rejected_unauthenticated, 1);
}

// Finding 3: keyless requests with junk headers leave the ring and the inspector's memory as
// they were (counted, not stored); a head over the header limit is refused by hyper (431).
#[tokio::test]
async fn a_keyless_junk_header_flood_leaves_the_ring_and_memory_unchanged() {
    let h = Harness::start(|_| {}, (0, 0)).await;
    let key = h.account("alice").await;
    let response = h
        .http
        .post(h.url("/api/nothing-here"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let before = h.dashboard.inspector().stats();
    assert_eq!(before.ring_len, 1);
    let junk = "j".repeat(1000);
    for i in 0..150 {
        let mut request = h.http.post(h.url("/api/blast/jobs"));
        for n in 0..12 {
            request = request.header(format!("x-junk-{n}"), &junk);
        }
        let status = request.body(format!("{i}")).send().await.unwrap().status();
        assert_eq!(status, 401);
    }
    // 360 KB of headers: refused before any handler runs.
    let mut request = h.http.get(h.url("/api/me"));
    for n in 0..360 {
        request = request.header(format!("x-junk-{n}"), &junk);
    }
    let status = request.send().await.map(|r| r.status().as_u16());
    assert!(matches!(status, Ok(431) | Err(_)), "{status:?}");
    let after = h.dashboard.inspector().stats();
    assert_eq!(after.ring_len, 1);
    assert_eq!(after.captured, before.captured);
    assert_eq!(after.ring_bytes, before.ring_bytes);
    assert_eq!(after.peak_retained_bytes, before.peak_retained_bytes);
    assert_eq!(h.dashboard.stats().rejected_unauthenticated, 150);
    assert_eq!(
        h.dashboard.inspector().entries()[0].owner.as_deref(),
        Some("alice")
    );
}

// Finding 4: 1 000 slow-loris sockets (a partial request head, then nothing) are closed by the
// header-read timeout and the connection count returns to its baseline, while a real client is
// still served. The timeout is short here (300 ms) so the test takes about a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_sockets_are_closed_by_the_header_timeout() {
    let h = Harness::start(|c| c.header_read_timeout_ms = 300, (0, 0)).await;
    let key = h.account("alice").await;
    let addr = h.running.addr();
    let started = Instant::now();
    let mut sockets = Vec::new();
    for _ in 0..1000 {
        let mut socket = TcpStream::connect(addr).await.expect("connect");
        socket
            .write_all(b"GET /api/me HTTP/1.1\r\nHost: x\r\nx-api-")
            .await
            .unwrap();
        sockets.push(socket);
    }
    // A client of its own: the harness's pooled connection (from `account`) idles while the
    // 1 000 sockets open, and past the 300 ms header timeout the server closes it; a reused
    // closed connection fails with `IncompleteMessage` (seen once in CI on a loaded machine).
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let served = fresh
        .get(h.url("/api/me"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200, "a real client is served meanwhile");
    let closed = futures::future::join_all(sockets.into_iter().map(|mut socket| async move {
        let mut buf = [0_u8; 512];
        // EOF (or a reset) once hyper gives up on the head; anything it answers first is read.
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => {}
                }
            }
        })
        .await
        .unwrap_or(false)
    }))
    .await;
    let open = closed.iter().filter(|c| !**c).count();
    assert_eq!(open, 0, "{open} slow sockets still open");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.dashboard.stats().connections_open > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = h.dashboard.stats();
    assert!(stats.connections_open <= 1, "{stats:?}"); // reqwest's idle keep-alive at most
    assert!(stats.connections_accepted >= 1000, "{stats:?}");
}

// Finding 4: a connection cap holds: past it, clients wait instead of costing the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_wait_for_a_slot() {
    let h = Harness::start(|c| c.max_connections = 4, (0, 0)).await;
    let addr = h.running.addr();
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats = h.dashboard.stats();
    assert_eq!(stats.connections_open, 4, "{stats:?}");
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.dashboard.stats().connections_open > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        h.http.get(h.url("/healthz")).send().await.unwrap().status(),
        200
    );
}

// Server limits: a request slower than the request timeout is answered 503 `request_timeout`;
// a body over the body limit gets 413.
#[tokio::test]
async fn the_request_timeout_and_body_limit_hold() {
    let h = Harness::start(|c| c.body_limit_bytes = 1024, (150, 150)).await;
    // The account is made on an instance with the default timeout: creating it syncs the key
    // file, which alone can take longer than 20 ms on a busy disk. A second instance over the
    // same key file has the tight timeout.
    let key = h.account("alice").await;
    let mut config = h.dashboard.config().clone();
    config.request_timeout_ms = 20;
    let tight = Dashboard::new(config, dashboard::local::credential()).expect("dashboard");
    let running = tight.serve().await.expect("serve");
    let url = |path: &str| format!("{}{path}", running.url());
    let response = h
        .http
        .get(url("/api/monitor/aks"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response
        .bytes()
        .await
        .map(|b| serde_json::from_slice(&b).unwrap())
        .unwrap();
    assert_eq!(body["error"], "request_timeout");
    let response = h
        .http
        .post(url("/api/admin/accounts"))
        .header(ADMIN_TOKEN_HEADER, ADMIN)
        .header("content-type", "application/json")
        .body(format!(r#"{{"id":"bob","name":"{}"}}"#, "n".repeat(4096)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
}

// Finding 5: the page carries a CSP naming its own script, frame-ancestors, nosniff and a
// referrer policy; every /api answer (a 401 included) says no-store.
#[tokio::test]
async fn security_headers_are_present_on_the_page_and_the_api() {
    let h = Harness::start(|_| {}, (0, 0)).await;
    let page = h.http.get(h.url("/")).send().await.unwrap();
    let headers = page.headers().clone();
    let csp = headers["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    for part in [
        "default-src 'none'",
        "script-src 'sha256-",
        "frame-ancestors 'none'",
        "connect-src 'self'",
    ] {
        assert!(csp.contains(part), "{part} missing: {csp}");
    }
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    let html = page.text().await.unwrap();
    assert!(
        !html.contains("style=\""),
        "inline style attributes break the CSP"
    );
    assert!(
        html.contains("Math.max(2,"),
        "the page clamps its polling interval"
    );
    let api = h.http.get(h.url("/api/me")).send().await.unwrap();
    assert_eq!(api.status(), 401);
    assert_eq!(api.headers()["cache-control"], "no-store");
    assert_eq!(api.headers()["x-content-type-options"], "nosniff");
}

// Finding 5 (A8 through the dashboard): unknown and revoked keys get the same 401 body.
#[tokio::test]
async fn unknown_keys_get_the_uniform_401() {
    let h = Harness::start(|_| {}, (0, 0)).await;
    let response = h
        .http
        .get(h.url("/api/me"))
        .header("x-api-key", "ak_unknown")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response
        .bytes()
        .await
        .map(|b| serde_json::from_slice(&b).unwrap())
        .unwrap();
    assert!(!body.to_string().contains("revoked"), "{body}");
}

// Finding 5: a 401 carries an `x-request-id` like every other answer (an operator correlating
// a rejected call with the logs needs it): an incoming valid id is echoed, otherwise one is made.
#[tokio::test]
async fn rejected_requests_carry_a_request_id() {
    let h = Harness::start(|_| {}, (0, 0)).await;
    let echoed = h
        .http
        .get(h.url("/api/me"))
        .header("x-api-key", "ak_unknown")
        .header("x-request-id", "trace-7")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.status(), 401);
    assert_eq!(echoed.headers()["x-request-id"], "trace-7");
    let fresh = h.http.get(h.url("/api/me")).send().await.unwrap();
    assert_eq!(fresh.status(), 401);
    let id = fresh.headers()["x-request-id"].to_str().unwrap();
    assert!(
        !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    let key = h.account("acme").await;
    let ok = h
        .http
        .get(h.url("/api/me"))
        .header("x-api-key", &key)
        .header("x-request-id", "trace-8")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let ids: Vec<_> = ok.headers().get_all("x-request-id").iter().collect();
    assert_eq!(ids, ["trace-8"], "one id, the caller's, end to end");
}

// Each account reads only its own inspector entries.
#[tokio::test]
async fn each_account_sees_only_its_own_inspector_entries() {
    let h = Harness::start(|_| {}, (0, 0)).await;
    let alice = h.account("alice").await;
    let bob = h.account("bob").await;
    for (key, path) in [(&alice, "/api/alice-was-here"), (&bob, "/api/bob-was-here")] {
        let _ = h
            .http
            .delete(h.url(path))
            .header("x-api-key", key.as_str())
            .send()
            .await
            .unwrap();
    }
    let seen_by_alice = h.inspector_text(&alice).await;
    assert!(seen_by_alice.contains("alice-was-here"), "{seen_by_alice}");
    assert!(!seen_by_alice.contains("bob-was-here"), "{seen_by_alice}");
}

// The header-read timeout also bounds an idle keep-alive connection: once a response is sent,
// the next head must start arriving within the timeout.
#[tokio::test]
async fn idle_keep_alive_connections_close_after_the_header_timeout() {
    let h = Harness::start(|c| c.header_read_timeout_ms = 200, (0, 0)).await;
    let mut socket = TcpStream::connect(h.running.addr()).await.unwrap();
    socket
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0_u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the idle connection stayed open");
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
}
