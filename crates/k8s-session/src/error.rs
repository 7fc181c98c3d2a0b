//! Error types: from credential sources, from building a session, from the pool.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::SessionKey;

/// Why a [`ClusterCredentials`](crate::ClusterCredentials) source could not produce material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialsError {
    /// The kubeconfig file could not be read.
    #[error("reading kubeconfig file {path:?} failed")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The kubeconfig is not valid YAML or not a kubeconfig. The source says where, never
    /// what: the YAML parser quotes the line it stopped at, and serde the value it refused,
    /// which can be a token or a key.
    #[error("the kubeconfig could not be parsed")]
    ParseKubeconfig(#[source] KubeconfigParseError),
    /// The Azure credential could not provide a token for ARM.
    #[error("getting an Azure token for ARM failed")]
    Token(#[source] azure_core::Error),
    /// The ARM request could not be sent or its response not read.
    #[error("calling ARM {operation} failed")]
    Http {
        /// `listClusterUserCredential` or `listClusterAdminCredential`.
        operation: &'static str,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The credentials call (the ARM token, the POST and its body) did not finish within the
    /// source's timeout (`AksSourceBuilder::timeout`, default 60 s): a hung identity endpoint
    /// or ARM.
    #[error("calling ARM {operation} did not finish within {after:?}")]
    Timeout {
        /// `listClusterUserCredential` or `listClusterAdminCredential`.
        operation: &'static str,
        /// The bound that passed.
        after: std::time::Duration,
    },
    /// ARM answered 401: the Azure token was not accepted.
    #[error(
        "ARM rejected the Azure token (401): check the credential's tenant and that it is not expired"
    )]
    Unauthorized,
    /// ARM answered 403: the identity may not list this cluster's credentials.
    #[error(
        "ARM refused {operation} (403): grant the identity the \"Azure Kubernetes Service Cluster {role} Role\""
    )]
    Forbidden {
        /// `listClusterUserCredential` or `listClusterAdminCredential`.
        operation: &'static str,
        /// `User` or `Admin`.
        role: &'static str,
    },
    /// ARM answered 404: no such subscription, resource group or cluster.
    #[error("cluster {key} not found (404): check the subscription, resource group and name")]
    ClusterNotFound {
        /// The key that was asked for.
        key: SessionKey,
    },
    /// ARM answered another non-success status.
    #[error("ARM answered {status} to {operation}")]
    Status {
        /// `listClusterUserCredential` or `listClusterAdminCredential`.
        operation: &'static str,
        /// The HTTP status code.
        status: u16,
    },
    /// ARM answered 2xx with a body that is not a credential list holding a kubeconfig.
    #[error("ARM's credential response is malformed: {reason}")]
    MalformedResponse {
        /// What was wrong (never the body itself: it may hold secrets).
        reason: String,
    },
    /// The source has no kubeconfig for this key.
    #[error("no kubeconfig for {key}")]
    UnknownCluster {
        /// The key that was asked for.
        key: SessionKey,
    },
    /// The source was configured with an invalid setting.
    #[error("invalid credential source configuration: {reason}")]
    Config {
        /// What was wrong.
        reason: String,
    },
}

/// Why a kubeconfig's text could not be parsed, without any of its text (see
/// [`CredentialsError::ParseKubeconfig`]): what kind of error, and the line and column the
/// parser stopped at when it knows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeconfigParseError {
    kind: &'static str,
    location: Option<(u64, u64)>,
}

impl KubeconfigParseError {
    /// The line (1-based) and column the YAML parser stopped at, if it said.
    pub fn location(&self) -> Option<(u64, u64)> {
        self.location
    }
}

impl From<kube::config::KubeconfigError> for KubeconfigParseError {
    fn from(error: kube::config::KubeconfigError) -> Self {
        use kube::config::KubeconfigError as E;
        let (kind, location) = match &error {
            E::Parse(yaml) => (
                "not a valid kubeconfig YAML document",
                yaml.location().map(|at| (at.line(), at.column())),
            ),
            E::KindMismatch => ("its documents have different kinds", None),
            E::ApiVersionMismatch => ("its documents have different api versions", None),
            _ => ("not a kubeconfig", None),
        };
        Self { kind, location }
    }
}

impl fmt::Display for KubeconfigParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind)?;
        if let Some((line, column)) = self.location {
            write!(f, " (line {line}, column {column})")?;
        }
        Ok(())
    }
}

impl std::error::Error for KubeconfigParseError {}

