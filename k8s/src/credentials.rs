//! KServe's storage-credential convention: the secrets listed by the component's service account
//! become the replica's storage environment. The values never pass through the controller: env
//! entries are `secretKeyRef`s and a GCS key file is a mounted secret volume; only the secrets'
//! key names and annotations are read.
//!
//! | secret holds | replica gets |
//! |---|---|
//! | `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` | the same env; annotations `serving.kserve.io/s3-endpoint`, `-usehttps`, `-region`, `-verifyssl`, `-useanoncredential` as `S3_ENDPOINT`, `S3_USE_HTTPS`, `AWS_REGION`, `S3_VERIFY_SSL`, `awsAnonymousCredential` |
//! | `gcloud-application-credentials.json` | the file at `/var/secrets/<secret>/`, and `GOOGLE_APPLICATION_CREDENTIALS` naming it |
//! | `AZ_CLIENT_ID`, `AZ_CLIENT_SECRET`, `AZ_TENANT_ID`, `AZ_SUBSCRIPTION_ID`, `AZURE_STORAGE_ACCESS_KEY` | the same env |
//! | `HF_TOKEN` | the same env |

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use serde_json::{Value, json};

const S3_KEYS: [&str; 2] = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"];
const AZURE_KEYS: [&str; 5] = [
    "AZ_CLIENT_ID",
    "AZ_CLIENT_SECRET",
    "AZ_TENANT_ID",
    "AZ_SUBSCRIPTION_ID",
    "AZURE_STORAGE_ACCESS_KEY",
];
const HF_KEYS: [&str; 1] = ["HF_TOKEN"];
const GCS_KEY_FILE: &str = "gcloud-application-credentials.json";
const S3_ANNOTATIONS: [(&str, &str); 5] = [
    ("serving.kserve.io/s3-endpoint", "S3_ENDPOINT"),
    ("serving.kserve.io/s3-usehttps", "S3_USE_HTTPS"),
    ("serving.kserve.io/s3-region", "AWS_REGION"),
    ("serving.kserve.io/s3-verifyssl", "S3_VERIFY_SSL"),
    (
        "serving.kserve.io/s3-useanoncredential",
        "awsAnonymousCredential",
    ),
];

/// What a replica's pod gains from its service account's secrets.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct StorageCredentials {
    pub env: Vec<Value>,
    pub volumes: Vec<Value>,
    pub mounts: Vec<Value>,
}

impl StorageCredentials {
    /// The first secret that provides a variable wins, as the secrets are listed.
    pub fn from_secrets(secrets: &[Secret]) -> Self {
        let mut out = Self::default();
        let mut set: BTreeMap<String, ()> = BTreeMap::new();
        let mut add_env = |out: &mut Self, name: &str, value: Value| {
            if set.insert(name.to_string(), ()).is_none() {
                let mut entry = json!({ "name": name });
                entry
                    .as_object_mut()
                    .expect("object")
                    .extend(value.as_object().cloned().expect("env entries are objects"));
                out.env.push(entry);
            }
        };
        for secret in secrets {
            let Some(secret_name) = secret.metadata.name.as_deref() else {
                continue;
            };
            let keys: Vec<&str> = secret
                .data
                .iter()
                .flat_map(|d| d.keys())
                .chain(secret.string_data.iter().flat_map(|d| d.keys()))
                .map(String::as_str)
                .collect();
            let from_secret = |key: &str| json!({"valueFrom": {"secretKeyRef": {"name": secret_name, "key": key}}});
            if S3_KEYS.iter().all(|k| keys.contains(k)) {
                for key in S3_KEYS {
                    add_env(&mut out, key, from_secret(key));
                }
                let annotations = secret.metadata.annotations.clone().unwrap_or_default();
                for (annotation, var) in S3_ANNOTATIONS {
                    if let Some(v) = annotations.get(annotation) {
                        add_env(&mut out, var, json!({ "value": v }));
                    }
                }
            }
            for key in AZURE_KEYS.iter().chain(&HF_KEYS) {
                if keys.contains(key) {
                    add_env(&mut out, key, from_secret(key));
                }
            }
            if keys.contains(&GCS_KEY_FILE) {
                let volume = format!("storage-secret-{secret_name}");
                let dir = format!("/var/secrets/{secret_name}");
                out.volumes
                    .push(json!({"name": volume, "secret": {"secretName": secret_name}}));
                out.mounts
                    .push(json!({"name": volume, "mountPath": dir, "readOnly": true}));
                add_env(
                    &mut out,
                    "GOOGLE_APPLICATION_CREDENTIALS",
                    json!({ "value": format!("{dir}/{GCS_KEY_FILE}") }),
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(name: &str, keys: &[&str], annotations: &[(&str, &str)]) -> Secret {
        serde_json::from_value(json!({
            "metadata": {
                "name": name,
                "annotations": annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
            },
            "data": keys.iter().map(|k| (k.to_string(), "c2VjcmV0")).collect::<BTreeMap<_, _>>(),
        }))
        .unwrap()
    }

    #[test]
    fn kserve_secrets_become_references_never_values() {
        let creds = StorageCredentials::from_secrets(&[
            secret(
                "s3creds",
                &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
                &[
                    ("serving.kserve.io/s3-endpoint", "minio.storage:9000"),
                    ("serving.kserve.io/s3-usehttps", "0"),
                ],
            ),
            secret("gcs", &[GCS_KEY_FILE], &[]),
            secret("hf", &["HF_TOKEN"], &[]),
            // Only one of the two S3 keys: not an S3 secret.
            secret("partial", &["AWS_ACCESS_KEY_ID"], &[]),
            // A second S3 secret does not override the first.
            secret(
                "s3-other",
                &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
                &[],
            ),
        ]);
        let env: BTreeMap<&str, &Value> = creds
            .env
            .iter()
            .map(|e| (e["name"].as_str().unwrap(), e))
            .collect();
        assert_eq!(
            env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"],
            json!({"name": "s3creds", "key": "AWS_ACCESS_KEY_ID"})
        );
        assert_eq!(env["S3_ENDPOINT"]["value"], "minio.storage:9000");
        assert_eq!(env["S3_USE_HTTPS"]["value"], "0");
        assert_eq!(
            env["GOOGLE_APPLICATION_CREDENTIALS"]["value"],
            "/var/secrets/gcs/gcloud-application-credentials.json"
        );
        assert_eq!(env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"], "hf");
        assert_eq!(creds.env.len(), 6);
        assert_eq!(
            creds.volumes,
            vec![json!({"name": "storage-secret-gcs", "secret": {"secretName": "gcs"}})]
        );
        assert_eq!(creds.mounts[0]["mountPath"], "/var/secrets/gcs");
        let text = serde_json::to_string(&creds.env).unwrap();
        assert!(!text.contains("c2VjcmV0"), "no secret value is copied");
    }
}
