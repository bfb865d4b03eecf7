//! What one InferenceService component should be in the cluster: a Deployment running
//! `siesta serve` (or the manifest's own containers) and a Service in front of its pods.
//!
//! The Deployment never states `replicas`: the autoscaler owns that field (through the scale
//! subresource), the controller owns the rest, and server-side apply keeps the two apart. A new
//! Deployment starts at Kubernetes' default of one replica, as Knative's initial scale does.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use serde_json::{Value, json};

use siesta_lifecycle::manifest::raw::RawInferenceService;
use siesta_lifecycle::manifest::{self, ClusterDefaults, ComponentKind};
use siesta_lifecycle::replica::{Replica, Role, Site, replica};

use crate::crd::{ComponentSpec, InferenceService};
use crate::credentials::StorageCredentials;
use crate::error::ControllerError;

pub const LABEL_SERVICE: &str = "serving.siesta.dev/inferenceservice";
pub const LABEL_COMPONENT: &str = "serving.siesta.dev/component";
pub const HTTP_PORT: i32 = 8080;
pub const GRPC_PORT: i32 = 8081;
const GPU_RESOURCE: &str = "nvidia.com/gpu";

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
    /// The node directory model replicas share as their model cache (a hostPath volume), so a
    /// replica scheduled where the model was downloaded before starts without a download.
    /// `None`: each pod downloads into its own filesystem.
    pub model_cache_host_path: Option<String>,
    /// Given to model replicas as `SIESTA_CONTROL_TOKEN`, so that the gateway can park and
    /// resume them where GPUs are shared (`siesta.dev/gpu-sharing`). The same Secret feeds the
    /// gateway. Whoever can read the Deployment can read it; it grants parking that
    /// namespace's replicas, which scaling the Deployment grants anyway.
    pub control_token: Option<String>,
}

/// Where a node's model cache is mounted, and the default node directory.
pub const MODEL_CACHE_DIR: &str = "/var/cache/siesta/models";

impl Default for Settings {
    fn default() -> Self {
        Settings {
            image: "ghcr.io/siesta-serving/siesta:0.1.0".into(),
            gateway: "siesta-gateway.siesta-system.svc".into(),
            startup_deadline_secs: 600,
            drain_secs: 30,
            domain: "example.com".into(),
            api_group: crate::crd::SIESTA_GROUP.into(),
            model_cache_host_path: Some(MODEL_CACHE_DIR.into()),
            control_token: None,
        }
    }
}

/// The components an InferenceService has, in order.
pub fn components(isvc: &InferenceService) -> Vec<(ComponentKind, &ComponentSpec)> {
    let mut out = vec![(ComponentKind::Predictor, &isvc.spec.predictor)];
    if let Some(t) = &isvc.spec.transformer {
        out.push((ComponentKind::Transformer, t));
    }
    out
}

pub fn object_name(isvc: &InferenceService, kind: ComponentKind) -> String {
    format!("{}-{}", isvc.name_any(), kind.as_str())
}

