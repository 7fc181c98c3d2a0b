//! The k8s module's error type.

use std::path::PathBuf;

use crate::tls::TlsError;

/// Why the Kubernetes test server, a kubeconfig or a client could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum K8sError {
    /// The server's TLS material could not be generated.
    #[error("could not make the test server's TLS material")]
    Tls(#[source] TlsError),
    /// No loopback port could be bound.
    #[error("could not bind a loopback port for the Kubernetes test server")]
    Bind(#[source] std::io::Error),
    /// kube refused the kubeconfig.
    #[error("kube could not load the kubeconfig")]
    Kubeconfig(#[source] kube::config::KubeconfigError),
    /// kube could not build a client from the config.
    #[error("kube could not build a client")]
    Client(#[source] kube::Error),
    /// `TESTKIT_K8S=kind` without a kubeconfig to use.
    #[error(
        "TESTKIT_K8S=kind but TESTKIT_KUBECONFIG is not set: run `cargo xtask kind up`, then `cargo xtask it --k8s kind`"
    )]
    KindNotConfigured,
    /// The kind cluster's kubeconfig could not be read.
    #[error("could not read the kind kubeconfig at {path}: run `cargo xtask kind up`")]
    ReadKubeconfig {
        /// Where it was looked for.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// `TESTKIT_K8S` has a value testkit does not know.
    #[error("TESTKIT_K8S={0:?} is not `local` or `kind`")]
    UnknownTarget(String),
}
