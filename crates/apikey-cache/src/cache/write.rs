//! Local writes: create account, issue key, revoke key — compare-and-swap through the store.

use std::sync::Arc;

use super::ApiKeyCache;
use super::stats::Counters;
use crate::document::{AccountRecord, KeyDocument, KeyRecord, unix_now};
use crate::error::{StoreError, WriteError};
use crate::key::{AccountId, ApiKeySecret, Identity, IssuedKey, KeyId};
use crate::store::KeyStore;

pub(crate) fn valid_account_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn store_error(source: Arc<StoreError>) -> WriteError {
    WriteError::Store { source }
}

impl<S: KeyStore> ApiKeyCache<S> {
    /// Create an account. Fails with [`WriteError::AccountExists`] if any instance created it
    /// first.
    pub async fn create_account(&self, id: &str, name: &str) -> Result<AccountId, WriteError> {
        if !valid_account_id(id) {
            return Err(WriteError::InvalidAccountId);
        }
        if self.inner.keyed.is_some() {
            return self.create_account_keyed(id, name).await;
        }
        self.write(|doc| {
            if doc.accounts.contains_key(id) {
                return Err(WriteError::AccountExists);
            }
            doc.accounts.insert(
                id.to_string(),
                AccountRecord {
                    name: name.to_string(),
                    created_unix: unix_now(),
                },
            );
            Ok(AccountId::new(id))
        })
        .await
    }

    /// Issue a new key for `account`. The returned [`IssuedKey`] holds the only copy of the
    /// plaintext; the store receives its SHA-256.
    pub async fn issue_key(&self, account: &AccountId) -> Result<IssuedKey, WriteError> {
        if self.inner.keyed.is_some() {
            return self.issue_key_keyed(account).await;
        }
        self.write(|doc| {
            if !doc.accounts.contains_key(account.as_str()) {
                return Err(WriteError::NoSuchAccount);
            }
            let (key, secret) = loop {
                let key = KeyId::generate();
                if !doc.keys.contains_key(key.as_str()) {
                    break (key, ApiKeySecret::generate());
                }
            };
            doc.keys.insert(
                key.as_str().to_string(),
                KeyRecord {
                    account: account.as_str().to_string(),
                    sha256: secret.hash().to_hex(),
                    created_unix: unix_now(),
                    revoked_unix: None,
                },
            );
            Ok(IssuedKey {
                identity: Identity {
                    account: account.clone(),
                    key,
                },
                secret,
            })
        })
        .await
    }

    /// Revoke a key (idempotent). Rejected here at once; on other instances within one TTL
    /// (single-document layout) or one `poll` (keyed layout, through the change feed).
    pub async fn revoke_key(&self, key: &KeyId) -> Result<(), WriteError> {
        if self.inner.keyed.is_some() {
            return self.revoke_key_keyed(key).await;
        }
        self.write(|doc| {
            let record = doc
                .keys
                .get_mut(key.as_str())
                .ok_or(WriteError::NoSuchKey)?;
            record.revoked_unix.get_or_insert_with(unix_now);
            Ok(())
        })
        .await
    }

    /// One write, checked against the store's current document (A3, A7):
    ///
    /// 1. apply `change` to the newest document this instance has; if it answers
    ///    [`WriteError::NoSuchAccount`] or [`WriteError::NoSuchKey`] and that document was not
    ///    read from the store during this call, re-load (a load that starts now) and re-apply —
    ///    another instance may have created the account or issued the key;
    /// 2. store it with "if the version is still V"; on a conflict, re-load, re-apply and
    ///    re-write (up to `write_attempts` writes of a document read from the store; a conflict
    ///    on the local snapshot only means it was behind, and is not counted);
    /// 3. install the stored document here (visible at once).
    ///
    /// Local writes run one at a time under `writes`; the store write itself holds no lock a
    /// reader needs and is bounded by `write_timeout` (A9).
    async fn write<T>(
        &self,
        mut change: impl FnMut(&mut KeyDocument) -> Result<T, WriteError>,
    ) -> Result<T, WriteError> {
        let inner = &*self.inner;
        let _writes = inner.writes.lock().await;
        let mut base = inner.current();
        let mut from_store = false;
        if base.checked_at.is_none() {
            base = inner.reload_fresh().await.map_err(store_error)?;
            from_store = true;
        }
        let mut attempts = 0;
        loop {
            let mut document = base.table.document.clone();
            let output = match change(&mut document) {
                Ok(output) => output,
                Err(WriteError::NoSuchAccount | WriteError::NoSuchKey) if !from_store => {
                    // The local snapshot may simply not know it yet: ask the store.
                    base = inner.reload_fresh().await.map_err(store_error)?;
                    from_store = true;
                    continue;
                }
                Err(error) => return Err(error),
            };
            // A conflict on a document read from the store during this call is contention;
            // one on the local snapshot only means it was behind (another instance wrote since
            // it was loaded) and costs a re-load, not one of the `write_attempts`.
            let against_store = from_store;
            if against_store {
                attempts += 1;
            }
            let timeout = inner.config.write_timeout;
            let stored =
                tokio::time::timeout(timeout, inner.store.store(&document, base.version.as_ref()))
                    .await
                    .unwrap_or_else(|_| {
                        Counters::bump(&inner.counters.store_timeouts);
                        Err(StoreError::TimedOut { after: timeout })
                    });
            match stored {
                Ok(version) => {
                    Counters::bump(&inner.counters.writes);
                    inner.install_write(&base, document, version).await;
                    return Ok(output);
                }
                Err(StoreError::Conflict) => {
                    Counters::bump(&inner.counters.write_conflicts);
                    if against_store && attempts >= inner.config.write_attempts {
                        return Err(WriteError::Contended { attempts });
                    }
                    tracing::debug!(
                        store = %inner.store.describe(),
                        "key document changed under a write; re-loading and re-applying"
                    );
                    base = inner.reload_fresh().await.map_err(store_error)?;
                    from_store = true;
                }
                Err(error) => return Err(store_error(Arc::new(error))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_ids_are_validated() {
        assert!(valid_account_id("acme-1.prod_eu"));
        assert!(!valid_account_id(""));
        assert!(!valid_account_id("has space"));
        assert!(!valid_account_id("ünïcode"));
        assert!(!valid_account_id(&"a".repeat(65)));
    }
}
