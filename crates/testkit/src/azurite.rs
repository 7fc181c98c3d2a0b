//! Azurite (the Azure Blob emulator) over HTTPS with `--oauth basic`, and a `TokenCredential`
//! it accepts, so tests exercise the Azure SDK's real bearer-token path on loopback.
//!
//! - [`Azurite`] (feature `azurite`): starts `azurite-blob` (installed by `cargo xtask setup`;
//!   found through `TESTKIT_AZURITE_BIN` or under `<workspace>/target/tools/azurite`) on a free
//!   loopback port, with a certificate from an in-process CA written to a per-fixture scratch
//!   directory, `--inMemoryPersistence` and `--skipApiVersionCheck`; waits until it answers over
//!   TLS; kills it when dropped. A watchdog shell also kills it if the test process dies without
//!   running destructors, so no Azurite outlives its test. It hands out a reqwest client and
//!   Azure `ClientOptions` trusting only its CA, and ready-made `BlobServiceClient`s.
//! - [`TestCredential`] (feature `azure-credential`, included in `azurite`): mints unsigned JWTs
//!   with the claims Azurite checks, for any scope, with a chosen lifetime; switchable with
//!   [`TokenMode`] to expired tokens, tokens the server rejects, or failures; counts its calls.
//!
//! Bad set-ups fail with a typed [`AzuriteError`] that names the fix (missing install, port in
//! use, Azurite dying at start-up with its stderr). Tests that need Azurite are
//! `#[ignore = "needs Azurite: cargo xtask it"]`; `cargo xtask it|test` runs them with Azurite
//! installed, and a missing Azurite fails them (it never skips).
//!
//! Azurite's limits: 403 `AuthenticationFailed` (not 401) for expired or wrong-audience tokens;
//! bearer tokens only over HTTPS; one account (`devstoreaccount1`); in-memory data per fixture.
//!
//! # Example
//!
//! ```no_run
//! # #[cfg(feature = "azurite")]
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use testkit::azurite::{Azurite, TestCredential, TokenMode};
//!
//! let azurite = Azurite::start().await?;
//! let credential = TestCredential::new();
//! let service = azurite.blob_service_client(Arc::new(credential.clone()))?;
//! service.blob_container_client("demo").create(None).await?;
//! assert_eq!(credential.calls(), 1);
//! credential.set_mode(TokenMode::Rejected); // the next token is refused with 403
//! # Ok(()) }
//! ```

#[cfg(feature = "azure-credential")]
mod credential;
#[cfg(feature = "azurite")]
mod error;
#[cfg(feature = "azurite")]
mod locate;
#[cfg(feature = "azurite")]
mod process;

#[cfg(feature = "azure-credential")]
pub use credential::{TEST_TENANT, TestCredential, TokenMode};
#[cfg(feature = "azurite")]
pub use error::AzuriteError;
#[cfg(feature = "azurite")]
pub use locate::{AZURITE_BIN_ENV, installed_azurite_bin, workspace_root};
#[cfg(feature = "azurite")]
pub use process::{ACCOUNT, Azurite, AzuriteOptions};
