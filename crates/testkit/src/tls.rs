//! An in-process test CA (rcgen) with server and client leaves, and rustls configs that trust only it.
//!
//! Every backend in testkit serves TLS from a [`TestCa`] made at start-up, so a client that
//! trusts the CA (and nothing else) gets a real, verified TLS session on loopback: the same code
//! path as production, with no `danger_accept_invalid_certs`.
//!
//! - [`TestCa::server_leaf`]: `CA:FALSE`, serverAuth, SAN `IP:127.0.0.1` and `DNS:localhost`.
//! - [`TestCa::client_leaf`]: clientAuth, `CN=<user>` and `O=<group>` (how kube-apiserver
//!   names a client-certificate user).
//! - [`TestCa::server_config`] / [`TestCa::client_config`]: rustls configs on the process-default
//!   provider (aws-lc-rs unless the test installed another).
//!
//! Private keys are kept in [`Leaf`], whose `Debug` never prints them.
//!
//! # Example
//!
//! ```
//! use testkit::tls::{ClientAuth, TestCa};
//!
//! let ca = TestCa::new("example").unwrap();
//! let server = ca.server_leaf().unwrap();
//! let client = ca.client_leaf("alice", &["system:masters"]).unwrap();
//! let server_config = ca.server_config(&server, ClientAuth::Optional).unwrap();
//! let client_config = ca.client_config(Some(&client)).unwrap();
//! assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
//! # let _ = (server_config, client_config);
//! ```

