//! The object-store `storageUri`s KServe's storage initializer accepts, parsed once into types so
//! that the rest of storage never splits strings.

use std::fmt;

use crate::error::StorageError;

/// A model's location in an object store or on the Hugging Face Hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteUri {
    /// `gs://bucket/prefix`
    Gcs { bucket: String, prefix: String },
    /// `s3://bucket/prefix`
    S3 { bucket: String, prefix: String },
    /// `https://ACCOUNT.blob.core.windows.net/container/prefix` or `az://container/prefix`
    /// (the account then comes from `AZURE_STORAGE_ACCOUNT_NAME`, or Azurite's).
    Azure {
        account: Option<String>,
        container: String,
        prefix: String,
    },
    /// `hf://org/repo[:revision]`
    Hf { repo: String, revision: String },
    /// `http(s)://HOST/DIR` (not Azure Blob): `DIR/config.json` and the weights it names.
    Http { base: String },
}

const AZURE_HOST_SUFFIX: &str = ".blob.core.windows.net";

impl RemoteUri {
    /// `None` when the URI names no remote store (a path, `file://`, `pvc://`).
    pub fn parse(uri: &str) -> Result<Option<Self>, StorageError> {
        let invalid = |reason: &str| StorageError::Invalid {
            uri: uri.to_string(),
            reason: reason.to_string(),
        };
        if uri.chars().any(|c| c.is_control()) {
            return Err(invalid("control characters are not allowed"));
        }
        let Some((scheme, rest)) = uri.split_once("://") else {
            return Ok(None);
        };
        let parsed = match scheme {
            "gs" | "s3" => {
                let (bucket, prefix) = split_first(rest);
                if bucket.is_empty() {
                    return Err(invalid("the bucket name is empty"));
                }
                let (bucket, prefix) = (bucket.to_string(), clean_prefix(uri, prefix)?);
                if scheme == "gs" {
                    Self::Gcs { bucket, prefix }
                } else {
                    Self::S3 { bucket, prefix }
                }
            }
            "az" => {
                let (container, prefix) = split_first(rest);
                if container.is_empty() {
                    return Err(invalid("the container name is empty"));
                }
                Self::Azure {
                    account: None,
                    container: container.to_string(),
                    prefix: clean_prefix(uri, prefix)?,
                }
            }
            "http" | "https" => {
                let (host, path) = split_first(rest);
                let account = host
                    .strip_suffix(AZURE_HOST_SUFFIX)
                    .filter(|_| scheme == "https");
                let Some(account) = account else {
                    if host.is_empty() {
                        return Err(invalid("the host is empty"));
                    }
                    return Ok(Some(Self::Http {
                        base: uri.trim_end_matches('/').to_string(),
                    }));
                };
                let (container, prefix) = split_first(path);
                if account.is_empty() || container.is_empty() {
                    return Err(invalid(
                        "expected https://ACCOUNT.blob.core.windows.net/CONTAINER/PATH",
                    ));
                }
                Self::Azure {
                    account: Some(account.to_string()),
                    container: container.to_string(),
                    prefix: clean_prefix(uri, prefix)?,
                }
            }
            "hf" => {
                let (repo, revision) = match rest.rsplit_once(':') {
                    Some((repo, rev)) => (repo, rev),
                    None => (rest, "main"),
                };
                let repo = repo.trim_end_matches('/');
                let parts: Vec<&str> = repo.split('/').collect();
                let valid_part = |p: &&str| {
                    !p.is_empty()
                        && *p != "."
                        && *p != ".."
                        && p.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                };
                if parts.len() != 2 || !parts.iter().all(valid_part) {
                    return Err(invalid("expected hf://ORG/REPO or hf://ORG/REPO:REVISION"));
                }
                if revision.is_empty()
                    || revision.contains("..")
                    || !revision
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
                {
                    return Err(invalid("the revision is not a branch, tag or commit"));
                }
                Self::Hf {
                    repo: repo.to_string(),
                    revision: revision.to_string(),
                }
            }
            _ => return Ok(None),
        };
        Ok(Some(parsed))
    }

    /// The object-key prefix the model's files are under ("" for a whole bucket or repo).
    pub fn prefix(&self) -> &str {
        match self {
            Self::Gcs { prefix, .. } | Self::S3 { prefix, .. } | Self::Azure { prefix, .. } => {
                prefix
            }
            Self::Hf { .. } | Self::Http { .. } => "",
        }
    }
}

