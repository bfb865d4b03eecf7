//! The node-local model cache every replica on a host (or node) shares.
//!
//! An entry is `ROOT/<key>/` (the model's files, exactly as in the store) and `ROOT/<key>.json`
//! (its record). The key hashes the URI and every object's name, size and version, so a changed
//! object is a new entry and an unchanged one is found by listing alone. Replicas of one URI
//! download it once: the first takes `ROOT/.locks/<uri hash>` and the others wait on it, then find
//! the entry. Entries are renamed into place whole. Past `max_bytes`, the least recently used
//! entries that no replica is loading are removed.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::download::{RemoteObject, hex};
use crate::error::StorageError;

#[derive(Debug, Clone)]
pub struct ModelCache {
    root: PathBuf,
    max_bytes: Option<u64>,
}

/// What an entry holds, written beside it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntryRecord {
    pub uri: String,
    pub bytes: u64,
    pub objects: Vec<RemoteObject>,
}

/// Held while a model is downloaded or loaded from its entry; eviction skips entries with one.
#[derive(Debug)]
pub struct Lease {
    _file: File,
}

/// Held by the one process downloading a URI.
#[derive(Debug)]
pub struct DownloadLock {
    _file: File,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub fn entry_key(uri: &str, objects: &[RemoteObject]) -> String {
    let mut h = Sha256::new();
    h.update(uri.as_bytes());
    for o in objects {
        h.update(format!(
            "\n{}\t{}\t{}\t{}",
            o.relative,
            o.size,
            o.version.as_deref().unwrap_or(""),
            o.sha256.as_deref().unwrap_or("")
        ));
    }
    hex(&h.finalize()[..16])
}

fn uri_key(uri: &str) -> String {
    hex(&Sha256::digest(uri.as_bytes())[..16])
}

impl ModelCache {
    pub fn new(root: &Path, max_bytes: Option<u64>) -> Self {
        Self {
            root: root.to_path_buf(),
            max_bytes,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The size of the newest cached copy of `uri`, without touching it.
    pub fn recorded_bytes(&self, uri: &str) -> Option<u64> {
        let key = fs::read_to_string(self.index_path(uri)).ok()?;
        let record: EntryRecord =
            serde_json::from_slice(&fs::read(self.record_path(key.trim())).ok()?).ok()?;
        Some(record.bytes)
    }

    fn record_path(&self, key: &str) -> PathBuf {
        self.root.join(format!("{key}.json"))
    }

    fn index_path(&self, uri: &str) -> PathBuf {
        self.root.join(".index").join(uri_key(uri))
    }

    /// Waits for any other process downloading `uri`; says so in the log when it has to.
    pub fn lock_download(&self, uri: &str) -> Result<DownloadLock, StorageError> {
        let dir = self.root.join(".locks");
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = dir.join(uri_key(uri));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        if file.try_lock().is_err() {
            tracing::info!(
                uri,
                "another replica is downloading this model; waiting for it"
            );
            file.lock().map_err(io(&path))?;
        }
        Ok(DownloadLock { _file: file })
    }

    /// The entry's directory with a lease, when it is complete; marks it used now.
    pub fn lookup(&self, key: &str) -> Option<(PathBuf, Lease)> {
        let dir = self.root.join(key);
        let record = self.record_path(key);
        let file = File::options().write(true).open(&record).ok()?;
        file.lock_shared().ok()?;
        if !dir.is_dir() {
            return None;
        }
        let _ = file.set_modified(SystemTime::now());
        Some((dir, Lease { _file: file }))
    }

    /// The newest entry recorded for `uri` (for `Freshness::Trust`, and when the store is down).
    pub fn latest(&self, uri: &str) -> Option<(String, PathBuf, Lease)> {
        let key = fs::read_to_string(self.index_path(uri)).ok()?;
        let key = key.trim().to_string();
        let (dir, lease) = self.lookup(&key)?;
        Some((key, dir, lease))
    }

    /// A private directory on the cache's filesystem, so that committing it is a rename.
    pub fn staging(&self) -> Result<tempfile::TempDir, StorageError> {
        let dir = self.root.join(".staging");
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        tempfile::Builder::new()
            .prefix("download-")
            .tempdir_in(&dir)
            .map_err(io(&dir))
    }

    /// Moves a complete download into place, records it, and makes room past the size limit.
    pub fn commit(
        &self,
        staged: tempfile::TempDir,
        key: &str,
        record: &EntryRecord,
    ) -> Result<(PathBuf, Lease), StorageError> {
        let dir = self.root.join(key);
        let staged = staged.keep();
        if let Err(e) = fs::rename(&staged, &dir) {
            let _ = fs::remove_dir_all(&staged);
            // Another host process with its own lock directory (a second cache root on the same
            // disk is not shared) may have won; an entry that is there is whole.
            if !dir.is_dir() {
                return Err(StorageError::Io {
                    path: dir,
                    source: e,
                });
            }
        }
        let json = serde_json::to_vec_pretty(record).expect("a record serialises");
        write_atomic(&self.root, &self.record_path(key), &json)?;
        let index = self.index_path(&record.uri);
        fs::create_dir_all(index.parent().expect("index has a parent")).map_err(io(&self.root))?;
        write_atomic(&self.root, &index, key.as_bytes())?;
        let entry = self.lookup(key).ok_or_else(|| StorageError::Io {
            path: dir.clone(),
            source: std::io::Error::other("the entry vanished right after it was committed"),
        })?;
        self.evict(key);
        Ok(entry)
    }

    /// Records that `uri` now resolves to `key` (after a hit on an entry another URI version made).
    pub fn remember(&self, uri: &str, key: &str) {
        let index = self.index_path(uri);
        if let Some(parent) = index.parent() {
            let _ = fs::create_dir_all(parent);
        }
        let _ = write_atomic(&self.root, &index, key.as_bytes());
    }

    /// Removes least recently used entries, never `keep` and never one leased, until the cache
    /// fits its limit.
    pub fn evict(&self, keep: &str) {
        let Some(max) = self.max_bytes else {
            return;
        };
        let mut entries = self.entries();
        let mut total: u64 = entries.iter().map(|e| e.bytes).sum();
        entries.sort_by_key(|e| e.used);
        for e in entries {
            if total <= max {
                break;
            }
            if e.key == keep {
                continue;
            }
            let record = self.record_path(&e.key);
            let Ok(file) = File::options().write(true).open(&record) else {
                continue;
            };
            if file.try_lock().is_err() {
                continue;
            }
            // The record goes first: without it the entry is not found, so a directory being
            // removed is never served.
            if fs::remove_file(&record).is_ok() {
                let doomed = self
                    .root
                    .join(".staging")
                    .join(format!("evicted-{}", e.key));
                let _ = fs::rename(self.root.join(&e.key), &doomed);
                let _ = fs::remove_dir_all(&doomed);
                total = total.saturating_sub(e.bytes);
                tracing::info!(uri = %e.uri, bytes = e.bytes, "evicted from the model cache (least recently used)");
            }
        }
    }

    fn entries(&self) -> Vec<Entry> {
        let Ok(read) = fs::read_dir(&self.root) else {
            return Vec::new();
        };
        read.filter_map(Result::ok)
            .filter_map(|d| {
                let name = d.file_name().to_string_lossy().into_owned();
                let key = name.strip_suffix(".json")?.to_string();
                let meta = d.metadata().ok()?;
                let record: EntryRecord = serde_json::from_slice(&fs::read(d.path()).ok()?).ok()?;
                Some(Entry {
                    key,
                    uri: record.uri,
                    bytes: record.bytes,
                    used: meta.modified().ok()?,
                })
            })
            .collect()
    }

    #[cfg(test)]
    fn size(&self) -> u64 {
        self.entries().iter().map(|e| e.bytes).sum()
    }
}

struct Entry {
    key: String,
    uri: String,
    bytes: u64,
    used: SystemTime,
}

fn write_atomic(root: &Path, path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    let mut tmp = tempfile::NamedTempFile::new_in(root).map_err(io(root))?;
    std::io::Write::write_all(&mut tmp, bytes).map_err(io(path))?;
    tmp.persist(path).map_err(|e| StorageError::Io {
        path: path.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn object(name: &str, size: u64, version: &str) -> RemoteObject {
        RemoteObject {
            relative: name.into(),
            key: format!("p/{name}"),
            size,
            version: Some(version.into()),
            sha256: None,
        }
    }

    fn put(cache: &ModelCache, uri: &str, bytes: u64) -> (String, Lease) {
        let objects = vec![object("w.bin", bytes, uri)];
        let key = entry_key(uri, &objects);
        let staged = cache.staging().unwrap();
        fs::write(staged.path().join("w.bin"), vec![0u8; bytes as usize]).unwrap();
        let record = EntryRecord {
            uri: uri.into(),
            bytes,
            objects,
        };
        let (_, lease) = cache.commit(staged, &key, &record).unwrap();
        (key, lease)
    }

    fn age(cache: &ModelCache, key: &str, secs_ago: u64) {
        let f = File::options()
            .write(true)
            .open(cache.record_path(key))
            .unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(secs_ago))
            .unwrap();
    }

    #[test]
    fn a_changed_object_is_a_new_entry_and_the_same_listing_the_same_one() {
        let a = entry_key("s3://b/m", &[object("w", 1, "\"e1\"")]);
        assert_eq!(a, entry_key("s3://b/m", &[object("w", 1, "\"e1\"")]));
        assert_ne!(a, entry_key("s3://b/m", &[object("w", 1, "\"e2\"")]));
        assert_ne!(a, entry_key("s3://b/m", &[object("w", 2, "\"e1\"")]));
        assert_ne!(a, entry_key("s3://b/n", &[object("w", 1, "\"e1\"")]));
    }

    #[test]
    fn least_recently_used_unleased_entries_go_first_past_the_limit() {
        let root = tempfile::tempdir().unwrap();
        let cache = ModelCache::new(root.path(), Some(250));
        let (old, lease_old) = put(&cache, "s3://b/old", 100);
        drop(lease_old);
        let (busy, lease_busy) = put(&cache, "s3://b/busy", 100);
        age(&cache, &old, 300);
        age(&cache, &busy, 600);
        // 300 bytes > 250: the oldest (busy) is leased, so the next oldest goes.
        let (new, _lease_new) = put(&cache, "s3://b/new", 100);
        assert!(cache.lookup(&old).is_none(), "old was evicted");
        assert!(!root.path().join(&old).exists());
        assert!(cache.lookup(&busy).is_some(), "a leased entry stays");
        assert!(cache.lookup(&new).is_some());
        assert_eq!(cache.size(), 200);
        drop(lease_busy);
        assert_eq!(
            cache.latest("s3://b/new").map(|(k, _, _)| k),
            Some(new.clone())
        );
        assert!(cache.latest("s3://b/old").is_none());
        assert_eq!(cache.recorded_bytes("s3://b/new"), Some(100));
        assert_eq!(cache.recorded_bytes("s3://b/old"), None);
    }

    #[test]
    fn a_second_downloader_waits_for_the_first() {
        let root = tempfile::tempdir().unwrap();
        let cache = ModelCache::new(root.path(), None);
        let first = cache.lock_download("gs://b/m").unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let c2 = cache.clone();
        let waiter = std::thread::spawn(move || {
            let _second = c2.lock_download("gs://b/m").unwrap();
            tx.send(()).unwrap();
        });
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        let _other_uri = cache.lock_download("gs://b/other").unwrap();
        drop(first);
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        waiter.join().unwrap();
    }
}
