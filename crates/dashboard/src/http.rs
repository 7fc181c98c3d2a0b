//! Small helpers for the HTTP clients the dashboard builds (CA trust, the crypto provider).

use crate::error::StartError;

/// Install rustls' aws-lc-rs provider as the process default unless one is installed already:
/// the application's choice (a binary), so kube and reqwest all use the same one.
pub fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: a provider is installed either way.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
}

/// Parse a PEM CA certificate for `what`.
pub(crate) fn certificate(pem: &str, what: &str) -> Result<reqwest::Certificate, StartError> {
    reqwest::Certificate::from_pem(pem.as_bytes()).map_err(|source| StartError::Certificate {
        what: what.to_string(),
        source,
    })
}

/// A reqwest client trusting only the PEM CA `pem` (a local test endpoint).
pub(crate) fn client_trusting(pem: &str, what: &str) -> Result<reqwest::Client, StartError> {
    ensure_crypto_provider();
    reqwest::Client::builder()
        .tls_certs_only([certificate(pem, what)?])
        .build()
        .map_err(|source| StartError::Http {
            what: what.to_string(),
            source: Box::new(source),
        })
}
