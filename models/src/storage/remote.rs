//! Opens the object store behind a [`RemoteUri`] with the credentials and endpoints KServe's storage
//! initializer reads, from an explicit environment (so tests pass theirs and nothing reads globals
//! behind their back), falling back to anonymous access where no credentials are configured, as
//! KServe does for public buckets.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

use super::aws_profile;
use super::uri::RemoteUri;
use crate::error::StorageError;

/// The variables storage reads, snapshotted once per resolution.
#[derive(Debug, Clone, Default)]
pub struct StorageEnv(BTreeMap<String, String>);

impl StorageEnv {
    pub fn process() -> Self {
        Self(std::env::vars().collect())
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn flag(&self, key: &str) -> Option<bool> {
        self.get(key)
            .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
    }

    fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.0
            .iter()
            .filter(move |(k, v)| k.starts_with(prefix) && !v.is_empty())
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    fn home(&self) -> Option<PathBuf> {
        self.get("HOME").map(PathBuf::from)
    }
}

/// How a store was opened, for logs and errors.
#[derive(Debug, Clone)]
pub struct Opened {
    pub store: Arc<dyn ObjectStore>,
    pub anonymous: bool,
}

impl Opened {
    fn new(store: impl ObjectStore, anonymous: bool) -> Self {
        Self {
            store: Arc::new(store),
            anonymous,
        }
    }
}

/// Requests are retried by object_store (connection errors, 5xx, 429) for at most this long: long
/// enough for a store's hiccup, short enough that a replica whose store is down reports it soon.
fn retry() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            base: 2.0,
        },
        max_retries: 4,
        retry_timeout: Duration::from_secs(60),
    }
}

/// No whole-request timeout: a 10 GB model takes as long as it takes. A stalled body is cut by
/// the downloader's idle timeout instead.
pub(super) fn client_options(allow_http: bool, verify_tls: bool) -> ClientOptions {
    ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(10))
        .with_timeout_disabled()
        .with_allow_http(allow_http)
        .with_allow_invalid_certificates(!verify_tls)
}

pub fn open(uri: &RemoteUri, env: &StorageEnv) -> Result<Opened, StorageError> {
    let built = match uri {
        RemoteUri::S3 { bucket, .. } => s3(bucket, env),
        RemoteUri::Gcs { bucket, .. } => gcs(bucket, env),
        RemoteUri::Azure {
            account, container, ..
        } => azure(account.as_deref(), container, env),
        RemoteUri::Hf { .. } | RemoteUri::Http { .. } => {
            return Err(StorageError::Invalid {
                uri: uri.to_string(),
                reason: "the Hub and web servers have no object store (storage::hf, storage::http)"
                    .into(),
            });
        }
    };
    built.map_err(|e| StorageError::Invalid {
        uri: uri.to_string(),
        reason: format!("cannot configure the store: {e}"),
    })
}

/// `S3_ENDPOINT` (host:port, KServe's) with `S3_USE_HTTPS`, or `AWS_ENDPOINT_URL` (a URL, the AWS
/// SDKs'). A custom endpoint means path-style requests, which S3-compatible servers expect.
fn s3_endpoint(env: &StorageEnv) -> Option<String> {
    if let Some(url) = env
        .get("AWS_ENDPOINT_URL_S3")
        .or(env.get("AWS_ENDPOINT_URL"))
    {
        return Some(url.to_string());
    }
    let host = env.get("S3_ENDPOINT")?;
    if host.contains("://") {
        return Some(host.to_string());
    }
    let https = env.flag("S3_USE_HTTPS").unwrap_or(true);
    Some(format!("{}://{host}", if https { "https" } else { "http" }))
}

fn s3(bucket: &str, env: &StorageEnv) -> object_store::Result<Opened> {
    let mut b = AmazonS3Builder::new().with_bucket_name(bucket);
    for (key, value) in env.with_prefix("AWS_") {
        // The endpoint is chosen below; unknown AWS_ variables belong to other tools.
        if key.starts_with("AWS_ENDPOINT_URL") || key == "AWS_PROFILE" {
            continue;
        }
        if let Ok(k) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
            b = b.with_config(k, value);
        }
    }
    let region = env
        .get("AWS_REGION")
        .or(env.get("AWS_DEFAULT_REGION"))
        .unwrap_or("us-east-1");
    b = b.with_region(region);
    let endpoint = s3_endpoint(env);
    if let Some(endpoint) = &endpoint {
        b = b
            .with_endpoint(endpoint)
            .with_virtual_hosted_style_request(false);
    }
    let has_keys = env.get("AWS_ACCESS_KEY_ID").is_some();
    let mut anonymous = env
        .flag("awsAnonymousCredential")
        .or(env.flag("AWS_ANONYMOUS_CREDENTIAL"))
        .unwrap_or(false);
    if !has_keys && !anonymous {
        if let Some(creds) = aws_profile::read(env)? {
            b = b
                .with_access_key_id(creds.access_key_id)
                .with_secret_access_key(creds.secret_access_key);
            if let Some(token) = creds.session_token {
                b = b.with_token(token);
            }
        } else if !aws_role_configured(env) && !on_cloud_vm("Amazon EC2") {
            anonymous = true;
        }
    }
    let verify = env.flag("S3_VERIFY_SSL").unwrap_or(true);
    let allow_http = env.flag("AWS_ALLOW_HTTP").unwrap_or(false)
        || endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"));
    let store = b
        .with_skip_signature(anonymous)
        .with_client_options(client_options(allow_http, verify))
        .with_retry(retry())
        .build()?;
    Ok(Opened::new(store, anonymous))
}

