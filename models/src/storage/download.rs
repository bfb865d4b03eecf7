//! Downloads a model's objects into a staging directory: bounded concurrency, resumed from the byte
//! reached when a connection drops (ranged GET pinned to the object's ETag), size and MD5/SHA-256
//! checked, every file written as `NAME.part` and renamed only when complete.

use std::fs;
use std::io::{IsTerminal, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use md5::Md5;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{RemoteCause, StorageError};

/// One file of a model, as listed by its store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteObject {
    /// The file's path inside the model directory.
    pub relative: String,
    /// The object's key in its store (not kept in the cache's record).
    #[serde(skip)]
    pub key: String,
    pub size: u64,
    /// ETag, generation or commit: what changes when the object does.
    pub version: Option<String>,
    /// Known SHA-256 of the content (the Hub's LFS oid).
    pub sha256: Option<String>,
}

/// A store holding a model may list at most this many objects; a prefix that holds more is not a
/// model directory (and would fill the disk).
pub const MAX_OBJECTS: usize = 100_000;

/// A request or body that sends nothing for this long is cut (and resumed, or the listing
/// reported).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts per object, each resuming where the last one stopped.
const ATTEMPTS: u32 = 4;

pub struct Fetch<'a> {
    pub uri: &'a str,
    pub store: Arc<dyn ObjectStore>,
    pub concurrency: usize,
    /// Whether `version` is an ETag the store honours in `If-Match` (not the Hub's commit).
    pub pin_etag: bool,
}

/// Lists every object under `prefix` (or the single object named by it). Directory markers (empty
/// objects whose name is another object's directory) are skipped.
pub async fn list(
    uri: &str,
    store: &dyn ObjectStore,
    prefix: &str,
) -> Result<Vec<RemoteObject>, StorageError> {
    let fail = |object: &str, e: object_store::Error| remote_error(uri, object, e);
    let prefix_path = ObjectPath::from(prefix);
    let mut metas: Vec<object_store::ObjectMeta> = Vec::new();
    let mut listing = store.list((!prefix.is_empty()).then_some(&prefix_path));
    while let Some(meta) = listing.next().await {
        metas.push(meta.map_err(|e| fail("(listing)", e))?);
        if metas.len() > MAX_OBJECTS {
            return Err(StorageError::Invalid {
                uri: uri.to_string(),
                reason: format!("more than {MAX_OBJECTS} objects under the prefix"),
            });
        }
    }
    if metas.is_empty() && !prefix.is_empty() {
        match store.head(&prefix_path).await {
            Ok(meta) => metas.push(meta),
            Err(object_store::Error::NotFound { .. }) => {
                return Err(StorageError::Remote {
                    uri: uri.to_string(),
                    object: prefix.to_string(),
                    cause: RemoteCause::NotFound,
                    detail: "no object is named by the URI or under it".into(),
                });
            }
            Err(e) => return Err(fail(prefix, e)),
        }
    }
    let single = metas.len() == 1 && metas[0].location.as_ref() == prefix;
    let mut objects = Vec::with_capacity(metas.len());
    for meta in &metas {
        let key = meta.location.as_ref();
        let relative = if single {
            key.rsplit('/').next().unwrap_or(key)
        } else {
            key.strip_prefix(prefix)
                .unwrap_or(key)
                .trim_start_matches('/')
        };
        let is_marker = meta.size == 0
            && metas.iter().any(|m| {
                m.location
                    .as_ref()
                    .strip_prefix(key)
                    .is_some_and(|r| r.starts_with('/'))
            });
        if is_marker {
            continue;
        }
        objects.push(RemoteObject {
            relative: safe_relative(uri, relative)?,
            key: key.to_string(),
            size: meta.size,
            version: meta.e_tag.clone().or_else(|| meta.version.clone()),
            sha256: None,
        });
    }
    objects.sort_by(|a, b| a.relative.cmp(&b.relative));
    Ok(objects)
}

/// A file name from a store becomes a path on this disk only if it stays inside the model directory.
pub fn safe_relative(uri: &str, relative: &str) -> Result<String, StorageError> {
    let path = Path::new(relative);
    let normal = !relative.is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(s) if !s.to_string_lossy().ends_with(".part")));
    if !normal {
        return Err(StorageError::Invalid {
            uri: uri.to_string(),
            reason: format!(
                "the store lists an object named '{relative}', which is not a relative file path"
            ),
        });
    }
    Ok(relative.to_string())
}

