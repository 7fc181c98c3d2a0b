//! The keyed layout's record names and formats (A10) and the change feed's entries (A11).

use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::key::KeyHash;

/// Format number of keyed records.
pub(crate) const RECORD_FORMAT: u32 = 2;

/// `keys/<sha256 hex>`: one key, addressed by its hash (never the key).
pub(crate) fn key_name(hash: &KeyHash) -> String {
    format!("keys/{}", hash.to_hex())
}

/// `ids/<key id>`: the hash of a key, found by its public id (for revocation).
pub(crate) fn id_name(key_id: &str) -> String {
    format!("ids/{key_id}")
}

/// `accounts/<account id>`.
pub(crate) fn account_name(account: &str) -> String {
    format!("accounts/{account}")
}

/// The record at `keys/<sha256>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeyEntry {
    #[serde(default = "format_default")]
    pub(crate) format: u32,
    pub(crate) key_id: String,
    pub(crate) account: String,
    #[serde(default)]
    pub(crate) created_unix: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) revoked_unix: Option<u64>,
}

/// The record at `ids/<key id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IdEntry {
    pub(crate) sha256: String,
    pub(crate) account: String,
}

fn format_default() -> u32 {
    RECORD_FORMAT
}

/// One line of the change feed: what changed, never a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum FeedEntry {
    /// A key was issued (drops a negative-cache entry for its hash).
    Issue { sha256: String },
    /// A key was revoked (cached entries for its hash become revoked).
    Revoke { sha256: String },
    /// An account was created.
    Account { account: String },
}

pub(crate) fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Plain structs of strings and numbers: serialisation cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

pub(crate) fn from_json<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt { source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_feed_entries_round_trip_and_stay_small() {
        let entry = KeyEntry {
            format: RECORD_FORMAT,
            key_id: "key_0123456789abcdef".into(),
            account: "acme".into(),
            created_unix: 1_767_225_600,
            revoked_unix: None,
        };
        let bytes = to_json(&entry);
        assert!(bytes.len() < 128, "{} bytes", bytes.len());
        assert_eq!(from_json::<KeyEntry>(&bytes).expect("parse"), entry);
        let line = to_json(&FeedEntry::Revoke {
            sha256: "ab".repeat(32),
        });
        assert!(line.starts_with(br#"{"op":"revoke""#));
        assert!(!line.contains(&b'\n'));
        assert!(from_json::<FeedEntry>(b"{\"op\":\"future\"}").is_err());
    }
}
