//! The tower/axum layer (A8): `x-api-key` → identity in extensions, or a JSON 401.

use std::time::Duration;

use apikey_cache::{ApiKeyCache, ApiKeyLayer, CacheConfig, Identity, IssuedKey, MemoryStore};
use axum::Router;
use axum::body::Body;
use axum::extract::Extension;
use axum::routing::get;
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

async fn whoami(Extension(identity): Extension<Identity>, headers: HeaderMap) -> String {
    // The layer strips the key so nothing downstream can log it.
    assert!(headers.get("x-api-key").is_none());
    format!("{}/{}", identity.account, identity.key)
}

async fn app() -> (Router, IssuedKey, MemoryStore) {
    let store = MemoryStore::new();
    let cache = ApiKeyCache::new(store.clone(), CacheConfig::default());
    let account = cache.create_account("acme", "Acme").await.expect("create");
    let issued = cache.issue_key(&account).await.expect("issue");
    let router = Router::new()
        .route("/whoami", get(whoami))
        .layer(ApiKeyLayer::new(cache));
    (router, issued, store)
}

async fn send(router: &Router, headers: &[(&str, HeaderValue)]) -> (StatusCode, HeaderMap, String) {
    let mut request = Request::builder().uri("/whoami");
    for (name, value) in headers {
        request = request.header(*name, value.clone());
    }
    let response = router
        .clone()
        .oneshot(request.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8(bytes.to_vec()).expect("utf8"),
    )
}

fn value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).expect("header value")
}

// covers A8: a valid key reaches the handler with its identity in the extensions.
#[tokio::test(start_paused = true)]
async fn valid_key_puts_identity_into_extensions() {
    let (router, issued, _) = app().await;
    let (status, _, body) = send(&router, &[("x-api-key", value(issued.secret.expose()))]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, format!("acme/{}", issued.identity.key));
}

// covers A8: every kind of bad header is a JSON 401, never a panic, and never echoes the key.
#[tokio::test(start_paused = true)]
async fn bad_headers_are_json_401s() {
    let (router, issued, _) = app().await;
    let unknown = "ak_thisKeyWasNeverIssued0000000000000000000000";
    let long = "a".repeat(100_000);
    let cases: Vec<(Vec<(&str, HeaderValue)>, &str)> = vec![
        (vec![], "missing_api_key"),
        (vec![("x-api-key", value(""))], "malformed_api_key"),
        (vec![("x-api-key", value("   "))], "malformed_api_key"),
        (
            vec![(
                "x-api-key",
                HeaderValue::from_bytes(b"ak_\xff\xfe").expect("opaque bytes"),
            )],
            "malformed_api_key",
        ),
        (vec![("x-api-key", value(&long))], "malformed_api_key"),
        (
            vec![
                ("x-api-key", value(issued.secret.expose())),
                ("x-api-key", value(issued.secret.expose())),
            ],
            "malformed_api_key",
        ),
        (vec![("x-api-key", value(unknown))], "invalid_api_key"),
        (
            vec![("authorization", value(&format!("Bearer {unknown}")))],
            "missing_api_key",
        ),
    ];
    for (headers, code) in cases {
        let (status, response_headers, body) = send(&router, &headers).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{code}");
        assert_eq!(
            response_headers
                .get("content-type")
                .map(|v| v.to_str().expect("ascii")),
            Some("application/json")
        );
        let json: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
        assert_eq!(json["error"], code, "{body}");
        assert!(!body.contains(unknown) && !body.contains(issued.secret.expose()));
    }
}

// covers A8: a revoked key is a 401 with the same code as an unknown one.
#[tokio::test(start_paused = true)]
async fn revoked_key_is_a_401() {
    let store = MemoryStore::new();
    let cache = ApiKeyCache::new(store.clone(), CacheConfig::default());
    let account = cache.create_account("acme", "Acme").await.expect("create");
    let issued = cache.issue_key(&account).await.expect("issue");
    cache
        .revoke_key(&issued.identity.key)
        .await
        .expect("revoke");
    let router = Router::new()
        .route("/whoami", get(whoami))
        .layer(ApiKeyLayer::new(cache));
    let (status, _, body) = send(&router, &[("x-api-key", value(issued.secret.expose()))]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("invalid_api_key"));
}

// covers A8 + A9: no snapshot and a failing store is a 503 with retry-after, not a false 401.
#[tokio::test(start_paused = true)]
async fn unavailable_store_without_a_snapshot_is_a_503() {
    let store = MemoryStore::new();
    store.fail_loads(true);
    store.set_latency(Duration::from_millis(1));
    let router = Router::new()
        .route("/whoami", get(whoami))
        .layer(ApiKeyLayer::new(ApiKeyCache::new(
            store,
            CacheConfig::default(),
        )));
    let (status, headers, body) = send(
        &router,
        &[(
            "x-api-key",
            value("ak_someKeyThatCannotBeChecked000000000000000"),
        )],
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers.get("retry-after"), Some(&value("1")));
    assert!(body.contains("api_key_store_unavailable"));
}
