//! Black-box tests of the dashboard service, written from docs/dashboard.md, the SPEC (A, I, K,
//! W, X) and seed 001, against its HTTP API over real loopback sockets and its public Rust API.
//!
//! No Azurite: API keys live in apikey-cache's keyed file store, the clusters and the upstream
//! are testkit's in-process servers, and Blob storage points at a dead (or black-holed) port, so
//! every storage-backed route shows how the service degrades.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use apikey_cache::{ApiKeyCache, CacheConfig, FileStore, KeyId, MemoryStore};
use base64::Engine as _;
use dashboard::local::{Simulation, SimulationOptions};
use dashboard::{
    ADMIN_TOKEN_HEADER, AdminToken, ConfigError, Dashboard, DashboardConfig, KeyStoreConfig, Mode,
    Running, StartError, StorageConfig, UpstreamConfig,
};
use serde_json::{Value, json};
use sha2::Digest as _;
use testkit::k8s::{Fault, Route};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ADMIN: &str = "blackbox-admin-token-0123456789abcdef";
/// Storage nobody listens on (connection refused).
const DEAD_STORAGE: &str = "https://127.0.0.1:9/devstoreaccount1";

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "dashboard-blackbox-{tag}-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Harness {
    sim: Simulation,
    dir: TempDir,
    dashboard: Dashboard,
    running: Option<Running>,
    addr: SocketAddr,
}

fn base_config(sim: &Simulation, keys_dir: &Path, storage: &str) -> DashboardConfig {
    let upstream = url::Url::parse(&sim.upstream.url("/")).unwrap();
    let mut config = DashboardConfig::new(
        sim.clusters.iter().map(|c| c.config.clone()).collect(),
        StorageConfig::new(storage, None),
        UpstreamConfig::new(upstream),
    );
    config.listen = ([127, 0, 0, 1], 0).into();
    config.keys = KeyStoreConfig::KeyedFile {
        dir: keys_dir.to_path_buf(),
    };
    config.admin_token = Some(AdminToken::new(ADMIN));
    config
}

impl Harness {
    async fn start(adjust: impl FnOnce(&mut DashboardConfig)) -> Self {
        Self::start_with(DEAD_STORAGE, adjust).await
    }

    async fn start_with(storage: &str, adjust: impl FnOnce(&mut DashboardConfig)) -> Self {
        dashboard::ensure_crypto_provider();
        let sim = Simulation::start(&SimulationOptions::default().latency_ms((0, 0)))
            .await
            .expect("simulation");
        let dir = TempDir::new("keys");
        let mut config = base_config(&sim, &dir.0.join("keys"), storage);
        adjust(&mut config);
        let dashboard = Dashboard::new(config, dashboard::local::credential()).expect("dashboard");
        let running = dashboard.serve().await.expect("serve");
        let addr = running.addr();
        Self {
            sim,
            dir,
            dashboard,
            running: Some(running),
            addr,
        }
    }

    /// Create an account through the admin route; its (key, key id).
    async fn account(&self, id: &str) -> (String, String) {
        let body = json!({ "id": id, "name": format!("{id} inc") }).to_string();
        let r = send(
            self.addr,
            "POST",
            "/api/admin/accounts",
            &[
                (ADMIN_TOKEN_HEADER, ADMIN.as_bytes()),
                ("content-type", b"application/json"),
            ],
            body.as_bytes(),
        )
        .await;
        assert_eq!(r.status, 201, "account {id}: {}", r.text());
        let v = r.json();
        (
            v["api_key"].as_str().unwrap().to_string(),
            v["key_id"].as_str().unwrap().to_string(),
        )
    }

    async fn get(&self, path: &str, key: &str) -> Resp {
        send(
            self.addr,
            "GET",
            path,
            &[("x-api-key", key.as_bytes())],
            b"",
        )
        .await
    }
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 client: full control over bytes, duplicate headers, paths and pacing.
// ---------------------------------------------------------------------------------------------

/// Request headers borrowed, and owned.
type Headers<'a> = Vec<(&'a str, &'a [u8])>;
type OwnedHeaders = Vec<(&'static str, Vec<u8>)>;

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.text()))
    }

    /// Headers and body as one text, to look for leaks.
    fn everything(&self) -> String {
        let mut s = String::new();
        for (n, v) in &self.headers {
            s.push_str(&format!("{n}: {v}\n"));
        }
        s.push_str(&self.text());
        s
    }
}

