//! The typed custom resource as the lifecycle's manifest "as written"
//! ([`siesta_lifecycle::manifest::raw`]), so that the controller checks an InferenceService
//! with the same checker, the same defaults and the same field paths as `siesta up` checks a
//! file. Fields the CRD keeps but Siesta does not act on (tolerations, nodeSelector, a model's
//! `resources`, a container's ports...) go to the manifest's `other` maps, which the checker
//! reports as ignored, exactly as for a file.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, EnvVar};
use kube::ResourceExt;
use serde::Serialize;
use siesta_lifecycle::manifest::raw::{
    RawComponent, RawContainer, RawEnv, RawInferenceService, RawMetadata, RawModel, RawModelFormat,
    RawSpec,
};
use siesta_lifecycle::manifest::{ManifestError, SIESTA_API_VERSION};

use crate::crd::{ComponentSpec, InferenceService, ModelSpec, ScaleMetric};

type Other = BTreeMap<String, serde_yaml::Value>;

impl TryFrom<&InferenceService> for RawInferenceService {
    type Error = ManifestError;

    fn try_from(isvc: &InferenceService) -> Result<Self, ManifestError> {
        Ok(RawInferenceService {
            // The resource may live under KServe's group (`siesta crd --group`); the spec is the
            // same, and the checker accepts both.
            api_version: SIESTA_API_VERSION.to_string(),
            kind: "InferenceService".to_string(),
            metadata: RawMetadata {
                name: isvc.name_any(),
                namespace: isvc.namespace(),
                annotations: isvc.metadata.annotations.clone().unwrap_or_default(),
            },
            spec: RawSpec {
                predictor: component(&isvc.spec.predictor, "spec.predictor")?,
                transformer: isvc
                    .spec
                    .transformer
                    .as_ref()
                    .map(|t| component(t, "spec.transformer"))
                    .transpose()?,
                explainer: None,
            },
        })
    }
}

fn component(c: &ComponentSpec, at: &str) -> Result<RawComponent, ManifestError> {
    let mut other = Other::new();
    put(&mut other, at, "scaleMetricType", &c.scale_metric_type)?;
    put(&mut other, at, "tolerations", &c.tolerations)?;
    put(&mut other, at, "nodeSelector", &c.node_selector)?;
    put(
        &mut other,
        at,
        "serviceAccountName",
        &c.service_account_name,
    )?;
    if !c.labels.is_empty() {
        put(&mut other, at, "labels", &Some(&c.labels))?;
    }
    Ok(RawComponent {
        min_replicas: c.min_replicas.map(i64::from),
        max_replicas: c.max_replicas.map(i64::from),
        scale_target: c.scale_target.map(i64::from),
        scale_metric: c.scale_metric.map(|m| metric_name(m).to_string()),
        container_concurrency: c.container_concurrency,
        timeout: c.timeout,
        annotations: c.annotations.clone(),
        model: c
            .model
            .as_ref()
            .map(|m| model(m, &format!("{at}.model")))
            .transpose()?,
        containers: c
            .containers
            .as_ref()
            .map(|cs| {
                cs.iter()
                    .enumerate()
                    .map(|(i, ct)| container(ct, &format!("{at}.containers[{i}]")))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?,
        other,
    })
}

fn metric_name(m: ScaleMetric) -> &'static str {
    match m {
        ScaleMetric::Concurrency => "concurrency",
        ScaleMetric::Rps => "rps",
        ScaleMetric::Cpu => "cpu",
        ScaleMetric::Memory => "memory",
    }
}

fn model(m: &ModelSpec, at: &str) -> Result<RawModel, ManifestError> {
    let mut other = Other::new();
    put(&mut other, at, "resources", &m.resources)?;
    Ok(RawModel {
        model_format: RawModelFormat {
            name: m.model_format.name.clone(),
            version: m.model_format.version.clone(),
        },
        storage_uri: m.storage_uri.clone(),
        runtime: m.runtime.clone(),
        protocol_version: m.protocol_version.clone(),
        args: m.args.clone(),
        env: env(&m.env),
        other,
    })
}

/// A container's fields beyond the five Siesta reads stay untyped: the checker only names them.
fn container(c: &Container, at: &str) -> Result<RawContainer, ManifestError> {
    let image = c.image.clone().ok_or_else(|| ManifestError {
        path: format!("{at}.image"),
        reason: "missing field `image`".into(),
    })?;
    let mut other = match to_yaml(at, c)? {
        serde_yaml::Value::Mapping(fields) => fields
            .into_iter()
            .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v)))
            .collect::<Other>(),
        _ => Other::new(),
    };
    for read in ["name", "image", "command", "args", "env"] {
        other.remove(read);
    }
    Ok(RawContainer {
        name: c.name.clone().into(),
        image,
        command: c.command.clone().unwrap_or_default(),
        args: c.args.clone().unwrap_or_default(),
        env: env(c.env.as_deref().unwrap_or_default()),
        other,
    })
}

fn env(vars: &[EnvVar]) -> Vec<RawEnv> {
    vars.iter()
        .map(|v| RawEnv {
            name: v.name.clone(),
            value: v.value.clone(),
        })
        .collect()
}

fn put<T: Serialize>(
    other: &mut Other,
    at: &str,
    key: &str,
    value: &Option<T>,
) -> Result<(), ManifestError> {
    if let Some(v) = value {
        other.insert(key.to_string(), to_yaml(&format!("{at}.{key}"), v)?);
    }
    Ok(())
}

fn to_yaml<T: Serialize>(at: &str, v: &T) -> Result<serde_yaml::Value, ManifestError> {
    serde_yaml::to_value(v).map_err(|e| ManifestError {
        path: at.to_string(),
        reason: e.to_string(),
    })
}
