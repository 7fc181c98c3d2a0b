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

/// Check the keyed-layout contract (A10, A11) on a [`Layout::Keyed`](crate::Layout::Keyed)
/// store that holds nothing yet, panicking with the rule that was broken.
///
/// 1. an absent record reads as `None`;
/// 2. a create (`IfNoneMatch`) succeeds once, then conflicts; other records are independent;
/// 3. a read returns the bytes and version written;
/// 4. a replace with the current version (`IfMatch`) returns a new version; with a stale one
///    it conflicts and changes nothing;
/// 5. the feed read from `None` is empty and ends where later appends begin; appended entries
///    come back once each, in order, and a read at the end returns nothing.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// apikey_cache::testing::check_keyed_store_contract(&apikey_cache::MemoryStore::keyed()).await;
/// # });
/// ```
pub async fn check_keyed_store_contract<S: KeyStore>(store: &S) {
    use crate::{Condition, Layout};
    let name = store.describe();
    assert_eq!(store.layout(), Layout::Keyed, "{name}: not a keyed store");
    let record = "keys/00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff";
    assert_eq!(
        store.get_record(record).await.expect("get"),
        None,
        "{name}: an absent record must read as None (rule 1)"
    );
    let v1 = store
        .put_record(record, b"one", Condition::IfNoneMatch)
        .await
        .expect("create");
    assert!(
        matches!(
            store
                .put_record(record, b"two", Condition::IfNoneMatch)
                .await,
            Err(StoreError::Conflict)
        ),
        "{name}: a second create must conflict (rule 2)"
    );
    store
        .put_record("accounts/acme", b"{}", Condition::IfNoneMatch)
        .await
        .expect("another record is independent (rule 2)");
    let read = store
        .get_record(record)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(
        (read.bytes.as_slice(), &read.version),
        (&b"one"[..], &v1),
        "{name}: a read returns what was written (rule 3)"
    );
    let v2 = store
        .put_record(record, b"two", Condition::IfMatch(&v1))
        .await
        .expect("replace with the current version");
    assert_ne!(
        v1, v2,
        "{name}: a replace must return a new version (rule 4)"
    );
    assert!(
        matches!(
            store
                .put_record(record, b"three", Condition::IfMatch(&v1))
                .await,
            Err(StoreError::Conflict)
        ),
        "{name}: a replace with a stale version must conflict (rule 4)"
    );
    let read = store
        .get_record(record)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(
        (read.bytes.as_slice(), read.version),
        (&b"two"[..], v2),
        "{name}: the conflicting replace changed nothing (rule 4)"
    );

    let start = store.read_feed(None).await.expect("feed end");
    assert!(
        start.entries.is_empty(),
        "{name}: a read from None returns no entries (rule 5)"
    );
    store.append_feed(b"{\"n\":1}").await.expect("append");
    store.append_feed(b"{\"n\":2}").await.expect("append");
    let batch = store.read_feed(Some(&start.next)).await.expect("read");
    assert_eq!(
        (batch.entries.clone(), batch.gap),
        (vec![b"{\"n\":1}".to_vec(), b"{\"n\":2}".to_vec()], false),
        "{name}: appended entries come back in order (rule 5)"
    );
    let again = store.read_feed(Some(&batch.next)).await.expect("read");
    assert!(
        again.entries.is_empty() && !again.gap,
        "{name}: nothing new at the end (rule 5)"
    );
    store.append_feed(b"{\"n\":3}").await.expect("append");
    let last = store.read_feed(Some(&again.next)).await.expect("read");
    assert_eq!(
        last.entries,
        vec![b"{\"n\":3}".to_vec()],
        "{name}: each entry comes back once (rule 5)"
    );
}