fn aws_role_configured(env: &StorageEnv) -> bool {
    env.get("AWS_WEB_IDENTITY_TOKEN_FILE").is_some()
        || env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some()
        || env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some()
}

/// Instance credentials (EC2 IMDS, GCE metadata) are only tried on such a VM: elsewhere the
/// metadata address times out, and anonymous access is what a user without credentials means.
/// The DMI board/product name is how the cloud SDKs detect them too.
fn on_cloud_vm(vendor: &str) -> bool {
    ["board_vendor", "product_name", "sys_vendor"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(Path::new("/sys/class/dmi/id").join(f)).ok())
        .any(|v| v.trim().starts_with(vendor))
}

/// `STORAGE_EMULATOR_HOST` is what Google's client libraries (and so KServe's initializer) read
/// to talk to an emulator without authentication.
fn gcs(bucket: &str, env: &StorageEnv) -> object_store::Result<Opened> {
    let mut b = GoogleCloudStorageBuilder::new().with_bucket_name(bucket);
    let mut anonymous = false;
    let mut allow_http = false;
    if let Some(host) = env.get("STORAGE_EMULATOR_HOST") {
        let url = if host.contains("://") {
            host.trim_end_matches('/').to_string()
        } else {
            format!("http://{host}")
        };
        allow_http = url.starts_with("http://");
        let key = serde_json::json!({
            "disable_oauth": true,
            "gcs_base_url": url,
            "client_email": "",
            "private_key": "",
            "private_key_id": "",
        });
        b = b.with_service_account_key(key.to_string());
    } else {
        for (key, value) in env.with_prefix("GOOGLE_") {
            if let Ok(k) = key.to_ascii_lowercase().parse::<GoogleConfigKey>() {
                b = b.with_config(k, value);
            }
        }
        if let Some(path) = env.get("GOOGLE_APPLICATION_CREDENTIALS") {
            b = b.with_application_credentials(path);
        }
        let well_known = env
            .home()
            .map(|h| h.join(".config/gcloud/application_default_credentials.json"))
            .is_some_and(|p| p.is_file());
        let configured = env.get("GOOGLE_APPLICATION_CREDENTIALS").is_some()
            || env.get("GOOGLE_SERVICE_ACCOUNT").is_some()
            || env.get("GOOGLE_SERVICE_ACCOUNT_PATH").is_some()
            || env.get("GOOGLE_SERVICE_ACCOUNT_KEY").is_some();
        anonymous = !configured && !well_known && !on_cloud_vm("Google");
    }
    let store = b
        .with_skip_signature(anonymous)
        .with_client_options(client_options(allow_http, true))
        .with_retry(retry())
        .build()?;
    Ok(Opened::new(store, anonymous))
}

/// KServe's Azure secret sets `AZ_CLIENT_ID`, `AZ_CLIENT_SECRET`, `AZ_TENANT_ID`; the Azure SDKs read
/// `AZURE_*`. Both are taken. `AZURE_STORAGE_USE_EMULATOR` (with `AZURITE_BLOB_STORAGE_URL`) is
/// Azurite.
fn azure(account: Option<&str>, container: &str, env: &StorageEnv) -> object_store::Result<Opened> {
    let mut b = MicrosoftAzureBuilder::new().with_container_name(container);
    for (kserve, azure) in [
        ("AZ_CLIENT_ID", "azure_client_id"),
        ("AZ_CLIENT_SECRET", "azure_client_secret"),
        ("AZ_TENANT_ID", "azure_tenant_id"),
    ] {
        if let Some(value) = env.get(kserve) {
            b = b.with_config(azure.parse().expect("a known Azure key"), value);
        }
    }
    for (key, value) in env.with_prefix("AZURE_") {
        if let Ok(k) = key.to_ascii_lowercase().parse::<AzureConfigKey>() {
            b = b.with_config(k, value);
        }
    }
    if let Some(account) = account {
        b = b.with_account(account);
    }
    let emulator = env.flag("AZURE_STORAGE_USE_EMULATOR").unwrap_or(false);
    let configured = emulator
        || [
            "AZURE_STORAGE_ACCOUNT_KEY",
            "AZURE_STORAGE_ACCESS_KEY",
            "AZURE_STORAGE_SAS_TOKEN",
            "AZURE_STORAGE_SAS_KEY",
            "AZURE_CLIENT_ID",
            "AZ_CLIENT_ID",
            "AZURE_FEDERATED_TOKEN_FILE",
        ]
        .iter()
        .any(|k| env.get(k).is_some());
    let anonymous = !configured && !on_cloud_vm("Microsoft");
    let allow_http = emulator
        || env.flag("AZURE_ALLOW_HTTP").unwrap_or(false)
        || env
            .get("AZURE_STORAGE_ENDPOINT")
            .or(env.get("AZURE_ENDPOINT"))
            .is_some_and(|e| e.starts_with("http://"));
    let store = b
        .with_skip_signature(anonymous)
        .with_client_options(client_options(allow_http, true))
        .with_retry(retry())
        .build()?;
    Ok(Opened::new(store, anonymous))
}
