//! What one InferenceService component should be in the cluster: a Deployment running
//! `siesta serve` (or the manifest's own containers) and a Service in front of its pods.
//!
//! The Deployment never states `replicas`: the autoscaler owns that field (through the scale
//! subresource), the controller owns the rest, and server-side apply keeps the two apart. A new
//! Deployment starts at Kubernetes' default of one replica, as Knative's initial scale does.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Service};
use kube::ResourceExt;
use serde_json::{Value, json};

use crate::crd::{ComponentSpec, InferenceService};
use crate::error::ControllerError;

pub const LABEL_SERVICE: &str = "serving.siesta.dev/inferenceservice";
pub const LABEL_COMPONENT: &str = "serving.siesta.dev/component";
pub const HTTP_PORT: i32 = 8080;
pub const GRPC_PORT: i32 = 8081;
const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// KServe's image transformer; Siesta runs its own transformer in its place.
const IMAGE_TRANSFORMER: &str = "kserve/image-transformer";

/// Cluster-wide settings of the controller.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The image that runs `siesta serve`.
    pub image: String,
    /// The gateway's in-cluster address, which transformers call the predictor through.
    pub gateway: String,
    /// How long a replica may take to load its model before Kubernetes restarts it; separate
    /// from any idle timeout, so a slow first load on a new GPU node is not cut short.
    pub startup_deadline_secs: i32,
    /// How long a stopping replica may drain in-flight requests.
    pub drain_secs: i64,
    /// `http://{name}.{namespace}.{domain}` is the URL in the status.
    pub domain: String,
    /// The API group the InferenceServices come from (Siesta's or KServe's).
    pub api_group: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            image: "ghcr.io/siesta-serving/siesta:0.1.0".into(),
            gateway: "siesta-gateway.siesta-system.svc".into(),
            startup_deadline_secs: 600,
            drain_secs: 30,
            domain: "example.com".into(),
            api_group: crate::crd::SIESTA_GROUP.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Predictor,
    Transformer,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Predictor => "predictor",
            Kind::Transformer => "transformer",
        }
    }
}

/// The components an InferenceService has, in order.
pub fn components(isvc: &InferenceService) -> Vec<(Kind, &ComponentSpec)> {
    let mut out = vec![(Kind::Predictor, &isvc.spec.predictor)];
    if let Some(t) = &isvc.spec.transformer {
        out.push((Kind::Transformer, t));
    }
    out
}

pub fn object_name(isvc: &InferenceService, kind: Kind) -> String {
    format!("{}-{}", isvc.name_any(), kind.as_str())
}

fn labels(isvc: &InferenceService, kind: Kind) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_SERVICE.to_string(), isvc.name_any()),
        (LABEL_COMPONENT.to_string(), kind.as_str().to_string()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "siesta".to_string(),
        ),
    ])
}

/// Name, namespace, labels, and the InferenceService as owner, so deleting it deletes them.
fn metadata(isvc: &InferenceService, kind: Kind, s: &Settings) -> Value {
    let mut m = json!({
        "name": object_name(isvc, kind),
        "namespace": isvc.namespace(),
        "labels": labels(isvc, kind),
    });
    // Only an object from the API server has a uid to own by (`siesta render` works offline).
    if isvc.uid().is_some() {
        m["ownerReferences"] = owner(isvc, s);
    }
    m
}

fn owner(isvc: &InferenceService, s: &Settings) -> Value {
    json!([{
        "apiVersion": format!("{}/v1beta1", s.api_group),
        "kind": "InferenceService",
        "name": isvc.name_any(),
        "uid": isvc.uid().unwrap_or_default(),
        "controller": true,
        "blockOwnerDeletion": true,
    }])
}

pub fn wants_gpu(c: &ComponentSpec) -> bool {
    let model_gpu = c
        .model
        .as_ref()
        .and_then(|m| m.resources.as_ref())
        .and_then(|r| r.limits.as_ref())
        .is_some_and(|l| l.contains_key(GPU_RESOURCE));
    let container_gpu = c.containers.iter().flatten().any(|ct| {
        ct.resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .is_some_and(|l| l.contains_key(GPU_RESOURCE))
    });
    model_gpu || container_gpu
}

