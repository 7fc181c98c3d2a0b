//! Azurite through the Azure SDK's bearer-token path, its failure modes, and the fixture's own
//! start-up errors and clean-up.

use std::sync::Arc;
use std::time::Duration;

use azure_core::http::{RequestContent, StatusCode};
use azure_storage_blob::models::BlobClientDownloadOptions;
use futures::TryStreamExt;
use testkit::azurite::{Azurite, AzuriteError, AzuriteOptions, TestCredential, TokenMode};

const NEEDS: &str = "needs Azurite: cargo xtask it";

async fn azurite() -> Azurite {
    match Azurite::start().await {
        Ok(azurite) => azurite,
        Err(e) => panic!("{NEEDS}: {e}"),
    }
}

fn error_code(err: &azure_core::Error) -> Option<&str> {
    match err.kind() {
        azure_core::error::ErrorKind::HttpResponse { error_code, .. } => error_code.as_deref(),
        _ => None,
    }
}

#[tokio::test]
#[ignore = "needs Azurite: cargo xtask it"]
async fn sdk_round_trip_over_bearer_tokens_with_conditional_get() {
    let azurite = azurite().await;
    let credential = TestCredential::new();
    let service = azurite
        .blob_service_client(Arc::new(credential.clone()))
        .unwrap();
    let container = service.blob_container_client("round-trip");
    container.create(None).await.unwrap();

    let blob = container.blob_client("hello.txt");
    let uploaded = blob
        .upload(RequestContent::from(b"hello azurite".to_vec()), None)
        .await
        .unwrap();
    let etag = uploaded.etag.expect("an upload returns an ETag");

    let downloaded = blob.download(None).await.unwrap();
    let body = downloaded.body.collect().await.unwrap();
    assert_eq!(&body[..], b"hello azurite");

    let mut pager = container.list_blobs(None).unwrap();
    let mut names = Vec::new();
    while let Some(item) = pager.try_next().await.unwrap() {
        names.push(item.name.unwrap_or_default());
    }
    assert_eq!(names, ["hello.txt"]);

    let unchanged = BlobClientDownloadOptions {
        if_none_match: Some(etag),
        ..BlobClientDownloadOptions::default()
    };
    let not_modified = blob.download(Some(unchanged)).await.expect_err("304");
    assert_eq!(not_modified.http_status(), Some(StatusCode::NotModified));

    // The SDK caches the token: one credential call for the whole session.
    assert_eq!(credential.calls(), 1);
    assert_eq!(
        credential.last_scopes(),
        ["https://storage.azure.com/.default"]
    );
}

#[tokio::test]
#[ignore = "needs Azurite: cargo xtask it"]
async fn a_token_the_server_rejects_gets_403_authentication_failed() {
    let azurite = azurite().await;
    let credential = TestCredential::new();
    credential.set_mode(TokenMode::Rejected);
    let service = azurite
        .blob_service_client(Arc::new(credential.clone()))
        .unwrap();
    let err = service
        .blob_container_client("denied")
        .create(None)
        .await
        .unwrap_err();
    assert_eq!(err.http_status(), Some(StatusCode::Forbidden));
    assert_eq!(error_code(&err), Some("AuthenticationFailed"));
}

#[tokio::test]
#[ignore = "needs Azurite: cargo xtask it"]
async fn an_expired_token_gets_403_and_a_failing_credential_sends_nothing() {
    let azurite = azurite().await;
    let credential = TestCredential::with_lifetime(Duration::from_secs(3600));
    credential.set_mode(TokenMode::Expired);
    let service = azurite
        .blob_service_client(Arc::new(credential.clone()))
        .unwrap();
    let container = service.blob_container_client("expired");
    let err = container.create(None).await.unwrap_err();
    assert_eq!(err.http_status(), Some(StatusCode::Forbidden));

    credential.set_mode(TokenMode::Fail);
    let err = container.create(None).await.unwrap_err();
    assert_eq!(
        err.http_status(),
        None,
        "no request should reach Azurite: {err}"
    );
    assert!(
        matches!(err.kind(), azure_core::error::ErrorKind::Credential),
        "{err:?}"
    );
}

#[tokio::test]
#[ignore = "needs Azurite: cargo xtask it"]
async fn dropping_the_fixture_kills_azurite_and_frees_the_port() {
    let azurite = azurite().await;
    let (pid, port) = (azurite.pid(), azurite.port());
    assert_ne!(pid, 0);
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    drop(azurite);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "Azurite (pid {pid}) outlived its fixture"
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[tokio::test]
async fn a_missing_install_names_the_fix() {
    let mut options = AzuriteOptions::default();
    options.binary = Some("/nonexistent/azurite-blob".into());
    let err = Azurite::start_with(options).await.unwrap_err();
    assert!(matches!(err, AzuriteError::NotInstalled { .. }));
    assert!(err.to_string().contains("cargo xtask setup"), "{err}");
}

#[tokio::test]
async fn a_port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let mut options = AzuriteOptions::default();
    options.port = Some(taken.local_addr().unwrap().port());
    let err = Azurite::start_with(options).await.unwrap_err();
    assert!(matches!(err, AzuriteError::PortInUse { .. }), "{err}");
}

#[tokio::test]
async fn azurite_dying_at_start_shows_its_stderr() {
    let dir = std::env::temp_dir().join(format!("testkit-fake-azurite-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fake = dir.join("azurite-blob");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'fake azurite: cannot start' >&2\nexit 3\n",
    )
    .unwrap();
    let mut perms = std::fs::metadata(&fake).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&fake, perms).unwrap();

    let mut options = AzuriteOptions::default();
    options.binary = Some(fake);
    let err = Azurite::start_with(options).await.unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(matches!(err, AzuriteError::Exited { .. }), "{err}");
    assert!(
        err.to_string().contains("fake azurite: cannot start"),
        "{err}"
    );
}
