//! Migration of a v1 single document into the keyed layout (A10): [`migrate`].
//!
//! Every record is written with `If-None-Match: *`, so a re-run (after a crash, or to pick up
//! writes made to the document meanwhile) skips what exists and finishes the rest; the source
//! document is only read, so instances still on the document keep authenticating throughout.

use std::collections::BTreeMap;

use tokio::task::JoinSet;

use crate::document::{AccountRecord, KeyDocument, KeyRecord, unix_now};
use crate::error::StoreError;
use crate::key::KeyHash;
use crate::keyed::{FeedEntry, IdEntry, KeyEntry, RECORD_FORMAT, account_name, id_name, key_name};
use crate::store::{Condition, KeyStore, Layout, Loaded};

/// Records written at once by [`migrate`] unless [`MigrateOptions::concurrency`] says
/// otherwise.
pub const MIGRATE_CONCURRENCY: usize = 16;

/// How [`migrate`] runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MigrateOptions {
    /// Keys migrated concurrently (each is up to three conditional writes). Default
    /// [`MIGRATE_CONCURRENCY`]; clamped to 1 – 1 024.
    pub concurrency: usize,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        Self {
            concurrency: MIGRATE_CONCURRENCY,
        }
    }
}

impl MigrateOptions {
    /// Keys migrated concurrently (clamped to 1 – 1 024).
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.clamp(1, 1024);
        self
    }
}

/// What one [`migrate`] run did. A second run over an unchanged document creates nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrationReport {
    /// Accounts in the source document.
    pub accounts: u64,
    /// Account records created by this run (the others already existed).
    pub accounts_created: u64,
    /// Keys in the source document.
    pub keys: u64,
    /// Key records (`keys/<sha256>`) created by this run.
    pub keys_created: u64,
    /// Id records (`ids/<key id>`) created by this run.
    pub ids_created: u64,
    /// Keys revoked in the document but valid in the keyed store, revoked by this run (each
    /// announced on the change feed, so running keyed instances drop them within one poll).
    pub revocations_applied: u64,
    /// Keys skipped: an invalid SHA-256 in the document, or a record already holding another
    /// account's key under that id or hash (left as it is; never overwritten).
    pub skipped: u64,
}

/// Why a [`migrate`] run stopped. Whatever it wrote stays; running it again resumes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrateError {
    /// The source store is not in the single-document layout.
    #[error("the source store ({store}) is not a single-document (v1) store")]
    SourceNotDocument {
        /// The source's description.
        store: String,
    },
    /// The target store is not in the keyed layout.
    #[error("the target store ({store}) is not a keyed store")]
    TargetNotKeyed {
        /// The target's description.
        store: String,
    },
    /// A store call failed.
    #[error("migration failed on the {side} store")]
    Store {
        /// `"source"` or `"target"`.
        side: &'static str,
        /// The store error.
        #[source]
        source: StoreError,
    },
}

fn target(source: StoreError) -> MigrateError {
    MigrateError::Store {
        side: "target",
        source,
    }
}

/// Copy the v1 document of `from` into the keyed store `to`: `accounts/<id>`, then for each
/// key `ids/<key id>` and `keys/<sha256>`, all created with `If-None-Match: *` in the keyed
/// engine's own record format; revocations in the document are applied to valid keyed
/// records with `If-Match` and announced on the change feed. Idempotent and resumable:
/// a record that exists is skipped, so re-running after a crash (or after the document
/// changed) finishes the job and creates nothing twice. The document is only read:
/// instances on it keep working until they are switched to the keyed store.
///
/// Keys issued before checksums existed keep working after the switch only with
/// [`CacheConfig::legacy_keys`](crate::CacheConfig::legacy_keys) (the document holds hashes,
/// so which keys those are cannot be told here).
pub async fn migrate<F, T>(
    from: &F,
    to: &T,
    options: &MigrateOptions,
) -> Result<MigrationReport, MigrateError>
where
    F: KeyStore,
    T: KeyStore + Clone,
{
    if from.layout() != Layout::Document {
        return Err(MigrateError::SourceNotDocument {
            store: from.describe(),
        });
    }
    if to.layout() != Layout::Keyed {
        return Err(MigrateError::TargetNotKeyed {
            store: to.describe(),
        });
    }
    let document = match from.load(None).await {
        Ok(Loaded::Document { document, .. }) => document,
        Ok(Loaded::NotModified) => KeyDocument::default(), // not asked for; nothing to copy
        Err(source) => {
            return Err(MigrateError::Store {
                side: "source",
                source,
            });
        }
    };
    let mut report = MigrationReport {
        accounts: document.accounts.len() as u64,
        keys: document.keys.len() as u64,
        ..MigrationReport::default()
    };
    for (id, account) in &document.accounts {
        if put_new(to, &account_name(id), &account_bytes(account)).await? {
            report.accounts_created += 1;
        }
    }
    let concurrency = options.concurrency.clamp(1, 1024);
    let mut tasks = JoinSet::new();
    let keys: BTreeMap<String, KeyRecord> = document.keys;
    for (key_id, record) in keys {
        while tasks.len() >= concurrency {
            collect(&mut tasks, &mut report).await?;
        }
        let to = to.clone();
        tasks.spawn(async move { migrate_key(&to, &key_id, &record).await });
    }
    while !tasks.is_empty() {
        collect(&mut tasks, &mut report).await?;
    }
    Ok(report)
}

