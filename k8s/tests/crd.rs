//! The CRD under deploy/ is the one the Rust types generate (regenerate with
//! `UPDATE_CRDS=1 cargo test -p siesta-k8s --test crd`), and the five scenario manifests
//! round-trip through the typed resource without losing a field, and the typed resource checks
//! into the same InferenceService as the file it came from.

use siesta_k8s::InferenceService;
use siesta_k8s::crd::{KSERVE_GROUP, SIESTA_GROUP, crd_yaml};
use siesta_k8s::desired::as_manifest;
use siesta_lifecycle::manifest::{self, ClusterDefaults};

const FILES: [(&str, &str); 2] = [
    (SIESTA_GROUP, "../deploy/base/crd.yaml"),
    (
        KSERVE_GROUP,
        "../deploy/overlays/kserve-group/crd-kserve-group.yaml",
    ),
];

#[test]
fn the_shipped_crds_are_the_generated_ones() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for (group, file) in FILES {
        let path = root.join(file);
        let generated = format!(
            "# Generated from k8s/src/crd.rs by `siesta crd --group {group}`; do not edit.\n{}",
            crd_yaml(group)
        );
        if std::env::var_os("UPDATE_CRDS").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let shipped = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            shipped == generated,
            "{} is stale: UPDATE_CRDS=1 cargo test -p siesta-k8s --test crd",
            path.display()
        );
    }
    let crd: serde_yaml::Value = serde_yaml::from_str(&crd_yaml(SIESTA_GROUP)).unwrap();
    let version = &crd["spec"]["versions"][0];
    assert_eq!(
        version["subresources"]["status"],
        serde_yaml::Value::Mapping(Default::default())
    );
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["URL", "Ready", "Predictor", "Transformer", "Age"]);
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "isvc");
}

const SCENARIOS: [(&str, &str); 5] = [
    (
        "autoscale.yaml",
        include_str!("../../deploy/examples/autoscale.yaml"),
    ),
    (
        "autoscale-qps.yaml",
        include_str!("../../deploy/examples/autoscale-qps.yaml"),
    ),
    (
        "autoscale-custom.yaml",
        include_str!("../../deploy/examples/autoscale-custom.yaml"),
    ),
    (
        "scale-down-to-zero.yaml",
        include_str!("../../deploy/examples/scale-down-to-zero.yaml"),
    ),
    (
        "autoscale-adv.yaml",
        include_str!("../../deploy/examples/autoscale-adv.yaml"),
    ),
];

#[test]
fn the_scenario_manifests_round_trip_through_the_typed_resource() {
    for (file, yaml) in SCENARIOS {
        let original: serde_json::Value = serde_yaml::from_str(yaml).unwrap();
        let typed: InferenceService =
            serde_json::from_value(original.clone()).unwrap_or_else(|e| panic!("{file}: {e}"));
        let mut back = serde_json::to_value(&typed).unwrap();
        // The typed resource carries its own apiVersion; the manifests say KServe's.
        back["apiVersion"] = original["apiVersion"].clone();
        assert_eq!(back["spec"], original["spec"], "{file}");
        assert_eq!(
            back["metadata"]["name"], original["metadata"]["name"],
            "{file}"
        );
    }
}

/// The controller reads the typed resource, `siesta up` reads the file: both go through one
/// checker and must agree on everything Siesta acts on, and on what it ignores.
#[test]
fn the_typed_resource_checks_into_what_the_file_checks_into() {
    const EXTRAS: &str = r#"
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: extras
  annotations:
    autoscaling.knative.dev/target-utilization-percentage: "50"
spec:
  predictor:
    minReplicas: 0
    scaleMetric: rps
    scaleTarget: 20
    serviceAccountName: sa
    nodeSelector: {pool: gpu}
    tolerations: [{key: nvidia.com/gpu, operator: Exists}]
    labels: {team: vision}
    model:
      modelFormat: {name: onnx, version: "1"}
      storageUri: gs://bucket/model
      protocolVersion: v2
      env: [{name: A, value: b}]
      resources: {limits: {nvidia.com/gpu: "1"}}
  transformer:
    containerConcurrency: 4
    timeout: 30
    containers:
      - name: kserve-container
        image: kserve/image-transformer:v0.11
        args: [--model_name, extras]
        env: [{name: STORAGE_URI, value: "pvc://x"}]
        ports: [{containerPort: 8080}]
"#;
    let defaults = ClusterDefaults::default();
    for (file, yaml) in SCENARIOS.into_iter().chain([("extras", EXTRAS)]) {
        let from_file = manifest::parse(yaml, &defaults).unwrap().remove(0);
        let typed: InferenceService = serde_yaml::from_str(yaml).unwrap();
        let mut from_cluster = as_manifest(&typed, &defaults).unwrap();
        // The cluster's object may live under either group; the file names KServe's.
        from_cluster.api_version = from_file.api_version.clone();
        assert_eq!(from_cluster, from_file, "{file}");
    }
    let typed: InferenceService = serde_yaml::from_str(EXTRAS).unwrap();
    let checked = as_manifest(&typed, &defaults).unwrap();
    assert_eq!(
        checked.ignored,
        [
            "spec.predictor.labels",
            "spec.predictor.nodeSelector",
            "spec.predictor.serviceAccountName",
            "spec.predictor.tolerations",
            "spec.predictor.model.resources",
            "spec.transformer.containers[0].ports",
        ]
    );

    // What the schema lets through but the checker refuses is an error with the field path.
    let mut bad = typed.clone();
    bad.spec.predictor.scale_metric = Some(siesta_k8s::crd::ScaleMetric::Cpu);
    let e = as_manifest(&bad, &defaults).unwrap_err().to_string();
    assert!(e.contains("spec.predictor.scaleMetric"), "{e}");
    let mut bad = typed;
    bad.spec
        .transformer
        .as_mut()
        .unwrap()
        .containers
        .as_mut()
        .unwrap()[0]
        .image = None;
    let e = as_manifest(&bad, &defaults).unwrap_err().to_string();
    assert!(e.contains("spec.transformer.containers[0].image"), "{e}");
}
