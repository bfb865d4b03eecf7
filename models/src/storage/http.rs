//! `http(s)://HOST/DIR`: a web server lists nothing, so the model's `config.json` is the listing:
//! it is read first, then the weights it names are sized with HEAD and both are fetched by the same
//! downloader and cache as the object stores (the weights checked against `weights_sha256`).

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::http::HttpBuilder;
use object_store::path::Path as ObjectPath;

use sha2::{Digest, Sha256};

use super::download::{RemoteObject, hex, remote_error, safe_relative};
use super::remote::client_options;
use crate::config::{CONFIG_FILE, ModelConfig};
use crate::error::StorageError;

/// A config.json is a few KiB; this much is not one.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The model's config and weights as objects of the web server at `base`.
pub async fn list(
    uri: &str,
    base: &str,
) -> Result<(Vec<RemoteObject>, Arc<dyn ObjectStore>), StorageError> {
    let store: Arc<dyn ObjectStore> = Arc::new(
        HttpBuilder::new()
            .with_url(base)
            .with_client_options(client_options(base.starts_with("http://"), true))
            .build()
            .map_err(|e| remote_error(uri, "(client)", e))?,
    );
    let config = store
        .get(&ObjectPath::from(CONFIG_FILE))
        .await
        .map_err(|e| remote_error(uri, CONFIG_FILE, e))?;
    // Read into memory whole, so its size is checked first (object_store holds the server to
    // the length it announces).
    if config.meta.size > MAX_CONFIG_BYTES {
        return Err(StorageError::Download {
            url: format!("{base}/{CONFIG_FILE}"),
            reason: format!(
                "{} bytes; a config.json is at most {MAX_CONFIG_BYTES}",
                config.meta.size
            ),
        });
    }
    let config_bytes = config
        .bytes()
        .await
        .map_err(|e| remote_error(uri, CONFIG_FILE, e))?;
    let config = ModelConfig::from_json(&config_bytes, std::path::Path::new(uri)).map_err(|e| {
        StorageError::Download {
            url: format!("{base}/{CONFIG_FILE}"),
            reason: e.to_string(),
        }
    })?;
    let mut objects = vec![RemoteObject {
        relative: CONFIG_FILE.to_string(),
        key: CONFIG_FILE.to_string(),
        size: config_bytes.len() as u64,
        version: None,
        sha256: Some(hex(&Sha256::digest(&config_bytes))),
    }];
    if let Some(weights) = &config.weights {
        let relative = safe_relative(uri, weights)?;
        let meta = store
            .head(&ObjectPath::from(relative.as_str()))
            .await
            .map_err(|e| remote_error(uri, &relative, e))?;
        objects.push(RemoteObject {
            key: relative.clone(),
            relative,
            size: meta.size,
            // What changes when the file does, as far as a web server says.
            version: meta
                .e_tag
                .clone()
                .or_else(|| Some(meta.last_modified.to_rfc3339())),
            sha256: config.weights_sha256.clone(),
        });
    }
    Ok((objects, store))
}
