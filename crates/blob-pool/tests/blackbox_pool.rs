//! Black-box tests of blob-pool: public API only, asserting what SPEC (B1–B8, P, X), seed 000
//! and docs/blob-pool.md promise. Written without reading the crate's implementation.
//!
//! Most tests need no backend (`client()` does no IO). The `io_*` tests send real requests over
//! loopback to testkit's rate-limiting server behind a TLS terminator from testkit's CA, to see
//! which bearer token each pooled client sends.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::time::{Duration as AzDuration, OffsetDateTime};
use blob_pool::{
    BlobPool, BlobPoolConfig, BlobPoolError, CredentialId, Endpoint, IDLE_TTL_SECONDS, MAX_ENTRIES,
    PooledBlobClient, SWEEP_SECONDS, storage_transport,
};
use retry_transport::RetryPolicy;
use testkit::ratelimit::{Answer, RateLimitServer};
use testkit::tls::TestCa;

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// A credential whose tokens are named after its serial; counts its calls and reports its drop.
/// Padded so that its allocation has its own size class and addresses are really reused.
#[derive(Debug)]
struct Cred {
    serial: u64,
    calls: Arc<AtomicU64>,
    dropped: Arc<AtomicBool>,
    fail: bool,
    _pad: [u8; 200],
}

impl Drop for Cred {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl TokenCredential for Cred {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.fail {
            return Err(azure_core::Error::with_message(
                azure_core::error::ErrorKind::Credential,
                "test credential refuses",
            ));
        }
        Ok(AccessToken::new(
            token_of(self.serial),
            OffsetDateTime::now_utc() + AzDuration::hours(1),
        ))
    }
}

fn token_of(serial: u64) -> String {
    format!("SECRET-TOKEN-{serial}")
}

/// A credential plus handles to observe it from outside.
struct Probe {
    credential: Arc<dyn TokenCredential>,
    calls: Arc<AtomicU64>,
    dropped: Arc<AtomicBool>,
}

fn probe(serial: u64) -> Probe {
    probe_with(serial, false)
}

fn probe_with(serial: u64, fail: bool) -> Probe {
    let calls = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicBool::new(false));
    let credential: Arc<dyn TokenCredential> = Arc::new(Cred {
        serial,
        calls: calls.clone(),
        dropped: dropped.clone(),
        fail,
        _pad: [0; 200],
    });
    Probe {
        credential,
        calls,
        dropped,
    }
}

fn cred(serial: u64) -> Arc<dyn TokenCredential> {
    probe(serial).credential
}

fn ep(path: &str) -> Endpoint {
    Endpoint::parse(&format!("https://127.0.0.1:10000/{path}")).unwrap()
}

fn config() -> BlobPoolConfig {
    BlobPoolConfig::default().sweep_interval(None)
}

/// Defaults, no sweeper, no environment.
fn pool() -> BlobPool {
    BlobPool::builder().config(config()).build().unwrap()
}

fn pool_with(config: BlobPoolConfig) -> BlobPool {
    BlobPool::builder().config(config).build().unwrap()
}

fn address(credential: &Arc<dyn TokenCredential>) -> usize {
    Arc::as_ptr(credential).cast::<()>() as usize
}

async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

/// A TLS terminator (testkit CA) in front of a rate-limiting server answering 201 by default,
/// and a pool whose transport trusts that CA, never retries and has no sweeper.
struct Backend {
    server: RateLimitServer,
    port: u16,
    pool: BlobPool,
}

async fn backend(policy: RetryPolicy) -> Backend {
    testkit::tls::install_crypto_provider();
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::status(201));
    let ca = TestCa::new("blob-pool-blackbox").unwrap();
    let front = ca.front(server.addr()).await.unwrap();
    let cert = reqwest::Certificate::from_der(&ca.cert_der()).unwrap();
    let transport = storage_transport()
        .tls_certs_only([cert])
        .policy(policy)
        .build()
        .unwrap();
    let pool = BlobPool::builder()
        .config(config())
        .transport(transport)
        .build()
        .unwrap();
    Backend {
        server,
        port: front.port(),
        pool,
    }
}

impl Backend {
    fn endpoint(&self, host: &str, account: &str) -> Endpoint {
        Endpoint::parse(&format!("https://{host}:{}/{account}", self.port)).unwrap()
    }

    /// Create container `name` with `client`; the Authorization header the server saw.
    async fn create(&self, client: &PooledBlobClient, name: &str) -> azure_core::Result<String> {
        let before = self.server.requests().len();
        client.blob_container_client(name).create(None).await?;
        let seen = self.server.requests();
        assert_eq!(seen.len(), before + 1, "exactly one request for {name}");
        Ok(seen[before].authorization.clone().unwrap_or_default())
    }
}

fn bearer(serial: u64) -> String {
    format!("Bearer {}", token_of(serial))
}

// ---------------------------------------------------------------------------------------------
// Configuration and knobs (B5, P8, X5)
// ---------------------------------------------------------------------------------------------

// covers X5, B5: the defaults are finite and the documented ones.
#[test]
fn x5_defaults_are_finite_and_as_documented() {
    let config = BlobPoolConfig::default();
    assert_eq!(config.idle_ttl_value(), Duration::from_secs(1800));
    assert_eq!(config.sweep_interval_value(), Some(Duration::from_secs(60)));
    assert_eq!(config.max_entries_value(), 1024);
    assert_eq!(config.api_version_value(), None);
    assert_eq!(
        IDLE_TTL_SECONDS.name(),
        "BLOB_SERVICE_POOL_IDLE_TTL_SECONDS"
    );
    assert_eq!(IDLE_TTL_SECONDS.default_value(), 1800);
    assert_eq!(IDLE_TTL_SECONDS.range(), (1, 604_800));
    assert_eq!(SWEEP_SECONDS.name(), "BLOB_SERVICE_POOL_SWEEP_SECONDS");
    assert_eq!(SWEEP_SECONDS.default_value(), 60);
    assert_eq!(SWEEP_SECONDS.range(), (0, 86_400));
    assert_eq!(MAX_ENTRIES.name(), "BLOB_SERVICE_POOL_MAX_ENTRIES");
    assert_eq!(MAX_ENTRIES.default_value(), 1024);
    assert_eq!(MAX_ENTRIES.range(), (1, 65_536));
    // With an empty environment, from_env_with gives the same defaults.
    let empty = BlobPoolConfig::from_env_with(|_| None);
    assert_eq!(empty.idle_ttl_value(), Duration::from_secs(1800));
    assert_eq!(empty.sweep_interval_value(), Some(Duration::from_secs(60)));
    assert_eq!(empty.max_entries_value(), 1024);
}

fn env_one(name: &'static str, value: &str) -> BlobPoolConfig {
    let value = value.to_string();
    BlobPoolConfig::from_env_with(move |n| (n == name).then(|| value.clone()))
}

