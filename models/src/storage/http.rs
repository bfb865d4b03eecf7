//! `http(s)://HOST/DIR`: `DIR/config.json` and the weights it names (a web server lists nothing),
//! size and `weights_sha256` checked, in a private directory renamed into place when complete.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::download::hex;
use super::{Fetched, Resolved};
use crate::config::{CONFIG_FILE, ModelConfig};
use crate::error::StorageError;

/// Downloads `URI/config.json` and the weights it names into `cache/<hash of URI>/`. Files go to a
/// private temporary directory first, which is renamed into place only when every file is
/// complete and verified; a cached model is reused.
pub(super) fn download_model(uri: &str, cache: &Path) -> Result<Resolved, StorageError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StorageError::Io { path, source }
    };
    let base = uri.trim_end_matches('/');
    let key = hex(&Sha256::digest(base.as_bytes())[..12]);
    let final_dir = cache.join(&key);
    if final_dir.join(CONFIG_FILE).is_file() {
        tracing::info!(uri, dir = %final_dir.display(), "model found in download cache");
        return Ok(Resolved {
            dir: final_dir,
            fetched: Fetched::Cached,
            _lease: None,
        });
    }
    fs::create_dir_all(cache).map_err(io(cache))?;
    let started = std::time::Instant::now();
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
    let downloaded = |dir| Resolved {
        dir,
        fetched: Fetched::Downloaded {
            bytes: dir_bytes(&final_dir),
            seconds: started.elapsed().as_secs_f64(),
        },
        _lease: None,
    };
    match fs::rename(&staged, &final_dir) {
        Ok(()) => Ok(downloaded(final_dir.clone())),
        // Another process finished the same download first: keep theirs.
        Err(_) if final_dir.join(CONFIG_FILE).is_file() => {
            let _ = fs::remove_dir_all(&staged);
            Ok(downloaded(final_dir.clone()))
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

fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}
