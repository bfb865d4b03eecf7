//! `storageUri` resolution, as KServe's storage initializer does it, without the network it assumes:
//! local paths and `file://` directly; `http(s)://` downloaded into a cache (size and sha256
//! checked, atomic rename, so a model is never half-written); `gs://`, `s3://`, `pvc://` and
//! `hf://` only through an explicit mirror map.

use std::fs;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::config::{CONFIG_FILE, ModelConfig};
use crate::error::StorageError;

const MIRRORED_SCHEMES: [&str; 4] = ["gs", "s3", "pvc", "hf"];

#[derive(Debug, Clone, Default)]
pub struct StorageOptions {
    /// Local and `file://` paths must stay under this directory when it is set.
    pub model_root: Option<PathBuf>,
    /// Where `http(s)://` models are downloaded to.
    pub cache_dir: PathBuf,
    /// `(prefix, replacement)` pairs, e.g. `("gs://bucket/", "file:///models/")`.
    pub mirrors: Vec<(String, String)>,
}

/// Parses `--storage-mirror PREFIX=TARGET`.
pub fn parse_mirror(s: &str) -> Result<(String, String), String> {
    let (from, to) = s.split_once('=').ok_or_else(|| {
        format!("'{s}': expected PREFIX=TARGET, e.g. gs://bucket/=file:///models/")
    })?;
    let scheme = from.split("://").next().unwrap_or_default();
    if !MIRRORED_SCHEMES.contains(&scheme) {
        return Err(format!(
            "'{from}': mirrors are for gs://, s3://, pvc:// and hf:// prefixes"
        ));
    }
    if !(to.starts_with("file://")
        || to.starts_with("http://")
        || to.starts_with("https://")
        || to.starts_with('/'))
    {
        return Err(format!(
            "'{to}': a mirror target is a local path, file://, http:// or https://"
        ));
    }
    Ok((from.to_string(), to.to_string()))
}

/// Resolves a storage URI to a local model directory.
pub fn resolve(uri: &str, opts: &StorageOptions) -> Result<PathBuf, StorageError> {
    let scheme = uri.split_once("://").map(|(s, _)| s);
    match scheme {
        None => resolve_local(uri, Path::new(uri), opts.model_root.as_deref()),
        Some("file") => resolve_local(
            uri,
            Path::new(&uri["file://".len()..]),
            opts.model_root.as_deref(),
        ),
        Some("http" | "https") => download_model(uri, &opts.cache_dir),
        Some(s) if MIRRORED_SCHEMES.contains(&s) => {
            let mirror = opts
                .mirrors
                .iter()
                .filter(|(from, _)| uri.starts_with(from.as_str()))
                .max_by_key(|(from, _)| from.len());
            let Some((from, to)) = mirror else {
                let tried: Vec<&str> = opts.mirrors.iter().map(|(f, _)| f.as_str()).collect();
                return Err(StorageError::NoMirror {
                    uri: uri.to_string(),
                    scheme: s.to_string(),
                    tried: tried.join(", "),
                });
            };
            let rest = &uri[from.len()..];
            if has_parent_component(rest) {
                return Err(StorageError::Invalid {
                    uri: uri.to_string(),
                    reason: "'..' may not appear in a mirrored path".into(),
                });
            }
            let target = format!("{}{}", to, rest);
            tracing::info!(uri, mirror = %target, "storage URI resolved through mirror");
            let inner = StorageOptions {
                mirrors: Vec::new(),
                ..opts.clone()
            };
            resolve(&target, &inner)
        }
        Some(other) => Err(StorageError::Invalid {
            uri: uri.to_string(),
            reason: format!(
                "unsupported scheme '{other}' (supported: local path, file://, http(s)://, and gs://, s3://, pvc://, hf:// through --storage-mirror)"
            ),
        }),
    }
}

fn has_parent_component(p: &str) -> bool {
    Path::new(p).components().any(|c| c == Component::ParentDir)
}

