//! InferenceService manifests: KServe's `serving.kserve.io/v1beta1` as is, or Siesta's own
//! apiVersion with the same spec. Parsing checks every field Siesta acts on and names the field
//! path of anything wrong.

mod autoscaling;
pub mod files;
pub mod raw;
mod tiers;

use std::collections::BTreeMap;
use std::time::Duration;

pub use autoscaling::{ClusterDefaults, ComponentScaling, ScaleMetric};
use raw::{RawComponent, RawInferenceService};
pub use tiers::TierPolicy;

pub const KSERVE_API_VERSION: &str = "serving.kserve.io/v1beta1";
/// The group and version of Siesta's own InferenceService CRD (`siesta crd`).
pub const SIESTA_API_VERSION: &str = "serving.siesta.dev/v1beta1";
/// KServe's default request timeout (seconds), as Knative's revision timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct ManifestError {
    /// Where in the document, e.g. `spec.predictor.scaleMetric`.
    pub path: String,
    pub reason: String,
}

fn err(path: impl Into<String>, reason: impl Into<String>) -> ManifestError {
    ManifestError {
        path: path.into(),
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct InferenceService {
    pub api_version: String,
    pub name: String,
    pub namespace: String,
    pub predictor: Component,
    pub transformer: Option<Component>,
    /// Field paths that were accepted but have no effect in Siesta (yet).
    pub ignored: Vec<String>,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ComponentKind {
    Predictor,
    Transformer,
}

impl ComponentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentKind::Predictor => "predictor",
            ComponentKind::Transformer => "transformer",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Component {
    pub kind: ComponentKind,
    pub workload: Workload,
    /// Hard per-replica limit on requests in flight; 0 = unlimited.
    pub container_concurrency: u32,
    pub timeout: Duration,
    pub scaling: ComponentScaling,
    pub tiers: TierPolicy,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Workload {
    Model(ModelRef),
    Containers(Vec<Container>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelRef {
    pub format: String,
    pub format_version: Option<String>,
    pub storage_uri: Option<String>,
    pub runtime: Option<String>,
    pub protocol_version: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Container {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// Parses every InferenceService in a (multi-document) YAML text.
pub fn parse(
    text: &str,
    defaults: &ClusterDefaults,
) -> Result<Vec<InferenceService>, ManifestError> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(doc)
            .map_err(|e| err(format!("document {}", i + 1), e.to_string()))?;
        if value.is_null() {
            continue;
        }
        out.push(from_document(
            value,
            &format!("document {}", i + 1),
            defaults,
        )?);
    }
    if out.is_empty() {
        return Err(err("document", "no InferenceService in the file"));
    }
    Ok(out)
}

use serde::Deserialize;

/// One InferenceService from an already-structured document (an object read from the API
/// server, as JSON), checked exactly as a manifest file is.
pub fn from_json(
    value: serde_json::Value,
    defaults: &ClusterDefaults,
) -> Result<InferenceService, ManifestError> {
    from_document(value, "document", defaults)
}

fn from_document<'de, D: serde::Deserializer<'de>>(
    document: D,
    whole: &str,
    defaults: &ClusterDefaults,
) -> Result<InferenceService, ManifestError>
where
    D::Error: std::fmt::Display,
{
    let raw: RawInferenceService = serde_path_to_error::deserialize(document).map_err(|e| {
        let path = e.path().to_string();
        err(
            if path == "." { whole.to_string() } else { path },
            e.into_inner().to_string(),
        )
    })?;
    check(raw, defaults)
}

/// Checks an InferenceService as written (from a file, an API-server document, or the typed
/// custom resource converted with `TryFrom`) into the form Siesta acts on.
pub fn check(
    raw: RawInferenceService,
    defaults: &ClusterDefaults,
) -> Result<InferenceService, ManifestError> {
    if raw.api_version != KSERVE_API_VERSION && raw.api_version != SIESTA_API_VERSION {
        return Err(err(
            "apiVersion",
            format!(
                "'{}' is not supported (use {KSERVE_API_VERSION} or {SIESTA_API_VERSION})",
                raw.api_version
            ),
        ));
    }
    if raw.kind != "InferenceService" {
        return Err(err(
            "kind",
            format!("'{}' is not InferenceService", raw.kind),
        ));
    }
    let name = raw.metadata.name;
    if !is_dns_label(&name) {
        return Err(err(
            "metadata.name",
            format!(
                "'{name}' must be a DNS label: lowercase letters, digits and '-', at most 63 characters"
            ),
        ));
    }
    let mut ignored = Vec::new();
    if raw.spec.explainer.is_some() {
        ignored.push("spec.explainer".to_string());
    }
    let isvc_annotations = &raw.metadata.annotations;
    let predictor = component(
        raw.spec.predictor,
        ComponentKind::Predictor,
        isvc_annotations,
        defaults,
        &mut ignored,
    )?;
    let transformer = raw
        .spec
        .transformer
        .map(|t| {
            component(
                t,
                ComponentKind::Transformer,
                isvc_annotations,
                defaults,
                &mut ignored,
            )
        })
        .transpose()?;
    Ok(InferenceService {
        api_version: raw.api_version,
        name,
        namespace: raw.metadata.namespace.unwrap_or_else(|| "default".into()),
        predictor,
        transformer,
        ignored,
    })
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn non_negative(path: &str, v: Option<i64>) -> Result<Option<u32>, ManifestError> {
    v.map(|v| {
        u32::try_from(v).map_err(|_| err(path, format!("{v} must be between 0 and {}", u32::MAX)))
    })
    .transpose()
}

fn component(
    raw: RawComponent,
    kind: ComponentKind,
    isvc_annotations: &BTreeMap<String, String>,
    defaults: &ClusterDefaults,
    ignored: &mut Vec<String>,
) -> Result<Component, ManifestError> {
    let at = |field: &str| format!("spec.{}.{field}", kind.as_str());
    for key in raw.other.keys() {
        ignored.push(at(key));
    }
    let workload = match (raw.model, raw.containers) {
        (Some(_), Some(_)) => {
            return Err(err(at("model"), "set either model or containers, not both"));
        }
        (None, None) => return Err(err(at("model"), "a component needs a model or containers")),
        (Some(m), None) => {
            if m.model_format.name.trim().is_empty() {
                return Err(err(at("model.modelFormat.name"), "must not be empty"));
            }
            for key in m.other.keys() {
                ignored.push(at(&format!("model.{key}")));
            }
            let protocol_version = m.protocol_version.unwrap_or_else(|| "v1".into());
            if !["v1", "v2", "grpc-v1", "grpc-v2"].contains(&protocol_version.as_str()) {
                return Err(err(
                    at("model.protocolVersion"),
                    format!("'{protocol_version}' is not one of v1, v2, grpc-v1, grpc-v2"),
                ));
            }
            Workload::Model(ModelRef {
                format: m.model_format.name,
                format_version: m.model_format.version,
                storage_uri: m.storage_uri,
                runtime: m.runtime,
                protocol_version,
                args: m.args,
                env: m
                    .env
                    .into_iter()
                    .map(|e| (e.name, e.value.unwrap_or_default()))
                    .collect(),
            })
        }
        (None, Some(containers)) => {
            if containers.is_empty() {
                return Err(err(at("containers"), "must hold at least one container"));
            }
            let mut out = Vec::new();
            for (i, c) in containers.into_iter().enumerate() {
                if c.image.trim().is_empty() {
                    return Err(err(
                        at(&format!("containers[{i}].image")),
                        "must not be empty",
                    ));
                }
                for key in c.other.keys() {
                    ignored.push(at(&format!("containers[{i}].{key}")));
                }
                out.push(Container {
                    name: c.name.unwrap_or_else(|| "kserve-container".into()),
                    image: c.image,
                    command: c.command,
                    args: c.args,
                    env: c
                        .env
                        .into_iter()
                        .map(|e| (e.name, e.value.unwrap_or_default()))
                        .collect(),
                });
            }
            Workload::Containers(out)
        }
    };
    let container_concurrency =
        non_negative(&at("containerConcurrency"), raw.container_concurrency)?.unwrap_or(0);
    let timeout = match raw.timeout {
        None => DEFAULT_TIMEOUT,
        Some(t) if t > 0 => Duration::from_secs(t as u64),
        Some(t) => {
            return Err(err(
                at("timeout"),
                format!("{t} must be a positive number of seconds"),
            ));
        }
    };
    let min_replicas = non_negative(&at("minReplicas"), raw.min_replicas)?;
    let max_replicas = non_negative(&at("maxReplicas"), raw.max_replicas)?;
    let scale_target = match raw.scale_target {
        None => None,
        Some(t) if t >= 1 => Some(t as f64),
        Some(t) => return Err(err(at("scaleTarget"), format!("{t} must be at least 1"))),
    };
    // Component annotations override the InferenceService's.
    let mut annotations = isvc_annotations.clone();
    annotations.extend(raw.annotations);
    let scaling = autoscaling::resolve(
        &autoscaling::ComponentFields {
            path_prefix: format!("spec.{}", kind.as_str()),
            min_replicas,
            max_replicas,
            scale_target,
            scale_metric: raw.scale_metric,
            container_concurrency,
        },
        &annotations,
        defaults,
    )?;
    let tiers = tiers::resolve(&annotations)?;
    Ok(Component {
        kind,
        workload,
        container_concurrency,
        timeout,
        scaling,
        tiers,
    })
}
