//! `storageUri` resolution, as KServe's storage initializer does it: local paths and `file://`
//! in place; `gs://`, `s3://`, Azure Blob and `hf://` downloaded through object_store into the
//! node-local [`cache::ModelCache`] every replica shares; `http(s)://` downloaded into the same
//! directory (its `config.json` and the weights it names); `pvc://` as the claim's mount in a pod;
//! any of them redirected to a local copy by `--storage-mirror` on air-gapped hosts.

mod aws_profile;
pub mod cache;
pub mod download;
mod hf;
mod http;
pub mod remote;
pub mod uri;

use std::fs;
use std::path::{Component, Path, PathBuf};

pub use cache::{Lease, ModelCache};
pub use remote::StorageEnv;
pub use uri::RemoteUri;

use crate::error::StorageError;

const MIRRORED_SCHEMES: [&str; 4] = ["gs", "s3", "pvc", "hf"];

/// Where KServe mounts a `pvc://` claim in the predictor's pod (and Siesta's controller too).
pub const PVC_MOUNT: &str = "/mnt/pvc";

/// Whether a cached model is used as is or its store is listed first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Freshness {
    /// List the store (metadata only) and download only objects whose version changed.
    #[default]
    Check,
    /// Use the newest cached copy of the URI without contacting the store; list only when none.
    Trust,
}

#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// Local and `file://` paths must stay under this directory when it is set.
    pub model_root: Option<PathBuf>,
    /// The node-local model cache (downloads of every remote scheme).
    pub cache_dir: PathBuf,
    /// Past this many bytes, least recently used models not being loaded are removed.
    pub cache_max_bytes: Option<u64>,
    pub freshness: Freshness,
    /// Objects downloaded at once.
    pub download_concurrency: usize,
    /// `(prefix, replacement)` pairs, e.g. `("gs://bucket/", "file:///models/")`.
    pub mirrors: Vec<(String, String)>,
    /// Credentials and endpoints; `None` reads the process environment.
    pub env: Option<StorageEnv>,
}

impl Default for StorageOptions {
    fn default() -> Self {
        Self {
            model_root: None,
            cache_dir: std::env::temp_dir().join("siesta-models"),
            cache_max_bytes: None,
            freshness: Freshness::Check,
            download_concurrency: 8,
            mirrors: Vec::new(),
            env: None,
        }
    }
}

/// How a model directory was obtained.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fetched {
    /// A local path: nothing was copied.
    InPlace,
    /// Found in the cache (unchanged in its store, or downloaded by another replica meanwhile).
    Cached,
    Downloaded {
        bytes: u64,
        seconds: f64,
    },
}

impl Fetched {
    pub fn label(&self) -> &'static str {
        match self {
            Self::InPlace => "in_place",
            Self::Cached => "cached",
            Self::Downloaded { .. } => "downloaded",
        }
    }
}

/// A local model directory. Keep it until the model is loaded: a cached entry is not evicted while
/// its lease is held.
#[derive(Debug)]
pub struct Resolved {
    pub dir: PathBuf,
    pub fetched: Fetched,
    _lease: Option<Lease>,
}

impl Resolved {
    fn in_place(dir: PathBuf) -> Self {
        Self {
            dir,
            fetched: Fetched::InPlace,
            _lease: None,
        }
    }

    fn cached(dir: PathBuf, lease: Lease) -> Self {
        Self {
            dir,
            fetched: Fetched::Cached,
            _lease: Some(lease),
        }
    }
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
pub fn resolve(uri: &str, opts: &StorageOptions) -> Result<Resolved, StorageError> {
    if let Some(mirrored) = mirror(uri, opts)? {
        tracing::info!(uri, mirror = %mirrored, "storage URI resolved through mirror");
        let inner = StorageOptions {
            mirrors: Vec::new(),
            ..opts.clone()
        };
        return resolve(&mirrored, &inner);
    }
    if let Some(remote) = RemoteUri::parse(uri)? {
        return fetch_remote(&remote, opts);
    }
    let scheme = uri.split_once("://").map(|(s, _)| s);
    match scheme {
        None => {
            resolve_local(uri, Path::new(uri), opts.model_root.as_deref()).map(Resolved::in_place)
        }
        Some("file") => resolve_local(
            uri,
            Path::new(&uri["file://".len()..]),
            opts.model_root.as_deref(),
        )
        .map(Resolved::in_place),
        Some("pvc") => resolve_pvc(uri, opts),
        Some(other) => Err(StorageError::Invalid {
            uri: uri.to_string(),
            reason: format!(
                "unsupported scheme '{other}' (supported: a local path, file://, http(s)://, gs://, s3://, az://, https://ACCOUNT.blob.core.windows.net/, hf://, pvc://)"
            ),
        }),
    }
}

/// The longest `--storage-mirror` prefix of `uri`, applied.
fn mirror(uri: &str, opts: &StorageOptions) -> Result<Option<String>, StorageError> {
    let Some((from, to)) = opts
        .mirrors
        .iter()
        .filter(|(from, _)| uri.starts_with(from.as_str()))
        .max_by_key(|(from, _)| from.len())
    else {
        return Ok(None);
    };
    let rest = &uri[from.len()..];
    if has_parent_component(rest) {
        return Err(StorageError::Invalid {
            uri: uri.to_string(),
            reason: "'..' may not appear in a mirrored path".into(),
        });
    }
    Ok(Some(format!("{to}{rest}")))
}

/// In a pod, `pvc://CLAIM/PATH` is `PATH` under the claim's mount; one host has no claims.
fn resolve_pvc(uri: &str, opts: &StorageOptions) -> Result<Resolved, StorageError> {
    let env = opts.env.clone().unwrap_or_else(StorageEnv::process);
    let mount = env.get("SIESTA_PVC_MOUNT").map(PathBuf::from).or_else(|| {
        env.get("KUBERNETES_SERVICE_HOST")
            .map(|_| PathBuf::from(PVC_MOUNT))
    });
    let Some(mount) = mount else {
        return Err(StorageError::PvcOutsideCluster {
            uri: uri.to_string(),
        });
    };
    let rest = &uri["pvc://".len()..];
    let (claim, path) = rest.split_once('/').unwrap_or((rest, ""));
    if claim.is_empty() || has_parent_component(path) {
        return Err(StorageError::Invalid {
            uri: uri.to_string(),
            reason: "expected pvc://CLAIM/PATH without '..'".into(),
        });
    }
    resolve_local(uri, &mount.join(path), Some(&mount)).map(Resolved::in_place)
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

impl std::str::FromStr for Freshness {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "check" => Ok(Self::Check),
            "trust" => Ok(Self::Trust),
            _ => Err(format!("'{s}': expected check or trust")),
        }
    }
}

