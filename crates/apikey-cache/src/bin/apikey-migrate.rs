//! `apikey-migrate`: convert a v1 key document into the keyed layout (A10) with
//! [`apikey_cache::migrate`]. Idempotent and resumable: run it again after a crash, or after
//! the document changed, and it finishes the job; the document is only read.
//!
//! ```text
//! apikey-migrate [--concurrency N] FROM TO
//!   FROM  file:<path to the v1 JSON document>
//!         blob:<account URL>/<container>/<blob>
//!   TO    dir:<directory of the keyed file store>
//!         blob:<account URL>/<container>/<prefix, e.g. apikeys/>
//! Blob stores: APIKEY_MIGRATE_BEARER_TOKEN holds a storage token (e.g. from
//! `az account get-access-token --resource https://storage.azure.com/ --query accessToken -o tsv`),
//! APIKEY_MIGRATE_CA_PEM optionally names a PEM file of a CA to trust (Azurite's).
//! ```
//!
//! Prints the [`MigrationReport`](apikey_cache::MigrationReport) counts; exit status 0 done,
//! 1 failed (re-run to resume), 2 usage.

use std::process::ExitCode;
use std::sync::Arc;

use apikey_cache::{
    BlobStore, FileStore, KeyStore, MigrateError, MigrateOptions, MigrationReport, migrate,
};
use azure_core::credentials::{AccessToken, Secret, TokenCredential, TokenRequestOptions};
use blob_pool::{BlobPool, Endpoint, storage_transport};

const USAGE: &str = "usage: apikey-migrate [--concurrency N] FROM TO
  FROM  file:<v1 JSON document> | blob:<account URL>/<container>/<blob>
  TO    dir:<keyed directory>   | blob:<account URL>/<container>/<prefix/>
  Blob: APIKEY_MIGRATE_BEARER_TOKEN (storage token), APIKEY_MIGRATE_CA_PEM (optional CA file)";

/// A bearer token handed over on the command line's environment (never printed).
struct StaticToken(Secret);

impl std::fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StaticToken(<redacted>)")
    }
}

#[async_trait::async_trait]
impl TokenCredential for StaticToken {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        // The real expiry is unknown; an hour is what `az` hands out. A run that outlives
        // it fails and is resumed with a new token.
        let expires =
            azure_core::time::OffsetDateTime::now_utc() + std::time::Duration::from_secs(3600);
        Ok(AccessToken::new(self.0.secret().to_string(), expires))
    }
}

#[derive(Debug)]
enum Store {
    File(FileStore),
    Blob(BlobStore),
}

type BlobParts = (BlobPool, Arc<dyn TokenCredential>, Endpoint, String, String);

/// `<account URL>/<container>/<name>`: the account URL is everything before the last two
/// path segments (path-style Azurite URLs carry the account name as a segment). A name
/// ending in `/` is a keyed prefix (one segment, e.g. `apikeys/`).
fn blob_parts(spec: &str) -> Result<BlobParts, String> {
    const SHAPE: &str = "blob: takes <account URL>/<container>/<blob or prefix/>";
    let (body, slash) = match spec.strip_suffix('/') {
        Some(body) => (body, "/"),
        None => (spec, ""),
    };
    let (rest, name) = body.rsplit_once('/').ok_or(SHAPE)?;
    let (account, container) = rest.rsplit_once('/').ok_or(SHAPE)?;
    if name.is_empty() || container.is_empty() {
        return Err(SHAPE.to_string());
    }
    finish(account, container, &format!("{name}{slash}"))
}

