//! `FileStore`'s keyed layout (A10/A11): a file per record in sharded directories, writes under
//! one lock file, and the change feed as append-only segment files.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use super::file::{io_error, replace_atomically, version_of};
use super::{Condition, FeedBatch, FeedCursor, Record, Version};
use crate::error::StoreError;

/// Feed segments are rotated once they reach this size; the current and the previous are kept.
pub(crate) const FEED_SEGMENT_BYTES: u64 = 4 * 1024 * 1024;

/// `keys/<hex>` → `<dir>/keys/<hex[..2]>/<hex>.json` (256 shards); `<kind>/<id>` →
/// `<dir>/<kind>/<id>.json`. Names are `<kind>/<id>` with `[A-Za-z0-9._-]` ids only.
pub(crate) fn record_path(dir: &Path, name: &str) -> Result<PathBuf, StoreError> {
    let invalid = || StoreError::unavailable(format!("invalid record name {name:?}"));
    let (kind, id) = name.split_once('/').ok_or_else(invalid)?;
    let ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    };
    if !ok(kind) || !ok(id) || kind.starts_with('.') {
        return Err(invalid());
    }
    let file = format!("{id}.json");
    Ok(match kind {
        "keys" if id.len() > 2 => dir.join(kind).join(&id[..2]).join(file),
        _ => dir.join(kind).join(file),
    })
}

pub(crate) fn get_blocking(dir: &Path, name: &str) -> Result<Option<Record>, StoreError> {
    let path = record_path(dir, name)?;
    match fs::read(&path) {
        Ok(bytes) => {
            let version = version_of(&bytes);
            Ok(Some(Record { bytes, version }))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(&path)(e)),
    }
}

/// The exclusive lock every keyed write takes (`<dir>/.lock`; released on drop or death).
fn lock(dir: &Path) -> Result<File, StoreError> {
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    let path = dir.join(".lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_error(&path))?;
    file.lock().map_err(io_error(&path))?;
    Ok(file)
}

pub(crate) fn put_blocking(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    condition: Condition<'_>,
    durable: bool,
) -> Result<Version, StoreError> {
    let path = record_path(dir, name)?;
    let parent = path.parent().unwrap_or(dir).to_path_buf();
    let _lock = lock(dir)?;
    let current = match fs::read(&path) {
        Ok(bytes) => Some(version_of(&bytes)),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(io_error(&path)(e)),
    };
    let allowed = match condition {
        Condition::IfNoneMatch => current.is_none(),
        Condition::IfMatch(expected) => current.as_ref() == Some(expected),
    };
    if !allowed {
        return Err(StoreError::Conflict);
    }
    fs::create_dir_all(&parent).map_err(io_error(&parent))?;
    replace_atomically(&path, bytes, durable)?;
    Ok(version_of(bytes))
}

fn feed_dir(dir: &Path) -> PathBuf {
    dir.join("feed")
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    feed_dir(dir).join(format!("{segment:020}.log"))
}

/// The feed's segment numbers, ascending.
fn segments(dir: &Path) -> Result<Vec<u64>, StoreError> {
    let feed = feed_dir(dir);
    let entries = match fs::read_dir(&feed) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(&feed)(e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error(&feed))?;
        let name = entry.file_name();
        if let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse().ok())
        {
            found.push(n);
        }
    }
    found.sort_unstable();
    Ok(found)
}

fn len_of(path: &Path) -> Result<u64, StoreError> {
    match fs::metadata(path) {
        Ok(meta) => Ok(meta.len()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io_error(path)(e)),
    }
}

/// Append one feed line. Not `fsync`ed, even on a durable store: the feed only tells running
/// instances what changed, and every instance of a file store runs on this host — an OS crash
/// that could lose an unsynced line ends them all, and each restarts at the feed's end with
/// nothing cached. A process crash loses nothing (the line is in the page cache). The records
/// are the truth and stay durable before a write returns.
pub(crate) fn append_blocking(
    dir: &Path,
    entry: &[u8],
    segment_bytes: u64,
) -> Result<(), StoreError> {
    let _lock = lock(dir)?;
    let feed = feed_dir(dir);
    fs::create_dir_all(&feed).map_err(io_error(&feed))?;
    let existing = segments(dir)?;
    let mut current = existing.last().copied().unwrap_or(0);
    if len_of(&segment_path(dir, current))? >= segment_bytes {
        current += 1;
        // Keep the current and the previous segment; a reader further behind sees a gap.
        for old in existing.iter().filter(|n| **n + 1 < current) {
            let _ = fs::remove_file(segment_path(dir, *old));
        }
    }
    let path = segment_path(dir, current);
    let mut line = Vec::with_capacity(entry.len() + 1);
    line.extend_from_slice(entry);
    line.push(b'\n');
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io_error(&path))?;
    file.write_all(&line).map_err(io_error(&path))?;
    Ok(())
}

pub(crate) fn read_feed_blocking(
    dir: &Path,
    from: Option<&FeedCursor>,
) -> Result<FeedBatch, StoreError> {
    let all = segments(dir)?;
    let last = all.last().copied().unwrap_or(0);
    let end = FeedCursor {
        segment: last,
        offset: len_of(&segment_path(dir, last))?,
    };
    let Some(from) = from else {
        return Ok(FeedBatch::new(Vec::new(), end, false));
    };
    let oldest = all.first().copied().unwrap_or(0);
    let gap = FeedBatch::new(Vec::new(), end, true);
    if from.segment > last
        || (from.segment < oldest)
        || (!all.is_empty() && !all.contains(&from.segment))
    {
        return Ok(gap);
    }
    let mut entries = Vec::new();
    let mut next = *from;
    for &segment in all.iter().filter(|n| **n >= from.segment) {
        let path = segment_path(dir, segment);
        let start = if segment == from.segment {
            from.offset
        } else {
            0
        };
        let len = len_of(&path)?;
        if len < start {
            return Ok(gap); // truncated under the cursor
        }
        next = FeedCursor {
            segment,
            offset: start,
        };
        if len == start {
            continue; // nothing new: no read beyond the metadata
        }
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(gap), // rotated meanwhile
            Err(e) => return Err(io_error(&path)(e)),
        };
        file.seek(SeekFrom::Start(start)).map_err(io_error(&path))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io_error(&path))?;
        // Only whole lines: an append in progress is read by the next poll.
        let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        for line in bytes[..complete].split(|b| *b == b'\n') {
            if !line.is_empty() {
                entries.push(line.to_vec());
            }
        }
        next.offset = start + complete as u64;
        if complete < bytes.len() {
            break;
        }
    }
    Ok(FeedBatch::new(entries, next, false))
}
