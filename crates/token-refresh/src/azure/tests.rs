//! The Azure adapter against a fake credential that counts its calls (T7, T6).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use azure_core::time::{Duration as WallDuration, OffsetDateTime};

use super::*;
use crate::{TokenState, VirtualClock, WallClock};

const MIN: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct FakeCredential {
    calls: AtomicUsize,
    seen: Mutex<Vec<Vec<String>>>,
    clock: VirtualClock,
    fail: AtomicBool,
}

impl FakeCredential {
    fn new() -> Arc<Self> {
        let start = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("date");
        Arc::new(Self {
            calls: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
            clock: VirtualClock::starting_at(start),
            fail: AtomicBool::new(false),
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl TokenCredential for FakeCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let scopes = scopes.iter().map(|s| s.to_string()).collect();
        self.seen.lock().expect("seen").push(scopes);
        tokio::time::sleep(Duration::from_millis(100)).await;
        if self.fail.load(Ordering::SeqCst) {
            return Err(azure_core::Error::with_message(
                ErrorKind::Credential,
                "identity endpoint said no",
            ));
        }
        // An hour from the wall clock's now, in a +02:00 offset for good measure (T6).
        let expires_on = self.clock.now() + WallDuration::hours(1);
        let offset = azure_core::time::parse_rfc3339("2000-01-01T00:00:00+02:00")
            .expect("date")
            .offset();
        Ok(AccessToken::new(
            format!("secret-{n}"),
            expires_on.to_offset(offset),
        ))
    }
}

fn wrap(fake: &Arc<FakeCredential>) -> CachingCredential {
    let config = RefreshConfig::default().jitter(0.0).wall_clock(fake.clock);
    CachingCredential::wrap(fake.clone(), config)
}

async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

// covers T7: one cache and one fetch per scope set, whatever the order or duplicates.
#[tokio::test(start_paused = true)]
async fn wrapped_credential_fetches_once_per_scope_set() {
    let fake = FakeCredential::new();
    let credential: Arc<dyn TokenCredential> = Arc::new(wrap(&fake));
    let callers: Vec<_> = (0..100)
        .map(|i| {
            let credential = credential.clone();
            tokio::spawn(async move {
                let scopes: &[&str] = if i % 2 == 0 {
                    &["b", "a"]
                } else {
                    &["a", "b", "a"]
                };
                credential.get_token(scopes, None).await
            })
        })
        .collect();
    for caller in callers {
        let token = caller.await.expect("task").expect("token");
        assert_eq!(token.token.secret(), "secret-0");
    }
    assert_eq!(fake.calls(), 1);
    credential.get_token(&["c"], None).await.expect("token");
    assert_eq!(fake.calls(), 2);
    let seen = fake.seen.lock().expect("seen").clone();
    assert_eq!(
        seen,
        vec![
            vec!["a".to_string(), "b".to_string()],
            vec!["c".to_string()]
        ]
    );
}

// covers T7, T1, T6: the adapter refreshes in the background when stale and hands the SDK the
// credential's own wall-clock expiry.
#[tokio::test(start_paused = true)]
async fn wrapped_credential_refreshes_in_the_background_when_stale() {
    let fake = FakeCredential::new();
    let credential = wrap(&fake);
    let first = credential.get_token(&["s"], None).await.expect("token");
    assert_eq!(first.expires_on, fake.clock.now() + WallDuration::hours(1));
    tokio::time::advance(40 * MIN).await;
    assert_eq!(credential.cache_for(&["s"]).state(), TokenState::Stale);
    let start = tokio::time::Instant::now();
    let stale = credential.get_token(&["s"], None).await.expect("token");
    assert_eq!(
        (stale.token.secret(), start.elapsed()),
        ("secret-0", Duration::ZERO)
    );
    settle().await; // the background fetch starts
    tokio::time::advance(Duration::from_millis(100)).await;
    settle().await;
    let fresh = credential.get_token(&["s"], None).await.expect("token");
    assert_eq!(fresh.token.secret(), "secret-1");
    assert_eq!(fake.calls(), 2);
}

// covers T7: the Kubernetes bearer path (a cache handle) and Azure SDK clients (the trait)
// share one cache and one refresh.
#[tokio::test(start_paused = true)]
async fn bearer_path_and_sdk_share_one_cache() {
    let fake = FakeCredential::new();
    let credential = Arc::new(wrap(&fake));
    let aks = ["6dae42f8-4368-4678-94ff-3960e28e3630/.default"];
    let bearer = credential.cache_for(&aks);
    let sdk: Arc<dyn TokenCredential> = credential.clone();
    let (a, b) = tokio::join!(bearer.token(), sdk.get_token(&aks, None));
    assert_eq!(
        a.expect("token").token.secret(),
        b.expect("token").token.secret()
    );
    assert_eq!(fake.calls(), 1);
    assert_eq!(credential.scope_sets(), 1);
}

// covers T7: a failure surfaces as an azure_core credential error and is not cached.
#[tokio::test(start_paused = true)]
async fn failures_are_credential_errors_and_are_not_cached() {
    let fake = FakeCredential::new();
    let credential = wrap(&fake);
    fake.fail.store(true, Ordering::SeqCst);
    let error = credential.get_token(&["s"], None).await.expect_err("fails");
    assert_eq!(error.kind(), &ErrorKind::Credential);
    let refresh = error
        .downcast_ref::<RefreshError>()
        .expect("the cache's error inside");
    let inner = refresh.source_error::<azure_core::Error>().expect("source");
    assert!(inner.to_string().contains("identity endpoint said no"));
    fake.fail.store(false, Ordering::SeqCst);
    let token = credential.get_token(&["s"], None).await.expect("retried");
    assert_eq!(token.token.secret(), "secret-1");
}

// covers T7 over any source: the factory builds one source per (sorted) scope set.
#[tokio::test(start_paused = true)]
async fn credential_over_any_source() {
    #[derive(Debug)]
    struct Minter(Vec<String>);
    impl TokenSource for Minter {
        type Token = AccessToken;
        type Error = std::io::Error;
        async fn fetch(&self) -> Result<Fetched<AccessToken>, std::io::Error> {
            let expires_on = OffsetDateTime::now_utc() + WallDuration::hours(1);
            Ok(AccessToken::new(self.0.join(" "), expires_on).into())
        }
    }
    let credential =
        CachingCredential::new(RefreshConfig::default(), |scopes| Minter(scopes.to_vec()));
    let token = credential
        .get_token(&["z", "y"], None)
        .await
        .expect("token");
    assert_eq!(token.token.secret(), "y z");
    assert_eq!(credential.cache_for(&["y", "z"]).source().0, ["y", "z"]);
}

// Secrets never reach Debug: neither the credential's, nor its caches', nor a fetch's.
#[tokio::test(start_paused = true)]
async fn debug_output_never_contains_the_token() {
    let fake = FakeCredential::new();
    let credential = wrap(&fake);
    let token = credential.get_token(&["s"], None).await.expect("token");
    assert_eq!(token.token.secret(), "secret-0");
    let fetched = Fetched::from(token);
    for printed in [
        format!("{credential:?}"),
        format!("{:?}", credential.cache_for(&["s"])),
        format!("{fetched:?}"),
        format!("{:?}", fake.clone()),
    ] {
        assert!(!printed.contains("secret-0"), "{printed}");
    }
    assert!(format!("{credential:?}").contains("Fresh"));
    let bearer = crate::BearerToken::new("secret-0");
    assert!(!format!("{bearer:?} {bearer}").contains("secret-0"));
}

// covers T11: a token a server rejected is invalidated by identity through the adapter; a
// rejected token that was already replaced changes nothing.
#[tokio::test(start_paused = true)]
async fn invalidating_a_rejected_token_refreshes_once() {
    let fake = FakeCredential::new();
    let credential = wrap(&fake);
    let scopes = ["https://storage.azure.com/.default"];
    let first = credential.access_token(&scopes).await.expect("token");
    assert!(credential.invalidate(&scopes, &first));
    let second = credential.access_token(&scopes).await.expect("token");
    assert_ne!(second.token.secret(), first.token.secret());
    assert!(!credential.invalidate(&scopes, &first), "already replaced");
    credential.access_token(&scopes).await.expect("token");
    assert_eq!(fake.calls(), 2, "one refresh for the rejection");
}

// covers T10: the adapter calls a 400/401/403 from the identity endpoint non-recoverable, and
// anything else recoverable.
#[test]
fn identity_endpoint_rejections_are_non_recoverable() {
    use azure_core::http::StatusCode;
    let source = CredentialSource::new(FakeCredential::new(), &[]);
    let status = |code: StatusCode| {
        azure_core::Error::new(
            ErrorKind::HttpResponse {
                status: code,
                error_code: Some("invalid_client".into()),
                raw_response: None,
            },
            "token request failed",
        )
    };
    assert!(!source.is_recoverable(&status(StatusCode::BadRequest)));
    assert!(!source.is_recoverable(&status(StatusCode::Unauthorized)));
    assert!(!source.is_recoverable(&status(StatusCode::Forbidden)));
    assert!(source.is_recoverable(&status(StatusCode::TooManyRequests)));
    assert!(source.is_recoverable(&status(StatusCode::ServiceUnavailable)));
    assert!(source.is_recoverable(&azure_core::Error::with_message(
        ErrorKind::Io,
        "connection reset"
    )));
}
