//! `FileStore`: the key document in a local JSON file, replaced atomically (temp + rename).

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use super::file_records::{self, FEED_SEGMENT_BYTES};
use super::{Condition, FeedBatch, FeedCursor, KeyStore, Layout, Loaded, Record, Version};
use crate::document::KeyDocument;
use crate::error::StoreError;

/// The key document in one local JSON file (for single-host deployments and tests).
///
/// - **Version**: the SHA-256 of the file's bytes (first 16 bytes, hex). A load whose
///   `if_none_match` equals it answers [`Loaded::NotModified`] without parsing.
/// - **Writes** are a compare-and-swap: under an exclusive OS file lock on `<file>.lock`
///   (`File::lock`; released when the handle closes, also if the process dies) the current
///   version is checked against `if_match`, the new document is written to a temporary sibling
///   in the *same directory*, flushed to disk, and renamed over the file. Readers see the old
///   or the new file, never a torn one; concurrent writers (threads, processes, or several
///   `FileStore`s on one path) are serialised and the loser gets [`StoreError::Conflict`].
/// - File I/O runs on tokio's blocking pool.
///
/// [`FileStore::keyed`] makes one in the keyed layout (A10/A11) under a directory: a file per
/// record (`keys/<2 hex>/<sha256>.json`, `ids/<key id>.json`, `accounts/<id>.json`), written
/// under an exclusive lock on `<dir>/.lock` (create-only or compare-the-content-hash, then
/// temp + rename), and the change feed as append-only files `feed/<segment>.log`, rotated at
/// 4 MiB (the current and the previous segment are kept).
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
    layout: Layout,
    segment_bytes: u64,
    durable: bool,
}

impl FileStore {
    /// A store at `path`. The file need not exist yet (it then reads as an empty document);
    /// its directory must.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            layout: Layout::Document,
            segment_bytes: FEED_SEGMENT_BYTES,
            durable: true,
        }
    }

    /// A keyed store (A10) in directory `dir` (created on the first write).
    pub fn keyed(dir: impl Into<PathBuf>) -> Self {
        Self {
            path: dir.into(),
            layout: Layout::Keyed,
            segment_bytes: FEED_SEGMENT_BYTES,
            durable: true,
        }
    }

    /// Keyed layout: rotate the feed after a segment reaches `bytes` (default 4 MiB; at least
    /// 1 byte).
    pub fn feed_segment_bytes(mut self, bytes: u64) -> Self {
        self.segment_bytes = bytes.max(1);
        self
    }

    /// Keyed layout: `false` skips the `fsync`s of record writes (for a tmpfs, tests, or bulk
    /// loading; an OS crash may then lose the latest writes). Default `true`. Feed appends are
    /// never `fsync`ed: only instances on this host read the feed, and an OS crash restarts
    /// them all at its end.
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    async fn blocking<T: Send + 'static>(
        &self,
        what: &'static str,
        work: impl FnOnce(&Path) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        if self.layout != Layout::Keyed {
            return Err(StoreError::Unsupported { operation: what });
        }
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || work(&path))
            .await
            .map_err(|e| StoreError::unavailable(format!("file {what} task failed: {e}")))?
    }

    /// The document's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Wrap an I/O error with the path it happened on (both file layouts).
pub(super) fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A content version: the first 16 bytes of the SHA-256, hex (both file layouts).
pub(super) fn version_of(bytes: &[u8]) -> Version {
    let digest = Sha256::digest(bytes);
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    Version::new(hex)
}

/// The file's bytes, or `None` if it does not exist.
fn read(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(path)(e)),
    }
}

fn load_blocking(path: &Path, if_none_match: Option<&Version>) -> Result<Loaded, StoreError> {
    let Some(bytes) = read(path)? else {
        return Ok(Loaded::Document {
            document: KeyDocument::empty(),
            version: None,
        });
    };
    let version = version_of(&bytes);
    if if_none_match == Some(&version) {
        return Ok(Loaded::NotModified);
    }
    Ok(Loaded::Document {
        document: KeyDocument::from_json(&bytes)?,
        version: Some(version),
    })
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "keys".to_string());
    path.with_file_name(format!(".{name}.{suffix}"))
}

