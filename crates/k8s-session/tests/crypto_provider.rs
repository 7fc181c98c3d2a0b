//! Issue 20: the rustls crypto provider is the application's choice. Building the AKS source
//! (its reqwest client) uses the installed provider, else the one the features select, and
//! installs none process-wide. Its own test binary: the process default is global state that
//! other suites' fixtures set.

use std::sync::Arc;

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use k8s_session::AksSource;
use rustls::crypto::CryptoProvider;

/// Never asked: building the source fetches no token.
#[derive(Debug)]
struct Unused;

#[async_trait::async_trait]
impl TokenCredential for Unused {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        Err(azure_core::Error::with_message(
            azure_core::error::ErrorKind::Credential,
            "not used by this test",
        ))
    }
}

#[tokio::test]
async fn building_the_aks_source_installs_no_process_wide_provider() {
    assert!(CryptoProvider::get_default().is_none(), "a clean process");
    let built = AksSource::builder(Arc::new(Unused)).build();
    if cfg!(feature = "aws-lc-rs") && !cfg!(feature = "ring") {
        built.expect("reqwest on aws-lc-rs for this client");
    } else {
        let error = built.expect_err("no provider installed or selected");
        assert!(error.to_string().contains("crypto provider"), "{error}");
    }
    assert!(
        CryptoProvider::get_default().is_none(),
        "the library installed a process-wide provider"
    );
}
