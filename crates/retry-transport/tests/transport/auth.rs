//! R7: a 401 refreshes the credential once and retries once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use futures::future::BoxFuture;
use http::HeaderValue;
use retry_transport::{BoxError, Credential, RetryClient, RetryPolicy};
use testkit::ratelimit::{Answer, RateLimitServer};

use crate::common::{RecordingSleeper, limits, url};

/// Hands out `Bearer t<generation>`; a refresh moves to the next generation.
#[derive(Debug, Default)]
struct Tokens {
    generation: AtomicU32,
    refreshes: AtomicU32,
    calls: AtomicU32,
}

impl Credential for Tokens {
    fn authorization(&self, refresh: bool) -> BoxFuture<'_, Result<HeaderValue, BoxError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if refresh {
                self.refreshes.fetch_add(1, Ordering::SeqCst);
                self.generation.fetch_add(1, Ordering::SeqCst);
            }
            let generation = self.generation.load(Ordering::SeqCst) + 1;
            Ok(HeaderValue::from_str(&format!("Bearer t{generation}"))?)
        })
    }
}

fn client_with(tokens: Arc<Tokens>) -> RetryClient {
    RetryClient::builder()
        .limits(limits(2))
        .policy(RetryPolicy::default())
        .sleeper(Arc::new(RecordingSleeper::default()))
        .credential(tokens)
        .connect_timeout(None)
        .build()
        .unwrap()
}

fn authorizations(server: &RateLimitServer) -> Vec<String> {
    server
        .requests()
        .into_iter()
        .map(|r| r.authorization.unwrap_or_default())
        .collect()
}

// covers R7: 401 → one refresh → one retry with the new credential → 200.
#[tokio::test]
async fn a_401_refreshes_the_credential_and_retries_once() {
    let server = RateLimitServer::start().await.unwrap();
    server.script("/me", [Answer::status(401).body_len(20)]);
    let tokens = Arc::new(Tokens::default());
    let client = client_with(tokens.clone());
    let response = client.send(client.get(url(&server, "/me"))).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(authorizations(&server), ["Bearer t1", "Bearer t2"]);
    assert_eq!(tokens.refreshes.load(Ordering::SeqCst), 1);
    assert_eq!(client.stats().retries.unauthorized, 1);
}

// covers R7: a second 401 is returned, after exactly one refresh.
#[tokio::test]
async fn a_second_401_is_returned() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::status(401));
    let tokens = Arc::new(Tokens::default());
    let client = client_with(tokens.clone());
    let response = client
        .send(client.get(url(&server, "/denied")))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(server.requests_on("/denied"), 2);
    assert_eq!(tokens.refreshes.load(Ordering::SeqCst), 1);
    assert_eq!(tokens.calls.load(Ordering::SeqCst), 2);
    assert_eq!(client.stats().permits_in_use, 0);
}

// covers R7, R8: with a streaming body, a 401 is returned without a refresh-and-resend.
#[tokio::test]
async fn a_401_on_a_streaming_body_is_returned_unretried() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::status(401));
    let tokens = Arc::new(Tokens::default());
    let client = client_with(tokens.clone());
    let body = reqwest::Body::wrap(String::from("upload"));
    let response = client
        .send(
            client
                .request(reqwest::Method::PUT, url(&server, "/upload"))
                .body(body),
        )
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(server.requests_on("/upload"), 1);
    assert_eq!(client.stats().gave_up.body_not_cloneable, 1);
}

/// Counts `Authorization` asks by their `refresh` flag.
#[derive(Debug, Default)]
struct CountingTokens {
    refresh_true: AtomicU32,
    refresh_false: AtomicU32,
}

impl Credential for CountingTokens {
    fn authorization(&self, refresh: bool) -> BoxFuture<'_, Result<HeaderValue, BoxError>> {
        Box::pin(async move {
            let counter = if refresh {
                &self.refresh_true
            } else {
                &self.refresh_false
            };
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(HeaderValue::from_static("Bearer t"))
        })
    }
}

// covers R7 (issue #16, item 2): one 401, one refresh. Retries of the same send after the
// refresh (a 429, then a 503) ask the credential with refresh = false, not with another forced
// token fetch each.
#[tokio::test]
async fn after_one_refresh_later_retries_do_not_force_another_fetch() {
    let server = RateLimitServer::start().await.unwrap();
    server.script(
        "/flaky",
        [
            Answer::status(401),
            Answer::too_many(1),
            Answer::status(503),
            Answer::ok(5),
        ],
    );
    let tokens = Arc::new(CountingTokens::default());
    let client = RetryClient::builder()
        .limits(limits(2))
        .sleeper(Arc::new(RecordingSleeper::default()))
        .credential(tokens.clone())
        .connect_timeout(None)
        .build()
        .unwrap();
    let response = client
        .send(client.get(url(&server, "/flaky")))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(server.requests_on("/flaky"), 4);
    assert_eq!(
        tokens.refresh_true.load(Ordering::SeqCst),
        1,
        "exactly one forced refresh, for the one 401"
    );
    assert_eq!(
        tokens.refresh_false.load(Ordering::SeqCst),
        3,
        "the first attempt and the two retries after the refresh use the cache"
    );
}

/// The first ask hangs until the test lets it go; every later ask answers at once.
#[derive(Debug)]
struct SlowFirstToken {
    calls: AtomicU32,
    entered: tokio::sync::watch::Sender<u32>,
    release: tokio::sync::Semaphore,
}

impl Credential for SlowFirstToken {
    fn authorization(&self, _refresh: bool) -> BoxFuture<'_, Result<HeaderValue, BoxError>> {
        Box::pin(async move {
            let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            self.entered.send_replace(call);
            if call == 1 {
                self.release.acquire().await?.forget();
            }
            Ok(HeaderValue::from_static("Bearer t"))
        })
    }
}

