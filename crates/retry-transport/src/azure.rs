//! An `azure_core` `HttpClient` over [`RetryClient`], with the Azure SDK's own retries turned off.

use std::collections::HashMap;
use std::sync::Arc;

use azure_core::error::{Error as AzureError, ErrorKind};
use azure_core::http::headers::{HeaderName, HeaderValue, Headers};
use azure_core::http::{
    AsyncRawResponse, Body, ClientOptions, HttpClient, Request, RetryOptions, Transport,
};
use futures::TryStreamExt as _;

use crate::{Error, RetryClient};

/// Lets Azure SDK clients (e.g. `BlobServiceClient`) send through a [`RetryClient`], so its
/// connection limit, acquire timeout and release-before-sleep retries apply to Azure too.
///
/// The SDK's own retry policy holds the failed response while it waits (the seed-002 bug
/// inside the SDK), so [`AzureTransport::client_options`] turns it off: retries happen here.
///
/// Request bodies: `Body::Bytes` can be retried; a `SeekableStream` body is sent once (R8).
/// A [`PoolTimeout`](crate::Error::PoolTimeout) surfaces as an `ErrorKind::Io` error whose
/// source is the [`crate::Error`].
///
/// ```no_run
/// use retry_transport::{AzureTransport, RetryClient};
///
/// # fn main() -> Result<(), retry_transport::Error> {
/// let transport = AzureTransport::new(RetryClient::new()?);
/// let options = transport.client_options();
/// assert!(options.transport.is_some());
/// // BlobServiceClient::new(endpoint, Some(credential), Some(BlobServiceClientOptions {
/// //     client_options: options, ..Default::default() }))
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct AzureTransport {
    client: RetryClient,
}

impl AzureTransport {
    /// Wrap `client`.
    pub fn new(client: RetryClient) -> Self {
        Self { client }
    }

    /// The wrapped client (for stats, `reset()` …).
    pub fn client(&self) -> &RetryClient {
        &self.client
    }

    /// `ClientOptions` that send through this transport with the SDK's retries off.
    pub fn client_options(&self) -> ClientOptions {
        ClientOptions {
            transport: Some(Transport::new(Arc::new(self.clone()))),
            retry: RetryOptions::none(),
            ..ClientOptions::default()
        }
    }

    fn to_reqwest(&self, request: &Request) -> azure_core::Result<reqwest::Request> {
        let method =
            reqwest::Method::from_bytes(request.method().as_str().as_bytes()).map_err(|e| {
                AzureError::with_error(ErrorKind::DataConversion, e, "unsupported HTTP method")
            })?;
        let mut builder = self.client.request(method, request.url().clone());
        for (name, value) in request.headers().iter() {
            builder = builder.header(name.as_str(), value.as_str());
        }
        builder = match request.body().clone() {
            Body::Bytes(bytes) => builder.body(bytes),
            Body::SeekableStream(stream) => builder.body(reqwest::Body::wrap_stream(stream)),
        };
        builder
            .build()
            .map_err(|e| AzureError::with_error(ErrorKind::Other, e, "failed to build the request"))
    }
}

#[async_trait::async_trait]
impl HttpClient for AzureTransport {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        let request = self.to_reqwest(request)?;
        let response = self.client.execute(request).await.map_err(to_azure)?;
        let status = response.status().as_u16().into();
        let headers = to_headers(response.headers());
        let body = response.bytes_stream().map_err(|e| {
            AzureError::with_error(ErrorKind::Io, e, "failed to read the response body")
        });
        Ok(AsyncRawResponse::new(status, headers, Box::pin(body)))
    }
}

fn to_azure(error: Error) -> AzureError {
    let kind = match &error {
        Error::Transport { source, .. } | Error::Timeout { source, .. } if source.is_connect() => {
            ErrorKind::Connection
        }
        Error::Credential(_) => ErrorKind::Credential,
        _ => ErrorKind::Io,
    };
    AzureError::with_error(kind, error, "retry-transport request failed")
}

fn to_headers(map: &reqwest::header::HeaderMap) -> Headers {
    let headers: HashMap<HeaderName, HeaderValue> = map
        .iter()
        .filter_map(|(name, value)| {
            let value = value.to_str().ok()?;
            Some((
                HeaderName::from(name.as_str().to_owned()),
                HeaderValue::from(value.to_owned()),
            ))
        })
        .collect();
    Headers::from(headers)
}