fn account_bytes(account: &AccountRecord) -> Vec<u8> {
    serde_json::to_vec(account).unwrap_or_default()
}

async fn collect(
    tasks: &mut JoinSet<Result<KeyOutcome, MigrateError>>,
    report: &mut MigrationReport,
) -> Result<(), MigrateError> {
    let Some(joined) = tasks.join_next().await else {
        return Ok(());
    };
    let outcome = match joined {
        Ok(outcome) => outcome?,
        Err(join) => {
            return Err(target(StoreError::unavailable(format!(
                "a migration task failed: {join}"
            ))));
        }
    };
    report.ids_created += u64::from(outcome.id_created);
    report.keys_created += u64::from(outcome.key_created);
    report.revocations_applied += u64::from(outcome.revoked);
    report.skipped += u64::from(outcome.skipped);
    Ok(())
}

#[derive(Debug, Default)]
struct KeyOutcome {
    id_created: bool,
    key_created: bool,
    revoked: bool,
    skipped: bool,
}

/// Create `name` unless it exists: `Ok(true)` created, `Ok(false)` already there.
async fn put_new<T: KeyStore>(to: &T, name: &str, bytes: &[u8]) -> Result<bool, MigrateError> {
    match to.put_record(name, bytes, Condition::IfNoneMatch).await {
        Ok(_) => Ok(true),
        Err(StoreError::Conflict) => Ok(false),
        Err(error) => Err(target(error)),
    }
}

async fn migrate_key<T: KeyStore>(
    to: &T,
    key_id: &str,
    record: &KeyRecord,
) -> Result<KeyOutcome, MigrateError> {
    let mut outcome = KeyOutcome::default();
    let Some(hash) = KeyHash::from_hex(&record.sha256) else {
        outcome.skipped = true;
        return Ok(outcome);
    };
    // The id first, like issue_key: a crash in between leaves an id without a key, which the
    // next run completes.
    let id = IdEntry {
        sha256: hash.to_hex(),
        account: record.account.clone(),
    };
    let id_bytes = crate::keyed::to_json(&id);
    outcome.id_created = put_new(to, &id_name(key_id), &id_bytes).await?;
    if !outcome.id_created {
        let existing = to.get_record(&id_name(key_id)).await.map_err(target)?;
        let same = existing
            .and_then(|r| crate::keyed::from_json::<IdEntry>(&r.bytes).ok())
            .is_some_and(|e| e.sha256 == id.sha256);
        if !same {
            outcome.skipped = true; // another key holds this id: never overwritten
            return Ok(outcome);
        }
    }
    let entry = KeyEntry {
        format: RECORD_FORMAT,
        key_id: key_id.to_string(),
        account: record.account.clone(),
        created_unix: record.created_unix,
        revoked_unix: record.revoked_unix,
    };
    let name = key_name(&hash);
    outcome.key_created = put_new(to, &name, &crate::keyed::to_json(&entry)).await?;
    if outcome.key_created || record.revoked_unix.is_none() {
        return Ok(outcome);
    }
    // Revoked in the document since an earlier run: revoke the keyed record (never the
    // other way round — a revocation is final).
    for _ in 0..5 {
        let Some(current) = to.get_record(&name).await.map_err(target)? else {
            return Ok(outcome);
        };
        let Ok(mut stored) = crate::keyed::from_json::<KeyEntry>(&current.bytes) else {
            outcome.skipped = true;
            return Ok(outcome);
        };
        if stored.key_id != key_id {
            outcome.skipped = true;
            return Ok(outcome);
        }
        if stored.revoked_unix.is_some() {
            return Ok(outcome);
        }
        stored.revoked_unix = record.revoked_unix.or(Some(unix_now()));
        match to
            .put_record(
                &name,
                &crate::keyed::to_json(&stored),
                Condition::IfMatch(&current.version),
            )
            .await
        {
            Ok(_) => {
                outcome.revoked = true;
                let line = crate::keyed::to_json(&FeedEntry::Revoke {
                    sha256: hash.to_hex(),
                });
                // The record is the truth; a lost announcement is caught by revalidation.
                let _ = to.append_feed(&line).await;
                return Ok(outcome);
            }
            Err(StoreError::Conflict) => continue,
            Err(error) => return Err(target(error)),
        }
    }
    Err(target(StoreError::Conflict))
}
