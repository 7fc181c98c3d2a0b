//! A conformance check for [`KeyStore`] implementations (feature `testing`).

use crate::document::AccountRecord;
use crate::{KeyDocument, KeyStore, Loaded, StoreError};

/// Check the [`KeyStore`] contract on a store that holds nothing yet, panicking with the rule
/// that was broken. Every store of this crate runs it in its tests; run it in yours.
///
/// The rules, in order:
/// 1. an absent document loads as [`KeyDocument::empty`] with no version;
/// 2. a create-only write (`if_match: None`) succeeds once, then conflicts;
/// 3. a conditional load with the current version is [`Loaded::NotModified`];
/// 4. a write with the current version replaces the document and returns a new version;
/// 5. a write with a stale version is a [`StoreError::Conflict`] and changes nothing;
/// 6. a conditional load with a stale version returns the current document and version.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// apikey_cache::testing::check_store_contract(&apikey_cache::MemoryStore::new()).await;
/// # });
/// ```
pub async fn check_store_contract<S: KeyStore>(store: &S) {
    let name = store.describe();
    let Loaded::Document { document, version } = store.load(None).await.expect("load") else {
        panic!("{name}: an unconditional load answered NotModified (rule 1)")
    };
    assert_eq!(
        (document, version),
        (KeyDocument::empty(), None),
        "{name}: an absent document must load as empty, without a version (rule 1)"
    );

    let v1 = store.store(&with_account("a"), None).await.expect("create");
    assert!(
        matches!(
            store.store(&with_account("b"), None).await,
            Err(StoreError::Conflict)
        ),
        "{name}: a second create-only write must conflict (rule 2)"
    );
    assert!(
        matches!(store.load(Some(&v1)).await, Ok(Loaded::NotModified)),
        "{name}: a load with the current version must be NotModified (rule 3)"
    );

    let v2 = store
        .store(&with_account("b"), Some(&v1))
        .await
        .expect("compare-and-swap with the current version");
    assert_ne!(
        v1, v2,
        "{name}: a replace must return a new version (rule 4)"
    );
    assert!(
        matches!(
            store.store(&with_account("c"), Some(&v1)).await,
            Err(StoreError::Conflict)
        ),
        "{name}: a write with a stale version must conflict (rule 5)"
    );

    let Loaded::Document { document, version } = store.load(Some(&v1)).await.expect("load") else {
        panic!("{name}: a load with a stale version answered NotModified (rule 6)")
    };
    assert_eq!(
        version,
        Some(v2),
        "{name}: a load must return the current version (rule 6)"
    );
    let accounts: Vec<_> = document.accounts.keys().map(String::as_str).collect();
    assert_eq!(
        accounts,
        ["b"],
        "{name}: the document must be the last one written, and the conflicting write must \
         have changed nothing (rules 4, 5)"
    );
}

/// A document with one account named `id`.
fn with_account(id: &str) -> KeyDocument {
    let mut document = KeyDocument::empty();
    document.accounts.insert(
        id.into(),
        AccountRecord {
            name: id.into(),
            created_unix: 0,
        },
    );
    document
}
