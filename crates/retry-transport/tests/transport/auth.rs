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
