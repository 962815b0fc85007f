//! The persistent cache: byte ranges of images (compressed blocks, header, index) in files
//! under one directory, bounded in bytes, least recently used evicted first.
//!
//! Layout: `DIR/<identity>/<offset>-<len>` holds one range as `MAGIC`, the SHA-256 of the
//! bytes, then the bytes; `DIR/origins/<sha256 of the URL>` records which identity a URL had
//! (with its length and ETag), so a restart finds the image's entries before reading a byte.
//! An entry whose digest or length does not match is deleted and reported as a miss. Entries
//! are written to a temporary name and renamed, so a crash leaves no half entry.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

/// First bytes of every entry file.
const MAGIC: &[u8; 8] = b"MKMRC\x001\n";
/// Bytes before an entry's data: magic and digest.
const HEAD: usize = MAGIC.len() + 32;
/// Directory of the URL records.
const ORIGINS: &str = "origins";

/// What the cache did, for reports and tests.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Reads served from an entry.
    pub hits: AtomicU64,
    /// Reads that found no entry.
    pub misses: AtomicU64,
    /// Entries found damaged and deleted.
    pub damaged: AtomicU64,
    /// Entries deleted to stay under the size limit.
    pub evicted: AtomicU64,
}

/// One entry's bookkeeping.
#[derive(Debug, Clone, Copy)]
struct Meta {
    bytes: u64,
    used: u64,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<PathBuf, Meta>,
    total: u64,
    clock: u64,
}

/// A cache directory bounded to `limit` bytes.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    limit: u64,
    state: Mutex<State>,
    temp: AtomicU64,
    /// What it did.
    pub stats: StoreStats,
}

/// A URL's record: the image it held last time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginRecord {
    /// The image length.
    pub len: u64,
    /// Its ETag or date ([`crate::Pin::validator`]).
    pub validator: String,
    /// The cache identity of its entries.
    pub identity: String,
}

impl Store {
    /// Opens (creating it when missing) the cache in `root`, bounded to `limit` bytes; the
    /// entries already there are counted, oldest first in line for eviction.
    pub fn open(root: &Path, limit: u64) -> io::Result<Store> {
        fs::create_dir_all(root.join(ORIGINS))?;
        let mut found: Vec<(SystemTime, PathBuf, u64)> = Vec::new();
        for dir in fs::read_dir(root)? {
            let dir = dir?;
            if dir.file_name() == ORIGINS || !dir.file_type()?.is_dir() {
                continue;
            }
            for file in fs::read_dir(dir.path())? {
                let file = file?;
                let meta = file.metadata()?;
                let name = file.file_name();
                if name.to_string_lossy().starts_with(".tmp") {
                    // Left by a process that died while writing.
                    let _ = fs::remove_file(file.path());
                    continue;
                }
                let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                found.push((modified, file.path(), meta.len()));
            }
        }
        found.sort();
        let mut state = State::default();
        for (_, path, bytes) in found {
            state.clock += 1;
            state.total += bytes;
            state.entries.insert(
                path,
                Meta {
                    bytes,
                    used: state.clock,
                },
            );
        }
        let store = Store {
            root: root.to_path_buf(),
            limit,
            state: Mutex::new(state),
            temp: AtomicU64::new(0),
            stats: StoreStats::default(),
        };
        store.evict();
        Ok(store)
    }

