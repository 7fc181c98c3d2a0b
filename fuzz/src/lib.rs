//! The fuzz targets' bodies: one function per target, each taking the raw input and checking
//! what must hold for *any* input (a value or a typed error, never a panic or a hang, plus the
//! target's own invariants).
//!
//! The libFuzzer binaries in `fuzz_targets/` are one-liners over these functions, and the
//! stable test `tests/tests/fuzz_corpus.rs` replays the committed corpus `fuzz/corpus/<target>`
//! through the very same functions, so CI checks the corpus without nightly or cargo-fuzz.
//! Everything here uses only public APIs of the crates.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

use apikey_cache::{
    API_KEY_HEADER, ApiKeyCache, AuthError, CacheConfig, KeyDocument, KeyHash, MemoryStore,
};
use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use k8s_session::{AksSource, KubeconfigSource, SessionKey, SessionPool};
use request_inspector::{InspectorConfig, PollingPrefixes};
use retry_transport::parse_retry_after;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tower::{Layer as _, ServiceExt as _};

/// The fuzz targets, by name (the names `cargo xtask fuzz` accepts).
pub const TARGETS: [&str; 6] = [
    "retry_after",
    "inspector_paths",
    "kubeconfig",
    "aks_credentials",
    "apikey_document",
    "apikey_header",
];

/// Run the target called `name` on `data`; `false` for an unknown name.
pub fn run(name: &str, data: &[u8]) -> bool {
    match name {
        "retry_after" => retry_after(data),
        "inspector_paths" => inspector_paths(data),
        "kubeconfig" => kubeconfig(data),
        "aks_credentials" => aks_credentials(data),
        "apikey_document" => apikey_document(data),
        "apikey_header" => apikey_header(data),
        _ => return false,
    }
    true
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

/// `retry_transport::parse_retry_after` (SPEC R2): any header bytes at any `now` give a value or
/// `None`; digits-only input is delta-seconds (overflow = `Duration::MAX`); a pure function.
pub fn retry_after(data: &[u8]) {
    // The first 8 bytes pick `now` (any second from 1970 to ~2554), the rest is the header.
    let (now, header) = match data.split_first_chunk::<8>() {
        Some((head, rest)) => {
            let secs = u64::from_le_bytes(*head) % 18_446_744_073;
            (UNIX_EPOCH + Duration::from_secs(secs), rest)
        }
        None => (UNIX_EPOCH + Duration::from_secs(1_700_000_000), data),
    };
    let Ok(value) = HeaderValue::from_bytes(header) else {
        return;
    };
    let parsed = parse_retry_after(&value, now);
    if let Ok(text) = value.to_str() {
        let text = text.trim();
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            let expected = text
                .parse::<u64>()
                .map_or(Duration::MAX, Duration::from_secs);
            assert_eq!(parsed, Some(expected), "delta-seconds {text:?}");
        }
    }
    assert_eq!(parsed, parse_retry_after(&value, now), "deterministic");
}

/// request-inspector's path matching (SPEC I2–I4): prefixes from any text are a value or a
/// typed error (the same for the config builder); normalised prefixes are valid and stable;
/// `should_capture` skips only a GET under a polling prefix, for any path and method, and a
/// query never changes the verdict.
///
/// Input: prefixes one per line until an empty line, then paths, each optionally preceded by a
/// method and a space.
pub fn inspector_paths(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let prefixes: Vec<&str> = lines.by_ref().take_while(|l| !l.is_empty()).collect();
    let Ok(polling) = PollingPrefixes::new(&prefixes) else {
        assert!(InspectorConfig::new().polling_prefixes(&prefixes).is_err());
        return;
    };
    let config = InspectorConfig::new()
        .polling_prefixes(&prefixes)
        .expect("the same prefixes are accepted by the config");
    assert_eq!(config.polling(), &polling);
    let again = PollingPrefixes::new(polling.iter()).expect("normalised prefixes are valid");
    assert_eq!(again, polling);
    for line in lines {
        let (method, path) = match line.split_once(' ') {
            Some((m, p)) => (Method::from_bytes(m.as_bytes()).ok(), p),
            None => (None, line),
        };
        let polling_path = polling.is_polling_path(path);
        let captured = polling.should_capture(path, method.as_ref());
        assert_eq!(captured, !(method == Some(Method::GET) && polling_path));
        assert!(
            polling.should_capture(path, None),
            "no method: captured (I4)"
        );
        assert!(
            polling.should_capture(path, Some(&Method::POST)),
            "POST: captured (I3)"
        );
        if !path.contains(['?', '#']) {
            assert_eq!(
                polling.is_polling_path(&format!("{path}?x=1")),
                polling_path
            );
        }
    }
}