use std::fmt;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Why TLS material or a TLS config could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// rcgen could not generate a key or sign a certificate.
    #[error("could not generate test TLS material")]
    Generate(#[source] rcgen::Error),
    /// rustls refused the certificates or keys.
    #[error("could not build a rustls config from the test certificates")]
    Config(#[source] rustls::Error),
    /// The client-certificate verifier could not be built.
    #[error("could not build the client-certificate verifier")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
}

/// Install aws-lc-rs (the libraries' default) as the process-wide rustls provider, if no
/// provider is installed yet: tests are applications, and the choice is theirs.
///
/// Idempotent and cheap; every testkit fixture calls it, so kube and reqwest (which use the
/// process default) all use one provider in tests without further setup.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The process default (installing aws-lc-rs first if none is).
fn provider() -> Arc<CryptoProvider> {
    install_crypto_provider();
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// Whether a server asks for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientAuth {
    /// Never ask for a client certificate.
    None,
    /// Ask; accept a connection without one (like kube-apiserver, which then wants a bearer
    /// token), but refuse a certificate the CA did not sign.
    Optional,
    /// A certificate signed by the CA is required for the handshake to succeed.
    Required,
}

/// A certificate and its private key, as DER and PEM.
#[derive(Clone)]
pub struct Leaf {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key_der: Vec<u8>,
    key_pem: String,
}

impl Leaf {
    /// The certificate, DER.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    /// The certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The private key (PKCS#8), DER.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    /// The private key (PKCS#8), PEM. A secret: do not log it.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Certificate and key PEM concatenated (what `reqwest::Identity::from_pem` takes).
    pub fn identity_pem(&self) -> String {
        format!("{}{}", self.cert_pem, self.key_pem)
    }
}

impl fmt::Debug for Leaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leaf")
            .field("cert_der_len", &self.cert_der.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// A test certificate authority. Each instance has its own key: certificates from one CA are
/// refused by configs built from another (which is how the "rogue certificate" tests work).
pub struct TestCa {
    name: String,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for TestCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestCa")
            .field("name", &self.name)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl TestCa {
    /// A new self-signed CA whose subject is `CN=testkit <name> CA`.
    pub fn new(name: &str) -> Result<Self, TlsError> {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(DnType::CommonName, format!("testkit {name} CA"));
        let key = KeyPair::generate().map_err(TlsError::Generate)?;
        let cert = params.self_signed(&key).map_err(TlsError::Generate)?;
        Ok(Self {
            name: name.to_owned(),
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A root store holding only this CA.
    pub fn root_store(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.cert_der())
            .expect("a CA certificate rcgen just made parses");
        roots
    }

    /// A server certificate for loopback: SAN `IP:127.0.0.1`, `DNS:localhost`, serverAuth.
    pub fn server_leaf(&self) -> Result<Leaf, TlsError> {
        let mut params = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .map_err(TlsError::Generate)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate with `CN=<user>` and one `O=<group>` per group (kube-apiserver reads
    /// the user and groups from these), clientAuth.
    pub fn client_leaf(&self, user: &str, groups: &[&str]) -> Result<Leaf, TlsError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, user);
        for group in groups {
            params
                .distinguished_name
                .push(DnType::OrganizationName, *group);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, mut params: CertificateParams) -> Result<Leaf, TlsError> {
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().map_err(TlsError::Generate)?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(TlsError::Generate)?;
        Ok(Leaf {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_der: key.serialize_der(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A rustls server config serving `leaf`, verifying client certificates against this CA as
    /// `client_auth` says. ALPN is `http/1.1`.
    pub fn server_config(
        &self,
        leaf: &Leaf,
        client_auth: ClientAuth,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?;
        let builder = match client_auth {
            ClientAuth::None => builder.with_no_client_auth(),
            ClientAuth::Optional | ClientAuth::Required => {
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(self.root_store()),
                    provider(),
                );
                let verifier = if client_auth == ClientAuth::Optional {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                builder.with_client_cert_verifier(verifier.build().map_err(TlsError::Verifier)?)
            }
        };
        let mut config = builder
            .with_single_cert(vec![leaf.cert_der()], leaf.key_der())
            .map_err(TlsError::Config)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// A TLS terminator on loopback in front of the plain-TCP `upstream` (e.g. testkit's
    /// rate-limiting server), serving a leaf of this CA: each client connection gets its own
    /// upstream connection, bytes copied both ways. For clients that only speak HTTPS, like the
    /// Azure SDK sending bearer tokens. Runs until the runtime stops.
    pub async fn front(
        &self,
        upstream: std::net::SocketAddr,
    ) -> std::io::Result<std::net::SocketAddr> {
        let config = self
            .server_leaf()
            .and_then(|leaf| self.server_config(&leaf, ClientAuth::None))
            .map_err(std::io::Error::other)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(socket).await else {
                        return;
                    };
                    let Ok(mut plain) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        Ok(addr)
    }

    /// A rustls client config trusting only this CA, presenting `identity` if given.
    pub fn client_config(&self, identity: Option<&Leaf>) -> Result<Arc<ClientConfig>, TlsError> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_root_certificates(self.root_store());
        let config = match identity {
            Some(leaf) => builder
                .with_client_auth_cert(vec![leaf.cert_der()], leaf.key_der())
                .map_err(TlsError::Config)?,
            None => builder.with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_are_signed_by_their_ca_only() {
        let ca = TestCa::new("a").unwrap();
        let other = TestCa::new("b").unwrap();
        let leaf = ca.server_leaf().unwrap();
        let der = leaf.cert_der();
        let end_entity = rustls::server::ParsedCertificate::try_from(&der).unwrap();
        let now = rustls_pki_types::UnixTime::now();
        let algs = rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms;
        let verify = |roots: &RootCertStore| {
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &end_entity,
                roots,
                &[],
                now,
                algs.all,
            )
        };
        assert!(verify(&ca.root_store()).is_ok());
        assert!(verify(&other.root_store()).is_err());
    }

    #[test]
    fn debug_never_prints_keys() {
        let ca = TestCa::new("a").unwrap();
        let leaf = ca.client_leaf("alice", &["g"]).unwrap();
        let key_body = leaf.key_pem().lines().nth(1).unwrap().to_owned();
        assert!(!format!("{leaf:?}").contains(&key_body));
        assert!(format!("{ca:?}").contains("redacted"));
    }

    #[test]
    fn configs_build_for_every_client_auth_mode() {
        let ca = TestCa::new("a").unwrap();
        let leaf = ca.server_leaf().unwrap();
        for mode in [ClientAuth::None, ClientAuth::Optional, ClientAuth::Required] {
            ca.server_config(&leaf, mode).unwrap();
        }
        ca.client_config(None).unwrap();
        ca.client_config(Some(&ca.client_leaf("u", &[]).unwrap()))
            .unwrap();
    }
}
