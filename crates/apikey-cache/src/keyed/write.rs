//! Keyed writes (A10): each touches one record with a condition — create `If-None-Match: *`,
//! revoke `If-Match: <etag>` — then appends one line to the change feed (A11).

use std::sync::Arc;

use tokio::time::Instant;

use super::records::{from_json, to_json};
use super::{
    Cached, FeedEntry, IdEntry, KeyEntry, RECORD_FORMAT, account_name, bounded, id_name, key_name,
};
use crate::cache::{ApiKeyCache, Counters};
use crate::document::{AccountRecord, unix_now};
use crate::error::{StoreError, WriteError};
use crate::key::{AccountId, ApiKeySecret, Identity, IssuedKey, KeyHash, KeyId};
use crate::store::{Condition, KeyStore, Record, Version};

fn store_error(error: StoreError) -> WriteError {
    WriteError::Store {
        source: Arc::new(error),
    }
}

impl<S: KeyStore> ApiKeyCache<S> {
    async fn get(&self, name: &str) -> Result<Option<Record>, WriteError> {
        let inner = &*self.inner;
        bounded(
            &inner.counters,
            inner.config.load_timeout,
            inner.store.get_record(name),
        )
        .await
        .map_err(store_error)
    }

    async fn put(
        &self,
        name: &str,
        bytes: &[u8],
        condition: Condition<'_>,
    ) -> Result<Version, StoreError> {
        let inner = &*self.inner;
        let put = bounded(
            &inner.counters,
            inner.config.write_timeout,
            inner.store.put_record(name, bytes, condition),
        )
        .await;
        match &put {
            Ok(_) => Counters::bump(&inner.counters.writes),
            Err(StoreError::Conflict) => Counters::bump(&inner.counters.write_conflicts),
            Err(_) => {}
        }
        put
    }

    /// Append to the feed after a successful record write. A failure does not undo the write
    /// (the record is the truth): it is logged and counted, and other instances see the change
    /// when they revalidate the key (at most `revalidate`, 5 min by default) instead of within
    /// one poll.
    async fn announce(&self, entry: &FeedEntry) {
        let inner = &*self.inner;
        let appended = bounded(
            &inner.counters,
            inner.config.write_timeout,
            inner.store.append_feed(&to_json(entry)),
        )
        .await;
        if let Err(error) = appended {
            Counters::bump(&inner.counters.feed_append_failures);
            tracing::warn!(store = %inner.store.describe(), error = %crate::cache::chain(&error), "change feed append failed; other instances see this write when they revalidate the key");
        }
    }

    pub(crate) async fn create_account_keyed(
        &self,
        id: &str,
        name: &str,
    ) -> Result<AccountId, WriteError> {
        let record = AccountRecord {
            name: name.to_string(),
            created_unix: unix_now(),
        };
        let bytes = serde_json::to_vec(&record).unwrap_or_default();
        match self
            .put(&account_name(id), &bytes, Condition::IfNoneMatch)
            .await
        {
            Ok(_) => {}
            Err(StoreError::Conflict) => return Err(WriteError::AccountExists),
            Err(error) => return Err(store_error(error)),
        }
        self.announce(&FeedEntry::Account {
            account: id.to_string(),
        })
        .await;
        Ok(AccountId::new(id))
    }

    pub(crate) async fn issue_key_keyed(
        &self,
        account: &AccountId,
    ) -> Result<IssuedKey, WriteError> {
        // An id that could not have been created names no record: NoSuchAccount, not a store
        // failure (a caller must not retry a client's typo as a 503).
        if !crate::cache::valid_account_id(account.as_str())
            || self.get(&account_name(account.as_str())).await?.is_none()
        {
            return Err(WriteError::NoSuchAccount);
        }
        let attempts = self.inner.config.write_attempts;
        for _ in 0..attempts {
            let key = KeyId::generate();
            let secret = ApiKeySecret::generate();
            let hash = secret.hash();
            // The id first: a crash after it leaves an id without a key (revoking it answers
            // NoSuchKey), never a key that cannot be revoked by id.
            let id = IdEntry {
                sha256: hash.to_hex(),
                account: account.as_str().to_string(),
            };
            match self
                .put(
                    &id_name(key.as_str()),
                    &to_json(&id),
                    Condition::IfNoneMatch,
                )
                .await
            {
                Ok(_) => {}
                Err(StoreError::Conflict) => continue, // that id is taken: draw another
                Err(error) => return Err(store_error(error)),
            }
            let entry = KeyEntry {
                format: RECORD_FORMAT,
                key_id: key.as_str().to_string(),
                account: account.as_str().to_string(),
                created_unix: unix_now(),
                revoked_unix: None,
            };
            match self
                .put(&key_name(&hash), &to_json(&entry), Condition::IfNoneMatch)
                .await
            {
                Ok(_) => {}
                Err(StoreError::Conflict) => continue, // 2^-256: draw another
                Err(error) => return Err(store_error(error)),
            }
            let identity = Identity {
                account: account.clone(),
                key,
            };
            self.cache_local(hash, &identity, false);
            self.announce(&FeedEntry::Issue {
                sha256: hash.to_hex(),
            })
            .await;
            return Ok(IssuedKey { identity, secret });
        }
        Err(WriteError::Contended { attempts })
    }

    pub(crate) async fn revoke_key_keyed(&self, key: &KeyId) -> Result<(), WriteError> {
        // Issued ids are `key_` + 16 hex digits; anything that is not a record name is no key.
        if !crate::cache::valid_account_id(key.as_str()) {
            return Err(WriteError::NoSuchKey);
        }
        let Some(id) = self.get(&id_name(key.as_str())).await? else {
            return Err(WriteError::NoSuchKey);
        };
        let id: IdEntry = from_json(&id.bytes).map_err(store_error)?;
        let hash = KeyHash::from_hex(&id.sha256).ok_or_else(|| {
            store_error(StoreError::unavailable(
                "an id record holds an invalid sha256",
            ))
        })?;
        let name = key_name(&hash);
        let attempts = self.inner.config.write_attempts;
        for _ in 0..attempts {
            let Some(record) = self.get(&name).await? else {
                return Err(WriteError::NoSuchKey);
            };
            let mut entry: KeyEntry = from_json(&record.bytes).map_err(store_error)?;
            if entry.revoked_unix.is_none() {
                entry.revoked_unix = Some(unix_now());
                match self
                    .put(&name, &to_json(&entry), Condition::IfMatch(&record.version))
                    .await
                {
                    Ok(_) => {}
                    Err(StoreError::Conflict) => continue,
                    Err(error) => return Err(store_error(error)),
                }
            }
            let identity = Identity {
                account: AccountId::new(entry.account),
                key: key.clone(),
            };
            self.cache_local(hash, &identity, true);
            self.announce(&FeedEntry::Revoke {
                sha256: hash.to_hex(),
            })
            .await;
            return Ok(());
        }
        Err(WriteError::Contended { attempts })
    }

    /// A local write is visible here at once (A3).
    fn cache_local(&self, hash: KeyHash, identity: &Identity, revoked: bool) {
        let state = self.keyed();
        state
            .invalidations
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.negative().remove(&hash);
        state.keys.insert(
            hash,
            Arc::new(Cached::new(
                identity.clone(),
                revoked,
                &hash,
                Instant::now(),
                self.inner.config.revalidate,
            )),
        );
    }
}
