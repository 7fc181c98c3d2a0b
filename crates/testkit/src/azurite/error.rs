//! The azurite module's error type; every message says what to do.

use std::path::PathBuf;
use std::time::Duration;

use crate::tls::TlsError;

/// Why Azurite could not be started or a client for it built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AzuriteError {
    /// The `azurite-blob` entry point does not exist.
    #[error("Azurite not found at {path}: run `cargo xtask setup` (or set TESTKIT_AZURITE_BIN)")]
    NotInstalled {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The port asked for is taken.
    #[error(
        "port {port} is in use: free it, or leave AzuriteOptions::port unset to pick a free one"
    )]
    PortInUse {
        /// The port.
        port: u16,
    },
    /// Azurite exited before it answered.
    #[error(
        "Azurite exited during start-up ({status}); is Node.js 20+ on PATH? reinstall with `cargo xtask setup --force`. Its output:\n{stderr}"
    )]
    Exited {
        /// The exit status.
        status: String,
        /// The end of its stderr and stdout.
        stderr: String,
    },
    /// Azurite did not answer in time.
    #[error("Azurite did not answer within {waited:?}; its stderr:\n{stderr}")]
    Timeout {
        /// How long we waited.
        waited: Duration,
        /// The end of its stderr.
        stderr: String,
    },
    /// The TLS material could not be generated.
    #[error("could not make Azurite's TLS material")]
    Tls(#[source] TlsError),
    /// The scratch directory (certificate files, logs) could not be written.
    #[error("could not prepare Azurite's scratch directory under the system temp dir")]
    Scratch(#[source] std::io::Error),
    /// `sh` could not be started.
    #[error("could not start `sh` to run Azurite")]
    Spawn(#[source] std::io::Error),
    /// The reqwest client could not be built.
    #[error("could not build a reqwest client trusting Azurite's CA")]
    Client(#[source] reqwest::Error),
    /// The Azure SDK refused the client configuration.
    #[error("the Azure SDK refused the Azurite client configuration")]
    Sdk(#[source] azure_core::Error),
}
