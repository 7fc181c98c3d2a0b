//! Unit tests in virtual time, with counting fakes for the credential and the HTTP client.

mod identity;
mod lifecycle;
mod sharing;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::http::headers::Headers;
use azure_core::http::{AsyncRawResponse, HttpClient, Request, StatusCode};
use azure_core::time::{Duration as AzDuration, OffsetDateTime};

use crate::{BlobPool, BlobPoolConfig, Endpoint};

/// A credential whose tokens name it (`token-<serial>`), counting its calls.
#[derive(Debug)]
pub(crate) struct FakeCredential {
    serial: u64,
    calls: Arc<AtomicU64>,
}

impl FakeCredential {
    pub(crate) fn make(serial: u64) -> (Arc<dyn TokenCredential>, Arc<AtomicU64>) {
        let calls = Arc::new(AtomicU64::new(0));
        let credential = Arc::new(Self {
            serial,
            calls: calls.clone(),
        });
        (credential, calls)
    }

    pub(crate) fn token_for(serial: u64) -> String {
        format!("Bearer token-{serial}")
    }
}

#[async_trait::async_trait]
impl TokenCredential for FakeCredential {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(AccessToken::new(
            format!("token-{}", self.serial),
            OffsetDateTime::now_utc() + AzDuration::hours(1),
        ))
    }
}

/// What the fake HTTP client saw of one request.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) url: String,
    pub(crate) authorization: Option<String>,
    pub(crate) version: Option<String>,
}

/// An `HttpClient` answering every request with one status, recording what it saw.
#[derive(Debug)]
pub(crate) struct Recorder {
    status: StatusCode,
    seen: Mutex<Vec<Seen>>,
}

impl Recorder {
    pub(crate) fn new(status: StatusCode) -> Arc<Self> {
        Arc::new(Self {
            status,
            seen: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub(crate) fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request")
    }
}

#[async_trait::async_trait]
impl HttpClient for Recorder {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        let header = |wanted: &str| {
            request
                .headers()
                .iter()
                .find(|(name, _)| name.as_str() == wanted)
                .map(|(_, value)| value.as_str().to_owned())
        };
        self.seen.lock().unwrap().push(Seen {
            url: request.url().to_string(),
            authorization: header("authorization"),
            version: header("x-ms-version"),
        });
        Ok(AsyncRawResponse::from_bytes(
            self.status,
            Headers::new(),
            Vec::<u8>::new(),
        ))
    }
}

/// No sweeper unless a test asks for one: tests decide when maintenance runs.
pub(crate) fn config() -> BlobPoolConfig {
    BlobPoolConfig::default().sweep_interval(None)
}

pub(crate) fn pool_with(config: BlobPoolConfig, status: StatusCode) -> (BlobPool, Arc<Recorder>) {
    let recorder = Recorder::new(status);
    (
        BlobPool::with_http_client(config, recorder.clone()),
        recorder,
    )
}

pub(crate) fn endpoint(n: u32) -> Endpoint {
    Endpoint::parse(&format!("https://127.0.0.1:10000/account{n}")).unwrap()
}
