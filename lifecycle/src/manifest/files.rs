//! InferenceServices from YAML files, read at start and again whenever a file changes: on one
//! host, editing the manifest is `kubectl apply`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{ClusterDefaults, InferenceService, ManifestError, parse};

#[derive(Debug, thiserror::Error)]
pub enum ManifestFileError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("in {path}: {source}")]
    Invalid {
        path: PathBuf,
        source: ManifestError,
    },
}

/// Every InferenceService in `files`, in order; a field Siesta accepts but ignores is logged.
pub fn read(
    files: &[PathBuf],
    defaults: &ClusterDefaults,
) -> Result<Vec<InferenceService>, ManifestFileError> {
    let mut services = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestFileError::Read {
            path: path.clone(),
            source,
        })?;
        let parsed = parse(&text, defaults).map_err(|source| ManifestFileError::Invalid {
            path: path.clone(),
            source,
        })?;
        for isvc in &parsed {
            for field in &isvc.ignored {
                tracing::warn!(service = %isvc.name, %field, "field has no effect in Siesta");
            }
        }
        services.extend(parsed);
    }
    Ok(services)
}

/// How often the files are looked at.
pub const POLL: Duration = Duration::from_secs(1);

/// What identifies a file's version without reading it.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Polls `files` (an editor's rename-into-place and a `cp` over the file both show as a new
/// modification time or length); each change of any of them yields their InferenceServices
/// read anew, or why they cannot be.
pub struct Watch {
    files: Vec<PathBuf>,
    defaults: ClusterDefaults,
    seen: Vec<Stamp>,
}

impl Watch {
    /// Starts from the files as they are now (the services already read from them).
    pub fn new(files: Vec<PathBuf>, defaults: ClusterDefaults) -> Self {
        let seen = files.iter().map(|f| stamp(f)).collect();
        Watch {
            files,
            defaults,
            seen,
        }
    }

    /// Waits for the next change and reads the files.
    pub async fn changed(&mut self) -> Result<Vec<InferenceService>, ManifestFileError> {
        loop {
            tokio::time::sleep(POLL).await;
            let now: Vec<Stamp> = self.files.iter().map(|f| stamp(f)).collect();
            if now != self.seen {
                self.seen = now;
                return read(&self.files, &self.defaults);
            }
        }
    }
}