/// The containers of one component's pods.
fn containers(
    isvc: &InferenceService,
    kind: Kind,
    c: &ComponentSpec,
    s: &Settings,
) -> Result<Vec<Value>, ControllerError> {
    let name = isvc.name_any();
    let invalid = |reason: String| ControllerError::Invalid {
        name: name.clone(),
        reason,
    };
    let probes = |port: i32| {
        json!({
            // Ready only once the model is loaded and warmed up (kserve#2882): /v2/health/ready
            // answers 503 until then.
            "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": port}, "periodSeconds": 2},
            "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": port}, "periodSeconds": 10},
            "startupProbe": {"httpGet": {"path": "/v2/health/live", "port": port}, "periodSeconds": 5,
                             "failureThreshold": (s.startup_deadline_secs / 5).max(1)},
            // Let the endpoint removal reach the gateway before SIGTERM starts the drain.
            "lifecycle": {"preStop": {"sleep": {"seconds": 3}}},
        })
    };
    let mut serve = vec![
        "serve".to_string(),
        "--host".into(),
        "0.0.0.0".into(),
        "--http-port".into(),
        HTTP_PORT.to_string(),
    ];
    if let Some(cc) = c.container_concurrency.filter(|&cc| cc > 0) {
        // queue-proxy's admission: CC running + 10 x CC queued.
        serve.extend(["--queue-limit".into(), (cc * 11).to_string()]);
    }
    serve.extend(["--drain-timeout".into(), format!("{}s", s.drain_secs)]);
    if let Some(m) = &c.model {
        serve.extend([
            "--model-name".into(),
            name.clone(),
            "--grpc-port".into(),
            GRPC_PORT.to_string(),
            "--model-format".into(),
            m.model_format.name.clone(),
            "--device".into(),
            if wants_gpu(c) { "auto" } else { "cpu" }.into(),
        ]);
        if let Some(uri) = &m.storage_uri {
            serve.extend(["--storage-uri".into(), uri.clone()]);
        }
        if let Some(rt) = &m.runtime {
            serve.extend(["--runtime".into(), rt.clone()]);
        }
        serve.extend(m.args.iter().cloned());
        let mut ct = json!({
            "name": "kserve-container",
            "image": s.image,
            "args": serve,
            "env": m.env,
            "ports": [{"name": "http", "containerPort": HTTP_PORT}, {"name": "grpc", "containerPort": GRPC_PORT}],
        });
        if let Some(r) = &m.resources {
            ct["resources"] = serde_json::to_value(r).expect("serializable");
        }
        merge(&mut ct, probes(HTTP_PORT));
        return Ok(vec![ct]);
    }
    let Some(given) = c.containers.as_ref().filter(|v| !v.is_empty()) else {
        return Err(invalid(format!(
            "{} has neither model nor containers",
            kind.as_str()
        )));
    };
    if kind == Kind::Transformer
        && given.len() == 1
        && given[0]
            .image
            .as_deref()
            .is_some_and(|i| i.starts_with(IMAGE_TRANSFORMER))
    {
        let model = model_name_arg(&given[0]).unwrap_or_else(|| name.clone());
        serve.extend([
            "--transformer".into(),
            "image".into(),
            "--no-grpc".into(),
            "--model-name".into(),
            model,
            "--predictor-url".into(),
            format!("http://{}", s.gateway),
            "--predictor-host".into(),
            format!("{name}-predictor"),
            "--predictor-model".into(),
            name.clone(),
        ]);
        let mut ct = json!({
            "name": "kserve-container",
            "image": s.image,
            "args": serve,
            "env": given[0].env,
            "ports": [{"name": "http", "containerPort": HTTP_PORT}],
        });
        if let Some(r) = &given[0].resources {
            ct["resources"] = serde_json::to_value(r).expect("serializable");
        }
        merge(&mut ct, probes(HTTP_PORT));
        return Ok(vec![ct]);
    }
    // The user's own containers run as given (KServe's contract: the first serves on 8080).
    Ok(given
        .iter()
        .map(|ct| serde_json::to_value(ct).expect("serializable"))
        .collect())
}

/// `--model_name X` / `--model_name=X` in a KServe transformer container's args.
fn model_name_arg(c: &Container) -> Option<String> {
    let args = c.args.as_deref().unwrap_or_default();
    args.iter().enumerate().find_map(|(i, a)| {
        if let Some(v) = a.strip_prefix("--model_name=") {
            return Some(v.to_string());
        }
        (a == "--model_name")
            .then(|| args.get(i + 1).cloned())
            .flatten()
    })
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(a), Value::Object(b)) = (into.as_object_mut(), from) {
        a.extend(b);
    }
}

pub fn deployment(
    isvc: &InferenceService,
    kind: Kind,
    c: &ComponentSpec,
    s: &Settings,
) -> Result<Deployment, ControllerError> {
    let labels = labels(isvc, kind);
    let mut pod_labels = labels.clone();
    pod_labels.extend(c.labels.clone());
    let mut tolerations: Vec<Value> = c
        .tolerations
        .iter()
        .flatten()
        .map(|t| serde_json::to_value(t).expect("serializable"))
        .collect();
    if wants_gpu(c) {
        // GPU node pools are usually tainted so that only GPU work lands on them.
        tolerations
            .push(json!({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}));
    }
    let mut pod_spec = json!({
        "containers": containers(isvc, kind, c, s)?,
        "terminationGracePeriodSeconds": s.drain_secs + 10,
        "securityContext": {"runAsNonRoot": true},
    });
    if !tolerations.is_empty() {
        pod_spec["tolerations"] = json!(tolerations);
    }
    if let Some(ns) = &c.node_selector {
        pod_spec["nodeSelector"] = json!(ns);
    }
    if let Some(sa) = &c.service_account_name {
        pod_spec["serviceAccountName"] = json!(sa);
    }
    let value = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(isvc, kind, s),
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": c.annotations},
                "spec": pod_spec,
            },
        },
    });
    serde_json::from_value(value).map_err(|e| ControllerError::Invalid {
        name: isvc.name_any(),
        reason: format!("{} Deployment: {e}", kind.as_str()),
    })
}