// covers B5, P8: malformed, zero, huge idle-TTL values → documented clamp or the default,
// never a panic ("unset → default, garbage → a warning and the default, out of range → clamped").
#[test]
fn b5_env_idle_ttl_garbage_zero_and_huge_are_defaulted_or_clamped() {
    let ttl = |v: &str| env_one("BLOB_SERVICE_POOL_IDLE_TTL_SECONDS", v).idle_ttl_value();
    assert_eq!(ttl("600"), Duration::from_secs(600));
    assert_eq!(ttl("0"), Duration::from_secs(1), "0 is clamped to 1 s");
    assert_eq!(
        ttl("604801"),
        Duration::from_secs(604_800),
        "clamped to 7 days"
    );
    assert_eq!(
        ttl(&u64::MAX.to_string()),
        Duration::from_secs(604_800),
        "u64::MAX is in range of the type: clamped"
    );
    for garbage in ["abc", "", "-5", "1.5", "0x10", "600s", "\u{0}", "ⅷ"] {
        assert_eq!(
            ttl(garbage),
            Duration::from_secs(1800),
            "garbage {garbage:?} → default"
        );
    }
    // Not clearly garbage or clearly a number: anything in range, no panic.
    for odd in [" 600 ", "99999999999999999999999999", "+600"] {
        let v = ttl(odd);
        assert!(
            (Duration::from_secs(1)..=Duration::from_secs(604_800)).contains(&v),
            "{odd:?} → {v:?}"
        );
    }
}

// covers X5, P8: the sweeper and capacity knobs clamp, and 0 turns the sweeper off.
#[test]
fn x5_env_sweep_and_capacity_knobs_clamp() {
    let sweep = |v: &str| env_one("BLOB_SERVICE_POOL_SWEEP_SECONDS", v).sweep_interval_value();
    assert_eq!(sweep("0"), None, "0 = sweeper off");
    assert_eq!(sweep("5"), Some(Duration::from_secs(5)));
    assert_eq!(sweep("86401"), Some(Duration::from_secs(86_400)));
    assert_eq!(sweep("nope"), Some(Duration::from_secs(60)));
    let cap = |v: &str| env_one("BLOB_SERVICE_POOL_MAX_ENTRIES", v).max_entries_value();
    assert_eq!(cap("0"), 1);
    assert_eq!(cap("100000"), 65_536);
    assert_eq!(cap("-1"), 1024);
    assert_eq!(cap("17"), 17);
}

// covers X5: every duration the builder accepts, Duration::MAX and zero included, is clamped
// into the documented ranges; `Some(ZERO)` means no sweeper.
#[test]
fn x5_builder_durations_are_clamped_into_documented_ranges() {
    let c = BlobPoolConfig::default().idle_ttl(Duration::ZERO);
    assert_eq!(c.idle_ttl_value(), Duration::from_secs(1));
    let c = BlobPoolConfig::default().idle_ttl(Duration::from_nanos(1));
    assert_eq!(c.idle_ttl_value(), Duration::from_secs(1));
    let c = BlobPoolConfig::default().idle_ttl(Duration::MAX);
    assert_eq!(c.idle_ttl_value(), Duration::from_secs(604_800));
    let c = BlobPoolConfig::default().sweep_interval(Some(Duration::ZERO));
    assert_eq!(c.sweep_interval_value(), None, "zero: no sweeper");
    let c = BlobPoolConfig::default().sweep_interval(Some(Duration::MAX));
    assert_eq!(c.sweep_interval_value(), Some(Duration::from_secs(86_400)));
    let c = BlobPoolConfig::default().sweep_interval(None);
    assert_eq!(c.sweep_interval_value(), None);
}