    /// Bytes the entries take now.
    pub fn total(&self) -> u64 {
        self.lock().total
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn entry_path(&self, identity: &str, offset: u64, len: usize) -> PathBuf {
        self.root.join(identity).join(format!("{offset}-{len}"))
    }

    /// The `buf.len()` bytes at `offset` of image `identity` into `buf`, when an intact entry
    /// holds them. A damaged entry is deleted.
    pub fn get(&self, identity: &str, offset: u64, buf: &mut [u8]) -> bool {
        let path = self.entry_path(identity, offset, buf.len());
        let Ok(bytes) = fs::read(&path) else {
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        let Some(data) = entry_data(&bytes, buf.len()) else {
            self.stats.damaged.fetch_add(1, Ordering::Relaxed);
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
            let _ = fs::remove_file(&path);
            let mut state = self.lock();
            if let Some(meta) = state.entries.remove(&path) {
                state.total -= meta.bytes;
            }
            return false;
        };
        buf.copy_from_slice(data);
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
        let mut state = self.lock();
        state.clock += 1;
        let clock = state.clock;
        let bytes = bytes.len() as u64;
        match state.entries.get_mut(&path) {
            Some(meta) => meta.used = clock,
            None => {
                // Written by another process sharing the directory.
                state.total += bytes;
                state.entries.insert(path, Meta { bytes, used: clock });
            }
        }
        true
    }

    /// Stores `data`, the bytes at `offset` of image `identity`, then evicts down to the limit.
    /// Failing to write is not an error for the reader: the entry is simply not kept.
    pub fn put(&self, identity: &str, offset: u64, data: &[u8]) {
        let bytes = (HEAD + data.len()) as u64;
        if bytes > self.limit {
            return;
        }
        let path = self.entry_path(identity, offset, data.len());
        if self.write(&path, data).is_err() {
            return;
        }
        {
            let mut state = self.lock();
            state.clock += 1;
            let used = state.clock;
            if let Some(old) = state.entries.insert(path, Meta { bytes, used }) {
                state.total -= old.bytes;
            }
            state.total += bytes;
        }
        self.evict();
    }

    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let dir = path.parent().unwrap_or(&self.root);
        fs::create_dir_all(dir)?;
        let temp = dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            self.temp.fetch_add(1, Ordering::Relaxed)
        ));
        fs::write(&temp, entry_file(data))?;
        fs::rename(&temp, path).inspect_err(|_| {
            let _ = fs::remove_file(&temp);
        })
    }

    /// Deletes least recently used entries until the total is within the limit.
    fn evict(&self) {
        let mut state = self.lock();
        if state.total <= self.limit {
            return;
        }
        let mut order: Vec<(u64, PathBuf)> = state
            .entries
            .iter()
            .map(|(path, meta)| (meta.used, path.clone()))
            .collect();
        order.sort();
        for (_, path) in order {
            if state.total <= self.limit {
                break;
            }
            if let Some(meta) = state.entries.remove(&path) {
                state.total -= meta.bytes;
                let _ = fs::remove_file(&path);
                self.stats.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn origin_path(&self, url: &str) -> PathBuf {
        self.root
            .join(ORIGINS)
            .join(hex::encode(Sha256::digest(url.as_bytes())))
    }

    /// What `url` held last time, if recorded.
    pub fn origin(&self, url: &str) -> Option<OriginRecord> {
        let text = fs::read_to_string(self.origin_path(url)).ok()?;
        parse_origin(&text)
    }

    /// Records that `url` holds `record` now.
    pub fn set_origin(&self, url: &str, record: &OriginRecord) {
        let path = self.origin_path(url);
        let text = format_origin(record);
        let temp = path.with_extension(format!("tmp-{}", std::process::id()));
        if fs::write(&temp, text).is_ok() && fs::rename(&temp, &path).is_err() {
            let _ = fs::remove_file(&temp);
        }
    }
}

/// The data of an entry file holding `len` bytes: `None` unless it has the magic, exactly
/// `len` bytes after the digest, and their digest matches.
pub fn entry_data(bytes: &[u8], len: usize) -> Option<&[u8]> {
    let data = bytes.strip_prefix(MAGIC.as_slice())?.get(32..)?;
    (data.len() == len && Sha256::digest(data).as_slice() == &bytes[MAGIC.len()..HEAD])
        .then_some(data)
}

/// An entry file holding `data`, as [`Store::put`] writes it.
pub fn entry_file(data: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(HEAD + data.len());
    content.extend_from_slice(MAGIC);
    content.extend_from_slice(&Sha256::digest(data));
    content.extend_from_slice(data);
    content
}

/// A URL record as [`Store::set_origin`] writes it: `v1`, length, validator (line breaks made
/// spaces) and identity, one a line.
pub fn format_origin(record: &OriginRecord) -> String {
    format!(
        "v1\n{}\n{}\n{}\n",
        record.len,
        record.validator.replace(['\n', '\r'], " "),
        record.identity
    )
}

/// Reads a URL record; `None` unless it is exactly the text [`format_origin`] writes (a
/// length in plain decimal, no carriage return, every line ended).
pub fn parse_origin(text: &str) -> Option<OriginRecord> {
    let body = text.strip_suffix('\n')?;
    if body.contains('\r') {
        return None;
    }
    let lines: Vec<&str> = body.split('\n').collect();
    let [version, len_text, validator, identity] = lines.as_slice() else {
        return None;
    };
    let len: u64 = len_text.parse().ok()?;
    let hex_name = identity.len() == 64 && identity.bytes().all(|b| b.is_ascii_hexdigit());
    (*version == "v1" && len.to_string() == *len_text && hex_name).then(|| OriginRecord {
        len,
        validator: validator.to_string(),
        identity: identity.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn entries_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        store.put(ID, 4096, b"compressed");
        drop(store);
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let mut buf = [0u8; 10];
        assert!(store.get(ID, 4096, &mut buf));
        assert_eq!(&buf, b"compressed");
        // Another length or offset is another entry.
        assert!(!store.get(ID, 4096, &mut [0u8; 9]));
        assert!(!store.get(ID, 4097, &mut buf));
        assert_eq!(store.stats.hits.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_damaged_entry_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        store.put(ID, 0, b"0123456789");
        let path = dir.path().join(ID).join("0-10");
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let mut buf = [0u8; 10];
        assert!(!store.get(ID, 0, &mut buf));
        assert!(!path.exists());
        assert_eq!(store.stats.damaged.load(Ordering::Relaxed), 1);
        assert_eq!(store.total(), 0);
        // A truncated entry is damaged too.
        store.put(ID, 0, b"0123456789");
        fs::write(&path, &fs::read(&path).unwrap()[..HEAD + 3]).unwrap();
        assert!(!store.get(ID, 0, &mut buf));
        assert_eq!(store.stats.damaged.load(Ordering::Relaxed), 2);
        store.put(ID, 0, b"0123456789");
        assert!(store.get(ID, 0, &mut buf));
    }

    #[test]
    fn least_recently_used_entries_are_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let entry = (HEAD + 100) as u64;
        let store = Store::open(dir.path(), 3 * entry).unwrap();
        let data = [7u8; 100];
        let mut buf = [0u8; 100];
        for offset in 0..3 {
            store.put(ID, offset, &data);
        }
        assert!(store.get(ID, 0, &mut buf)); // 0 is now the most recent
        store.put(ID, 3, &data); // evicts 1, the least recently used
        assert_eq!(store.total(), 3 * entry);
        assert!(!store.get(ID, 1, &mut buf));
        for offset in [0, 2, 3] {
            assert!(store.get(ID, offset, &mut buf), "{offset}");
        }
        assert_eq!(store.stats.evicted.load(Ordering::Relaxed), 1);
        // A smaller limit at reopen evicts at once, oldest first.
        drop(store);
        let store = Store::open(dir.path(), entry).unwrap();
        assert_eq!(store.total(), entry);
        // Larger than the whole cache: not kept.
        store.put(ID, 9, &[1u8; 200]);
        assert!(!store.get(ID, 9, &mut [0u8; 200]));
    }

    #[test]
    fn origin_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(store.origin("http://x/a.img"), None);
        let record = OriginRecord {
            len: 42,
            validator: "etag:\"abc\"".into(),
            identity: ID.into(),
        };
        store.set_origin("http://x/a.img", &record);
        assert_eq!(store.origin("http://x/a.img"), Some(record));
        assert_eq!(store.origin("http://x/b.img"), None);
        assert_eq!(parse_origin("v1\n42\nx\n../escape\n"), None);
        assert_eq!(parse_origin("v2\n42\nx\nab\n"), None);
        // Only the exact form written: no leading sign or zero, no CR, a final line break.
        let good = format_origin(&OriginRecord {
            len: 42,
            validator: "date:x".into(),
            identity: ID.into(),
        });
        assert!(parse_origin(&good).is_some());
        for bad in [
            good.replace("\n42\n", "\n+42\n"),
            good.replace("\n42\n", "\n042\n"),
            good.replace('\n', "\r\n"),
            good.trim_end().to_string(),
            format!("{good}\n"),
        ] {
            assert_eq!(parse_origin(&bad), None, "{bad:?}");
        }
    }
}