/// k8s-session's kubeconfig decoding (SPEC K2, K3): any text goes through
/// `KubeconfigSource::from_yaml` and a real `SessionPool::session` build (context resolution,
/// CA / client certificate / key parsing, JWT `exp`, kubelogin detection, TTL) and ends in a
/// session or a typed error. No network: kube connects lazily.
pub fn kubeconfig(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(source) = KubeconfigSource::from_yaml(text) else {
        return;
    };
    runtime().block_on(async {
        let pool = SessionPool::builder(source).knobs_from(|_| None).build();
        let key = SessionKey::new("sub", "rg", "cluster");
        if let Ok(session) = pool.session(&key).await {
            assert!(
                session.effective_ttl().ttl <= pool.ttl(),
                "K3: TTL within the pool TTL"
            );
        }
        pool.shutdown().await;
    });
}

#[derive(Debug)]
struct FakeArmCredential;

#[async_trait::async_trait]
impl TokenCredential for FakeArmCredential {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        Ok(AccessToken::new(
            "arm-token",
            azure_core::time::OffsetDateTime::now_utc() + azure_core::time::Duration::hours(1),
        ))
    }
}

/// A plain-HTTP "ARM" on loopback answering every request with the current body.
struct Arm {
    addr: SocketAddr,
    body: Arc<Mutex<Vec<u8>>>,
    http: reqwest::Client,
}

fn arm() -> &'static Arm {
    static ARM: OnceLock<Arm> = OnceLock::new();
    ARM.get_or_init(|| {
        let runtime = runtime();
        let body: Arc<Mutex<Vec<u8>>> = Arc::default();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let served = body.clone();
        runtime.spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let served = served.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let body = served.lock().expect("body lock").clone();
                    let mut answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    answer.extend_from_slice(&body);
                    let _ = stream.write_all(&answer).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("a reqwest client");
        Arm { addr, body, http }
    })
}

/// k8s-session's AKS credential decoding (SPEC K2): the input is the body of ARM's
/// `listClusterUserCredential` answer, served on loopback to a real `AksSource` in a real
/// `SessionPool`; JSON envelope, base64, UTF-8, kubeconfig and the client build all see it. The
/// decoder is private, so it is reached through the public API (one loopback round trip).
pub fn aks_credentials(data: &[u8]) {
    let arm = arm();
    *arm.body.lock().expect("body lock") = data.to_vec();
    let base = format!("http://{}", arm.addr)
        .parse()
        .expect("a loopback URL");
    let source = AksSource::builder(Arc::new(FakeArmCredential))
        .base_url(base)
        .http_client(arm.http.clone())
        .build()
        .expect("a loopback http base URL is accepted");
    runtime().block_on(async {
        let pool = SessionPool::builder(source).knobs_from(|_| None).build();
        let key = SessionKey::new("sub", "rg", "cluster");
        let outcome = tokio::time::timeout(Duration::from_secs(10), pool.session(&key)).await;
        assert!(outcome.is_ok(), "session() never hangs on an ARM answer");
        pool.shutdown().await;
    });
}