fn resolve_local(uri: &str, path: &Path, root: Option<&Path>) -> Result<PathBuf, StorageError> {
    let joined = match root {
        Some(root) if path.is_relative() => root.join(path),
        _ => path.to_path_buf(),
    };
    let canonical = fs::canonicalize(&joined).map_err(|_| StorageError::NotFound {
        uri: uri.to_string(),
        path: joined.clone(),
    })?;
    if let Some(root) = root {
        let root = fs::canonicalize(root).map_err(|e| StorageError::Io {
            path: root.to_path_buf(),
            source: e,
        })?;
        if !canonical.starts_with(&root) {
            return Err(StorageError::EscapesRoot {
                uri: uri.to_string(),
                path: canonical,
                root,
            });
        }
    }
    Ok(canonical)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Downloads `URI/config.json` and the weights it names into `cache/<hash of URI>/`. Files go to a
/// private temporary directory first, which is renamed into place only when every file is
/// complete and verified; a cached model is reused.
fn download_model(uri: &str, cache: &Path) -> Result<PathBuf, StorageError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StorageError::Io { path, source }
    };
    let base = uri.trim_end_matches('/');
    let key = hex(&Sha256::digest(base.as_bytes())[..12]);
    let final_dir = cache.join(&key);
    if final_dir.join(CONFIG_FILE).is_file() {
        tracing::info!(uri, dir = %final_dir.display(), "model found in download cache");
        return Ok(final_dir);
    }
    fs::create_dir_all(cache).map_err(io(cache))?;
    let tmp = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(cache)
        .map_err(io(cache))?;
    let client = reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(3600))
        .build()
        .map_err(|e| StorageError::Download {
            url: uri.to_string(),
            reason: e.to_string(),
        })?;

    let config_path = tmp.path().join(CONFIG_FILE);
    download_file(
        &client,
        &format!("{base}/{CONFIG_FILE}"),
        &config_path,
        None,
    )?;
    let config = ModelConfig::read(tmp.path()).map_err(|e| StorageError::Download {
        url: format!("{base}/{CONFIG_FILE}"),
        reason: e.to_string(),
    })?;
    if let Some(weights) = &config.weights {
        download_file(
            &client,
            &format!("{base}/{weights}"),
            &tmp.path().join(weights),
            config.weights_sha256.as_deref(),
        )?;
    }
    let staged = tmp.keep();
    match fs::rename(&staged, &final_dir) {
        Ok(()) => Ok(final_dir),
        // Another process finished the same download first: keep theirs.
        Err(_) if final_dir.join(CONFIG_FILE).is_file() => {
            let _ = fs::remove_dir_all(&staged);
            Ok(final_dir)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&staged);
            Err(StorageError::Io {
                path: final_dir,
                source: e,
            })
        }
    }
}

fn download_file(
    client: &reqwest::blocking::Client,
    url: &str,
    dest: &Path,
    sha256: Option<&str>,
) -> Result<(), StorageError> {
    let fail = |reason: String| StorageError::Download {
        url: url.to_string(),
        reason,
    };
    let mut resp = client.get(url).send().map_err(|e| fail(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(fail(format!("HTTP {}", resp.status())));
    }
    let expected_len = resp.content_length();
    let bar = indicatif::ProgressBar::with_draw_target(
        expected_len,
        indicatif::ProgressDrawTarget::stderr(),
    );
    bar.set_message(url.to_string());
    let mut file = fs::File::create(dest).map_err(|e| StorageError::Io {
        path: dest.to_path_buf(),
        source: e,
    })?;
    let mut hasher = Sha256::new();
    let mut got = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = resp.read(&mut buf).map_err(|e| fail(e.to_string()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(|e| StorageError::Io {
            path: dest.to_path_buf(),
            source: e,
        })?;
        got += n as u64;
        bar.set_position(got);
    }
    bar.finish_and_clear();
    file.sync_all().map_err(|e| StorageError::Io {
        path: dest.to_path_buf(),
        source: e,
    })?;
    if let Some(expected) = expected_len
        && expected != got
    {
        return Err(StorageError::SizeMismatch {
            url: url.to_string(),
            expected,
            got,
        });
    }
    let digest = hex(&hasher.finalize());
    if let Some(expected) = sha256
        && !expected.eq_ignore_ascii_case(&digest)
    {
        return Err(StorageError::ChecksumMismatch {
            url: url.to_string(),
            expected: expected.to_string(),
            got: digest,
        });
    }
    tracing::info!(url, bytes = got, sha256 = %digest, "downloaded");
    Ok(())
}
