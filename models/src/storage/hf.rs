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
    let rev: Revision = read_json(
        get(format!("{endpoint}/api/models/{repo}/revision/{revision}")).await?,
        "revision",
    )
    .await
    .map_err(|(cause, detail)| fail(cause, detail))?;
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
    let mut pages = 0;
    while let Some(url) = next.take() {
        pages += 1;
        if pages > MAX_PAGES {
            return Err(fail(
                RemoteCause::Other,
                format!("the file listing ran past {MAX_PAGES} pages"),
            ));
        }
        let resp = get(url).await?;
        next = resp
            .headers()
            .get(LINK)
            .and_then(|l| l.to_str().ok())
            .and_then(next_link);
        // The token goes with every request: never to a host other than the Hub's.
        if let Some(link) = &next
            && !link.starts_with(&format!("{endpoint}/"))
        {
            return Err(fail(
                RemoteCause::Other,
                format!("the listing's next page is not on {endpoint}"),
            ));
        }
        let page: Vec<TreeEntry> = read_json(resp, "file listing")
            .await
            .map_err(|(cause, detail)| fail(cause, detail))?;
        objects.extend(page_objects(uri, page)?);
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

/// A listing page or revision answer larger than this is not the Hub's.
const MAX_JSON_BYTES: usize = 64 << 20;
/// Pages of one file listing (the Hub pages by 1,000 entries or so).
const MAX_PAGES: usize = 1_000;

/// Reads a JSON answer of at most [`MAX_JSON_BYTES`], chunk by chunk.
async fn read_json<T: serde::de::DeserializeOwned>(
    mut resp: reqwest::Response,
    what: &str,
) -> Result<T, (RemoteCause, String)> {
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_JSON_BYTES as u64)
    {
        return Err((
            RemoteCause::Other,
            format!("{what}: larger than {MAX_JSON_BYTES} bytes"),
        ));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| (RemoteCause::Network, format!("{what}: {e}")))?
    {
        if body.len() + chunk.len() > MAX_JSON_BYTES {
            return Err((
                RemoteCause::Other,
                format!("{what}: larger than {MAX_JSON_BYTES} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| (RemoteCause::Other, format!("{what}: {e}")))
}

/// The files of one listing page (directories skipped), each name checked to stay inside the
/// model directory; LFS files carry their SHA-256 and real size.
fn page_objects(uri: &str, page: Vec<TreeEntry>) -> Result<Vec<RemoteObject>, StorageError> {
    page.into_iter()
        .filter(|e| e.kind == "file")
        .map(|entry| {
            let (size, sha256) = match entry.lfs {
                Some(lfs) => (lfs.size, Some(lfs.oid)),
                None => (entry.size, None),
            };
            Ok(RemoteObject {
                relative: safe_relative(uri, &entry.path)?,
                key: entry.path,
                size,
                version: entry.oid,
                sha256,
            })
        })
        .collect()
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

    fn page(json: &str) -> Result<Vec<RemoteObject>, String> {
        let entries: Vec<TreeEntry> = serde_json::from_str(json).map_err(|e| e.to_string())?;
        page_objects("hf://o/r:main", entries).map_err(|e| e.to_string())
    }

    #[test]
    fn listing_pages_keep_files_and_refuse_names_that_leave_the_model_directory() {
        let ok = page(
            r#"[{"type":"directory","path":"sub","oid":"d"},
                {"type":"file","path":"sub/config.json","oid":"a1","size":12},
                {"type":"file","path":"w.safetensors","oid":"b2","size":134,
                 "lfs":{"oid":"ab12","size":5000000,"pointerSize":134}}]"#,
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(
            (ok[1].size, ok[1].sha256.as_deref()),
            (5_000_000, Some("ab12"))
        );
        for hostile in [
            r#"[{"type":"file","path":"../../etc/passwd","oid":"a","size":1}]"#,
            r#"[{"type":"file","path":"/abs","oid":"a","size":1}]"#,
            r#"[{"type":"file","path":"w.part","oid":"a","size":1}]"#,
        ] {
            let err = page(hostile).unwrap_err();
            assert!(err.contains("not a relative file path"), "{err}");
        }
        for malformed in [
            r#"{"not":"a list"}"#,
            r#"[{"type":"file"}]"#,
            "[",
            r#"[{"type":"file","path":"x","size":-1}]"#,
        ] {
            assert!(page(malformed).is_err(), "{malformed}");
        }
    }
}