/// apikey-cache's store document parsing (SPEC A6, A9): any bytes parse to a `KeyDocument` or a
/// typed `StoreError::Corrupt`; a parsed document round-trips, loads into a real cache (bad
/// hashes and dangling accounts skipped), and only a listed, unrevoked hash authenticates.
pub fn apikey_document(data: &[u8]) {
    let Ok(document) = KeyDocument::from_json(data) else {
        return;
    };
    assert_eq!(
        KeyDocument::from_json(&document.to_json()).expect("round trip"),
        document
    );
    runtime().block_on(async {
        let cache = ApiKeyCache::new(
            MemoryStore::with_document(document.clone()),
            CacheConfig::default(),
        );
        cache
            .refresh()
            .await
            .expect("a parsed document always loads");
        let long = "x".repeat(300);
        for probe in ["ak_probe", "", " ", "ak_\u{1F600}", long.as_str()] {
            let hash = KeyHash::of(probe);
            match cache.authenticate(probe).await {
                Ok(identity) => assert!(document.keys.values().any(|record| {
                    KeyHash::from_hex(&record.sha256) == Some(hash)
                        && record.revoked_unix.is_none()
                        && record.account == identity.account.as_str()
                })),
                Err(AuthError::Unavailable { .. }) => panic!("a loaded cache is available"),
                Err(_) => {}
            }
        }
        assert_eq!(cache.stats().reload_failures, 0);
    });
}

struct Keys {
    cache: ApiKeyCache<MemoryStore>,
    valid: String,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let cache = ApiKeyCache::new(MemoryStore::new(), CacheConfig::default());
        let valid = runtime().block_on(async {
            let account = cache.create_account("acme", "Acme").await.expect("account");
            let issued = cache.issue_key(&account).await.expect("key");
            issued.secret.expose().to_string()
        });
        Keys { cache, valid }
    })
}

/// apikey-cache's `x-api-key` handling (SPEC A5, A6, A8): any header bytes (zero, one or
/// several values) through the real `ApiKeyLayer` reach the inner service only for the one
/// valid key (header removed), else a 401/503 — never a panic; `authenticate` on the raw text
/// is a typed verdict.
///
/// Input: header values separated by `0x00`; a value that is exactly `0x01` stands for the
/// valid key, so the accept path is reachable.
pub fn apikey_header(data: &[u8]) {
    let keys = keys();
    let values: Vec<Vec<u8>> = data
        .split(|b| *b == 0)
        .map(|v| {
            if v == [1] {
                keys.valid.as_bytes().to_vec()
            } else {
                v.to_vec()
            }
        })
        .collect();
    let mut request = Request::builder().uri("/resource");
    let mut sent = Vec::new();
    for value in &values {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            request = request.header(API_KEY_HEADER, value.clone());
            sent.push(value);
        }
    }
    let request = request.body(()).expect("a request");
    let only_valid = sent.len() == 1 && sent[0].as_bytes() == keys.valid.as_bytes();
    runtime().block_on(async {
        let inner = tower::service_fn(|request: Request<()>| async move {
            assert!(
                request.headers().get(API_KEY_HEADER).is_none(),
                "header removed"
            );
            Ok::<_, Infallible>(Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
        });
        let service = apikey_cache::ApiKeyLayer::new(keys.cache.clone()).layer(inner);
        let response = service.oneshot(request).await.expect("infallible");
        match response.status() {
            StatusCode::OK => assert!(only_valid, "only the one valid key is accepted"),
            StatusCode::UNAUTHORIZED | StatusCode::SERVICE_UNAVAILABLE => {
                assert!(!only_valid, "the valid key alone is never refused");
            }
            other => panic!("unexpected status {other}"),
        }
        let text = String::from_utf8_lossy(data);
        if text != keys.valid {
            assert!(keys.cache.authenticate(&text).await.is_err());
        }
    });
}