pub fn service(isvc: &InferenceService, kind: Kind, s: &Settings) -> Service {
    let labels = labels(isvc, kind);
    let value = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(isvc, kind, s),
        "spec": {
            "selector": labels,
            "ports": [
                {"name": "http", "port": 80, "targetPort": HTTP_PORT},
                {"name": "grpc", "port": 81, "targetPort": GRPC_PORT},
            ],
        },
    });
    serde_json::from_value(value).expect("a well-formed Service")
}

/// What the controller applies for one InferenceService given as YAML (several documents
/// allowed), as YAML documents: `siesta render`, for review and for offline schema checks. A
/// manifest without a namespace goes to `default`; there is no owner reference (no uid yet).
pub fn render(yaml: &str, s: &Settings) -> Result<String, ControllerError> {
    use serde::Deserialize;
    let mut out = String::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let mut value = Value::deserialize(doc).map_err(|e| ControllerError::Invalid {
            name: "(manifest)".into(),
            reason: e.to_string(),
        })?;
        if value.is_null() {
            continue;
        }
        if value["metadata"]["namespace"].is_null() {
            value["metadata"]["namespace"] = json!("default");
        }
        let obj: kube::core::DynamicObject =
            serde_json::from_value(value).map_err(|e| ControllerError::Invalid {
                name: "(manifest)".into(),
                reason: e.to_string(),
            })?;
        let isvc = crate::controller::parse(&obj)?;
        for (kind, c) in components(&isvc) {
            let objects = [
                serde_json::to_value(deployment(&isvc, kind, c, s)?),
                serde_json::to_value(service(&isvc, kind, s)),
            ];
            for o in objects {
                out.push_str("---\n");
                out.push_str(&serde_yaml::to_string(&o.expect("serializable")).expect("YAML"));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn isvc(yaml: &str) -> InferenceService {
        let mut isvc: InferenceService = serde_yaml::from_str(yaml).unwrap();
        isvc.metadata.namespace = Some("models".into());
        isvc.metadata.uid = Some("uid-1".into());
        isvc
    }

    const GPU: &str = r#"
apiVersion: serving.siesta.dev/v1beta1
kind: InferenceService
metadata: {name: flowers}
spec:
  predictor:
    minReplicas: 0
    containerConcurrency: 2
    model:
      modelFormat: {name: tensorflow}
      storageUri: gs://kfserving-examples/models/tensorflow/flowers
      resources: {limits: {nvidia.com/gpu: "1"}}
"#;

    #[test]
    fn a_gpu_model_gets_gpu_resources_toleration_probes_and_no_replica_count() {
        let isvc = isvc(GPU);
        let d = deployment(
            &isvc,
            Kind::Predictor,
            &isvc.spec.predictor,
            &Settings::default(),
        )
        .unwrap();
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["metadata"]["name"], "flowers-predictor");
        assert_eq!(
            v["metadata"]["ownerReferences"][0]["kind"],
            "InferenceService"
        );
        assert!(
            v["spec"].get("replicas").is_none(),
            "the autoscaler owns replicas"
        );
        let pod = &v["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], "1");
        assert_eq!(pod["tolerations"][0]["key"], "nvidia.com/gpu");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/v2/health/ready");
        assert_eq!(c["startupProbe"]["failureThreshold"], 120);
        let args: Vec<&str> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        for want in [
            "--storage-uri",
            "--queue-limit",
            "22",
            "--device",
            "auto",
            "--model-format",
            "tensorflow",
        ] {
            assert!(args.contains(&want), "{want} in {args:?}");
        }
        let svc =
            serde_json::to_value(service(&isvc, Kind::Predictor, &Settings::default())).unwrap();
        assert_eq!(svc["spec"]["selector"][LABEL_COMPONENT], "predictor");
    }

    #[test]
    fn kserves_image_transformer_becomes_siestas_calling_the_predictor_through_the_gateway() {
        let isvc = isvc(include_str!("../../deploy/examples/autoscale-adv.yaml"));
        let t = isvc.spec.transformer.as_ref().unwrap();
        let d = deployment(&isvc, Kind::Transformer, t, &Settings::default()).unwrap();
        let v = serde_json::to_value(&d).unwrap();
        let args = v["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
        for want in [
            "\"--transformer\",\"image\"",
            "\"--model-name\",\"mnist\"",
            "torch-transformer-predictor",
            "http://siesta-gateway.siesta-system.svc",
        ] {
            assert!(args.contains(want), "{want} in {args}");
        }
        assert!(v["spec"]["template"]["spec"].get("tolerations").is_none());
    }

    #[test]
    fn a_component_with_nothing_to_run_is_an_error_naming_the_service() {
        let isvc = isvc(
            "apiVersion: serving.siesta.dev/v1beta1\nkind: InferenceService\nmetadata: {name: x}\nspec: {predictor: {}}\n",
        );
        let err = deployment(
            &isvc,
            Kind::Predictor,
            &isvc.spec.predictor,
            &Settings::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains('x') && err.contains("neither model nor containers"),
            "{err}"
        );
    }
}
