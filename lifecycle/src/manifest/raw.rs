//! The InferenceService manifest as written (KServe `serving.kserve.io/v1beta1` field names);
//! [`super::check`] turns it into checked domain types. Files and API-server documents
//! deserialize into it; the cluster's typed custom resource converts into it (`siesta-k8s`).

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawInferenceService {
    pub api_version: String,
    pub kind: String,
    pub metadata: RawMetadata,
    pub spec: RawSpec,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RawMetadata {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawSpec {
    pub predictor: RawComponent,
    #[serde(default)]
    pub transformer: Option<RawComponent>,
    #[serde(default)]
    pub explainer: Option<serde_yaml::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawComponent {
    pub min_replicas: Option<i64>,
    pub max_replicas: Option<i64>,
    pub scale_target: Option<i64>,
    pub scale_metric: Option<String>,
    pub container_concurrency: Option<i64>,
    pub timeout: Option<i64>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub model: Option<RawModel>,
    #[serde(default)]
    pub containers: Option<Vec<RawContainer>>,
    /// Fields Siesta does not act on (serviceAccountName, nodeSelector, logger, ...): accepted so
    /// that KServe manifests apply unchanged, and reported as ignored.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_yaml::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawModel {
    pub model_format: RawModelFormat,
    #[serde(default)]
    pub storage_uri: Option<String>,
    #[serde(default)]
    pub runtime: Option<String>,
    #[serde(default)]
    pub protocol_version: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<RawEnv>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_yaml::Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RawModelFormat {
    pub name: String,
    #[serde(default)]
    pub version: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RawContainer {
    #[serde(default)]
    pub name: Option<String>,
    pub image: String,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<RawEnv>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_yaml::Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RawEnv {
    pub name: String,
    #[serde(default)]
    pub value: Option<String>,
}