fn finish(account: &str, container: &str, name: &str) -> Result<BlobParts, String> {
    let endpoint = Endpoint::parse(account).map_err(|e| format!("account URL: {e}"))?;
    let token = std::env::var("APIKEY_MIGRATE_BEARER_TOKEN").map_err(|_| {
        "APIKEY_MIGRATE_BEARER_TOKEN is not set (a storage bearer token)".to_string()
    })?;
    let mut transport = storage_transport();
    if let Ok(path) = std::env::var("APIKEY_MIGRATE_CA_PEM") {
        let pem = std::fs::read(&path).map_err(|e| format!("APIKEY_MIGRATE_CA_PEM {path}: {e}"))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| format!("APIKEY_MIGRATE_CA_PEM {path}: {e}"))?;
        transport = transport.tls_certs_only([cert]);
    }
    let transport = transport
        .build()
        .map_err(|e| format!("HTTP transport: {e}"))?;
    let pool = BlobPool::builder()
        .transport(transport)
        .build()
        .map_err(|e| format!("blob pool: {e}"))?;
    let credential: Arc<dyn TokenCredential> = Arc::new(StaticToken(Secret::new(token)));
    Ok((
        pool,
        credential,
        endpoint,
        container.to_string(),
        name.to_string(),
    ))
}

fn source(spec: &str) -> Result<Store, String> {
    if let Some(path) = spec.strip_prefix("file:") {
        return Ok(Store::File(FileStore::new(path)));
    }
    if let Some(blob) = spec.strip_prefix("blob:") {
        let (pool, credential, endpoint, container, name) = blob_parts(blob)?;
        return Ok(Store::Blob(BlobStore::new(
            pool, credential, endpoint, container, name,
        )));
    }
    Err(format!("FROM must start with file: or blob:, not {spec:?}"))
}

fn target(spec: &str) -> Result<Store, String> {
    if let Some(path) = spec.strip_prefix("dir:") {
        return Ok(Store::File(FileStore::keyed(path).durable(true)));
    }
    if let Some(blob) = spec.strip_prefix("blob:") {
        let (pool, credential, endpoint, container, prefix) = blob_parts(blob)?;
        return Ok(Store::Blob(BlobStore::keyed(
            pool, credential, endpoint, container, prefix,
        )));
    }
    Err(format!("TO must start with dir: or blob:, not {spec:?}"))
}

async fn run<F: KeyStore>(
    from: &F,
    to: &Store,
    options: &MigrateOptions,
) -> Result<MigrationReport, MigrateError> {
    match to {
        Store::File(to) => migrate(from, to, options).await,
        Store::Blob(to) => migrate(from, to, options).await,
    }
}

fn parse(args: &[String]) -> Result<(MigrateOptions, String, String), String> {
    let mut options = MigrateOptions::default();
    let mut positional = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--concurrency" => {
                let n = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .ok_or("--concurrency takes a number")?;
                options = options.concurrency(n);
            }
            "-h" | "--help" => return Err(String::new()),
            other => positional.push(other.to_string()),
        }
    }
    match <[String; 2]>::try_from(positional) {
        Ok([from, to]) => Ok((options, from, to)),
        Err(_) => Err("expected FROM and TO".to_string()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (options, from, to) = match parse(&args) {
        Ok(parsed) => parsed,
        Err(problem) => {
            if !problem.is_empty() {
                eprintln!("apikey-migrate: {problem}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    // A binary may choose the process's TLS crypto provider; the library never does.
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
    let (from, to) = match (source(&from), target(&to)) {
        (Ok(from), Ok(to)) => (from, to),
        (Err(problem), _) | (_, Err(problem)) => {
            eprintln!("apikey-migrate: {problem}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("apikey-migrate: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match &from {
            Store::File(from) => run(from, &to, &options).await,
            Store::Blob(from) => run(from, &to, &options).await,
        }
    });
    match result {
        Ok(report) => {
            println!(
                "migrated: accounts {} ({} created), keys {} ({} created, {} ids created), \
                 revocations applied {}, skipped {}",
                report.accounts,
                report.accounts_created,
                report.keys,
                report.keys_created,
                report.ids_created,
                report.revocations_applied,
                report.skipped
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            eprintln!("apikey-migrate: {text} (run it again to resume)");
            ExitCode::FAILURE
        }
    }
}