/// Why a session could not be built from a source's material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The credential source failed.
    #[error("the credential source failed")]
    Credentials(#[source] CredentialsError),
    /// The kubeconfig does not resolve to a usable cluster/user (missing context, server, CA …).
    #[error("the kubeconfig does not describe a usable cluster")]
    Kubeconfig(#[source] kube::config::KubeconfigError),
    /// The client certificate is not a parseable X.509 PEM certificate.
    #[error("the kubeconfig's client certificate is not a valid X.509 PEM certificate: {reason}")]
    Certificate {
        /// What was wrong.
        reason: String,
    },
    /// The client certificate file named by the kubeconfig could not be read.
    #[error("reading the client certificate file {path:?} failed")]
    CertificateFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The user authenticates through an exec plugin that is not kubelogin. Binaries are never
    /// run; give the cluster a certificate or token credential instead.
    #[error(
        "exec credential plugin {command:?} is not supported (only kubelogin, served by an Azure TokenCredential)"
    )]
    UnsupportedExecPlugin {
        /// The plugin's command.
        command: String,
    },
    /// The user's `auth-provider` runs a command (`cmd-path`, as kube's gcp provider does).
    /// Commands are never run; give the cluster a certificate or token credential instead.
    #[error(
        "auth-provider {name:?} runs a command (cmd-path), which is not supported: commands are never run"
    )]
    UnsupportedAuthProvider {
        /// The provider's name.
        name: String,
    },
    /// A bearer token of the kubeconfig (or the AAD token fetched for it) holds bytes an HTTP
    /// header cannot carry (control characters such as a newline or NUL).
    #[error("the {what} is not a valid HTTP header value (it holds control characters)")]
    InvalidToken {
        /// Which token: `token`, `auth-provider token` or `AAD token`.
        what: &'static str,
    },
    /// The cluster's `certificate-authority(-data)` holds no PEM `CERTIFICATE` (plain text, or
    /// a key): the session could trust no server.
    #[error("the cluster's certificate authority holds no PEM CERTIFICATE block")]
    CertificateAuthority,
    /// The AAD token for a kubelogin user did not come within the pool's
    /// [`aad_token_timeout`](crate::SessionPoolBuilder::aad_token_timeout) (default 60 s).
    #[error("getting an AAD token for the AKS server scope did not finish within {after:?}")]
    AadTokenTimeout {
        /// The bound that passed.
        after: std::time::Duration,
    },
    /// The build did not finish within the pool's
    /// [`build_timeout`](crate::SessionPoolBuilder::build_timeout) (default 150 s): a source
    /// that never answered, or a file that never finished reading.
    #[error("building the session did not finish within {after:?}")]
    Timeout {
        /// The bound that passed.
        after: std::time::Duration,
    },
    /// A file the kubeconfig names for the selected cluster or user (its CA, client key or
    /// token file) could not be read: missing, not a regular file (a FIFO, a device), or larger
    /// than 4 MiB.
    #[error("reading {path:?}, named by the kubeconfig, failed")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The user's `client-key-data` is not base64 (the error says nothing more: the decoder's
    /// message would quote a byte of the key).
    #[error("the kubeconfig's client-key-data is not valid base64")]
    ClientKey,
    /// The user authenticates through kubelogin but the pool has no Azure credential.
    #[error(
        "the kubeconfig uses kubelogin (AAD): configure SessionPoolBuilder::aad_credential with an Azure TokenCredential"
    )]
    NoAadCredential,
    /// The Azure credential could not provide a token for the AKS server scope.
    #[error("getting an AAD token for the AKS server scope failed")]
    AadToken(#[source] azure_core::Error),
    /// The kubeconfig sets `insecure-skip-tls-verify: true` for the cluster, and the pool was
    /// not built with
    /// [`danger_accept_insecure_skip_tls_verify`](crate::SessionPoolBuilder::danger_accept_insecure_skip_tls_verify).
    /// Nothing was sent to the cluster and no token was fetched for it.
    #[error(
        "the kubeconfig turns TLS verification off for {server:?} (insecure-skip-tls-verify: true); refused: give the cluster its CA (certificate-authority-data), or opt in with SessionPoolBuilder::danger_accept_insecure_skip_tls_verify"
    )]
    InsecureSkipTlsVerify {
        /// The cluster's host name (from the kubeconfig's server URL).
        server: String,
    },
    /// kube could not build a client from the configuration.
    #[error("building the kube client failed")]
    Client(#[source] kube::Error),
    /// No rustls crypto provider: the `aws-lc-rs` feature is off and the application has not
    /// installed one.
    #[error("{}", crate::NO_CRYPTO_PROVIDER)]
    NoCryptoProvider,
}

impl From<CredentialsError> for BuildError {
    fn from(error: CredentialsError) -> Self {
        Self::Credentials(error)
    }
}

/// Errors from [`SessionPool::session`](crate::SessionPool::session).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// Building the session failed. Concurrent callers that waited on the same build share
    /// this error.
    #[error("building a Kubernetes session for {key} failed")]
    Build {
        /// The key that was asked for.
        key: SessionKey,
        /// Why.
        #[source]
        source: Arc<BuildError>,
    },
    /// The pool was shut down.
    #[error("the Kubernetes session pool is shut down")]
    ShutDown,
}

impl SessionError {
    /// The build error, if this is one.
    pub fn build_error(&self) -> Option<&BuildError> {
        match self {
            Self::Build { source, .. } => Some(source),
            Self::ShutDown => None,
        }
    }
}