/// Downloads every object into `dest`; returns the bytes written.
pub async fn fetch_all(
    fetch: &Fetch<'_>,
    objects: &[RemoteObject],
    dest: &Path,
) -> Result<u64, StorageError> {
    let total: u64 = objects.iter().map(|o| o.size).sum();
    let progress = Progress::new(fetch.uri, total, objects.len());
    futures::stream::iter(objects.iter().map(Ok))
        .try_for_each_concurrent(fetch.concurrency.max(1), |object| {
            fetch_one(fetch, object, dest, &progress)
        })
        .await?;
    progress.finish();
    Ok(total)
}

struct Checksums {
    md5: Md5,
    sha256: Option<Sha256>,
}

async fn fetch_one(
    fetch: &Fetch<'_>,
    object: &RemoteObject,
    dest: &Path,
    progress: &Progress,
) -> Result<(), StorageError> {
    let target = dest.join(&object.relative);
    let part = PathBuf::from(format!("{}.part", target.display()));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StorageError::Io { path, source }
    };
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let mut file = fs::File::create(&part).map_err(io(&part))?;
    let mut sums = Checksums {
        md5: Md5::new(),
        sha256: object.sha256.as_ref().map(|_| Sha256::new()),
    };
    let mut written = 0u64;
    let mut attempt = 1;
    loop {
        match stream_into(
            fetch,
            object,
            &mut file,
            &part,
            &mut written,
            &mut sums,
            progress,
        )
        .await
        {
            Ok(()) => break,
            Err(e) if e.retryable() && attempt < ATTEMPTS => {
                let backoff = Duration::from_millis(500 << attempt);
                tracing::warn!(
                    uri = fetch.uri,
                    object = %object.relative,
                    written,
                    attempt,
                    error = %e,
                    "download interrupted; resuming"
                );
                tokio::time::sleep(backoff).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
    if written != object.size {
        return Err(StorageError::SizeMismatch {
            url: format!("{}: {}", fetch.uri, object.relative),
            expected: object.size,
            got: written,
        });
    }
    let md5 = hex(&sums.md5.finalize());
    if let Some(etag) = object.version.as_deref().and_then(md5_etag)
        && etag != md5
    {
        return Err(StorageError::ChecksumMismatch {
            url: format!("{}: {}", fetch.uri, object.relative),
            expected: format!("MD5 {etag}"),
            got: format!("MD5 {md5}"),
        });
    }
    if let (Some(expected), Some(sha)) = (&object.sha256, sums.sha256) {
        let got = hex(&sha.finalize());
        if !expected.eq_ignore_ascii_case(&got) {
            return Err(StorageError::ChecksumMismatch {
                url: format!("{}: {}", fetch.uri, object.relative),
                expected: format!("SHA-256 {expected}"),
                got: format!("SHA-256 {got}"),
            });
        }
    }
    file.sync_all().map_err(io(&part))?;
    drop(file);
    fs::rename(&part, &target).map_err(io(&target))?;
    Ok(())
}

async fn stream_into(
    fetch: &Fetch<'_>,
    object: &RemoteObject,
    file: &mut fs::File,
    part: &Path,
    written: &mut u64,
    sums: &mut Checksums,
    progress: &Progress,
) -> Result<(), StorageError> {
    let fail = |e| remote_error(fetch.uri, &object.relative, e);
    let options = GetOptions {
        range: (*written > 0).then_some(GetRange::Offset(*written)),
        if_match: object.version.clone().filter(|_| fetch.pin_etag),
        ..Default::default()
    };
    let key = ObjectPath::from(object.key.as_str());
    let request = fetch.store.get_opts(&key, options);
    let result = tokio::time::timeout(IDLE_TIMEOUT, request)
        .await
        .map_err(|_| silent(fetch.uri, &object.relative))?
        .map_err(fail)?;
    let mut body = result.into_stream();
    loop {
        let chunk = match tokio::time::timeout(IDLE_TIMEOUT, body.next()).await {
            Err(_) => return Err(silent(fetch.uri, &object.relative)),
            Ok(None) => return Ok(()),
            Ok(Some(chunk)) => chunk.map_err(fail)?,
        };
        if *written + chunk.len() as u64 > object.size {
            return Err(StorageError::SizeMismatch {
                url: format!("{}: {}", fetch.uri, object.relative),
                expected: object.size,
                got: *written + chunk.len() as u64,
            });
        }
        file.write_all(&chunk).map_err(|source| StorageError::Io {
            path: part.to_path_buf(),
            source,
        })?;
        sums.md5.update(&chunk);
        if let Some(sha) = &mut sums.sha256 {
            sha.update(&chunk);
        }
        *written += chunk.len() as u64;
        progress.add(chunk.len() as u64);
    }
}

/// A store that stops answering is a network fault like any other: retried, then reported.
pub fn silent(uri: &str, object: &str) -> StorageError {
    StorageError::Remote {
        uri: uri.to_string(),
        object: object.to_string(),
        cause: RemoteCause::Network,
        detail: format!("no answer for {} s", IDLE_TIMEOUT.as_secs()),
    }
}

/// S3's and GCS's ETag of an object uploaded in one part is the hex MD5 of its content; multipart
/// (`-N` suffix), composite and Azure ETags are not, and are only used to pin the version.
fn md5_etag(etag: &str) -> Option<String> {
    let e = etag.trim_matches('"');
    (e.len() == 32 && e.bytes().all(|b| b.is_ascii_hexdigit())).then(|| e.to_ascii_lowercase())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn remote_error(uri: &str, object: &str, e: object_store::Error) -> StorageError {
    use object_store::Error as E;
    let cause = match &e {
        E::NotFound { .. } => RemoteCause::NotFound,
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => RemoteCause::Forbidden,
        E::Precondition { .. } => RemoteCause::Changed,
        E::Generic { source, .. } => classify_generic(&source.to_string()),
        _ => RemoteCause::Other,
    };
    StorageError::Remote {
        uri: uri.to_string(),
        object: object.to_string(),
        cause,
        detail: error_chain(&e),
    }
}

/// object_store reports HTTP statuses of some stores (and every connection failure) as generic
/// errors whose text carries the status.
fn classify_generic(text: &str) -> RemoteCause {
    let t = text.to_ascii_lowercase();
    if t.contains("403")
        || t.contains("401")
        || t.contains("forbidden")
        || t.contains("access denied")
        || t.contains("signature")
    {
        RemoteCause::Forbidden
    } else if t.contains("404") || t.contains("not found") || t.contains("nosuchbucket") {
        RemoteCause::NotFound
    } else {
        RemoteCause::Network
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// A bar on a terminal; a log line every few seconds otherwise (a replica's log is not a terminal).
struct Progress {
    uri: String,
    total: u64,
    done: AtomicU64,
    started: Instant,
    bar: Option<indicatif::ProgressBar>,
    last_log: Mutex<Instant>,
}

const LOG_EVERY: Duration = Duration::from_secs(5);

impl Progress {
    fn new(uri: &str, total: u64, files: usize) -> Self {
        tracing::info!(uri, files, bytes = total, "downloading model");
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_message(uri.to_string());
            bar
        });
        Self {
            uri: uri.to_string(),
            total,
            done: AtomicU64::new(0),
            started: Instant::now(),
            bar,
            last_log: Mutex::new(Instant::now()),
        }
    }

    fn add(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            return;
        }
        let mut last = self.last_log.lock().unwrap_or_else(|p| p.into_inner());
        if last.elapsed() >= LOG_EVERY {
            *last = Instant::now();
            tracing::info!(
                uri = %self.uri,
                bytes = done,
                total = self.total,
                mib_per_s = format!("{:.1}", self.rate(done)),
                "downloading"
            );
        }
    }

    fn rate(&self, done: u64) -> f64 {
        done as f64 / (1 << 20) as f64 / self.started.elapsed().as_secs_f64().max(1e-3)
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        let done = self.done.load(Ordering::Relaxed);
        tracing::info!(
            uri = %self.uri,
            bytes = done,
            seconds = format!("{:.2}", self.started.elapsed().as_secs_f64()),
            mib_per_s = format!("{:.1}", self.rate(done)),
            "model downloaded"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_single_part_etags_are_checksums() {
        assert_eq!(
            md5_etag("\"9E107D9D372BB6826BD81D3542A419D6\"").as_deref(),
            Some("9e107d9d372bb6826bd81d3542a419d6")
        );
        assert_eq!(md5_etag("\"9e107d9d372bb6826bd81d3542a419d6-3\""), None);
        assert_eq!(md5_etag("0x8DC1234567890AB"), None);
    }

    #[test]
    fn object_names_that_leave_the_model_directory_are_refused() {
        for bad in ["", "../x", "/etc/passwd", "a/../../b", "w.bin.part", "./x"] {
            assert!(safe_relative("s3://b", bad).is_err(), "{bad}");
        }
        assert_eq!(safe_relative("s3://b", "a/b.bin").unwrap(), "a/b.bin");
    }
}