/// Lists the store, then serves the cache's entry for that listing or downloads it once (other
/// replicas wait on the download lock, then find the entry). A store that cannot be reached falls
/// back to the newest cached copy of the URI, with a warning.
fn fetch_remote(remote: &RemoteUri, opts: &StorageOptions) -> Result<Resolved, StorageError> {
    let uri = remote.to_string();
    let cache = ModelCache::new(&opts.cache_dir, opts.cache_max_bytes);
    if opts.freshness == Freshness::Trust
        && let Some((_, dir, lease)) = cache.latest(&uri)
    {
        tracing::info!(uri, dir = %dir.display(), "model found in cache (not checked against the store)");
        return Ok(Resolved::cached(dir, lease));
    }
    on_own_runtime(list_and_fetch(remote, &uri, &cache, opts))
}

async fn list_and_fetch(
    remote: &RemoteUri,
    uri: &str,
    cache: &ModelCache,
    opts: &StorageOptions,
) -> Result<Resolved, StorageError> {
    let env = opts.env.clone().unwrap_or_else(StorageEnv::process);
    // Listing is metadata: a store that does not answer it within the idle timeout is down.
    let listed = tokio::time::timeout(download::IDLE_TIMEOUT, list_remote(remote, uri, &env))
        .await
        .unwrap_or_else(|_| Err(download::silent(uri, "(listing)")));
    let (objects, store, pin_etag) = match listed {
        Ok(listed) => listed,
        Err(e) if e.retryable() => match cache.latest(uri) {
            Some((_, dir, lease)) => {
                tracing::warn!(uri, error = %e, dir = %dir.display(), "store unreachable; serving the newest cached copy");
                return Ok(Resolved::cached(dir, lease));
            }
            None => return Err(e),
        },
        Err(e) => return Err(e),
    };
    let key = cache::entry_key(uri, &objects);
    if let Some((dir, lease)) = cache.lookup(&key) {
        cache.remember(uri, &key);
        tracing::info!(uri, dir = %dir.display(), "model found in cache, unchanged in its store; no download");
        return Ok(Resolved::cached(dir, lease));
    }
    // Blocks this runtime's only thread while another replica downloads: nothing else runs on it.
    let _lock = cache.lock_download(uri)?;
    if let Some((dir, lease)) = cache.lookup(&key) {
        cache.remember(uri, &key);
        tracing::info!(uri, dir = %dir.display(), "model downloaded by another replica meanwhile");
        return Ok(Resolved::cached(dir, lease));
    }
    let staged = cache.staging()?;
    let started = std::time::Instant::now();
    let fetch = download::Fetch {
        uri,
        store,
        concurrency: opts.download_concurrency,
        pin_etag,
    };
    let bytes = download::fetch_all(&fetch, &objects, staged.path()).await?;
    let record = cache::EntryRecord {
        uri: uri.to_string(),
        bytes,
        objects,
    };
    let (dir, lease) = cache.commit(staged, &key, &record)?;
    Ok(Resolved {
        dir,
        fetched: Fetched::Downloaded {
            bytes,
            seconds: started.elapsed().as_secs_f64(),
        },
        _lease: Some(lease),
    })
}

type Listed = (
    Vec<download::RemoteObject>,
    std::sync::Arc<dyn object_store::ObjectStore>,
    bool,
);

async fn list_remote(
    remote: &RemoteUri,
    uri: &str,
    env: &StorageEnv,
) -> Result<Listed, StorageError> {
    match remote {
        RemoteUri::Hf { repo, revision } => {
            let hub = hf::open(uri, repo, revision, env).await?;
            tracing::info!(uri, commit = %hub.commit, files = hub.objects.len(), "Hub revision resolved");
            return Ok((hub.objects, hub.store, false));
        }
        RemoteUri::Http { base } => {
            let (objects, store) = http::list(uri, base).await?;
            return Ok((objects, store, false));
        }
        _ => {}
    }
    let opened = remote::open(remote, env)?;
    if opened.anonymous {
        tracing::info!(
            uri,
            "no credentials configured for this store; reading anonymously"
        );
    }
    let objects = download::list(uri, opened.store.as_ref(), remote.prefix()).await?;
    Ok((objects, opened.store, true))
}

/// Model loading runs on a blocking thread, possibly inside the server's runtime; downloads get a
/// runtime of their own on a thread of their own, so neither blocks nor nests the other.
fn on_own_runtime<T: Send>(
    work: impl std::future::Future<Output = Result<T, StorageError>> + Send,
) -> Result<T, StorageError> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|source| StorageError::Io {
                        path: PathBuf::from("(download runtime)"),
                        source,
                    })?;
                runtime.block_on(work)
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
