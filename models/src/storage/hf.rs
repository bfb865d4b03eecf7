//! `hf://ORG/REPO[:REVISION]`: the revision is resolved to its commit and the repository's files
//! listed with the Hub's REST API (`/api/models/...`), then fetched from `/ORG/REPO/resolve/COMMIT/`
//! by the same downloader as the object stores, checked against the LFS SHA-256 the Hub lists.
//!
//! Not the `hf-hub` crate: its 1.x pulls reqwest 0.13 and the Xet client, and its 0.4 downloads
//! into its own cache layout, where Siesta needs staged, content-addressed entries.

use std::sync::Arc;

use object_store::http::HttpBuilder;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue, LINK};
use serde::Deserialize;

use super::download::{MAX_OBJECTS, RemoteObject, safe_relative};
use super::remote::{StorageEnv, client_options};
use crate::error::{RemoteCause, StorageError};

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

pub struct HubRepo {
    pub commit: String,
    pub objects: Vec<RemoteObject>,
    pub store: Arc<dyn object_store::ObjectStore>,
}

#[derive(Deserialize)]
struct Revision {
    sha: String,
}

#[derive(Deserialize)]
struct TreeEntry {
    #[serde(rename = "type")]
    kind: String,
    path: String,
    #[serde(default)]
    size: u64,
    oid: Option<String>,
    lfs: Option<Lfs>,
}

#[derive(Deserialize)]
struct Lfs {
    oid: String,
    size: u64,
}

fn token(env: &StorageEnv) -> Option<&str> {
    env.get("HF_TOKEN").or(env.get("HUGGING_FACE_HUB_TOKEN"))
}

pub async fn open(
    uri: &str,
    repo: &str,
    revision: &str,
    env: &StorageEnv,
) -> Result<HubRepo, StorageError> {
    let endpoint = env
        .get("HF_ENDPOINT")
        .unwrap_or(DEFAULT_ENDPOINT)
        .trim_end_matches('/')
        .to_string();
    let mut headers = HeaderMap::new();
    if let Some(token) = token(env) {
        let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            StorageError::Invalid {
                uri: uri.to_string(),
                reason: "HF_TOKEN is not a valid header value".into(),
            }
        })?;
        value.set_sensitive(true);
        headers.insert(AUTHORIZATION, value);
    }
    let fail = |cause: RemoteCause, detail: String| StorageError::Remote {
        uri: uri.to_string(),
        object: "(repository)".into(),
        cause,
        detail,
    };
    let client = reqwest::Client::builder()
        .default_headers(headers.clone())
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(|e| fail(RemoteCause::Other, e.to_string()))?;

    let get = |url: String| {
        let client = client.clone();
        async move {
            let resp = client
                .get(&url)
                .send()
                .await
                .map_err(|e| fail(RemoteCause::Network, format!("{url}: {e}")))?;
            let status = resp.status();
            if !status.is_success() {
                let cause = match status.as_u16() {
                    401 | 403 => RemoteCause::Forbidden,
                    404 => RemoteCause::NotFound,
                    _ => RemoteCause::Network,
                };
                return Err(fail(cause, format!("{url}: HTTP {status}")));
            }
            Ok(resp)
        }
    };
    let rev: Revision = get(format!("{endpoint}/api/models/{repo}/revision/{revision}"))
        .await?
        .bytes()
        .await
        .map_err(|e| fail(RemoteCause::Network, format!("revision: {e}")))
        .and_then(|b| {
            serde_json::from_slice(&b)
                .map_err(|e| fail(RemoteCause::Other, format!("revision: {e}")))
        })?;
    if rev.sha.is_empty() || !rev.sha.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(fail(
            RemoteCause::Other,
            format!("the Hub answered commit '{}'", rev.sha),
        ));
    }

    let mut objects = Vec::new();
    let mut next = Some(format!(
        "{endpoint}/api/models/{repo}/tree/{}?recursive=true",
        rev.sha
    ));
    while let Some(url) = next.take() {
        let resp = get(url).await?;
        next = resp
            .headers()
            .get(LINK)
            .and_then(|l| l.to_str().ok())
            .and_then(next_link);
        let body = resp
            .bytes()
            .await
            .map_err(|e| fail(RemoteCause::Network, format!("file listing: {e}")))?;
        let page: Vec<TreeEntry> = serde_json::from_slice(&body)
            .map_err(|e| fail(RemoteCause::Other, format!("file listing: {e}")))?;
        for entry in page.into_iter().filter(|e| e.kind == "file") {
            let (size, sha256) = match entry.lfs {
                Some(lfs) => (lfs.size, Some(lfs.oid)),
                None => (entry.size, None),
            };
            objects.push(RemoteObject {
                relative: safe_relative(uri, &entry.path)?,
                key: entry.path,
                size,
                version: entry.oid,
                sha256,
            });
        }
        if objects.len() > MAX_OBJECTS {
            return Err(StorageError::Invalid {
                uri: uri.to_string(),
                reason: format!("more than {MAX_OBJECTS} files in the repository"),
            });
        }
    }
    if objects.is_empty() {
        return Err(fail(
            RemoteCause::NotFound,
            "the repository has no files".into(),
        ));
    }
    objects.sort_by(|a, b| a.relative.cmp(&b.relative));

    let base = format!("{endpoint}/{repo}/resolve/{}", rev.sha);
    let options =
        client_options(endpoint.starts_with("http://"), true).with_default_headers(headers);
    let store = HttpBuilder::new()
        .with_url(base)
        .with_client_options(options)
        .build()
        .map_err(|e| fail(RemoteCause::Other, e.to_string()))?;
    Ok(HubRepo {
        commit: rev.sha,
        objects,
        store: Arc::new(store),
    })
}

/// `Link: <https://...>; rel="next"` (the Hub pages long listings).
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        params.contains("rel=\"next\"").then(|| {
            url.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_page_is_found_in_the_link_header() {
        assert_eq!(
            next_link("<https://hub/api/x?cursor=abc>; rel=\"next\"").as_deref(),
            Some("https://hub/api/x?cursor=abc")
        );
        assert_eq!(next_link("<https://hub/p1>; rel=\"prev\""), None);
    }
}