impl fmt::Display for RemoteUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |f: &mut fmt::Formatter<'_>, head: String, prefix: &str| {
            if prefix.is_empty() {
                write!(f, "{head}")
            } else {
                write!(f, "{head}/{prefix}")
            }
        };
        match self {
            Self::Gcs { bucket, prefix } => join(f, format!("gs://{bucket}"), prefix),
            Self::S3 { bucket, prefix } => join(f, format!("s3://{bucket}"), prefix),
            Self::Azure {
                account: Some(account),
                container,
                prefix,
            } => join(
                f,
                format!("https://{account}{AZURE_HOST_SUFFIX}/{container}"),
                prefix,
            ),
            Self::Azure {
                account: None,
                container,
                prefix,
            } => join(f, format!("az://{container}"), prefix),
            Self::Hf { repo, revision } => write!(f, "hf://{repo}:{revision}"),
            Self::Http { base } => write!(f, "{}", without_secrets(base)),
        }
    }
}

/// A URL as logs and errors may show it: user info and query (where tokens and signatures
/// travel) masked.
fn without_secrets(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (host, path) = split_first(rest);
    let host = match host.rsplit_once('@') {
        Some((_, h)) => format!("***@{h}"),
        None => host.to_string(),
    };
    let path = match path.split_once('?') {
        Some((p, _)) => format!("{p}?***"),
        None => path.to_string(),
    };
    format!("{scheme}://{host}/{path}")
}

fn split_first(s: &str) -> (&str, &str) {
    s.split_once('/').unwrap_or((s, ""))
}

/// Object keys are not paths, but the downloaded files are: `..`, `.` and empty segments would
/// name other places on disk, so they are refused here rather than normalised.
fn clean_prefix(uri: &str, prefix: &str) -> Result<String, StorageError> {
    let prefix = prefix.trim_end_matches('/');
    if !prefix.is_empty()
        && prefix
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(StorageError::Invalid {
            uri: uri.to_string(),
            reason: "empty, '.' and '..' path segments are not allowed".into(),
        });
    }
    Ok(prefix.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(uri: &str) -> RemoteUri {
        RemoteUri::parse(uri).unwrap().unwrap()
    }

    #[test]
    fn every_scheme_parses_into_its_parts_and_prints_back() {
        assert_eq!(
            ok("gs://kfserving-examples/models/tensorflow/flowers/"),
            RemoteUri::Gcs {
                bucket: "kfserving-examples".into(),
                prefix: "models/tensorflow/flowers".into()
            }
        );
        assert_eq!(
            ok("s3://b"),
            RemoteUri::S3 {
                bucket: "b".into(),
                prefix: "".into()
            }
        );
        assert_eq!(
            ok("https://acct.blob.core.windows.net/models/m1"),
            RemoteUri::Azure {
                account: Some("acct".into()),
                container: "models".into(),
                prefix: "m1".into()
            }
        );
        assert_eq!(
            ok("az://models/a/b"),
            RemoteUri::Azure {
                account: None,
                container: "models".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(
            ok("hf://org/repo:v1.0"),
            RemoteUri::Hf {
                repo: "org/repo".into(),
                revision: "v1.0".into()
            }
        );
        assert_eq!(ok("hf://org/repo").to_string(), "hf://org/repo:main");
        for uri in [
            "gs://kfserving-examples/models/tensorflow/flowers",
            "s3://b",
            "https://acct.blob.core.windows.net/models/m1",
            "az://models/a/b",
        ] {
            assert_eq!(ok(uri).to_string(), uri);
        }
    }

    #[test]
    fn other_uris_are_not_remote() {
        assert_eq!(
            ok("https://example.com/models/m/"),
            RemoteUri::Http {
                base: "https://example.com/models/m".into()
            }
        );
        assert_eq!(
            ok("https://user:pw@example.com/m?sig=abc").to_string(),
            "https://***@example.com/m?***"
        );
        for uri in ["/models/m", "file:///m", "pvc://claim/m"] {
            assert_eq!(RemoteUri::parse(uri).unwrap(), None, "{uri}");
        }
    }

    #[test]
    fn hostile_uris_are_refused_with_the_reason() {
        for uri in [
            "gs:///prefix",
            "s3://b/../etc",
            "s3://b/a//b",
            "s3://b/./a",
            "gs://b/a\n",
            "az:///x",
            "https://.blob.core.windows.net/c",
            "https://acct.blob.core.windows.net/",
            "http:///m",
            "hf://org",
            "hf://org/repo/extra",
            "hf://../repo",
            "hf://org/repo:",
            "hf://org/repo:../../x",
            "hf://org/re po",
        ] {
            let err = RemoteUri::parse(uri).unwrap_err();
            assert!(matches!(err, StorageError::Invalid { .. }), "{uri}: {err}");
        }
    }
}
