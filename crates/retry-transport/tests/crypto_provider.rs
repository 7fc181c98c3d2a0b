//! Issue 20: the rustls crypto provider is the application's choice. Building a client uses
//! the provider the application installed, else the one this crate's features select, and
//! never installs one process-wide. Its own test binary: the process default is global state
//! that other suites' fixtures set.

use retry_transport::{Error, RetryClient};
use rustls::crypto::CryptoProvider;

#[tokio::test]
async fn building_a_client_uses_the_installed_or_feature_provider_and_installs_none() {
    assert!(CryptoProvider::get_default().is_none(), "a clean process");
    let built = RetryClient::builder().build();
    if cfg!(feature = "aws-lc-rs") {
        // reqwest falls back to aws-lc-rs for this client only.
        built.expect("a client on the feature-selected provider");
    } else {
        // Nothing compiled as a fallback and nothing installed: a typed error, not a panic.
        assert!(
            matches!(&built, Err(Error::Config(message)) if message.contains("crypto provider")),
            "{built:?}"
        );
    }
    assert!(
        CryptoProvider::get_default().is_none(),
        "the library installed a process-wide provider"
    );

    // The application installs its choice (here aws-lc-rs, which the dev-dependencies
    // compile): with or without the fallback feature, clients build on it. One test, in this
    // order: a second test in this binary could install a provider under the first one.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    RetryClient::builder()
        .build()
        .expect("a client on the installed provider");
}