// covers R4 (issue #16, item 3): a slot covers a connection, not a token fetch. With one slot,
// a request whose credential hangs (IMDS, a blocking refresh at expiry) holds no slot, so
// another request gets the slot and completes meanwhile.
#[tokio::test]
async fn a_slow_credential_holds_no_connection_slot() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::ok(3));
    let tokens = Arc::new(SlowFirstToken {
        calls: AtomicU32::new(0),
        entered: tokio::sync::watch::Sender::new(0),
        release: tokio::sync::Semaphore::new(0),
    });
    let client = RetryClient::builder()
        .limits(limits(1).acquire_timeout(std::time::Duration::from_secs(2)))
        .sleeper(Arc::new(RecordingSleeper::default()))
        .credential(tokens.clone())
        .connect_timeout(None)
        .build()
        .unwrap();
    let slow = tokio::spawn({
        let client = client.clone();
        let url = url(&server, "/slow");
        async move {
            let response = client.send(client.get(url)).await?;
            Ok::<_, anyhow::Error>(response.bytes().await?.len())
        }
    });
    let mut entered = tokens.entered.subscribe();
    entered.wait_for(|calls| *calls >= 1).await.unwrap();
    assert_eq!(
        client.stats().permits_in_use,
        0,
        "waiting for a token holds no slot"
    );

    let response = client
        .send(client.get(url(&server, "/fast")))
        .await
        .expect("the only slot is free while the other request waits for its token");
    assert_eq!(response.bytes().await.unwrap().len(), 3);

    tokens.release.add_permits(1);
    assert_eq!(slow.await.unwrap().unwrap(), 3);
    assert_eq!(server.requests_on("/fast"), 1);
    assert_eq!(server.requests_on("/slow"), 1);
    assert_eq!(client.stats().permits_in_use, 0);
}

/// A credential whose identity endpoint never answers (a hung IMDS).
#[derive(Debug, Default)]
struct HungCredential {
    calls: AtomicU32,
}

impl Credential for HungCredential {
    fn authorization(&self, _refresh: bool) -> BoxFuture<'_, Result<HeaderValue, BoxError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(std::future::pending())
    }
}

// covers R4 and the default bound (issue #16): a credential that never answers fails the
// request with a typed timeout after the default credential timeout (30 s), having held no
// slot and sent nothing — the request does not wait forever on its token.
#[tokio::test(start_paused = true)]
async fn a_credential_that_never_answers_times_out_with_the_default_bound() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::ok(3));
    let credential = Arc::new(HungCredential::default());
    let client = RetryClient::builder()
        .credential(credential.clone())
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    let error = client
        .send(client.get(url(&server, "/me")))
        .await
        .expect_err("no token, no request");
    assert!(
        matches!(
            error,
            retry_transport::Error::CredentialTimeout { waited } if waited == std::time::Duration::from_secs(30)
        ),
        "{error:?}"
    );
    assert_eq!(started.elapsed(), std::time::Duration::from_secs(30));
    assert_eq!(credential.calls.load(Ordering::SeqCst), 1);
    assert_eq!(server.requests().len(), 0);
    assert_eq!(client.stats().permits_in_use, 0);
}

/// Token `n` for the `n`-th fetch; counts fetches.
#[derive(Debug, Default)]
struct Numbered {
    fetches: AtomicU32,
}

impl token_refresh::TokenSource for Numbered {
    type Token = token_refresh::BearerToken;
    type Error = std::io::Error;

    async fn fetch(
        &self,
    ) -> Result<token_refresh::Fetched<token_refresh::BearerToken>, std::io::Error> {
        let n = self.fetches.fetch_add(1, Ordering::SeqCst);
        Ok(token_refresh::Fetched::new(
            token_refresh::BearerToken::new(format!("t{n}")),
            token_refresh::Expiry::In(std::time::Duration::from_secs(3600)),
        ))
    }
}

// covers R7 with T11: a token-refresh cache as the credential hook. A 401 reports the token the
// request carried; the cache drops it (it is still the cached one), so the one retry carries a
// new token; later sends use the new token without refetching; a late report of the old token
// (another request's 401 for it) changes nothing.
#[tokio::test]
async fn a_401_invalidates_the_rejected_token_in_a_token_cache() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::ok(3));
    server.script("/me", [Answer::status(401).body_len(20)]);
    let cache = token_refresh::TokenCache::new(
        Numbered::default(),
        token_refresh::RefreshConfig::default(),
    );
    let credential = Arc::new(retry_transport::TokenCacheCredential::new(cache.clone()));
    let client = RetryClient::builder()
        .limits(limits(2))
        .sleeper(Arc::new(RecordingSleeper::default()))
        .credential(credential.clone())
        .connect_timeout(None)
        .build()
        .unwrap();
    let response = client.send(client.get(url(&server, "/me"))).await.unwrap();
    assert_eq!(response.status(), 200);
    client
        .send(client.get(url(&server, "/other")))
        .await
        .unwrap();
    assert_eq!(
        authorizations(&server),
        ["Bearer t0", "Bearer t1", "Bearer t1"],
        "the retry and later sends carry the new token"
    );
    assert_eq!(cache.source().fetches.load(Ordering::SeqCst), 2);
    credential.rejected(&HeaderValue::from_static("Bearer t0"));
    client
        .send(client.get(url(&server, "/again")))
        .await
        .unwrap();
    assert_eq!(
        cache.source().fetches.load(Ordering::SeqCst),
        2,
        "a stale rejection does not refetch"
    );
    assert_eq!(cache.stats().invalidations, 1);
}