fn labels(isvc: &InferenceService, kind: ComponentKind) -> BTreeMap<String, String> {
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
fn metadata(isvc: &InferenceService, kind: ComponentKind, s: &Settings) -> Value {
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

/// The InferenceService as the lifecycle manager reads it (checked as a manifest file is): what
/// the gateway scales and the shared replica template (`siesta_lifecycle::replica`) runs.
pub fn as_manifest(
    isvc: &InferenceService,
    defaults: &ClusterDefaults,
) -> Result<manifest::InferenceService, ControllerError> {
    RawInferenceService::try_from(isvc)
        .and_then(|raw| manifest::check(raw, defaults))
        .map_err(|e| ControllerError::Invalid {
            name: isvc.name_any(),
            reason: e.to_string(),
        })
}

fn mismatch(isvc: &InferenceService) -> ControllerError {
    ControllerError::Invalid {
        name: isvc.name_any(),
        reason: "the checked manifest and the CRD object disagree (a Siesta bug)".into(),
    }
}

/// The containers of one component's pods, and the volumes they mount.
fn containers(
    isvc: &InferenceService,
    kind: ComponentKind,
    c: &ComponentSpec,
    s: &Settings,
    creds: &StorageCredentials,
) -> Result<(Vec<Value>, Vec<Value>), ControllerError> {
    let checked = as_manifest(isvc, &ClusterDefaults::default())?;
    let component = match kind {
        ComponentKind::Predictor => &checked.predictor,
        ComponentKind::Transformer => checked.transformer.as_ref().ok_or_else(|| mismatch(isvc))?,
    };
    let site = Site::Pod {
        gateway: s.gateway.clone(),
        http_port: HTTP_PORT as u16,
        grpc_port: GRPC_PORT as u16,
        drain: std::time::Duration::from_secs(s.drain_secs.max(0) as u64),
        gpu: wants_gpu(c),
    };
    let serve = match replica(&checked, component, &site) {
        Replica::Serve(serve) => serve,
        // The user's own containers run as given (KServe's contract: the first serves on 8080).
        Replica::Containers(_) => {
            let given = c
                .containers
                .iter()
                .flatten()
                .map(|ct| serde_json::to_value(ct).expect("serializable"))
                .collect();
            return Ok((given, Vec::new()));
        }
    };
    // Environment and resources as the cluster states them (`valueFrom` secrets, GPU limits).
    let (env, resources, ports) = match (serve.role, &c.model, c.containers.as_deref()) {
        (Role::Model { .. }, Some(m), _) => (
            json!(m.env),
            m.resources.as_ref(),
            json!([{"name": "http", "containerPort": HTTP_PORT}, {"name": "grpc", "containerPort": GRPC_PORT}]),
        ),
        (Role::ImageTransformer { .. }, _, Some([given])) => (
            json!(given.env),
            given.resources.as_ref(),
            json!([{"name": "http", "containerPort": HTTP_PORT}]),
        ),
        // The template and this spec are the same object read twice; a mismatch is a bug, reported
        // as this InferenceService's error rather than a controller panic.
        _ => return Err(mismatch(isvc)),
    };
    let mut args = vec!["serve".to_string()];
    args.extend(serve.args);
    let mut ct = json!({
        "name": "kserve-container",
        "image": s.image,
        "args": args,
        "env": env,
        "ports": ports,
        // Ready only once the model is loaded and warmed up (kserve#2882): /v2/health/ready
        // answers 503 until then.
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": HTTP_PORT}, "periodSeconds": 2},
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": HTTP_PORT}, "periodSeconds": 10},
        "startupProbe": {"httpGet": {"path": "/v2/health/live", "port": HTTP_PORT}, "periodSeconds": 5,
                         "failureThreshold": (s.startup_deadline_secs / 5).max(1)},
        // Let the endpoint removal reach the gateway before SIGTERM starts the drain.
        "lifecycle": {"preStop": {"sleep": {"seconds": 3}}},
    });
    if let Some(r) = resources {
        ct["resources"] = serde_json::to_value(r).expect("serializable");
    }
    let mut volumes = Vec::new();
    if let (Role::Model { .. }, Some(m)) = (serve.role, &c.model) {
        let storage = model_storage(m.storage_uri.as_deref(), s, creds);
        let mut env: Vec<Value> = ct["env"].as_array().cloned().unwrap_or_default();
        let given: Vec<String> = env
            .iter()
            .filter_map(|e| e["name"].as_str().map(String::from))
            .collect();
        // What the user set on the model wins over what the convention derives.
        env.extend(
            storage
                .env
                .into_iter()
                .filter(|e| !given.iter().any(|g| e["name"] == g.as_str())),
        );
        ct["env"] = json!(env);
        if !storage.mounts.is_empty() {
            ct["volumeMounts"] = json!(storage.mounts);
        }
        volumes = storage.volumes;
    }
    Ok((vec![ct], volumes))
}

/// The model replica's storage: credentials from its service account's secrets, the node's
/// model cache, and a `pvc://` claim mounted where KServe mounts it.
fn model_storage(
    storage_uri: Option<&str>,
    s: &Settings,
    creds: &StorageCredentials,
) -> StorageCredentials {
    let mut out = creds.clone();
    if let Some(token) = &s.control_token {
        out.env
            .push(json!({"name": siesta_http_server::replica_control::TOKEN_ENV, "value": token}));
    }
    if let Some(path) = &s.model_cache_host_path {
        out.volumes.push(json!({"name": "siesta-model-cache",
            "hostPath": {"path": path, "type": "DirectoryOrCreate"}}));
        out.mounts
            .push(json!({"name": "siesta-model-cache", "mountPath": MODEL_CACHE_DIR}));
        out.env
            .push(json!({"name": "SIESTA_CACHE_DIR", "value": MODEL_CACHE_DIR}));
    }
    if let Some(claim) = storage_uri
        .and_then(|u| u.strip_prefix("pvc://"))
        .and_then(|rest| rest.split('/').next())
        .filter(|claim| !claim.is_empty())
    {
        out.volumes.push(json!({"name": "kserve-pvc-source",
            "persistentVolumeClaim": {"claimName": claim, "readOnly": true}}));
        out.mounts
            .push(json!({"name": "kserve-pvc-source", "mountPath": PVC_MOUNT, "readOnly": true}));
        out.env
            .push(json!({"name": "SIESTA_PVC_MOUNT", "value": PVC_MOUNT}));
    }
    out
}

/// Where KServe mounts a `pvc://` claim (and so where `siesta serve` looks in a pod).
pub const PVC_MOUNT: &str = "/mnt/pvc";

pub fn deployment(
    isvc: &InferenceService,
    kind: ComponentKind,
    c: &ComponentSpec,
    s: &Settings,
    creds: &StorageCredentials,
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
    let (containers, volumes) = containers(isvc, kind, c, s, creds)?;
    let mut pod_spec = json!({
        "containers": containers,
        "terminationGracePeriodSeconds": s.drain_secs + 10,
        "securityContext": {"runAsNonRoot": true},
    });
    if !tolerations.is_empty() {
        pod_spec["tolerations"] = json!(tolerations);
    }
    if !volumes.is_empty() {
        pod_spec["volumes"] = json!(volumes);
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

pub fn service(isvc: &InferenceService, kind: ComponentKind, s: &Settings) -> Service {
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
                serde_json::to_value(deployment(
                    &isvc,
                    kind,
                    c,
                    s,
                    &StorageCredentials::default(),
                )?),
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
            ComponentKind::Predictor,
            &isvc.spec.predictor,
            &Settings::default(),
            &StorageCredentials::default(),
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
        let svc = serde_json::to_value(service(
            &isvc,
            ComponentKind::Predictor,
            &Settings::default(),
        ))
        .unwrap();
        assert_eq!(svc["spec"]["selector"][LABEL_COMPONENT], "predictor");
    }

    #[test]
    fn kserves_image_transformer_becomes_siestas_calling_the_predictor_through_the_gateway() {
        let isvc = isvc(include_str!("../../deploy/examples/autoscale-adv.yaml"));
        let t = isvc.spec.transformer.as_ref().unwrap();
        let d = deployment(
            &isvc,
            ComponentKind::Transformer,
            t,
            &Settings::default(),
            &StorageCredentials::default(),
        )
        .unwrap();
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
            ComponentKind::Predictor,
            &isvc.spec.predictor,
            &Settings::default(),
            &StorageCredentials::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains('x')
                && err.contains("spec.predictor.model: a component needs a model or containers"),
            "{err}"
        );
    }
}