fn request(method: &str, target: &str, headers: &[(&str, &[u8])], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n")
        .into_bytes();
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    let has_length = headers.iter().any(|(n, _)| {
        n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("transfer-encoding")
    });
    if !has_length && (!body.is_empty() || method == "POST") {
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = String::from_utf8_lossy(&data[..end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim().to_string();
        let Ok(size) = usize::from_str_radix(&size_text, 16) else {
            return out;
        };
        data = &data[end + 2..];
        if size == 0 || data.len() < size {
            out.extend_from_slice(&data[..size.min(data.len())]);
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[(size + 2).min(data.len())..];
    }
}

fn parse_response(raw: &[u8]) -> Option<Resp> {
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            Some((n.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect();
    let body_raw = &raw[head_end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        dechunk(body_raw)
    } else {
        body_raw.to_vec()
    };
    Some(Resp {
        status,
        headers,
        body,
    })
}

/// Send raw bytes, read until the server closes (or 20 s), parse. `None`: no parsable answer.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Option<Resp> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    // The server may answer (431, 413) and close before everything is written.
    let _ = stream.write_all(bytes).await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    parse_response(&raw)
}

async fn send(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> Resp {
    exchange(addr, &request(method, target, headers, body))
        .await
        .unwrap_or_else(|| panic!("no answer to {method} {target}"))
}

/// The JSON error body every documented error answer carries: `{"error": code, ...}`.
fn assert_json_error(r: &Resp, what: &str) -> String {
    let ct = r.header("content-type").unwrap_or("");
    assert!(
        ct.starts_with("application/json"),
        "{what}: error answer {} is not JSON (content-type {ct:?}): {}",
        r.status,
        r.text()
    );
    let v = r.json();
    let code = v["error"].as_str();
    assert!(
        code.is_some_and(|c| !c.is_empty()),
        "{what}: no `error` code in {}",
        r.text()
    );
    code.unwrap().to_string()
}

/// A well-formed key (right prefix, length and checksum) that no dashboard ever issued.
async fn foreign_well_formed_key() -> String {
    let cache = ApiKeyCache::new(MemoryStore::keyed(), CacheConfig::default());
    let account = cache.create_account("stranger", "Stranger").await.unwrap();
    cache
        .issue_key(&account)
        .await
        .unwrap()
        .secret
        .expose()
        .to_string()
}

/// Every `/api/*` route the guide lists, with a method and body that would pass if authenticated.
fn keyed_routes() -> Vec<(&'static str, &'static str, &'static [u8])> {
    vec![
        ("GET", "/api/monitor/aks", b""),
        ("GET", "/api/monitor/aks/aks-eastus", b""),
        ("GET", "/api/monitor/jobs", b""),
        ("GET", "/api/monitor/jobs?cluster=aks-eastus", b""),
        ("GET", "/api/warmup", b""),
        ("GET", "/api/warmup/aks-eastus", b""),
        ("GET", "/api/monitor/storage", b""),
        ("GET", "/api/blast/jobs", b""),
        ("GET", "/api/blast/jobs?limit=5", b""),
        ("POST", "/api/blast/jobs", br#"{"name":"job"}"#),
        ("GET", "/api/me", b""),
        ("GET", "/api/inspector", b""),
        ("GET", "/api/stats", b""),
        ("GET", "/api/does-not-exist", b""),
        ("DELETE", "/api/blast/jobs", b""),
        ("GET", "/not-a-route", b""),
    ]
}

// ---------------------------------------------------------------------------------------------
// A8: authentication on every route
// ---------------------------------------------------------------------------------------------

// covers A8, I6 ("requests rejected before authentication are counted, not stored"), docs
// "Every `/api/*` route except the admin one needs `x-api-key`" and "Every other unknown path
// goes through the API-key layer (401)".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a8_every_keyed_route_rejects_bad_keys_with_a_json_401() {
    let h = Harness::start(|_| {}).await;
    let (valid, _) = h.account("alice").await;
    let foreign = foreign_well_formed_key().await;
    let mut bad_checksum = valid.clone();
    let last = bad_checksum.pop().unwrap();
    bad_checksum.push(if last == 'A' { 'B' } else { 'A' });
    let long = format!("ak_{}", "x".repeat(300));
    let eight_k = format!("ak_{}", "y".repeat(8 * 1024));
    let mut non_ascii = b"ak_".to_vec();
    non_ascii.extend_from_slice("ünïcødé-ключ-🔑".as_bytes());
    let mut latin1 = valid.as_bytes().to_vec();
    latin1[5] = 0xe9;

    // (label, headers)
    let variants: Vec<(&str, OwnedHeaders)> = vec![
        ("missing", vec![]),
        ("empty", vec![("x-api-key", b"".to_vec())]),
        ("blank", vec![("x-api-key", b"   ".to_vec())]),
        ("junk", vec![("x-api-key", b"letmein".to_vec())]),
        (
            "bad checksum",
            vec![("x-api-key", bad_checksum.into_bytes())],
        ),
        (
            "unknown well-formed",
            vec![("x-api-key", foreign.clone().into_bytes())],
        ),
        ("too long", vec![("x-api-key", long.into_bytes())]),
        ("8 KiB", vec![("x-api-key", eight_k.into_bytes())]),
        ("non-ascii utf-8", vec![("x-api-key", non_ascii)]),
        ("latin-1 byte in a valid key", vec![("x-api-key", latin1)]),
        ("tab inside", vec![("x-api-key", b"ak_abc\tdef".to_vec())]),
        (
            "duplicated valid + junk",
            vec![
                ("x-api-key", valid.clone().into_bytes()),
                ("x-api-key", b"junk".to_vec()),
            ],
        ),
        (
            "duplicated junk + valid",
            vec![
                ("x-api-key", b"junk".to_vec()),
                ("x-api-key", valid.clone().into_bytes()),
            ],
        ),
        (
            "duplicated valid + valid",
            vec![
                ("x-api-key", valid.clone().into_bytes()),
                ("x-api-key", valid.clone().into_bytes()),
            ],
        ),
        (
            "bearer instead of x-api-key",
            vec![("authorization", format!("Bearer {valid}").into_bytes())],
        ),
        (
            "cookie instead of x-api-key",
            vec![("cookie", format!("x-api-key={valid}").into_bytes())],
        ),
    ];

    let mut rejected = 0u64;
    for (method, path, body) in keyed_routes() {
        for (label, headers) in &variants {
            let mut hs: Vec<(&str, &[u8])> =
                headers.iter().map(|(n, v)| (*n, v.as_slice())).collect();
            if method == "POST" {
                hs.push(("content-type", b"application/json"));
            }
            let r = send(h.addr, method, path, &hs, body).await;
            let what = format!("{method} {path} with {label} key");
            assert_eq!(r.status, 401, "{what}: {}", r.text());
            rejected += 1;
            let code = assert_json_error(&r, &what);
            assert!(
                code.contains("api_key"),
                "{what}: code {code:?} is not an API-key error"
            );
            // The answer never echoes what was presented (nor the real key).
            let shown = r.everything();
            for (_, v) in headers {
                if v.len() >= 6 {
                    let v = String::from_utf8_lossy(v);
                    assert!(
                        !shown.contains(v.as_ref()),
                        "{what}: echoes the key: {shown}"
                    );
                }
            }
            assert!(!shown.contains(&valid), "{what}: shows the valid key");
        }
        // A valid key (the right header, any case of its name) is accepted on the same route.
        let mut hs: Vec<(&str, &[u8])> = vec![("X-API-KEY", valid.as_bytes())];
        if method == "POST" {
            hs.push(("content-type", b"application/json"));
        }
        let r = send(h.addr, method, path, &hs, body).await;
        assert_ne!(
            r.status,
            401,
            "{method} {path} with the valid key: {}",
            r.text()
        );
        assert_ne!(
            r.status,
            500,
            "{method} {path} with the valid key: {}",
            r.text()
        );
    }
    // Not one rejected request reached the inspector's ring; every one was counted.
    let stats = h.dashboard.stats();
    assert!(
        stats.rejected_unauthenticated >= rejected,
        "rejected_unauthenticated {} < {rejected}",
        stats.rejected_unauthenticated
    );
    let entries = h.dashboard.inspector().entries();
    assert!(
        entries.iter().all(|e| e.owner.as_deref() == Some("alice")),
        "a keyless request was stored: {entries:?}"
    );
}

// The naive mode (the seeds' behaviours, for comparison) still runs behind the same guards:
// every keyed route 401 JSON without a key, security headers, and no secret in `/api/stats`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn naive_mode_keeps_the_same_guards() {
    let h = Harness::start(|c| c.mode = Mode::Naive).await;
    let (key, _) = h.account("nadia").await;
    for (method, path, body) in keyed_routes() {
        let r = send(
            h.addr,
            method,
            path,
            &[("content-type", b"application/json")],
            body,
        )
        .await;
        let what = format!("naive {method} {path}");
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        assert_json_error(&r, &what);
        assert_eq!(
            r.header("x-content-type-options"),
            Some("nosniff"),
            "{what}"
        );
    }
    let stats = h.get("/api/stats", &key).await;
    assert_eq!(stats.status, 200);
    assert_eq!(stats.json()["mode"], "naive");
    assert!(!stats.text().contains(&key), "stats show the key");
    assert!(!stats.text().contains(ADMIN), "stats show the admin token");
    let view = h.get("/api/inspector", &key).await;
    assert!(!view.text().contains(&key), "naive inspector shows the key");
}

// covers A8 and the head limit: a 1 MB key never reaches the handler and never gets a 200/500.
#[tokio::test]
async fn a8_a_one_megabyte_key_is_refused_without_a_crash() {
    let h = Harness::start(|_| {}).await;
    let huge = vec![b'k'; 1024 * 1024];
    for path in ["/api/me", "/api/stats", "/api/inspector"] {
        // docs: "a head-size limit (431 beyond)"; a connection closed on us is also a refusal.
        if let Some(r) = exchange(h.addr, &request("GET", path, &[("x-api-key", &huge)], b"")).await
        {
            assert!(
                r.status == 431 || r.status == 401,
                "GET {path} with a 1 MB key: {} {}",
                r.status,
                r.text()
            );
        }
    }
    // Still serving.
    let r = send(h.addr, "GET", "/healthz", &[], b"").await;
    assert_eq!(r.status, 200);
}

// covers A8 (unknown and revoked keys indistinguishable: docs "unknown and revoked keys get the
// same 401 body") and A11 (a revocation written by another instance reaches this one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a8_a11_revoked_and_unknown_keys_get_byte_identical_401s() {
    let h = Harness::start(|_| {}).await;
    let (key, key_id) = h.account("carol").await;
    assert_eq!(h.get("/api/me", &key).await.status, 200);
    // Another instance (apikey-cache over the same keyed directory) revokes the key.
    let other = ApiKeyCache::new(
        FileStore::keyed(h.dir.0.join("keys")),
        CacheConfig::default(),
    );
    other.revoke_key(&KeyId::new(key_id)).await.expect("revoke");
    let deadline = Instant::now() + Duration::from_secs(15);
    let revoked = loop {
        let r = h.get("/api/me", &key).await;
        if r.status == 401 {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "revoked key still accepted after 15 s (A11: one poll, 2 s): {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let unknown = h.get("/api/me", &foreign_well_formed_key().await).await;
    assert_eq!(unknown.status, 401);
    assert_eq!(
        revoked.body,
        unknown.body,
        "revoked vs unknown bodies differ: {} vs {}",
        revoked.text(),
        unknown.text()
    );
    let strip = |r: &Resp| {
        let mut hs: Vec<_> = r
            .headers
            .iter()
            .filter(|(n, _)| n != "x-request-id" && n != "date")
            .cloned()
            .collect();
        hs.sort();
        hs
    };
    assert_eq!(
        strip(&revoked),
        strip(&unknown),
        "revoked vs unknown headers differ"
    );
    assert!(!revoked.text().to_lowercase().contains("revoked"));
}

// covers A5, A12 through the service: junk keys cost no store read; one unknown well-formed key
// repeated is negatively cached instead of read each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a5_a12_a_flood_of_bad_keys_does_not_become_a_flood_of_store_reads() {
    let h = Harness::start(|_| {}).await;
    let (_key, _) = h.account("dave").await;
    let before = h.dashboard.stats().key_store_loads;
    let mut tasks = Vec::new();
    for i in 0..300u32 {
        let addr = h.addr;
        tasks.push(tokio::spawn(async move {
            let key = format!("ak_{:048x}", u64::from(i) * 7919);
            send(
                addr,
                "GET",
                "/api/me",
                &[("x-api-key", key.as_bytes())],
                b"",
            )
            .await
            .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 401);
    }
    let junk_reads = h.dashboard.stats().key_store_loads - before;
    let unknown = foreign_well_formed_key().await;
    let before = h.dashboard.stats().key_store_loads;
    for _ in 0..200 {
        assert_eq!(h.get("/api/me", &unknown).await.status, 401);
    }
    let unknown_reads = h.dashboard.stats().key_store_loads - before;
    // Background change-feed reads (every 2 s) also count: allow a few.
    assert!(
        junk_reads <= 3,
        "300 checksum-failing keys caused {junk_reads} store reads (A12: zero)"
    );
    assert!(
        unknown_reads <= 4,
        "one unknown key 200 times caused {unknown_reads} store reads (A5: negative cache)"
    );
}

// ---------------------------------------------------------------------------------------------
// Admin route
// ---------------------------------------------------------------------------------------------

// docs: "none (admin route answers 403)" when no token is configured.
#[tokio::test]
async fn admin_route_without_a_configured_token_answers_403_to_everything() {
    let h = Harness::start(|c| c.admin_token = None).await;
    for token in [&b""[..], b"anything", ADMIN.as_bytes()] {
        let r = send(
            h.addr,
            "POST",
            "/api/admin/accounts",
            &[
                (ADMIN_TOKEN_HEADER, token),
                ("content-type", b"application/json"),
            ],
            br#"{"id":"eve"}"#,
        )
        .await;
        assert_eq!(r.status, 403, "{}", r.text());
        assert_json_error(&r, "admin without a token configured");
    }
}

// docs: the admin route needs `x-admin-token` (an API key is not an admin token); its answer says
// `Cache-Control: no-store`; the key is shown once; bad bodies with a good token are typed 4xx.
#[tokio::test]
async fn admin_route_bad_bodies_are_typed_4xx_and_an_api_key_is_no_admin_token() {
    let h = Harness::start(|_| {}).await;
    let (key, key_id) = h.account("frank").await;
    // An API key does not open the admin route.
    let r = send(
        h.addr,
        "POST",
        "/api/admin/accounts",
        &[
            ("x-api-key", key.as_bytes()),
            ("content-type", b"application/json"),
        ],
        br#"{"id":"mallory"}"#,
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    // A token that differs only in case or by a trailing byte is refused.
    for token in [
        ADMIN.to_uppercase(),
        format!("{ADMIN}x"),
        ADMIN[..ADMIN.len() - 1].to_string(),
    ] {
        let r = send(
            h.addr,
            "POST",
            "/api/admin/accounts",
            &[
                (ADMIN_TOKEN_HEADER, token.as_bytes()),
                ("content-type", b"application/json"),
            ],
            br#"{"id":"mallory"}"#,
        )
        .await;
        assert_eq!(r.status, 403, "token {token:?}: {}", r.text());
        assert!(!r.text().contains(ADMIN), "echoes the admin token");
    }

    let long_id = "a".repeat(20_000);
    let long_name = "n".repeat(40_000);
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        ("malformed JSON", "application/json", b"{".to_vec()),
        ("array", "application/json", b"[]".to_vec()),
        ("string", "application/json", br#""frank""#.to_vec()),
        ("null", "application/json", b"null".to_vec()),
        ("empty object", "application/json", b"{}".to_vec()),
        ("numeric id", "application/json", br#"{"id": 5}"#.to_vec()),
        (
            "huge number id",
            "application/json",
            br#"{"id": 1e999999}"#.to_vec(),
        ),
        (
            "wrong content type",
            "text/plain",
            br#"{"id":"plain"}"#.to_vec(),
        ),
        ("no content type", "", br#"{"id":"nothing"}"#.to_vec()),
        ("empty id", "application/json", br#"{"id":""}"#.to_vec()),
        (
            "dot-dot id",
            "application/json",
            br#"{"id":"../x"}"#.to_vec(),
        ),
        ("slash id", "application/json", br#"{"id":"a/b"}"#.to_vec()),
        (
            "long id",
            "application/json",
            json!({ "id": long_id }).to_string().into_bytes(),
        ),
        (
            "long name",
            "application/json",
            json!({ "id": "longname", "name": long_name })
                .to_string()
                .into_bytes(),
        ),
        (
            "unicode id",
            "application/json",
            json!({ "id": "ünï🔑", "name": "Ünï" })
                .to_string()
                .into_bytes(),
        ),
        (
            "control chars in id",
            "application/json",
            json!({ "id": "a\u{0}b\nc" }).to_string().into_bytes(),
        ),
        (
            "duplicate account",
            "application/json",
            br#"{"id":"frank"}"#.to_vec(),
        ),
        (
            "deep nesting",
            "application/json",
            format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes(),
        ),
        (
            "invalid utf-8",
            "application/json",
            b"{\"id\":\"\xff\xfe\"}".to_vec(),
        ),
    ];
    for (label, ct, body) in cases {
        let mut hs: Vec<(&str, &[u8])> = vec![(ADMIN_TOKEN_HEADER, ADMIN.as_bytes())];
        if !ct.is_empty() {
            hs.push(("content-type", ct.as_bytes()));
        }
        let r = send(h.addr, "POST", "/api/admin/accounts", &hs, &body).await;
        assert!(r.status < 500, "admin {label}: {} {}", r.status, r.text());
        if r.status == 201 {
            // Accepted: fine for unicode or long names; the answer must still be no-store.
            assert_eq!(r.header("cache-control"), Some("no-store"), "admin {label}");
        } else {
            assert!(
                (400..500).contains(&r.status),
                "admin {label}: {} {}",
                r.status,
                r.text()
            );
        }
        assert!(
            !r.everything().contains(ADMIN),
            "admin {label} echoes the token"
        );
    }
    // The key shown once is a working key; `/api/me` names the account and key id, never the key.
    let me = h.get("/api/me", &key).await;
    assert_eq!(me.status, 200);
    assert!(me.text().contains("frank"), "{}", me.text());
    assert!(me.text().contains(&key_id), "{}", me.text());
    assert!(!me.text().contains(&key), "/api/me shows the plaintext key");
    assert!(key.starts_with("ak_") && key.len() == 51, "{key}");
}

// ---------------------------------------------------------------------------------------------
// Browser hardening: headers, CSP, CORS, methods, traversal
// ---------------------------------------------------------------------------------------------

// docs "Browser": every answer nosniff + no-referrer; `/api/*` answers no-store (errors too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_the_documented_security_headers() {
    let h = Harness::start(|c| c.body_limit_bytes = 1024).await;
    let (key, _) = h.account("gina").await;
    let k = key.as_bytes();
    let big = vec![b'x'; 4096];
    let json: &[u8] = b"application/json";
    type Case<'a> = (&'a str, &'a str, Headers<'a>, &'a [u8], Option<u16>);
    let cases: Vec<Case<'_>> = vec![
        ("GET", "/", vec![], b"", Some(200)),
        ("HEAD", "/", vec![], b"", Some(200)),
        ("GET", "/healthz", vec![], b"", Some(200)),
        ("GET", "/favicon.ico", vec![], b"", Some(204)),
        ("GET", "/metrics", vec![], b"", Some(404)),
        ("GET", "/nope", vec![], b"", Some(401)),
        ("GET", "/api/me", vec![], b"", Some(401)),
        ("GET", "/api/me", vec![("x-api-key", k)], b"", Some(200)),
        ("GET", "/api/stats", vec![("x-api-key", k)], b"", Some(200)),
        ("GET", "/api/nope", vec![("x-api-key", k)], b"", None),
        ("DELETE", "/api/me", vec![("x-api-key", k)], b"", None),
        (
            "GET",
            "/api/warmup/no-such-cluster",
            vec![("x-api-key", k)],
            b"",
            Some(404),
        ),
        (
            "POST",
            "/api/blast/jobs",
            vec![("x-api-key", k), ("content-type", json)],
            &big,
            Some(413),
        ),
        (
            "POST",
            "/api/admin/accounts",
            vec![("content-type", json)],
            b"{}",
            Some(403),
        ),
        (
            "POST",
            "/api/admin/accounts",
            vec![
                (ADMIN_TOKEN_HEADER, ADMIN.as_bytes()),
                ("content-type", json),
            ],
            &big,
            Some(413),
        ),
    ];
    for (method, path, headers, body, expect) in cases {
        let r = send(h.addr, method, path, &headers, body).await;
        let what = format!("{method} {path} -> {}", r.status);
        if let Some(expect) = expect {
            assert_eq!(r.status, expect, "{what}: {}", r.text());
        }
        assert_ne!(r.status, 500, "{what}");
        assert_eq!(
            r.header("x-content-type-options"),
            Some("nosniff"),
            "{what}: nosniff missing"
        );
        assert_eq!(
            r.header("referrer-policy"),
            Some("no-referrer"),
            "{what}: referrer-policy missing"
        );
        if path.starts_with("/api/") {
            assert_eq!(
                r.header("cache-control"),
                Some("no-store"),
                "{what}: /api answer without no-store"
            );
        }
        if path == "/favicon.ico" {
            let cc = r.header("cache-control").unwrap_or("");
            assert!(cc.contains("max-age=86400"), "{what}: favicon cache {cc:?}");
        }
        if path == "/healthz" {
            assert_eq!(r.text().trim(), "ok");
        }
    }
}

fn sha256_b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(text.as_bytes()))
}

/// The contents of every `<tag>…</tag>` block (tags without attributes other than these).
fn inline_blocks(html: &str, tag: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = html;
    let open = format!("<{tag}");
    let close = format!("</{tag}>");
    while let Some(start) = rest.find(&open) {
        let after = &rest[start..];
        let Some(gt) = after.find('>') else { break };
        let opening = &after[..gt];
        let body = &after[gt + 1..];
        let Some(end) = body.find(&close) else { break };
        if !opening.contains("src=") {
            out.push(body[..end].to_string());
        }
        rest = &body[end + close.len()..];
    }
    out
}

// docs "Browser": the CSP names the page's own inline script and style by hash, default-src
// 'none', connect-src 'self', frame-ancestors 'none'; X-Frame-Options DENY. The hashes must be
// the hashes of what the page actually contains, or the page breaks (or, with a wildcard, the
// CSP protects nothing).
#[tokio::test]
async fn the_page_csp_hashes_match_its_inline_script_and_style() {
    let h = Harness::start(|_| {}).await;
    for target in ["/", "/?interval=1", "/?interval=99999999999999999999999"] {
        let r = send(h.addr, "GET", target, &[], b"").await;
        assert_eq!(r.status, 200, "{target}");
        assert_eq!(r.header("x-frame-options"), Some("DENY"), "{target}");
        let csp = r
            .header("content-security-policy")
            .unwrap_or("")
            .to_string();
        for needed in [
            "default-src 'none'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(needed), "{target}: CSP lacks {needed}: {csp}");
        }
        for forbidden in ["'unsafe-inline'", "'unsafe-eval'", " * ", "data:", "http:"] {
            assert!(
                !csp.contains(forbidden),
                "{target}: CSP allows {forbidden}: {csp}"
            );
        }
        let html = r.text();
        let scripts = inline_blocks(&html, "script");
        assert!(!scripts.is_empty(), "the page has no inline script");
        for script in &scripts {
            let hash = format!("'sha256-{}'", sha256_b64(script));
            assert!(
                csp.contains(&hash),
                "{target}: script hash {hash} not in CSP {csp}"
            );
        }
        for style in inline_blocks(&html, "style") {
            let hash = format!("'sha256-{}'", sha256_b64(&style));
            assert!(
                csp.contains(&hash),
                "{target}: style hash {hash} not in CSP {csp}"
            );
        }
        // The key never travels to the server: the page reads it from the fragment.
        assert!(
            html.contains("#key") || html.contains("hash"),
            "fragment handling"
        );
    }
}

// Threat model "a browser tab on another site": no CORS is documented, so no answer may grant a
// foreign origin access, preflights included; TRACE never reflects the request (XST).
#[tokio::test]
async fn no_cors_grant_for_a_foreign_origin_and_trace_never_echoes() {
    let h = Harness::start(|_| {}).await;
    let (key, _) = h.account("hank").await;
    let k = key.as_bytes();
    let origin: &[u8] = b"https://evil.example";
    let cases: Vec<(&str, &str, Headers<'_>)> = vec![
        ("GET", "/api/me", vec![("origin", origin), ("x-api-key", k)]),
        (
            "GET",
            "/api/stats",
            vec![("origin", origin), ("x-api-key", k)],
        ),
        ("GET", "/", vec![("origin", origin)]),
        (
            "OPTIONS",
            "/api/me",
            vec![
                ("origin", origin),
                ("access-control-request-method", b"GET"),
                ("access-control-request-headers", b"x-api-key"),
            ],
        ),
        (
            "OPTIONS",
            "/api/blast/jobs",
            vec![
                ("origin", origin),
                ("access-control-request-method", b"POST"),
                ("access-control-request-headers", b"x-api-key,content-type"),
            ],
        ),
        (
            "OPTIONS",
            "/api/admin/accounts",
            vec![
                ("origin", origin),
                ("access-control-request-method", b"POST"),
                ("access-control-request-headers", b"x-admin-token"),
            ],
        ),
        (
            "TRACE",
            "/",
            vec![("x-api-key", k), ("x-secret-probe", b"PROBE-123")],
        ),
        (
            "TRACE",
            "/api/me",
            vec![("x-api-key", k), ("x-secret-probe", b"PROBE-123")],
        ),
        (
            "TRACK",
            "/api/me",
            vec![("x-api-key", k), ("x-secret-probe", b"PROBE-123")],
        ),
        ("OPTIONS", "*", vec![]),
    ];
    for (method, target, headers) in cases {
        let r = send(h.addr, method, target, &headers, b"").await;
        let what = format!("{method} {target} -> {}", r.status);
        assert!(r.status < 500, "{what}: {}", r.text());
        assert!(
            r.header("access-control-allow-origin").is_none(),
            "{what}: grants CORS: {:?}",
            r.headers
        );
        assert!(
            r.header("access-control-allow-credentials").is_none(),
            "{what}: grants CORS credentials"
        );
        if method == "TRACE" || method == "TRACK" {
            assert_ne!(r.status, 200, "{what}: TRACE/TRACK served");
            let shown = r.everything();
            assert!(
                !shown.contains("PROBE-123"),
                "{what}: reflects headers: {shown}"
            );
            assert!(!shown.contains(&key), "{what}: reflects the key");
        }
        if target.starts_with("/api/") && method == "OPTIONS" {
            // Keyless, like any other keyed route.
            assert!(
                r.status == 401 || r.status == 403 || r.status == 405,
                "{what}: a keyless preflight was served: {}",
                r.text()
            );
        }
    }
}

// docs: "Every other unknown path goes through the API-key layer (401)"; there is one static
// file, served at `/` only: no traversal reaches the file system, with or without a key.
#[tokio::test]
async fn path_traversal_and_odd_targets_never_serve_files() {
    let h = Harness::start(|_| {}).await;
    let (key, _) = h.account("ivan").await;
    let targets = [
        "/../../../../etc/passwd",
        "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/..%2f..%2f..%2fetc%2fpasswd",
        "/%2e%2e%2f%2e%2e%2fCargo.toml",
        "/static/index.html",
        "/index.html",
        "/static/../Cargo.toml",
        "/crates/dashboard/static/index.html",
        "/..\\..\\Cargo.toml",
        "/%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd",
        "//etc/passwd",
        "/favicon.ico/../../Cargo.toml",
        "/healthz/../api/me",
        "/api/../../etc/passwd",
        "/api/monitor/aks/..%2f..%2f..%2fetc%2fpasswd",
        "/api/warmup/..%2F..%2FCargo.toml",
        "/api/warmup/%2e%2e",
        "/api/monitor/aks/%00",
        "http://evil.example/api/me",
    ];
    for target in targets {
        for with_key in [false, true] {
            let hs: Vec<(&str, &[u8])> = if with_key {
                vec![("x-api-key", key.as_bytes())]
            } else {
                vec![]
            };
            let r = send(h.addr, "GET", target, &hs, b"").await;
            let what = format!("GET {target} (key: {with_key}) -> {}", r.status);
            assert!(r.status < 500, "{what}: {}", r.text());
            let text = r.text();
            for leak in ["root:", "[workspace]", "[package]", "<!doctype", "<html"] {
                assert!(
                    !text.to_lowercase().contains(&leak.to_lowercase()),
                    "{what}: served a file ({leak}): {text:.200}"
                );
            }
            if !with_key && target != "http://evil.example/api/me" {
                assert_eq!(r.status, 401, "{what}: unknown keyless path not 401");
            }
            if with_key && target != "http://evil.example/api/me" {
                assert!((400..500).contains(&r.status), "{what}: {}", r.text());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Body, head and time limits
// ---------------------------------------------------------------------------------------------

// docs: body limit 64 KiB → 413 (chunked too, and a lying Content-Length at once); a body at
// the limit passes; a head over 16 KiB → 431, under it passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_and_head_limits_hold_at_their_boundaries() {
    let h = Harness::start(|c| c.request_timeout_ms = 15_000).await;
    let (key, _) = h.account("judy").await;
    let k = key.as_bytes();
    let json: &[u8] = b"application/json";
    let limit = dashboard::BODY_LIMIT_BYTES.default_value();
    // Exactly at the limit: a valid JSON object of `limit` bytes.
    let prefix = br#"{"pad":""#;
    let suffix = br#""}"#;
    let mut at_limit = prefix.to_vec();
    at_limit.extend(std::iter::repeat_n(
        b'p',
        limit - prefix.len() - suffix.len(),
    ));
    at_limit.extend_from_slice(suffix);
    assert_eq!(at_limit.len(), limit);
    let r = send(
        h.addr,
        "POST",
        "/api/blast/jobs",
        &[("x-api-key", k), ("content-type", json)],
        &at_limit,
    )
    .await;
    assert_ne!(r.status, 413, "a body of exactly {limit} bytes was refused");
    assert_ne!(r.status, 500, "{}", r.text());
    // One byte over.
    let mut over = at_limit.clone();
    over.insert(prefix.len(), b'q');
    let r = send(
        h.addr,
        "POST",
        "/api/blast/jobs",
        &[("x-api-key", k), ("content-type", json)],
        &over,
    )
    .await;
    assert_eq!(r.status, 413, "{} bytes: {}", over.len(), r.text());
    // Chunked, over the limit.
    let mut chunked = Vec::new();
    chunked.extend_from_slice(b"{\"pad\":\"");
    let piece = vec![b'c'; 8192];
    let mut body = format!("{:x}\r\n", chunked.len()).into_bytes();
    body.extend_from_slice(&chunked);
    body.extend_from_slice(b"\r\n");
    for _ in 0..10 {
        body.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        body.extend_from_slice(&piece);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"2\r\n\"}\r\n0\r\n\r\n");
    let r = send(
        h.addr,
        "POST",
        "/api/blast/jobs",
        &[
            ("x-api-key", k),
            ("content-type", json),
            ("transfer-encoding", b"chunked"),
        ],
        &body,
    )
    .await;
    assert_eq!(r.status, 413, "chunked 80 KiB: {}", r.text());
    // Heads.
    let head_limit = dashboard::MAX_HEADER_BYTES.default_value();
    let small = vec![b'h'; head_limit / 2];
    let r = send(
        h.addr,
        "GET",
        "/api/me",
        &[("x-api-key", k), ("x-pad", &small)],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "a {}-byte head: {}", small.len(), r.text());
    let large = vec![b'h'; head_limit + 1024];
    if let Some(r) = exchange(
        h.addr,
        &request(
            "GET",
            "/api/me",
            &[("x-api-key", k), ("x-pad", &large)],
            b"",
        ),
    )
    .await
    {
        assert_eq!(r.status, 431, "a {}-byte head", large.len());
    }
    // 300 small headers (total under the size limit): refused or served, never a 500.
    let mut many: Vec<(String, Vec<u8>)> = (0..300)
        .map(|i| (format!("x-h{i}"), b"v".to_vec()))
        .collect();
    many.push(("x-api-key".to_string(), key.clone().into_bytes()));
    let hs: Vec<(&str, &[u8])> = many
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .collect();
    if let Some(r) = exchange(h.addr, &request("GET", "/api/me", &hs, b"")).await {
        assert!(r.status < 500, "300 headers: {}", r.status);
    }
}

// docs: "a body limit (413)"; `body_limit_bytes`: "the largest request body a handler reads (413
// beyond)". A request that declares a body far beyond the limit is refused with 413 as soon as
// its head is read, not parked until the request timeout (a slow, greedy client's cheapest
// way to hold a task and a connection).
#[tokio::test]
async fn body_limit_refuses_a_declared_oversize_content_length_without_waiting() {
    let h = Harness::start(|c| c.request_timeout_ms = 3_000).await;
    let (key, _) = h.account("lars").await;
    for path in ["/api/blast/jobs", "/api/admin/accounts"] {
        let started = Instant::now();
        let r = send(
            h.addr,
            "POST",
            path,
            &[
                ("x-api-key", key.as_bytes()),
                (ADMIN_TOKEN_HEADER, ADMIN.as_bytes()),
                ("content-type", b"application/json"),
                ("content-length", b"10000000000"),
            ],
            b"{}",
        )
        .await;
        let elapsed = started.elapsed();
        assert_eq!(
            r.status,
            413,
            "POST {path} declaring a 10 GB body (limit 64 KiB) got {} after {elapsed:?}: {}",
            r.status,
            r.text()
        );
        assert!(
            elapsed < Duration::from_secs(2),
            "POST {path}: the 413 took {elapsed:?}"
        );
    }
}

// docs: "a request timeout (503 `request_timeout`)" covering "reading the body included": a
// client trickling its body is cut at the request timeout, on the keyed and the admin route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_is_cut_at_the_request_timeout() {
    let h = Harness::start(|c| c.request_timeout_ms = 600).await;
    let (key, _) = h.account("kim").await;
    let routes: [(&str, OwnedHeaders); 2] = [
        (
            "/api/blast/jobs",
            vec![("x-api-key", key.clone().into_bytes())],
        ),
        (
            "/api/admin/accounts",
            vec![(ADMIN_TOKEN_HEADER, ADMIN.as_bytes().to_vec())],
        ),
    ];
    for (path, extra) in routes {
        let mut stream = TcpStream::connect(h.addr).await.unwrap();
        let mut head = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 200\r\n"
        )
        .into_bytes();
        for (n, v) in &extra {
            head.extend_from_slice(n.as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(v);
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n{\"id\":\"");
        stream.write_all(&head).await.unwrap();
        let started = Instant::now();
        let (mut rd, mut wr) = stream.into_split();
        let trickle = tokio::spawn(async move {
            for _ in 0..100 {
                if wr.write_all(b"a").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(8), async {
            let mut buf = [0u8; 4096];
            while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => raw.extend_from_slice(&buf[..n]),
                }
            }
            // Give the body a moment.
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(300), rd.read(&mut buf)).await
            {
                raw.extend_from_slice(&buf[..n]);
            }
        })
        .await;
        let elapsed = started.elapsed();
        trickle.abort();
        let r = parse_response(&raw);
        let r = r.unwrap_or_else(|| panic!("{path}: no answer to a trickled body in {elapsed:?}"));
        assert_eq!(r.status, 503, "{path}: {}", r.text());
        assert!(r.text().contains("request_timeout"), "{path}: {}", r.text());
        assert!(
            elapsed < Duration::from_secs(4),
            "{path}: trickled body held {elapsed:?} (timeout 600 ms)"
        );
    }
}

// docs: header-read timeout "how long a client may take to send a request's headers": a head
// trickled a header at a time never keeps a socket past it.
#[tokio::test]
async fn a_head_trickled_a_line_at_a_time_is_closed_at_the_header_timeout() {
    let h = Harness::start(|c| c.header_read_timeout_ms = 400).await;
    let mut stream = TcpStream::connect(h.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let (mut rd, mut wr) = stream.into_split();
    let trickle = tokio::spawn(async move {
        for i in 0..200 {
            if wr
                .write_all(format!("x-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(6), async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    trickle.abort();
    assert!(
        closed.is_ok(),
        "a head trickled for 6 s was never closed (header timeout 400 ms)"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// Request inspector through the service (I1–I6)
// ---------------------------------------------------------------------------------------------

// covers I2, X4 and seed 001: every polling GET the page makes is streamed through — nothing in
// the ring, nothing buffered — while the ring keeps the one-shot calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i2_polling_gets_never_enter_the_ring_nor_get_buffered() {
    let h = Harness::start(|c| c.inspector_capacity = 2).await;
    let (key, _) = h.account("lena").await;
    let post = send(
        h.addr,
        "POST",
        "/api/blast/jobs",
        &[
            ("x-api-key", key.as_bytes()),
            ("content-type", b"application/json"),
        ],
        br#"{"name":"one-shot"}"#,
    )
    .await;
    assert_ne!(post.status, 401);
    let before = h.dashboard.stats();
    let polling = [
        "/api/monitor/aks",
        "/api/monitor/aks/aks-westeurope",
        "/api/monitor/jobs",
        "/api/monitor/jobs?cluster=aks-eastus",
        "/api/warmup",
        "/api/warmup/aks-eastus",
        "/api/monitor/storage",
        "/api/blast/jobs",
        "/api/blast/jobs?limit=3",
        "/api/me",
        "/api/inspector",
        "/api/inspector?limit=1",
        "/api/stats",
    ];
    for _ in 0..3 {
        for path in polling {
            let r = h.get(path, &key).await;
            assert_ne!(r.status, 401, "{path}");
            assert_ne!(r.status, 500, "{path}: {}", r.text());
        }
    }
    let after = h.dashboard.stats();
    assert_eq!(
        after.inspector_captured, before.inspector_captured,
        "polling GETs were captured"
    );
    assert!(
        after.inspector_passed_through
            >= before.inspector_passed_through + 3 * polling.len() as u64,
        "passed through {} -> {}",
        before.inspector_passed_through,
        after.inspector_passed_through
    );
    assert_eq!(
        after.middleware_buffered_bytes, 0,
        "pooled mode buffered bodies"
    );
    let entries = h.dashboard.inspector().entries();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].method.as_str(), "POST");
}

// covers I3, I5, I6: one-shot calls are captured with every credential header and query
// parameter redacted, in the JSON view and in `Debug`; each entry records its account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i3_i5_i6_captured_calls_show_no_credential() {
    let h = Harness::start(|_| {}).await;
    let (key, _) = h.account("mona").await;
    let (other_key, _) = h.account("nick").await;
    let secrets = [
        ("authorization", "Bearer AUTH-SECRET-1"),
        ("proxy-authorization", "Basic PROXY-SECRET-2"),
        ("cookie", "session=COOKIE-SECRET-3"),
        ("x-ms-custom-sas", "SAS-SECRET-4"),
        ("x-upstream-credential", "CRED-SECRET-5"),
        ("x-session-token", "TOKEN-SECRET-6"),
        ("x-client-secret", "CLIENT-SECRET-7"),
        ("x-signature", "SIGNATURE-SECRET-8"),
        ("x-password", "PASSWORD-SECRET-9"),
        ("X-Storage-Key", "STORAGEKEY-SECRET-10"),
    ];
    let mut hs: Vec<(&str, &[u8])> = vec![
        ("x-api-key", key.as_bytes()),
        ("content-type", b"application/json"),
    ];
    for (n, v) in &secrets {
        hs.push((n, v.as_bytes()));
    }
    let queries = "sig=QS-SECRET-A&code=QS-SECRET-B&%73ig=QS-SECRET-C&access_token=QS-SECRET-D&password=QS-SECRET-E&client_secret=QS-SECRET-F&page=2";
    let post = send(
        h.addr,
        "POST",
        &format!("/api/blast/jobs?{queries}"),
        &hs,
        br#"{"name":"captured"}"#,
    )
    .await;
    assert_ne!(post.status, 401);
    // A non-polling GET (unknown route) with credentials in the query.
    let get = send(
        h.addr,
        "GET",
        &format!("/api/not-polling?{queries}"),
        &hs,
        b"",
    )
    .await;
    assert_ne!(get.status, 401);
    let view = h.get("/api/inspector?limit=100", &key).await;
    assert_eq!(view.status, 200);
    let shown = view.text();
    let debug = format!("{:?}", h.dashboard.inspector().entries());
    let dashboard_debug = format!("{:?}", h.dashboard);
    let entries = view.json()["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        entries.len(),
        2,
        "POST and non-polling GET captured (I3): {shown}"
    );
    for e in &entries {
        assert_eq!(e["owner"], "mona", "{e}");
    }
    for (where_, text) in [
        ("/api/inspector", &shown),
        ("Debug of entries", &debug),
        ("Debug of Dashboard", &dashboard_debug),
    ] {
        assert!(!text.contains(&key), "{where_} shows the API key");
        assert!(!text.contains(ADMIN), "{where_} shows the admin token");
        for (_, v) in &secrets {
            let secret = v.rsplit(' ').next().unwrap();
            assert!(
                !text.contains(secret),
                "{where_} shows {secret}: {text:.2000}"
            );
        }
        for q in ["A", "B", "C", "D", "E", "F"] {
            let secret = format!("QS-SECRET-{q}");
            assert!(!text.contains(&secret), "{where_} shows {secret}");
        }
    }
    // The other account sees none of it, whatever filter it asks for.
    for filter in [
        "",
        "?method=post",
        "?status=5xx&limit=10000",
        "?method=GET&status=404",
    ] {
        let r = h.get(&format!("/api/inspector{filter}"), &other_key).await;
        assert_eq!(r.status, 200, "{filter}: {}", r.text());
        let entries = r.json()["entries"].as_array().cloned().unwrap_or_default();
        assert!(
            entries.is_empty(),
            "nick sees mona's entries with {filter:?}: {entries:?}"
        );
    }
}

// docs (request-inspector "Failure behaviour"): invalid filters are `400` JSON, never a 500.
#[tokio::test]
async fn inspector_filters_reject_garbage_with_4xx() {
    let h = Harness::start(|_| {}).await;
    let (key, _) = h.account("olga").await;
    for query in [
        "?status=abc",
        "?status=6xx",
        "?status=99999",
        "?status=-1",
        "?method=G%20T",
        "?method=%00",
        "?method=%F0%9F%94%91",
        "?limit=abc",
        "?limit=-1",
        "?limit=18446744073709551616",
        "?limit=1e3",
        "?limit=",
        "?limit=1&limit=2",
        "?unknown=1",
        "?status=2xx&method=get&limit=0",
        "?limit=4294967296",
    ] {
        let r = h.get(&format!("/api/inspector{query}"), &key).await;
        let what = format!("/api/inspector{query} -> {}", r.status);
        assert!(r.status < 500, "{what}: {}", r.text());
        assert!(
            r.status == 200 || r.status == 400,
            "{what}: neither an answer nor a 400: {}",
            r.text()
        );
        assert!(
            r.header("content-type")
                .unwrap_or("")
                .starts_with("application/json")
                || r.status == 400,
            "{what}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Bad input on the data routes
// ---------------------------------------------------------------------------------------------

// docs: `POST /api/blast/jobs` takes "a JSON object"; anything else is a typed 4xx and is never
// written to storage (storage is dead here, so a write attempt shows as a 502).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_job_rejects_non_objects_and_wrong_content_types_before_storage() {
    let h = Harness::start(|c| c.request_timeout_ms = 15_000).await;
    let (key, _) = h.account("paul").await;
    let k = key.as_bytes();
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        ("malformed", "application/json", b"{\"a\":".to_vec()),
        ("empty body", "application/json", b"".to_vec()),
        ("array", "application/json", b"[1,2,3]".to_vec()),
        ("string", "application/json", br#""job""#.to_vec()),
        ("number", "application/json", b"42".to_vec()),
        ("huge number", "application/json", b"1e999999".to_vec()),
        ("null", "application/json", b"null".to_vec()),
        ("true", "application/json", b"true".to_vec()),
        ("text/plain", "text/plain", br#"{"a":1}"#.to_vec()),
        ("form", "application/x-www-form-urlencoded", b"a=1".to_vec()),
        ("no content type", "", br#"{"a":1}"#.to_vec()),
        (
            "deep nesting",
            "application/json",
            format!("{{\"a\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
        ),
        (
            "invalid utf-8",
            "application/json",
            b"{\"a\":\"\xff\"}".to_vec(),
        ),
        (
            "trailing garbage",
            "application/json",
            br#"{"a":1} xyz"#.to_vec(),
        ),
        ("NaN", "application/json", br#"{"a":NaN}"#.to_vec()),
        (
            "lone surrogate",
            "application/json",
            br#"{"a":"\ud800"}"#.to_vec(),
        ),
        (
            "duplicate keys",
            "application/json",
            br#"{"a":1,"a":2}"#.to_vec(),
        ),
    ];
    let mut accepted = Vec::new();
    for (label, ct, body) in cases {
        let mut hs: Vec<(&str, &[u8])> = vec![("x-api-key", k)];
        if !ct.is_empty() {
            hs.push(("content-type", ct.as_bytes()));
        }
        let r = send(h.addr, "POST", "/api/blast/jobs", &hs, &body).await;
        let what = format!("POST /api/blast/jobs {label} -> {}", r.status);
        assert_ne!(r.status, 500, "{what}: {}", r.text());
        if r.status >= 400 {
            assert_json_error(&r, &what);
        }
        match label {
            // Not documented either way (valid JSON objects; the guide names no content type):
            // only "never a 500".
            "duplicate keys" | "lone surrogate" | "text/plain" | "form" | "no content type" => {}
            _ => {
                if !(400..500).contains(&r.status) {
                    accepted.push(format!("{label} -> {}", r.status));
                }
            }
        }
    }
    assert!(
        accepted.is_empty(),
        "bodies that are not a JSON object went on to storage instead of a 4xx: {accepted:?}"
    );
}

// Bad query strings and path parameters: typed 4xx, a JSON error, never a 500; an unknown
// cluster is 404 `unknown_cluster` (docs/api tests: "404 for an unknown cluster").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_query_and_path_parameters_are_typed_4xx() {
    let h = Harness::start(|c| c.request_timeout_ms = 15_000).await;
    let (key, _) = h.account("quinn").await;
    let long = "c".repeat(6000);
    let unknown_clusters = [
        "no-such-cluster".to_string(),
        "%C3%BC%F0%9F%98%80".to_string(),
        "AKS-EASTUS".to_string(),
        "aks-eastus%20".to_string(),
        "aks-eastus%00".to_string(),
        "%3Cscript%3Ealert(1)%3C%2Fscript%3E".to_string(),
        long,
    ];
    for c in &unknown_clusters {
        for prefix in ["/api/warmup/", "/api/monitor/aks/"] {
            let r = h.get(&format!("{prefix}{c}"), &key).await;
            let what = format!("GET {prefix}{:.40} -> {}", c, r.status);
            assert_eq!(r.status, 404, "{what}: {}", r.text());
            assert_eq!(assert_json_error(&r, &what), "unknown_cluster", "{what}");
        }
        let r = h.get(&format!("/api/monitor/jobs?cluster={c}"), &key).await;
        let what = format!("GET /api/monitor/jobs?cluster={:.40} -> {}", c, r.status);
        assert!(
            (400..500).contains(&r.status),
            "{what}: an unknown cluster filter: {}",
            r.text()
        );
        assert_json_error(&r, &what);
    }
    for q in [
        "limit=abc",
        "limit=-1",
        "limit=18446744073709551616",
        "limit=1.5",
        "limit=%00",
    ] {
        let r = h.get(&format!("/api/blast/jobs?{q}"), &key).await;
        let what = format!("GET /api/blast/jobs?{q} -> {}", r.status);
        assert_eq!(r.status, 400, "{what}: {}", r.text());
    }
}

// ---------------------------------------------------------------------------------------------
// Degradation: dead and hung backends
// ---------------------------------------------------------------------------------------------

fn assert_no_internals(text: &str, what: &str) {
    for leak in [
        "Bearer ",
        "eyJ",
        "BEGIN CERTIFICATE",
        "PRIVATE KEY",
        "sig=",
        ADMIN,
        "panicked",
        ".rs:",
    ] {
        assert!(!text.contains(leak), "{what}: shows {leak:?}: {text:.1500}");
    }
}

// docs: "a failing cluster shows its error on its card"; the others still render; nothing shows
// the cluster's bearer token or TLS material.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_cluster_shows_its_error_on_its_own_card_only() {
    let h = Harness::start(|c| c.request_timeout_ms = 15_000).await;
    let (key, _) = h.account("rita").await;
    let failing = &h.sim.clusters[0];
    failing.server.inject(Route::Any, Fault::status(500));
    let started = Instant::now();
    let r = h.get("/api/monitor/aks", &key).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(started.elapsed() < Duration::from_secs(10));
    let text = r.text();
    assert_no_internals(&text, "aks card");
    assert!(
        !text.contains(failing.server.token()),
        "shows the cluster token"
    );
    let v = r.json();
    let cards = v["clusters"].as_array().expect("clusters");
    assert_eq!(cards.len(), 3, "{text}");
    for card in cards {
        let name = card["cluster"].as_str().unwrap();
        let errors = card["errors"].as_array().map(Vec::len).unwrap_or(0);
        if name == failing.config.name {
            assert!(errors > 0, "the failing cluster shows no error: {card}");
        } else {
            assert_eq!(errors, 0, "{name} fails with its neighbour: {card}");
            assert!(card["nodes"].as_u64().unwrap_or(0) > 0, "{card}");
        }
    }
    // The detail and the warmup of the failing cluster: a typed answer, never a 500.
    for path in [
        format!("/api/monitor/aks/{}", failing.config.name),
        format!("/api/warmup/{}", failing.config.name),
        "/api/monitor/jobs".to_string(),
    ] {
        let r = h.get(&path, &key).await;
        assert_ne!(r.status, 500, "{path}: {}", r.text());
        assert_no_internals(&r.text(), &path);
        assert!(
            !r.text().contains(failing.server.token()),
            "{path} shows the token"
        );
        if r.status >= 400 {
            assert_json_error(&r, &path);
        }
    }
}

// covers W2: one warmup read failing degrades that read only; the status is still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w2_one_failing_warmup_read_degrades_only_that_read() {
    let h = Harness::start(|c| c.request_timeout_ms = 15_000).await;
    let (key, _) = h.account("sam").await;
    let cluster = &h.sim.clusters[1];
    let name = cluster.config.name.clone();
    // Warm the session, then fail the configmap read.
    assert_eq!(
        h.get(&format!("/api/warmup/{name}"), &key).await.status,
        200
    );
    cluster.server.inject(
        Route::prefix(format!(
            "/api/v1/namespaces/{}/configmaps",
            dashboard::local::NAMESPACE
        )),
        Fault::status(500),
    );
    let r = h.get(&format!("/api/warmup/{name}"), &key).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let status = if v.get("status").is_some() {
        &v["status"]
    } else {
        &v
    };
    let reads = status["reads"]["reads"].as_array().expect("reads");
    let degraded: Vec<&str> = reads
        .iter()
        .filter(|r| r["status"] != "ok")
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(degraded, ["configmap"], "{}", r.text());
    assert_eq!(status["complete"], false);
    assert!(
        !status["nodes"].as_array().unwrap().is_empty(),
        "nodes lost"
    );
}

// A hung Kubernetes API (answers never come) never hangs the dashboard: the card route answers
// within the request timeout (docs: 503 `request_timeout`), a typed JSON answer, never a 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_cluster_never_hangs_the_dashboard() {
    let h = Harness::start(|c| c.request_timeout_ms = 1_500).await;
    let (key, _) = h.account("tara").await;
    assert_eq!(h.get("/api/monitor/aks", &key).await.status, 200);
    let hung = &h.sim.clusters[2];
    for prefix in ["/api/", "/apis/"] {
        hung.server.inject(
            Route::prefix(prefix),
            Fault::latency(Duration::from_secs(3600)),
        );
    }
    for path in [
        "/api/monitor/aks".to_string(),
        format!("/api/monitor/aks/{}", hung.config.name),
        "/api/monitor/jobs".to_string(),
        format!("/api/warmup/{}", hung.config.name),
    ] {
        let started = Instant::now();
        let r = h.get(&path, &key).await;
        let elapsed = started.elapsed();
        assert!(
            elapsed < Duration::from_secs(6),
            "{path} took {elapsed:?} with a hung cluster (request timeout 1.5 s)"
        );
        assert!(
            r.status == 200 || r.status == 503 || r.status == 502,
            "{path}: {} {}",
            r.status,
            r.text()
        );
        if r.status != 200 {
            assert_json_error(&r, &path);
        }
    }
    // The healthy clusters' detail still answers at once.
    let healthy = &h.sim.clusters[0].config.name;
    let r = h.get(&format!("/api/monitor/aks/{healthy}"), &key).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

// Dead Blob storage: the storage routes answer a typed JSON error (502 `backend_failed`, or 503
// at the request timeout) within bounded time, with no token or internals in the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_storage_gives_a_typed_error_in_bounded_time() {
    let h = Harness::start(|c| c.request_timeout_ms = 8_000).await;
    let (key, _) = h.account("uma").await;
    for (method, path, body) in [
        ("GET", "/api/monitor/storage", &b""[..]),
        ("GET", "/api/blast/jobs", b""),
        ("POST", "/api/blast/jobs", br#"{"name":"j"}"#),
    ] {
        let started = Instant::now();
        let r = send(
            h.addr,
            method,
            path,
            &[
                ("x-api-key", key.as_bytes()),
                ("content-type", b"application/json"),
            ],
            body,
        )
        .await;
        let elapsed = started.elapsed();
        let what = format!("{method} {path} -> {} in {elapsed:?}", r.status);
        assert!(elapsed < Duration::from_secs(12), "{what}");
        assert!(r.status == 502 || r.status == 503, "{what}: {}", r.text());
        let code = assert_json_error(&r, &what);
        assert!(
            code == "backend_failed" || code == "request_timeout",
            "{what}: {code}"
        );
        assert_no_internals(&r.text(), &what);
    }
    // Still healthy for everything else.
    assert_eq!(h.get("/api/me", &key).await.status, 200);
}

// Hung Blob storage (accepts, never answers): bounded by the request timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_storage_is_bounded_by_the_request_timeout() {
    let hole = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_addr = hole.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            held.push(s);
        }
    });
    let storage = format!("https://{hole_addr}/devstoreaccount1");
    let h = Harness::start_with(&storage, |c| c.request_timeout_ms = 1_500).await;
    let (key, _) = h.account("vera").await;
    for path in ["/api/monitor/storage", "/api/blast/jobs"] {
        let started = Instant::now();
        let r = h.get(path, &key).await;
        let elapsed = started.elapsed();
        assert!(
            elapsed < Duration::from_secs(6),
            "{path} took {elapsed:?} on hung storage"
        );
        assert!(r.status == 503 || r.status == 502, "{path}: {}", r.text());
        assert_json_error(&r, path);
    }
    holder.abort();
}

// apikey-cache "store fails … never a false 401": a key store the dashboard cannot read answers
// 503 (+ retry-after) for a well-formed key, and the admin route a typed 5xx, never a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_key_store_is_503_not_a_false_401() {
    let dir = TempDir::new("badkeys");
    let not_a_dir = dir.0.join("file");
    std::fs::write(&not_a_dir, b"not a directory").unwrap();
    let h = Harness::start(|c| {
        c.keys = KeyStoreConfig::KeyedFile {
            dir: not_a_dir.clone(),
        };
    })
    .await;
    let key = foreign_well_formed_key().await;
    let started = Instant::now();
    let r = h.get("/api/me", &key).await;
    assert!(started.elapsed() < Duration::from_secs(8));
    assert_eq!(r.status, 503, "a failing store answered: {}", r.text());
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    assert_json_error(&r, "store unavailable");
    let r = send(
        h.addr,
        "POST",
        "/api/admin/accounts",
        &[
            (ADMIN_TOKEN_HEADER, ADMIN.as_bytes()),
            ("content-type", b"application/json"),
        ],
        br#"{"id":"walt"}"#,
    )
    .await;
    assert!(r.status > 500, "{}", r.text());
    assert_json_error(&r, "admin on a failing store");
    assert!(!r.text().contains(ADMIN));
}

// ---------------------------------------------------------------------------------------------
// Request ids (I1)
// ---------------------------------------------------------------------------------------------

// request-inspector: "An incoming `x-request-id` is propagated when there is exactly one and it
// is 1–128 bytes of visible ASCII. Otherwise … a fresh id is generated."
#[tokio::test]
async fn i1_invalid_request_ids_are_replaced_not_echoed() {
    let h = Harness::start(|_| {}).await;
    let (key, _) = h.account("xena").await;
    let too_long = "r".repeat(129);
    let cases: Vec<(&str, Vec<&[u8]>)> = vec![
        ("too long", vec![too_long.as_bytes()]),
        ("space", vec![b"has space"]),
        ("non-ascii", vec!["ünï".as_bytes()]),
        ("empty", vec![b""]),
        ("repeated", vec![b"id-one", b"id-two"]),
    ];
    for path in ["/api/me", "/api/not-polling"] {
        for with_key in [true, false] {
            for (label, ids) in &cases {
                let mut hs: Vec<(&str, &[u8])> = ids.iter().map(|v| ("x-request-id", *v)).collect();
                if with_key {
                    hs.push(("x-api-key", key.as_bytes()));
                }
                let r = send(h.addr, "GET", path, &hs, b"").await;
                let what = format!("{path} key={with_key} {label}");
                let got: Vec<&str> = r
                    .headers
                    .iter()
                    .filter(|(n, _)| n == "x-request-id")
                    .map(|(_, v)| v.as_str())
                    .collect();
                assert_eq!(got.len(), 1, "{what}: ids {got:?}");
                let id = got[0];
                assert!(!id.is_empty() && id.len() <= 128, "{what}: {id:?}");
                for sent in ids {
                    if !sent.is_empty() {
                        assert_ne!(id.as_bytes(), *sent, "{what}: echoed an invalid id");
                    }
                }
            }
        }
    }
    // A valid id at the 128-byte boundary is kept.
    let ok = "q".repeat(128);
    let r = send(
        h.addr,
        "GET",
        "/api/me",
        &[
            ("x-api-key", key.as_bytes()),
            ("x-request-id", ok.as_bytes()),
        ],
        b"",
    )
    .await;
    assert_eq!(r.header("x-request-id"), Some(ok.as_str()));
}

// ---------------------------------------------------------------------------------------------
// Lifecycle
// ---------------------------------------------------------------------------------------------

// `Running::stop`: "Stop accepting, let requests in flight finish, and wait"; dropping stops too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_finishes_in_flight_requests_then_refuses_new_ones() {
    let mut h = Harness::start(|_| {}).await;
    let (key, _) = h.account("yuri").await;
    // Warm the sessions, then slow one read so a request is in flight when we stop.
    assert_eq!(h.get("/api/monitor/aks", &key).await.status, 200);
    h.sim.clusters[0].server.inject(
        Route::exact("/api/v1/nodes"),
        Fault::latency(Duration::from_millis(700)),
    );
    let addr = h.addr;
    let key2 = key.clone();
    let in_flight = tokio::spawn(async move {
        send(
            addr,
            "GET",
            "/api/monitor/aks",
            &[("x-api-key", key2.as_bytes())],
            b"",
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // An idle keep-alive connection must not hold the shutdown.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let _ = idle.read(&mut buf).await.unwrap();
    let running = h.running.take().unwrap();
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(8), running.stop())
        .await
        .expect("stop() did not return within 8 s");
    assert!(started.elapsed() < Duration::from_secs(8));
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200, "the request in flight was cut: {}", r.text());
    assert!(
        TcpStream::connect(addr).await.is_err()
            || exchange(addr, &request("GET", "/healthz", &[], b""))
                .await
                .is_none(),
        "still serving after stop"
    );

    // A second instance: dropping the handle stops it.
    let second = h.dashboard.serve().await.expect("serve again");
    let addr2 = second.addr();
    assert_eq!(send(addr2, "GET", "/healthz", &[], b"").await.status, 200);
    drop(second);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        exchange(addr2, &request("GET", "/healthz", &[], b""))
            .await
            .is_none(),
        "still serving after the handle was dropped"
    );
}

// `set_metrics_render`: `/metrics` 404 until set, then served without a key; a second render
// function changes nothing and returns `false`.
#[tokio::test]
async fn metrics_render_is_set_once_and_needs_no_key() {
    let h = Harness::start(|_| {}).await;
    assert_eq!(send(h.addr, "GET", "/metrics", &[], b"").await.status, 404);
    assert!(
        h.dashboard
            .set_metrics_render(std::sync::Arc::new(|| "first_total 1\n".to_string()))
    );
    assert!(
        !h.dashboard
            .set_metrics_render(std::sync::Arc::new(|| "second_total 2\n".to_string()))
    );
    let r = send(h.addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("first_total 1"), "{}", r.text());
    assert!(!r.text().contains("second_total"), "{}", r.text());
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
}

// ---------------------------------------------------------------------------------------------
// Configuration (public Rust API)
// ---------------------------------------------------------------------------------------------

fn offline_config(dir: &Path) -> DashboardConfig {
    let mut config = DashboardConfig::new(
        vec![],
        StorageConfig::new(DEAD_STORAGE, None),
        UpstreamConfig::new(url::Url::parse("http://127.0.0.1:9/").unwrap()),
    );
    config.listen = ([127, 0, 0, 1], 0).into();
    config.keys = KeyStoreConfig::KeyedFile {
        dir: dir.to_path_buf(),
    };
    config
}

// docs table: admin token "≥ 16 bytes, no surrounding spaces in the file or in code (the env
// var is trimmed first ...); empty or shorter → `ConfigError::AdminToken` at start-up (also a
// set-but-empty env var)"; the token is redacted in `Debug` (and so in every error and config
// dump).
#[tokio::test]
async fn admin_token_rules_hold_for_code_json_and_env_and_never_print() {
    dashboard::ensure_crypto_provider();
    let dir = TempDir::new("cfg");
    let refused = [
        String::new(),
        "short-token-15b".to_string(),
        " padded-token-0123456789".to_string(),
        "padded-token-0123456789 ".to_string(),
        "\tpadded-token-0123456789".to_string(),
        "padded-token-0123456789\n".to_string(),
        " ".repeat(32),
        format!("{}  ", "x".repeat(14)),
    ];
    let mut env_accepted = Vec::new();
    for token in &refused {
        // In code.
        let mut config = offline_config(&dir.0);
        config.admin_token = Some(AdminToken::new(token.clone()));
        match Dashboard::new(config, dashboard::local::credential()) {
            Err(StartError::Config(ConfigError::AdminToken { .. })) => {}
            other => panic!("token {token:?} accepted in code: {other:?}"),
        }
        // In JSON, validated.
        let text = json!({
            "clusters": [],
            "storage": { "endpoint": DEAD_STORAGE },
            "upstream": { "url": "http://127.0.0.1:9/" },
            "admin_token": token,
        })
        .to_string();
        let parsed = DashboardConfig::from_json(&text).and_then(DashboardConfig::validate);
        assert!(
            matches!(parsed, Err(ConfigError::AdminToken { .. })),
            "token {token:?} accepted from JSON: {parsed:?}"
        );
        // In the environment: trimmed first, so a padded token of 16 bytes or more is the
        // trimmed token, and only a short one is refused.
        let env = offline_config(&dir.0)
            .with_lookup(|name| (name == "DASHBOARD_ADMIN_TOKEN").then(|| token.clone()))
            .and_then(DashboardConfig::validate);
        let trimmed = token.trim();
        match env {
            Err(ConfigError::AdminToken { .. }) if trimmed.len() < 16 => {}
            Ok(config)
                if trimmed.len() >= 16
                    && config.admin_token.as_ref().map(AdminToken::expose) == Some(trimmed) => {}
            other => env_accepted.push(format!("{token:?} -> {other:?}")),
        }
    }
    assert!(
        env_accepted.is_empty(),
        "DASHBOARD_ADMIN_TOKEN values not trimmed-then-checked as the guide says: {env_accepted:?}"
    );
    // Exactly 16 bytes is enough.
    let mut config = offline_config(&dir.0);
    let secret = "0123456789abcdef";
    assert_eq!(secret.len(), dashboard::MIN_ADMIN_TOKEN_LEN);
    config.admin_token = Some(AdminToken::new(secret));
    let built = Dashboard::new(config.clone(), dashboard::local::credential()).expect("16 bytes");
    for (what, text) in [
        ("config Debug", format!("{config:?}")),
        ("config pretty Debug", format!("{config:#?}")),
        ("token Debug", format!("{:?}", config.admin_token)),
        ("dashboard Debug", format!("{built:?}")),
        ("running config Debug", format!("{:?}", built.config())),
    ] {
        assert!(
            !text.contains(secret),
            "{what} prints the admin token: {text}"
        );
    }
    // Errors about a refused token do not print it either.
    let mut config = offline_config(&dir.0);
    config.admin_token = Some(AdminToken::new("hunter2-secret"));
    let err = Dashboard::new(config, dashboard::local::credential()).unwrap_err();
    assert!(
        !format!("{err} {err:?}").contains("hunter2-secret"),
        "{err:?}"
    );
}

// docs: "Numeric knobs that do not parse log a warning and keep their default, out-of-range ones
// are clamped"; "an unparseable address or mode is an error"; X5: never a panic on extremes.
#[tokio::test]
async fn knobs_clamp_to_their_documented_ranges_from_json_and_env() {
    dashboard::ensure_crypto_provider();
    let dir = TempDir::new("knobs");
    let max = u64::MAX;
    let base = || {
        json!({
            "clusters": [],
            "storage": { "endpoint": DEAD_STORAGE },
            "upstream": { "url": "http://127.0.0.1:9/" },
            "keys": { "kind": "keyed_file", "dir": dir.0.join("k") },
            "listen": "127.0.0.1:0",
        })
    };
    type Get = fn(&DashboardConfig) -> u64;
    // (section or "", field, extreme value, expected after clamping, read back)
    let cases: Vec<(&str, &str, Value, u64, Get)> = vec![
        ("storage", "job_retention", json!(0), 1, |c| {
            c.storage.job_retention as u64
        }),
        ("storage", "job_retention", json!(max), 1000, |c| {
            c.storage.job_retention as u64
        }),
        ("upstream", "max_connections", json!(0), 1, |c| {
            c.upstream.max_connections as u64
        }),
        ("upstream", "max_connections", json!(max), 1024, |c| {
            c.upstream.max_connections as u64
        }),
        ("upstream", "acquire_timeout_ms", json!(0), 10, |c| {
            c.upstream.acquire_timeout_ms
        }),
        ("upstream", "acquire_timeout_ms", json!(max), 600_000, |c| {
            c.upstream.acquire_timeout_ms
        }),
        ("upstream", "max_attempts", json!(0), 1, |c| {
            u64::from(c.upstream.max_attempts)
        }),
        ("upstream", "max_attempts", json!(u32::MAX), 20, |c| {
            u64::from(c.upstream.max_attempts)
        }),
        ("", "inspector_capacity", json!(0), 1, |c| {
            c.inspector_capacity as u64
        }),
        ("", "inspector_capacity", json!(max), 10_000, |c| {
            c.inspector_capacity as u64
        }),
        ("", "header_read_timeout_ms", json!(0), 10, |c| {
            c.header_read_timeout_ms
        }),
        ("", "header_read_timeout_ms", json!(max), 300_000, |c| {
            c.header_read_timeout_ms
        }),
        ("", "request_timeout_ms", json!(0), 10, |c| {
            c.request_timeout_ms
        }),
        ("", "request_timeout_ms", json!(max), 600_000, |c| {
            c.request_timeout_ms
        }),
        ("", "max_connections", json!(0), 1, |c| {
            c.max_connections as u64
        }),
        ("", "max_connections", json!(max), 65_536, |c| {
            c.max_connections as u64
        }),
        ("", "body_limit_bytes", json!(0), 1, |c| {
            c.body_limit_bytes as u64
        }),
        ("", "body_limit_bytes", json!(max), 16 * 1024 * 1024, |c| {
            c.body_limit_bytes as u64
        }),
        ("", "max_header_bytes", json!(0), 1024, |c| {
            c.max_header_bytes as u64
        }),
        ("", "max_header_bytes", json!(max), 1024 * 1024, |c| {
            c.max_header_bytes as u64
        }),
    ];
    let mut problems = Vec::new();
    for (section, field, value, expected, get) in cases {
        let mut doc = base();
        if section.is_empty() {
            doc[field] = value.clone();
        } else {
            doc[section][field] = value.clone();
        }
        let label = format!("{section}.{field} = {value}");
        let config = match DashboardConfig::from_json(&doc.to_string()) {
            Ok(c) => c,
            Err(e) => {
                problems.push(format!("{label}: from_json refused it: {e}"));
                continue;
            }
        };
        match Dashboard::new(config, dashboard::local::credential()) {
            Ok(built) => {
                let got = get(built.config());
                if got != expected {
                    problems.push(format!(
                        "{label}: runs with {got}, documented clamp {expected}"
                    ));
                }
                // It serves with the value (no overflow in timers, no panic).
                match built.serve().await {
                    Ok(running) => {
                        let ok = exchange(running.addr(), &request("GET", "/healthz", &[], b""))
                            .await
                            .map(|r| r.status);
                        if ok != Some(200) && field != "request_timeout_ms" {
                            problems.push(format!("{label}: /healthz answered {ok:?}"));
                        }
                    }
                    Err(e) => problems.push(format!("{label}: serve failed: {e}")),
                }
            }
            Err(e) => problems.push(format!(
                "{label}: Dashboard::new refused it instead of clamping to {expected}: {e:?}"
            )),
        }
    }

    // Environment: garbage keeps the default, out of range clamps, bad address/mode is an error.
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        offline_config(&dir.0)
            .with_lookup(move |name| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| (*v).to_string())
            })
            .and_then(DashboardConfig::validate)
    };
    let c = env(&[
        ("DASHBOARD_BODY_LIMIT_BYTES", "lots"),
        ("DASHBOARD_MAX_HEADER_BYTES", "10"),
        ("DASHBOARD_REQUEST_TIMEOUT_MS", "99999999999999999999999"),
        ("DASHBOARD_HEADER_READ_TIMEOUT_MS", "-5"),
        ("DASHBOARD_MAX_CONNECTIONS", "0"),
        ("DASHBOARD_INSPECTOR_CAPACITY", "1000000"),
        ("DASHBOARD_UPSTREAM_MAX_ATTEMPTS", "0"),
    ])
    .expect("knobs never fail");
    assert_eq!(
        c.body_limit_bytes, 65_536,
        "garbage body limit keeps its default"
    );
    assert_eq!(c.max_header_bytes, 1024, "head limit clamps up to 1 KiB");
    assert!(
        c.request_timeout_ms == 600_000 || c.request_timeout_ms == 30_000,
        "an overflowing request timeout is clamped or kept at its default: {}",
        c.request_timeout_ms
    );
    assert!(
        c.header_read_timeout_ms == 10 || c.header_read_timeout_ms == 10_000,
        "a negative header timeout: {}",
        c.header_read_timeout_ms
    );
    assert_eq!(c.max_connections, 1, "connections clamp up to 1");
    assert_eq!(c.inspector_capacity, 10_000, "inspector clamps down");
    assert_eq!(c.upstream.max_attempts, 1, "attempts clamp up");
    assert!(matches!(
        env(&[("DASHBOARD_LISTEN", "not-an-address")]),
        Err(ConfigError::Invalid { .. })
    ));
    assert!(matches!(
        env(&[("DASHBOARD_MODE", "turbo")]),
        Err(ConfigError::Invalid { .. })
    ));
    assert_eq!(
        env(&[("DASHBOARD_MODE", "naive")]).unwrap().mode,
        Mode::Naive
    );
    // Unreadable and unparseable files are typed errors.
    assert!(matches!(
        DashboardConfig::from_file(&dir.0.join("missing.json")),
        Err(ConfigError::Read { .. })
    ));
    let garbage = dir.0.join("garbage.json");
    std::fs::write(&garbage, b"{ not json").unwrap();
    assert!(matches!(
        DashboardConfig::from_file(&garbage),
        Err(ConfigError::Parse(_))
    ));
    assert!(
        problems.is_empty(),
        "out-of-range settings are not clamped as documented:\n{}",
        problems.join("\n")
    );
}