/// Replace `path` with `bytes` atomically: a uniquely named temp file beside it, written (and
/// synced when `durable`), renamed over `path`, then the directory synced, best effort (not
/// every platform can open a directory). The temp file is removed if anything fails. Both file
/// layouts write through this.
pub(super) fn replace_atomically(
    path: &Path,
    bytes: &[u8],
    durable: bool,
) -> Result<(), StoreError> {
    static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);
    let temp = sibling(
        path,
        &format!(
            "{}.{}.tmp",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ),
    );
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        file.write_all(bytes)?;
        if durable {
            file.sync_all()?;
        }
        fs::rename(&temp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(io_error(path)(e));
    }
    if durable
        && let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(dir) = File::open(dir)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}

fn store_blocking(
    path: &Path,
    bytes: &[u8],
    if_match: Option<&Version>,
) -> Result<Version, StoreError> {
    let lock_path = sibling(path, "lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&lock_path)
        .map_err(io_error(&lock_path))?;
    lock.lock().map_err(io_error(&lock_path))?;

    let current = read(path)?.map(|b| version_of(&b));
    if current.as_ref() != if_match {
        return Err(StoreError::Conflict);
    }
    replace_atomically(path, bytes, true)?;
    drop(lock);
    Ok(version_of(bytes))
}

impl KeyStore for FileStore {
    async fn load(&self, if_none_match: Option<&Version>) -> Result<Loaded, StoreError> {
        if self.layout == Layout::Keyed {
            return Err(StoreError::Unsupported { operation: "load" });
        }
        let path = self.path.clone();
        let if_none_match = if_none_match.cloned();
        tokio::task::spawn_blocking(move || load_blocking(&path, if_none_match.as_ref()))
            .await
            .map_err(|e| StoreError::unavailable(format!("file load task failed: {e}")))?
    }

    async fn store(
        &self,
        document: &KeyDocument,
        if_match: Option<&Version>,
    ) -> Result<Version, StoreError> {
        if self.layout == Layout::Keyed {
            return Err(StoreError::Unsupported { operation: "store" });
        }
        let path = self.path.clone();
        let bytes = document.to_json();
        let if_match = if_match.cloned();
        tokio::task::spawn_blocking(move || store_blocking(&path, &bytes, if_match.as_ref()))
            .await
            .map_err(|e| StoreError::unavailable(format!("file store task failed: {e}")))?
    }

    fn describe(&self) -> String {
        match self.layout {
            Layout::Keyed => format!("file-keyed:{}", self.path.display()),
            _ => format!("file:{}", self.path.display()),
        }
    }

    fn layout(&self) -> Layout {
        self.layout
    }

    async fn get_record(&self, name: &str) -> Result<Option<Record>, StoreError> {
        let name = name.to_string();
        self.blocking("get_record", move |dir| {
            file_records::get_blocking(dir, &name)
        })
        .await
    }

    async fn put_record(
        &self,
        name: &str,
        bytes: &[u8],
        condition: Condition<'_>,
    ) -> Result<Version, StoreError> {
        let (name, bytes) = (name.to_string(), bytes.to_vec());
        let expected = match condition {
            Condition::IfMatch(version) => Some(version.clone()),
            _ => None,
        };
        let durable = self.durable;
        self.blocking("put_record", move |dir| {
            let condition = match &expected {
                Some(version) => Condition::IfMatch(version),
                None => Condition::IfNoneMatch,
            };
            file_records::put_blocking(dir, &name, &bytes, condition, durable)
        })
        .await
    }

    async fn append_feed(&self, entry: &[u8]) -> Result<(), StoreError> {
        let (entry, segment_bytes) = (entry.to_vec(), self.segment_bytes);
        self.blocking("append_feed", move |dir| {
            file_records::append_blocking(dir, &entry, segment_bytes)
        })
        .await
    }

    async fn read_feed(&self, from: Option<&FeedCursor>) -> Result<FeedBatch, StoreError> {
        let from = from.copied();
        self.blocking("read_feed", move |dir| {
            file_records::read_feed_blocking(dir, from.as_ref())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::AccountRecord;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "apikey-cache-{}-{name}-{}",
            std::process::id(),
            TEST_DIRS.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }
    static TEST_DIRS: AtomicU64 = AtomicU64::new(0);

    // covers A7: file store — the KeyStore contract (absent file, conditional load,
    // compare-and-swap), and an atomic replace that leaves no temporary file behind.
    #[tokio::test]
    async fn file_store_is_conditional_and_compare_and_swap() {
        let dir = scratch("cas");
        let store = FileStore::new(dir.join("keys.json"));
        crate::testing::check_store_contract(&store).await;
        // Only the document and its lock file remain: no temporary files left behind.
        let mut names: Vec<_> = fs::read_dir(&dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [".keys.json.lock", "keys.json"]);
        let _ = fs::remove_dir_all(&dir);
    }

    // covers A7: many concurrent writers on one file through separate stores: each
    // compare-and-swap either wins or gets Conflict, and every winner's change survives.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_file_writers_are_serialised() {
        let dir = scratch("writers");
        let path = dir.join("keys.json");
        let mut tasks = Vec::new();
        for i in 0..8 {
            let store = FileStore::new(&path);
            tasks.push(tokio::spawn(async move {
                loop {
                    let (mut doc, version) = match store.load(None).await.expect("load") {
                        Loaded::Document { document, version } => (document, version),
                        Loaded::NotModified => unreachable!("unconditional load"),
                    };
                    doc.accounts.insert(
                        format!("acct-{i}"),
                        AccountRecord {
                            name: String::new(),
                            created_unix: 0,
                        },
                    );
                    match store.store(&doc, version.as_ref()).await {
                        Ok(_) => return,
                        Err(StoreError::Conflict) => continue,
                        Err(e) => panic!("unexpected {e}"),
                    }
                }
            }));
        }
        for task in tasks {
            task.await.expect("writer");
        }
        let Loaded::Document { document, .. } =
            FileStore::new(&path).load(None).await.expect("load")
        else {
            unreachable!("unconditional load")
        };
        assert_eq!(document.accounts.len(), 8, "no lost update");
        let _ = fs::remove_dir_all(&dir);
    }

    // covers A10 + A11: the keyed file store meets the keyed contract; records are sharded
    // files, no temporary file is left behind.
    #[tokio::test]
    async fn keyed_file_store_meets_the_keyed_contract() {
        let dir = scratch("keyed");
        let store = FileStore::keyed(dir.join("keys"));
        crate::testing::check_keyed_store_contract(&store).await;
        assert!(
            dir.join(
                "keys/keys/00/00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff.json"
            )
            .is_file()
        );
        assert!(dir.join("keys/accounts/acme.json").is_file());
        let shard: Vec<_> = fs::read_dir(dir.join("keys/keys/00"))
            .expect("shard")
            .collect();
        assert_eq!(shard.len(), 1, "no temporary file left");
        assert!(matches!(
            store.load(None).await,
            Err(StoreError::Unsupported { .. })
        ));
        assert!(matches!(
            store
                .put_record("../escape", b"x", Condition::IfNoneMatch)
                .await,
            Err(StoreError::Unavailable { .. })
        ));
        let _ = fs::remove_dir_all(&dir);
    }

    // covers A11: the file feed rotates by size (two segments kept); a reader behind them
    // sees a gap, a reader across one rotation loses nothing.
    #[tokio::test]
    async fn keyed_file_feed_rotates_and_reports_gaps() {
        let dir = scratch("feed");
        let store = FileStore::keyed(&dir).feed_segment_bytes(8);
        let start = store.read_feed(None).await.expect("end").next;
        store.append_feed(b"0123456789").await.expect("append");
        store.append_feed(b"abc").await.expect("append");
        let batch = store.read_feed(Some(&start)).await.expect("read");
        assert_eq!(batch.entries, vec![b"0123456789".to_vec(), b"abc".to_vec()]);
        assert!(!batch.gap);
        for n in 0..3 {
            store
                .append_feed(format!("0123456789-{n}").as_bytes())
                .await
                .expect("append");
        }
        let behind = store.read_feed(Some(&batch.next)).await.expect("read");
        assert!(behind.gap, "the segment under the cursor was rotated away");
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn corrupt_file_is_a_typed_error() {
        let dir = scratch("corrupt");
        let path = dir.join("keys.json");
        fs::write(&path, b"{ not json").expect("write");
        assert!(matches!(
            FileStore::new(&path).load(None).await,
            Err(StoreError::Corrupt { .. })
        ));
        let _ = fs::remove_dir_all(&dir);
    }
}
