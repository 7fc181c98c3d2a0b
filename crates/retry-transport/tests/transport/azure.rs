//! The azure_core `HttpClient` adapter: Azure SDK requests get the same limits and retries.

use std::sync::Arc;

use azure_core::http::{HttpClient, Method, Request, RetryOptions};
use futures::TryStreamExt as _;
use retry_transport::{AzureTransport, RetryPolicy};
use testkit::ratelimit::{Answer, RateLimitServer};

use crate::common::{RecordingSleeper, client, limits};

// covers R1 for the Azure path (B8): a 429 is retried here, after its slot was released.
#[tokio::test]
async fn azure_requests_are_retried_by_the_transport() {
    let server = RateLimitServer::start().await.unwrap();
    server.script(
        "/devstoreaccount1/c/b",
        [Answer::too_many(1).body_len(32), Answer::ok(10)],
    );
    let sleeper = Arc::new(RecordingSleeper::default());
    let transport = AzureTransport::new(client(limits(2), RetryPolicy::default(), sleeper.clone()));
    let mut request = Request::new(
        server.url("/devstoreaccount1/c/b").parse().unwrap(),
        Method::Get,
    );
    request.insert_header("x-ms-version", "2025-01-05");

    let response = transport.execute_request(&request).await.unwrap();
    assert_eq!(u16::from(response.status()), 200);
    let body: Vec<u8> = response
        .into_body()
        .map_ok(|chunk| chunk.to_vec())
        .try_concat()
        .await
        .unwrap();
    assert_eq!(body.len(), 10);
    assert_eq!(server.requests_on("/devstoreaccount1/c/b"), 2);
    assert_eq!(sleeper.sleeps().len(), 1);
    assert_eq!(transport.client().stats().permits_in_use, 0);
}

#[tokio::test]
async fn azure_client_options_turn_the_sdk_retries_off() {
    let transport = AzureTransport::new(client(
        limits(2),
        RetryPolicy::default(),
        Arc::new(RecordingSleeper::default()),
    ));
    let options = transport.client_options();
    assert!(options.transport.is_some());
    assert_eq!(
        format!("{:?}", options.retry),
        format!("{:?}", RetryOptions::none())
    );
}

// A pool timeout reaches the SDK as an error, not a hang.
#[tokio::test(start_paused = true)]
async fn azure_sees_a_pool_timeout_as_an_error() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::ok(100).stall_body_after(1));
    let client = client(
        limits(1),
        RetryPolicy::default(),
        Arc::new(RecordingSleeper::default()),
    );
    let transport = AzureTransport::new(client.clone());
    let held = client
        .send(client.get(server.url("/held").parse().unwrap()))
        .await
        .unwrap();
    let request = Request::new(server.url("/blocked").parse().unwrap(), Method::Get);
    let error = transport.execute_request(&request).await.unwrap_err();
    let source =
        std::error::Error::source(&error).and_then(|e| e.downcast_ref::<retry_transport::Error>());
    assert!(
        source.is_some_and(retry_transport::Error::is_pool_timeout),
        "{error:?}"
    );
    drop(held);
}