// covers X5 ("any value a builder accepts … is clamped or rejected, never a panic") and the
// capacity row of the configuration table (range 1 – 65 536).
#[tokio::test(start_paused = true)]
async fn x5_builder_capacity_zero_and_usize_max_are_clamped_or_rejected() {
    for n in [0, usize::MAX] {
        let config = config().max_entries(n);
        let value = config.max_entries_value();
        match BlobPool::builder().config(config).build() {
            Err(e) => {
                // Rejected: fine, as long as it is typed.
                let _ = e.to_string();
            }
            Ok(pool) => {
                assert!(
                    (1..=65_536).contains(&pool.config().max_entries_value()),
                    "max_entries({n}) accepted unclamped: config says {value}, pool says {}",
                    pool.config().max_entries_value()
                );
                let c = cred(1);
                for i in 0..3 {
                    pool.client(&c, &ep(&format!("a{i}"))).await.unwrap();
                }
                assert!(pool.len() <= pool.config().max_entries_value());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Endpoints (B1, B7, bad input, secrets)
// ---------------------------------------------------------------------------------------------

// covers B1/B2's key: two spellings of one endpoint (host case, scheme case, trailing slashes,
// explicit default port) are one endpoint and one pool key.
#[tokio::test(start_paused = true)]
async fn b1_spellings_of_one_endpoint_are_one_pool_key() {
    let canonical = Endpoint::parse("https://myhost.example:10000/acct").unwrap();
    for spelling in [
        "https://myhost.example:10000/acct/",
        "https://myhost.example:10000/acct///",
        "https://MyHost.EXAMPLE:10000/acct",
        "HTTPS://MYHOST.example:10000/acct/",
    ] {
        let e = Endpoint::parse(spelling).unwrap();
        assert_eq!(e, canonical, "{spelling}");
        assert_eq!(e.as_str(), canonical.as_str(), "{spelling}");
    }
    let azure = Endpoint::azure("myaccount").unwrap();
    for spelling in [
        "https://myaccount.blob.core.windows.net",
        "https://myaccount.blob.core.windows.net/",
        "https://MYACCOUNT.blob.core.windows.net:443/",
    ] {
        assert_eq!(Endpoint::parse(spelling).unwrap(), azure, "{spelling}");
    }
    let via_fromstr: Endpoint = "https://myhost.example:10000/acct/".parse().unwrap();
    assert_eq!(via_fromstr, canonical);

    let pool = pool();
    let c = cred(1);
    let first = pool.client(&c, &canonical).await.unwrap();
    for spelling in [
        "https://myhost.example:10000/acct/",
        "https://MyHost.EXAMPLE:10000/acct",
    ] {
        let again = pool
            .client(&c, &Endpoint::parse(spelling).unwrap())
            .await
            .unwrap();
        assert_eq!(again.credential_id(), first.credential_id());
    }
    assert_eq!(pool.stats().pool.creations, 1);
    assert_eq!(pool.len(), 1);
}

// covers B1: endpoints that differ in port, path, path case or host are different keys, and a
// client is always for the endpoint it was asked for.
#[tokio::test(start_paused = true)]
async fn b1_distinct_endpoints_are_distinct_keys_and_clients_match_their_endpoint() {
    let spellings = [
        "https://127.0.0.1:10000/acct",
        "https://127.0.0.1:10001/acct",
        "https://localhost:10000/acct",
        "https://127.0.0.1:10000/Acct",
        "https://127.0.0.1:10000/acct2",
        "https://127.0.0.1:10000/acct/sub",
        "https://[::1]:10000/acct",
    ];
    let endpoints: Vec<Endpoint> = spellings
        .iter()
        .map(|s| Endpoint::parse(s).unwrap_or_else(|e| panic!("{s}: {e}")))
        .collect();
    let unique: HashSet<&str> = endpoints.iter().map(Endpoint::as_str).collect();
    assert_eq!(unique.len(), spellings.len(), "{unique:?}");
    let pool = pool();
    let c = cred(1);
    for round in 0..3 {
        for e in &endpoints {
            let client = pool.client(&c, e).await.unwrap();
            assert_eq!(client.endpoint(), e, "round {round}");
            assert!(client.is_for(&c));
        }
    }
    // Many generated endpoints: each client is for its own endpoint.
    for i in 0..300 {
        let e = ep(&format!("gen{i}"));
        assert_eq!(pool.client(&c, &e).await.unwrap().endpoint(), &e);
    }
    let stats = pool.stats();
    assert_eq!(stats.pool.creations, (spellings.len() + 300) as u64);
    assert_eq!(stats.pool.hits, 2 * spellings.len() as u64);
}

// covers the failure table ("bad endpoint or account name → InvalidEndpoint / InvalidAccountName")
// and Endpoint's documented rejections: typed errors, never a panic.
#[test]
fn bad_endpoints_are_typed_errors_never_panics() {
    let long = format!("https://h/{}", "a".repeat(200_000));
    let bad = [
        "",
        "   ",
        "not a url",
        "relative/path",
        "/acct",
        "https://",
        "https:",
        "http://127.0.0.1:10000/devstoreaccount1",
        "HTTP://127.0.0.1:10000/devstoreaccount1",
        "ftp://host/acct",
        "wss://host/acct",
        "file:///etc/passwd",
        "mailto:someone@example.com",
        "data:text/plain,hello",
        "javascript:alert(1)",
        "https://host/acct?sv=2020&sig=abc",
        "https://host/acct#frag",
        "https://user@host/acct",
        "https://user:pw@host/acct",
        "https://host:99999/acct",
        "https://ho st/acct",
        "https://[::1/acct",
    ];
    for input in bad {
        match Endpoint::parse(input) {
            Err(BlobPoolError::InvalidEndpoint { .. }) => {}
            other => panic!("{input:?} → {other:?}, expected InvalidEndpoint"),
        }
        assert!(input.parse::<Endpoint>().is_err(), "FromStr {input:?}");
    }
    // Whatever a very long URL gives, it does not panic.
    let _ = Endpoint::parse(&long);
    // An empty query or fragment marker, or leading control characters (which URL parsing
    // strips): rejected, or normalised away (the key has none of them).
    for input in [
        "https://host/acct?",
        "https://host/acct#",
        "\u{0}https://host/acct",
    ] {
        if let Ok(e) = Endpoint::parse(input) {
            assert!(
                !e.as_str().contains('?')
                    && !e.as_str().contains('#')
                    && !e.as_str().contains('\u{0}'),
                "{input:?} → key {}",
                e.as_str()
            );
        }
    }
}

// covers Endpoint::azure: "3–24 lowercase letters and digits", typed InvalidAccountName.
#[test]
fn azure_account_names_are_validated_with_a_typed_error() {
    for good in ["abc", "a1b2c3", "123", &"z".repeat(24)] {
        let e = Endpoint::azure(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        assert_eq!(e.as_str(), format!("https://{good}.blob.core.windows.net/"));
    }
    for bad in [
        "",
        "ab",
        &"z".repeat(25),
        "MyAccount",
        "my-account",
        "my_account",
        "my.account",
        "evil.com/x",
        "abc/../x",
        "abc?x",
        "abc#x",
        "abc def",
        "abcé",
        "abc\n",
        "ＡＢＣ",
        "abc:443",
        "user@abc",
    ] {
        match Endpoint::azure(bad) {
            Err(BlobPoolError::InvalidAccountName) => {}
            other => panic!("{bad:?} → {other:?}, expected InvalidAccountName"),
        }
    }
}

// covers "the URL is not echoed (it may hold a SAS)" and "Secrets: … never reach
// Debug/Display": errors for URLs carrying a SAS or user info do not repeat them.
#[test]
fn endpoint_errors_never_echo_secrets() {
    for input in [
        "https://host/acct?sv=2020&sig=TOPSECRETSIG",
        "http://host/acct?sig=TOPSECRETSIG",
        "https://user:TOPSECRETSIG@host/acct",
        "https://TOPSECRETSIG@host/acct",
        "https://host/acct#TOPSECRETSIG",
        "ftp://TOPSECRETSIG/acct",
        "https://host:TOPSECRETSIG/acct",
        "TOPSECRETSIG",
    ] {
        let error = Endpoint::parse(input).expect_err(input);
        let mut text = format!("{error} {error:?}");
        let mut source = std::error::Error::source(&error);
        while let Some(s) = source {
            text.push_str(&format!(" {s} {s:?}"));
            source = s.source();
        }
        assert!(!text.contains("TOPSECRETSIG"), "{input:?} echoed: {text}");
    }
    let error = Endpoint::azure("TOPSECRETSIG").expect_err("uppercase");
    assert!(!format!("{error} {error:?}").contains("TOPSECRETSIG"));
}

// ---------------------------------------------------------------------------------------------
// Identity (B1, B2)
// ---------------------------------------------------------------------------------------------

// covers B1, P9: stats agree with what happened (hits, misses, creations, entries).
#[tokio::test(start_paused = true)]
async fn b1_p9_stats_agree_with_the_calls_made() {
    let pool = pool();
    let creds: Vec<_> = (0..3).map(cred).collect();
    let endpoints: Vec<_> = (0..4).map(|i| ep(&format!("a{i}"))).collect();
    let mut calls = 0u64;
    for _ in 0..7 {
        for c in &creds {
            for e in &endpoints {
                let client = pool.client(c, e).await.unwrap();
                assert!(client.is_for(c));
                calls += 1;
            }
        }
    }
    let s = pool.stats();
    assert_eq!(s.pool.creations, 12);
    assert_eq!(s.pool.misses, 12);
    assert_eq!(s.pool.hits + s.pool.misses, calls);
    assert_eq!(s.pool.entries, 12);
    assert_eq!(pool.len(), 12);
    assert!(!pool.is_empty());
    assert_eq!(s.credentials, 3);
    assert_eq!(s.registrations, 3);
    assert_eq!(s.credentials_dropped, 0);
    assert_eq!(s.pool.evictions.total(), 0);
    assert_eq!(s.clients_retired, 0);
}

// covers B2 and the guide's "Identity is the allocation, not the contents: two Arcs of equal
// credentials are two identities; clones of one Arc are one".
#[tokio::test(start_paused = true)]
async fn b2_identity_is_the_allocation_clones_share_equal_contents_do_not() {
    let pool = pool();
    let e = ep("acct");
    let a = cred(7);
    let a2 = a.clone();
    let b = cred(7); // same contents, another allocation
    let ca = pool.client(&a, &e).await.unwrap();
    let ca2 = pool.client(&a2, &e).await.unwrap();
    let cb = pool.client(&b, &e).await.unwrap();
    assert_eq!(ca.credential_id(), ca2.credential_id());
    assert_ne!(ca.credential_id(), cb.credential_id());
    assert!(ca.is_for(&a) && ca.is_for(&a2) && !ca.is_for(&b));
    assert!(cb.is_for(&b) && !cb.is_for(&a));
    assert_eq!(pool.stats().pool.creations, 2);
    assert_eq!(pool.stats().registrations, 2);
}

// covers B2 (seed 000's incident) under churn, with nothing but client() calls: no
// evict_dropped, no sweeper. Credentials are created, used on endpoints that differ only in
// spelling, and dropped; every client is for the asking credential and every credential gets
// an id never seen before, while the registry stays bounded (B4 on access).
#[tokio::test(start_paused = true)]
async fn b2_churn_on_access_only_never_serves_a_dead_credentials_client() {
    let pool = pool();
    let spellings = [
        "https://127.0.0.1:10000/acct",
        "https://127.0.0.1:10000/acct/",
        "https://127.0.0.1:10000/acct//",
        "https://127.0.0.1:10001/acct",
    ];
    let endpoints: Vec<Endpoint> = spellings
        .iter()
        .map(|s| Endpoint::parse(s).unwrap())
        .collect();
    let keeper = cred(u64::MAX);
    let mut ids: HashSet<CredentialId> = HashSet::new();
    let mut seen_addresses = HashSet::new();
    let mut reused = 0;
    let mut max_credentials = 0;
    for serial in 0..2000 {
        let c = cred(serial);
        if !seen_addresses.insert(address(&c)) {
            reused += 1;
        }
        let mut id = None;
        for e in &endpoints {
            let client = pool.client(&c, e).await.unwrap();
            assert!(
                client.is_for(&c),
                "round {serial}: client for another credential"
            );
            assert_eq!(client.endpoint(), e);
            match id {
                None => {
                    assert!(
                        ids.insert(client.credential_id()),
                        "round {serial}: id {} handed out twice",
                        client.credential_id()
                    );
                    id = Some(client.credential_id());
                }
                Some(id) => assert_eq!(client.credential_id(), id, "round {serial}"),
            }
        }
        drop(c);
        // An access by another (live) credential lets the pool notice the drop.
        pool.client(&keeper, &endpoints[0]).await.unwrap();
        max_credentials = max_credentials.max(pool.stats().credentials);
    }
    assert!(reused > 10, "addresses reused only {reused} times");
    assert!(
        max_credentials <= 8,
        "registrations of dropped credentials pile up: {max_credentials}"
    );
    let s = pool.stats();
    assert_eq!(s.registrations, 2001);
    assert!(s.credentials_dropped >= 1990, "{s:?}");
    assert!(
        pool.len() <= 8,
        "clients of dropped credentials pile up: {}",
        pool.len()
    );
}

// covers B2: the same credential in two pools, and ids across pools: ids are never reused
// process-wide, and each pool only returns clients for the asking credential.
#[tokio::test(start_paused = true)]
async fn b2_ids_are_unique_across_pools() {
    let (p1, p2) = (pool(), pool());
    let e = ep("acct");
    let mut ids = HashSet::new();
    for serial in 0..50 {
        let c = cred(serial);
        let x = p1.client(&c, &e).await.unwrap();
        let y = p2.client(&c, &e).await.unwrap();
        assert!(x.is_for(&c) && y.is_for(&c));
        assert!(ids.insert(x.credential_id()), "id reused");
        if y.credential_id() != x.credential_id() {
            assert!(ids.insert(y.credential_id()), "id reused");
        }
        drop((x, y, c));
        p1.evict_dropped().await;
        p2.evict_dropped().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Dropped credentials (B4)
// ---------------------------------------------------------------------------------------------

// covers B4 ("without the pool keeping the credential alive") and the handle doc ("Dropping it
// does nothing … If the credential … is dropped while the handle is still held"): the credential
// value is dropped the moment the user drops it, even while pooled clients and handles exist;
// its clients go on the next access even while a handle is held.
#[tokio::test(start_paused = true)]
async fn b4_the_pool_never_keeps_a_credential_alive_even_with_handles_held() {
    let pool = pool();
    let p = probe(1);
    let other = cred(2);
    let weak = Arc::downgrade(&p.credential);
    let handles: Vec<_> = {
        let mut v = Vec::new();
        for i in 0..3 {
            v.push(
                pool.client(&p.credential, &ep(&format!("a{i}")))
                    .await
                    .unwrap(),
            );
        }
        v
    };
    pool.client(&other, &ep("a0")).await.unwrap();
    assert_eq!(
        Arc::strong_count(&p.credential),
        1,
        "the pool holds a strong ref"
    );
    drop(p.credential);
    assert!(
        p.dropped.load(Ordering::SeqCst),
        "the credential value was kept alive"
    );
    assert!(weak.upgrade().is_none());
    // Next access: evicted although handles are still held.
    pool.client(&other, &ep("a0")).await.unwrap();
    let s = pool.stats();
    assert_eq!(s.pool.evictions.owner_gone, 3, "{s:?}");
    assert_eq!(s.credentials_dropped, 1);
    assert_eq!(s.credentials, 1);
    assert_eq!(pool.len(), 1);
    // The handles still say what they were built for, and are for no other credential.
    let other_id = pool
        .client(&other, &ep("a0"))
        .await
        .unwrap()
        .credential_id();
    for (i, h) in handles.iter().enumerate() {
        assert_ne!(h.credential_id(), other_id);
        assert_eq!(h.endpoint(), &ep(&format!("a{i}")));
        assert!(!h.is_for(&other));
    }
}

/// Pool `y` with `n` registered credentials (one client each on `e`); returns them.
async fn registered(pool: &BlobPool, n: u64, e: &Endpoint) -> Vec<Probe> {
    let mut v = Vec::new();
    for serial in 0..n {
        let p = probe(serial);
        pool.client(&p.credential, e).await.unwrap();
        v.push(p);
    }
    v
}

// covers B4 as the guide states it: "past 16 credentials, 16 per call round-robin (a cursor of
// the pool's own), so with n credentials every one is checked within ⌈n/16⌉ accesses" — here
// n = 32, so two accesses to the pool must find whichever one was dropped, even when another
// pool (also with 32 credentials) is accessed in between on the same thread. (A cursor shared
// by the two pools, as a thread-local one was, made one pool skip the same half every time.)
#[tokio::test(start_paused = true)]
async fn b4_dropped_found_within_ceil_n_over_16_accesses_with_another_pool_interleaved() {
    let e = ep("acct");
    for k in 0..32usize {
        let y = pool();
        let x = pool();
        let mut ys = registered(&y, 32, &e).await;
        let xs = registered(&x, 32, &e).await;
        let live = ys[(k + 1) % 32].credential.clone();
        let gone = ys.remove(k);
        drop(gone.credential);
        assert!(gone.dropped.load(Ordering::SeqCst));
        // Count this pool's accesses until the drop is noticed (at most 100).
        let mut accesses = 0;
        while accesses < 100 && y.stats().credentials_dropped == 0 {
            x.client(&xs[0].credential, &e).await.unwrap();
            y.client(&live, &e).await.unwrap();
            accesses += 1;
        }
        let s = y.stats();
        assert!(
            s.credentials_dropped == 1 && accesses <= 2,
            "credential #{k} of 32 dropped: its pool took {accesses} accesses (100 = never) to \
             notice, another pool being accessed in between on the same thread; guide \
             promises within 2: {:?}",
            (s.credentials_dropped, s.pool.evictions.owner_gone)
        );
    }
}

// covers B4 as the guide states it, single pool: n = 40 credentials, each dropped in turn (one
// per fresh pool); each is found within ⌈40/16⌉ = 3 accesses.
#[tokio::test(start_paused = true)]
async fn b4_dropped_found_within_ceil_n_over_16_accesses_single_pool() {
    let e = ep("acct");
    for k in 0..40usize {
        let y = pool();
        let mut ys = registered(&y, 40, &e).await;
        let live = ys[(k + 1) % 40].credential.clone();
        drop(ys.remove(k));
        for _ in 0..3 {
            y.client(&live, &e).await.unwrap();
        }
        assert_eq!(
            y.stats().credentials_dropped,
            1,
            "credential #{k} of 40 not found within 3 accesses"
        );
    }
}

// covers SPEC B4 read literally: "When a credential is dropped, its entries are evicted
// promptly (on the next access or sweep at the latest)". The guide keeps that up to 16
// credentials (every access checks them all): with 16 credentials, one dropped, the very next
// access must evict it, whichever it is.
#[tokio::test(start_paused = true)]
async fn b4_spec_literal_the_next_access_evicts_a_dropped_credential_among_16() {
    let e = ep("acct");
    let mut missed = Vec::new();
    for k in 0..16usize {
        let y = pool();
        let mut ys = registered(&y, 16, &e).await;
        let live = ys[(k + 1) % 16].credential.clone();
        drop(ys.remove(k));
        y.client(&live, &e).await.unwrap();
        if y.stats().credentials_dropped != 1 {
            missed.push(k);
        }
    }
    assert!(
        missed.is_empty(),
        "SPEC B4: dropped credentials not evicted on the next access (indices {missed:?} of 16)"
    );
}

// covers B4 ("or sweep"), P3: with no access at all, the background sweeper (default 60 s)
// evicts every dropped credential's clients and registration at its first tick.
#[tokio::test(start_paused = true)]
async fn b4_the_sweeper_alone_evicts_dropped_credentials() {
    let pool = pool_with(BlobPoolConfig::default()); // sweeper every 60 s
    let e = ep("acct");
    let keep = probe(100);
    pool.client(&keep.credential, &e).await.unwrap();
    let ps = registered(&pool, 20, &e).await;
    assert_eq!(pool.len(), 21);
    drop(ps);
    settle().await;
    tokio::time::advance(Duration::from_secs(61)).await;
    settle().await;
    let s = pool.stats();
    assert_eq!(s.credentials_dropped, 20, "{s:?}");
    assert_eq!(s.pool.evictions.owner_gone, 20);
    assert_eq!(s.credentials, 1);
    assert_eq!(pool.len(), 1);
    assert!(!keep.dropped.load(Ordering::SeqCst));
}

// covers P3 ("stops when the pool is dropped") and B4 (the sweeper holds nothing alive): once
// the pool is dropped its sweeper task ends and every credential it saw can die.
#[tokio::test(start_paused = true)]
async fn p3_the_sweeper_task_ends_when_the_pool_is_dropped() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let pool = pool_with(BlobPoolConfig::default().sweep_interval(Some(Duration::from_secs(5))));
    let p = probe(1);
    pool.client(&p.credential, &ep("acct")).await.unwrap();
    settle().await;
    assert!(
        metrics.num_alive_tasks() > before,
        "no sweeper task started"
    );
    drop(pool);
    for _ in 0..3 {
        tokio::time::advance(Duration::from_secs(6)).await;
        settle().await;
    }
    assert_eq!(
        metrics.num_alive_tasks(),
        before,
        "a task outlived the dropped pool"
    );
    assert_eq!(Arc::strong_count(&p.credential), 1);
}

// ---------------------------------------------------------------------------------------------
// Idle TTL (B3, B5)
// ---------------------------------------------------------------------------------------------

// covers B3, B5: default TTL 1800 s; unused for 1799 s stays, unused for 1801 s goes (and is
// retired); every hit refreshes last-used.
#[tokio::test(start_paused = true)]
async fn b3_b5_default_ttl_boundaries_and_hits_refresh_last_used() {
    let pool = pool();
    let c = cred(1);
    let (a, b, h) = (ep("a"), ep("b"), ep("hot"));
    pool.client(&c, &a).await.unwrap();
    pool.client(&c, &h).await.unwrap();
    tokio::time::advance(Duration::from_secs(1000)).await;
    pool.client(&c, &b).await.unwrap();
    for _ in 0..5 {
        tokio::time::advance(Duration::from_secs(700)).await;
        pool.client(&c, &h).await.unwrap(); // a hit every 700 s
    }
    // Now: a idle 4500 s, b idle 3500 s, hot idle 0 s.
    assert_eq!(pool.prune_idle().await.total(), 2);
    assert_eq!(pool.len(), 1);
    let s = pool.stats();
    assert_eq!(s.pool.evictions.idle, 2);
    assert_eq!(s.clients_retired, 2);

    let fresh = pool_with(config());
    fresh.client(&c, &a).await.unwrap();
    tokio::time::advance(Duration::from_secs(1799)).await;
    assert_eq!(fresh.prune_idle().await.total(), 0, "pruned before 1800 s");
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(fresh.prune_idle().await.total(), 1, "kept after 1800 s");
    assert!(fresh.is_empty());
}

// covers B5: BLOB_SERVICE_POOL_IDLE_TTL_SECONDS drives prune_idle.
#[tokio::test(start_paused = true)]
async fn b5_the_env_ttl_drives_prune_idle() {
    let config = BlobPoolConfig::from_env_with(|n| {
        (n == "BLOB_SERVICE_POOL_IDLE_TTL_SECONDS").then(|| "600".to_string())
    })
    .sweep_interval(None);
    let pool = pool_with(config);
    let c = cred(1);
    pool.client(&c, &ep("a")).await.unwrap();
    tokio::time::advance(Duration::from_secs(599)).await;
    assert_eq!(pool.prune_idle().await.total(), 0);
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(pool.prune_idle().await.total(), 1);
}

// covers B5, X5 ("`BlobPoolConfig::idle_ttl` (and `prune_idle_with`): clamped into the same
// range", 1 s – 7 days): prune_idle_with(ZERO) does not prune a client used half a second ago;
// Duration::MAX prunes nothing younger than 7 days and does not panic.
#[tokio::test(start_paused = true)]
async fn b5_prune_idle_with_zero_and_max_are_clamped() {
    let pool = pool();
    let c = cred(1);
    pool.client(&c, &ep("a")).await.unwrap();
    tokio::time::advance(Duration::from_millis(500)).await;
    assert_eq!(
        pool.prune_idle_with(Duration::ZERO).await.total(),
        0,
        "a zero TTL must be clamped to 1 s"
    );
    assert_eq!(pool.prune_idle_with(Duration::MAX).await.total(), 0);
    tokio::time::advance(Duration::from_secs(6 * 24 * 3600)).await;
    assert_eq!(pool.prune_idle_with(Duration::MAX).await.total(), 0);
    tokio::time::advance(Duration::from_secs(2 * 24 * 3600)).await;
    assert_eq!(
        pool.prune_idle_with(Duration::MAX).await.total(),
        1,
        "Duration::MAX is clamped to 7 days"
    );
}

// covers B5, P3: the sweeper prunes idle clients with no call at all.
#[tokio::test(start_paused = true)]
async fn b5_the_sweeper_prunes_idle_clients() {
    let pool = pool_with(BlobPoolConfig::default()); // TTL 1800 s, sweep 60 s
    let c = cred(1);
    pool.client(&c, &ep("a")).await.unwrap();
    settle().await;
    for _ in 0..32 {
        tokio::time::advance(Duration::from_secs(60)).await;
        settle().await;
    }
    assert!(pool.is_empty(), "{:?}", pool.stats());
    assert_eq!(pool.stats().pool.evictions.idle, 1);
}

// ---------------------------------------------------------------------------------------------
// Reset, invalidate (B6)
// ---------------------------------------------------------------------------------------------

// covers B6 ("reset() clears everything, including any per-credential registration") and the
// failure table ("every registration and token cache dropped"): after reset no token stats, new
// ids, counts by cause agree, and the pool stays usable.
#[tokio::test(start_paused = true)]
async fn b6_reset_clears_clients_registrations_and_token_caches() {
    let pool = pool();
    let probes: Vec<_> = (0..3).map(probe).collect();
    let mut old_ids = HashSet::new();
    for p in &probes {
        for i in 0..2 {
            old_ids.insert(
                pool.client(&p.credential, &ep(&format!("a{i}")))
                    .await
                    .unwrap()
                    .credential_id(),
            );
        }
        assert!(pool.token_stats(&p.credential).is_some());
    }
    // One credential dropped but not yet noticed.
    let dropped_weak = Arc::downgrade(&probes[2].credential);
    let mut probes = probes;
    drop(probes.pop());
    assert!(dropped_weak.upgrade().is_none());

    let report = pool.reset().await.unwrap();
    assert_eq!(report.total(), 6);
    assert!(pool.is_empty());
    let s = pool.stats();
    assert_eq!(s.credentials, 0);
    assert_eq!(s.pool.entries, 0);
    assert_eq!(s.pool.evictions.reset, 6, "{s:?}");
    assert_eq!(s.clients_retired, 6);
    for p in &probes {
        assert!(
            pool.token_stats(&p.credential).is_none(),
            "token cache kept across reset"
        );
    }
    // Usable again, with new ids.
    for p in &probes {
        let c = pool.client(&p.credential, &ep("a0")).await.unwrap();
        assert!(c.is_for(&p.credential));
        assert!(
            !old_ids.contains(&c.credential_id()),
            "id reused after reset"
        );
    }
    assert_eq!(pool.stats().registrations, 5);
    assert_eq!(pool.stats().credentials, 2);
    // A second reset in a row, and a reset of an empty pool, are fine.
    pool.reset().await.unwrap();
    assert_eq!(pool.reset().await.unwrap().total(), 0);
}

// covers invalidate_credential's doc: retires that credential's clients (cause Invalidated),
// forgets its token cache, the next client() registers it afresh (a new id); other credentials
// are untouched; an unknown credential is a no-op.
#[tokio::test(start_paused = true)]
async fn invalidate_credential_affects_only_that_credential() {
    let pool = pool();
    let (a, b) = (cred(1), cred(2));
    let mut a_id = None;
    for i in 0..3 {
        a_id = Some(
            pool.client(&a, &ep(&format!("a{i}")))
                .await
                .unwrap()
                .credential_id(),
        );
        pool.client(&b, &ep(&format!("a{i}"))).await.unwrap();
    }
    let report = pool.invalidate_credential(&a).await;
    assert_eq!(report.total(), 3);
    let s = pool.stats();
    assert_eq!(s.pool.evictions.invalidated, 3, "{s:?}");
    assert_eq!(pool.len(), 3);
    assert!(pool.token_stats(&a).is_none());
    assert!(pool.token_stats(&b).is_some());
    let again = pool.client(&a, &ep("a0")).await.unwrap();
    assert!(again.is_for(&a));
    assert_ne!(Some(again.credential_id()), a_id, "not registered afresh");
    let hits = pool.stats().pool.hits;
    pool.client(&b, &ep("a1")).await.unwrap();
    assert_eq!(pool.stats().pool.hits, hits + 1, "b's client was disturbed");
    let unknown = cred(3);
    assert_eq!(pool.invalidate_credential(&unknown).await.total(), 0);
    assert_eq!(
        pool.stats().registrations,
        3,
        "invalidating an unknown credential registered it"
    );
}

// ---------------------------------------------------------------------------------------------
// Capacity (P4, X4, X5)
// ---------------------------------------------------------------------------------------------

// covers the configuration table ("capacity (clients); past it the least recently used goes"):
// with room for 2, the one used least recently is evicted, the recently used one stays.
#[tokio::test(start_paused = true)]
async fn capacity_evicts_the_least_recently_used_client() {
    let pool = pool_with(config().max_entries(2));
    let c = cred(1);
    pool.client(&c, &ep("old")).await.unwrap();
    tokio::time::advance(Duration::from_secs(1)).await;
    pool.client(&c, &ep("lru")).await.unwrap();
    tokio::time::advance(Duration::from_secs(1)).await;
    pool.client(&c, &ep("old")).await.unwrap(); // "old" is now the most recently used
    tokio::time::advance(Duration::from_secs(1)).await;
    pool.client(&c, &ep("new")).await.unwrap();
    assert_eq!(pool.len(), 2);
    assert_eq!(pool.stats().pool.evictions.capacity, 1);
    let hits = pool.stats().pool.hits;
    pool.client(&c, &ep("old")).await.unwrap();
    assert_eq!(
        pool.stats().pool.hits,
        hits + 1,
        "the recently used client was evicted instead of the least recently used one"
    );
}

// covers X4 ("no 0 %-hit cliff one key past capacity") and capacity bounding: cycling through
// capacity + 1 keys still hits, and thousands of keys stay within the capacity.
#[tokio::test(start_paused = true)]
async fn x4_no_zero_hit_cliff_and_many_keys_stay_bounded() {
    let pool = pool_with(config().max_entries(8));
    let c = cred(1);
    let keys: Vec<_> = (0..9).map(|i| ep(&format!("k{i}"))).collect();
    for _ in 0..30 {
        for k in &keys {
            pool.client(&c, k).await.unwrap();
            tokio::time::advance(Duration::from_millis(10)).await;
        }
    }
    let s = pool.stats();
    assert!(
        s.pool.hits > 0,
        "0 % hits cycling 9 keys through 8 slots: {s:?}"
    );
    assert!(pool.len() <= 8);

    let big = pool_with(config().max_entries(16));
    for serial in 0..40 {
        let c = cred(serial);
        for i in 0..50 {
            big.client(&c, &ep(&format!("a{i}"))).await.unwrap();
        }
    }
    assert!(big.len() <= 16, "{}", big.len());
    assert_eq!(big.stats().pool.entries, big.len());
}

// ---------------------------------------------------------------------------------------------
// Concurrency (P1, P10)
// ---------------------------------------------------------------------------------------------

// covers B1, P1 (single-flight): 64 tasks on 2 worker threads ask for the same key at once;
// one client is created and all get it; different keys are created once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p1_single_flight_one_creation_per_key_under_concurrency() {
    let pool = pool();
    let creds: Vec<_> = (0..2).map(cred).collect();
    let barrier = Arc::new(tokio::sync::Barrier::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..64usize {
        let (pool, c, barrier) = (pool.clone(), creds[t % 2].clone(), barrier.clone());
        tasks.spawn(async move {
            barrier.wait().await;
            let mut ids = Vec::new();
            for round in 0..20usize {
                let e = ep(&format!("a{}", round % 3));
                let client = pool.client(&c, &e).await.unwrap();
                assert!(client.is_for(&c));
                assert_eq!(client.endpoint(), &e);
                ids.push((t % 2, client.credential_id()));
            }
            ids
        });
    }
    let mut by_cred: [HashSet<CredentialId>; 2] = [HashSet::new(), HashSet::new()];
    while let Some(r) = tasks.join_next().await {
        for (i, id) in r.unwrap() {
            by_cred[i].insert(id);
        }
    }
    assert_eq!(by_cred[0].len(), 1);
    assert_eq!(by_cred[1].len(), 1);
    assert!(by_cred[0].is_disjoint(&by_cred[1]));
    let s = pool.stats();
    assert_eq!(s.pool.creations, 6, "{s:?}");
    assert_eq!(s.registrations, 2, "{s:?}");
    assert_eq!(s.pool.hits + s.pool.misses, 64 * 20, "{s:?}");
    assert_eq!(pool.len(), 6);
}

// covers P10 / "cancellation of a waiting caller leaks nothing": client() futures dropped after
// one poll, or aborted tasks, leave a consistent pool that keeps no credential alive.
#[tokio::test(start_paused = true)]
async fn p10_cancelled_callers_leak_nothing() {
    use futures::FutureExt;
    let pool = pool();
    let p = probe(1);
    let e = ep("acct");
    for _ in 0..50 {
        let fut = pool.client(&p.credential, &e);
        drop(Box::pin(fut).now_or_never());
    }
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let (pool, c) = (pool.clone(), p.credential.clone());
        tasks.spawn(async move { pool.client(&c, &ep(&format!("x{i}"))).await.map(drop) });
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    let client = pool.client(&p.credential, &e).await.unwrap();
    assert!(client.is_for(&p.credential));
    drop(client);
    assert_eq!(
        Arc::strong_count(&p.credential),
        1,
        "a cancelled call kept a strong reference"
    );
    drop(p.credential);
    assert!(p.dropped.load(Ordering::SeqCst));
    pool.evict_dropped().await;
    pool.sweep().await;
    assert!(pool.is_empty(), "{:?}", pool.stats());
    assert_eq!(pool.stats().credentials, 0);
}

// covers B6, P7, P9 under concurrency: client(), reset() and invalidate_credential() racing on
// 2 worker threads; every handle is for its asker, and afterwards the counters agree (every
// client created is either still pooled or was evicted) and a final reset empties the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b6_concurrent_reset_invalidate_and_client_keep_invariants() {
    let pool = pool();
    let creds: Vec<_> = (0..4).map(cred).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..6usize {
        let (pool, creds) = (pool.clone(), creds.clone());
        tasks.spawn(async move {
            for round in 0..300usize {
                let c = &creds[(t + round) % 4];
                let client = pool
                    .client(c, &ep(&format!("a{}", round % 3)))
                    .await
                    .unwrap();
                assert!(client.is_for(c));
                if round % 7 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        });
    }
    {
        let (pool, creds) = (pool.clone(), creds.clone());
        tasks.spawn(async move {
            for round in 0..60usize {
                if round % 2 == 0 {
                    pool.reset().await.unwrap();
                } else {
                    pool.invalidate_credential(&creds[round % 4]).await;
                }
                tokio::task::yield_now().await;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    pool.sweep().await;
    let s = pool.stats();
    assert_eq!(s.pool.entries, pool.len());
    assert_eq!(
        s.pool.creations,
        s.pool.evictions.total() + s.pool.entries as u64,
        "created clients neither pooled nor evicted: {s:?}"
    );
    assert!(s.credentials <= 4, "{s:?}");
    pool.reset().await.unwrap();
    assert!(pool.is_empty());
    assert_eq!(pool.stats().credentials, 0);
    for c in &creds {
        assert_eq!(Arc::strong_count(c), 1, "the pool keeps a credential alive");
    }
}

// The pool is shared across tasks: BlobPool, handles and the client() future are Send + Sync.
#[test]
fn pool_handles_and_futures_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>(_: &T) {}
    send_sync::<BlobPool>();
    send_sync::<PooledBlobClient>();
    send_sync::<Endpoint>();
    send_sync::<BlobPoolError>();
    let pool = pool();
    let c = cred(1);
    let e = ep("a");
    let fut = pool.client(&c, &e);
    send(&fut);
}

// ---------------------------------------------------------------------------------------------
// Over loopback HTTPS: tokens on the wire (B2, B4, B8), secrets
// ---------------------------------------------------------------------------------------------

// covers B2, seed 000 end to end: credentials created, used and dropped in a loop so addresses
// are reused; every request carries the asking credential's own token, never a dead one's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_b2_every_request_carries_the_asking_credentials_token_under_address_reuse() {
    let b = backend(RetryPolicy::never()).await;
    let e = b.endpoint("127.0.0.1", "devstoreaccount1");
    let mut addresses = HashSet::new();
    let mut reused = 0;
    for serial in 0..150u64 {
        let p = probe(serial);
        if !addresses.insert(address(&p.credential)) {
            reused += 1;
        }
        let client = b.pool.client(&p.credential, &e).await.unwrap();
        let auth = b.create(&client, &format!("c{serial}")).await.unwrap();
        assert_eq!(
            auth,
            bearer(serial),
            "round {serial}: another credential's token"
        );
        assert_eq!(p.calls.load(Ordering::SeqCst), 1, "round {serial}");
        drop((client, p.credential));
        assert!(
            p.dropped.load(Ordering::SeqCst),
            "round {serial}: kept alive"
        );
        b.pool.evict_dropped().await;
    }
    assert!(
        reused > 0,
        "no address was ever reused: something still pins every dropped credential's allocation"
    );
    let s = b.pool.stats();
    assert_eq!(s.credentials, 0, "{s:?}");
    assert!(b.pool.is_empty());
}

// covers B8: one token fetch per credential and scope however many clients and endpoints; all
// clients send through the one shared transport.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_b8_one_token_fetch_per_credential_across_clients_and_one_transport() {
    let b = backend(RetryPolicy::never()).await;
    let endpoints = [
        b.endpoint("127.0.0.1", "acct1"),
        b.endpoint("127.0.0.1", "acct2"),
        b.endpoint("localhost", "acct1"),
        b.endpoint("localhost", "acct2"),
    ];
    let (p1, p2) = (probe(1), probe(2));
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..16usize {
        let pool = b.pool.clone();
        let c = if t % 2 == 0 {
            p1.credential.clone()
        } else {
            p2.credential.clone()
        };
        let e = endpoints[t % 4].clone();
        tasks.spawn(async move {
            let client = pool.client(&c, &e).await?;
            client
                .blob_container_client(&format!("t{t}"))
                .create(None)
                .await?;
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
    assert_eq!(
        p1.calls.load(Ordering::SeqCst),
        1,
        "credential 1 fetched more than once"
    );
    assert_eq!(
        p2.calls.load(Ordering::SeqCst),
        1,
        "credential 2 fetched more than once"
    );
    let t1 = b.pool.token_stats(&p1.credential).expect("registered");
    assert_eq!(t1.blocking_fetches, 1, "{t1:?}");
    let s = b.pool.stats();
    assert_eq!(
        s.pool.creations, 4,
        "2 credentials × 2 endpoints each: {s:?}"
    );
    assert_eq!(s.transport.requests, 16, "{s:?}");
    assert_eq!(s.transport.attempts, 16, "{s:?}");
    let seen = b.server.requests();
    assert_eq!(seen.len(), 16);
    for r in &seen {
        let t: usize = r
            .path
            .split('?')
            .next()
            .unwrap()
            .rsplit("/t")
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let serial = if t.is_multiple_of(2) { 1 } else { 2 };
        assert_eq!(
            r.authorization.as_deref(),
            Some(bearer(serial).as_str()),
            "{}",
            r.path
        );
    }
    assert!(b.pool.token_stats(&cred(9)).is_none());
}

// covers B8 ("the Azure SDK's own retry turned off"): a 503 with the transport's retries off
// reaches the caller after exactly one request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_b8_sdk_retry_is_off() {
    let b = backend(RetryPolicy::never()).await;
    b.server.set_default(Answer::status(503));
    let e = b.endpoint("127.0.0.1", "acct");
    let c = cred(1);
    let client = b.pool.client(&c, &e).await.unwrap();
    let r = client.blob_container_client("x").create(None).await;
    assert!(r.is_err());
    assert_eq!(b.server.stats().requests_seen, 1, "the SDK retried");
}

// covers B2, B4 and the handle doc ("it never switches credential"): a handle held after its
// credential was dropped keeps sending that credential's token (or fails), never the token of a
// credential created afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_b4_a_handle_outliving_its_credential_never_switches_credential() {
    let b = backend(RetryPolicy::never()).await;
    let e = b.endpoint("127.0.0.1", "acct");
    let a = probe(1);
    let old = b.pool.client(&a.credential, &e).await.unwrap();
    assert_eq!(b.create(&old, "first").await.unwrap(), bearer(1));
    drop(a.credential);
    assert!(a.dropped.load(Ordering::SeqCst));
    let mut later = Vec::new();
    for serial in 2..20 {
        let p = probe(serial);
        let client = b.pool.client(&p.credential, &e).await.unwrap();
        assert!(client.is_for(&p.credential));
        assert_ne!(client.credential_id(), old.credential_id());
        assert_eq!(
            b.create(&client, &format!("n{serial}")).await.unwrap(),
            bearer(serial)
        );
        later.push(p);
    }
    let before = b.server.requests().len();
    let r = old.blob_container_client("again").create(None).await;
    let seen = b.server.requests();
    match r {
        Ok(_) => {
            assert_eq!(seen.len(), before + 1);
            assert_eq!(
                seen[before].authorization.as_deref(),
                Some(bearer(1).as_str())
            );
        }
        Err(_) => {
            for s in &seen[before..] {
                assert_eq!(s.authorization.as_deref(), Some(bearer(1).as_str()));
            }
        }
    }
    assert_eq!(b.pool.stats().credentials_dropped, 1);
}

// covers the failure table ("the credential fails to give a token: the SDK call fails with
// ErrorKind::Credential; no request is sent; nothing is cached").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_a_failing_credential_sends_no_request_and_caches_nothing() {
    let b = backend(RetryPolicy::never()).await;
    let e = b.endpoint("127.0.0.1", "acct");
    let p = probe_with(1, true);
    let client = b.pool.client(&p.credential, &e).await.unwrap();
    let err = client
        .blob_container_client("x")
        .create(None)
        .await
        .expect_err("no token");
    assert!(
        matches!(err.kind(), azure_core::error::ErrorKind::Credential),
        "{err:?}"
    );
    assert_eq!(
        b.server.stats().requests_seen,
        0,
        "a request went out without a token"
    );
    assert!(p.calls.load(Ordering::SeqCst) >= 1);
}

// covers "Secrets: tokens never reach Debug/Display/logs (PooledBlobClient, BlobPool and
// Endpoint show ids, endpoints and counts only)".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_tokens_never_appear_in_debug_or_display() {
    let b = backend(RetryPolicy::never()).await;
    let e = b.endpoint("127.0.0.1", "acct");
    let c = cred(4242);
    let client = b.pool.client(&c, &e).await.unwrap();
    assert_eq!(b.create(&client, "x").await.unwrap(), bearer(4242));
    let texts = [
        format!("{:?}", b.pool),
        format!("{client:?}"),
        format!("{:?}", b.pool.stats()),
        format!("{:?}", b.pool.token_stats(&c)),
        format!("{e:?} {e}"),
        format!("{:?} {}", client.credential_id(), client.credential_id()),
        format!("{:?}", b.pool.config()),
    ];
    for t in texts {
        assert!(!t.contains(&token_of(4242)), "token leaked: {t}");
    }
}

// covers the handle doc ("Holding it keeps the client usable even if the pool evicts it
// meanwhile"): a handle keeps working, with its own credential's token, after a reset and after
// the pool itself is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_a_handle_stays_usable_after_reset_and_after_the_pool_is_dropped() {
    let b = backend(RetryPolicy::never()).await;
    let e = b.endpoint("127.0.0.1", "acct");
    let c = cred(5);
    let handle = b.pool.client(&c, &e).await.unwrap();
    assert_eq!(b.create(&handle, "one").await.unwrap(), bearer(5));
    b.pool.reset().await.unwrap();
    assert_eq!(b.create(&handle, "two").await.unwrap(), bearer(5));
    let Backend { server, pool, .. } = b;
    drop(pool);
    handle
        .blob_container_client("three")
        .create(None)
        .await
        .expect("a held handle works after its pool is gone");
    let seen = server.requests();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[2].authorization.as_deref(), Some(bearer(5).as_str()));
}

// covers X1 ("bounded labels (never a key, token, account or id-bearing path)"): after real
// requests through the pool, no recorded metric label carries the token, the account or
// container path, or a credential id.
#[test]
fn x1_metric_labels_never_carry_tokens_accounts_or_paths() {
    let recorded = testkit::metrics::recorded_real_time(|| async {
        let b = backend(RetryPolicy::never()).await;
        let e = b.endpoint("127.0.0.1", "zzaccountzz");
        let p = probe(777_777);
        let client = b.pool.client(&p.credential, &e).await.unwrap();
        b.create(&client, "zzcontainerzz").await.unwrap();
        let id = client.credential_id().get().to_string();
        drop((client, p.credential));
        b.pool.evict_dropped().await;
        (b, id)
    });
    assert!(!recorded.is_empty(), "nothing recorded");
    for (key, ..) in &recorded {
        for label in key.key().labels() {
            let v = label.value();
            assert!(
                !v.contains("777777")
                    && !v.contains("SECRET")
                    && !v.contains("zzaccountzz")
                    && !v.contains("zzcontainerzz"),
                "unbounded label {}={v} on {}",
                label.key(),
                key.key().name()
            );
        }
    }
}
