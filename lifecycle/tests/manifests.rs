//! The scenario's five manifests parse as KServe users write them, autoscaling settings resolve
//! as Knative resolves them, and bad manifests are rejected with the field path and the reason.

use std::time::Duration;

use siesta_lifecycle::manifest::{
    ClusterDefaults, ComponentKind, InferenceService, ScaleMetric, Workload, parse,
};

fn example(name: &str) -> InferenceService {
    let path = format!("{}/../deploy/examples/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let mut all = parse(&text, &ClusterDefaults::default()).unwrap();
    assert_eq!(all.len(), 1);
    all.remove(0)
}

#[test]
fn scenario_1_target_concurrency() {
    let isvc = example("autoscale.yaml");
    assert_eq!(isvc.name, "flowers-sample");
    assert_eq!(isvc.namespace, "default");
    let p = &isvc.predictor;
    assert_eq!(p.kind, ComponentKind::Predictor);
    assert_eq!(p.scaling.metric, ScaleMetric::Concurrency);
    // scaleTarget 1 with CC 0: total 1, Knative's 70 % utilisation -> target 0.7.
    assert_eq!(p.scaling.decider.total_target, 1.0);
    assert!((p.scaling.decider.target - 0.7).abs() < 1e-9);
    assert_eq!(
        (p.scaling.min_scale, p.scaling.max_scale),
        (1, 0),
        "KServe's minReplicas default is 1"
    );
    assert_eq!(p.scaling.decider.stable_window, Duration::from_secs(60));
    assert_eq!(p.scaling.panic_window, Duration::from_secs(6));
    assert_eq!(p.scaling.decider.panic_threshold, 2.0);
    assert_eq!(p.timeout, Duration::from_secs(300));
    match &p.workload {
        Workload::Model(m) => {
            assert_eq!(m.format, "tensorflow");
            assert_eq!(
                m.storage_uri.as_deref(),
                Some("gs://kfserving-examples/models/tensorflow/flowers")
            );
            assert_eq!(m.protocol_version, "v1");
        }
        other => panic!("{other:?}"),
    }
    assert!(isvc.transformer.is_none());
}

#[test]
fn scenario_2_target_rps() {
    let p = example("autoscale-qps.yaml").predictor;
    assert_eq!(p.scaling.metric, ScaleMetric::Rps);
    assert!((p.scaling.decider.target - 0.7).abs() < 1e-9);
}

#[test]
fn scenario_3_container_concurrency_targets_70_percent() {
    let p = example("autoscale-custom.yaml").predictor;
    assert_eq!(p.container_concurrency, 10);
    assert_eq!(p.scaling.decider.total_target, 10.0);
    assert!(
        (p.scaling.decider.target - 7.0).abs() < 1e-9,
        "7 per replica"
    );
}

#[test]
fn scenario_4_scale_to_zero() {
    let p = example("scale-down-to-zero.yaml").predictor;
    assert_eq!(p.scaling.min_scale, 0);
    assert_eq!(p.scaling.scale_to_zero_grace, Duration::from_secs(30));
    // No target, CC 0: Knative's default 100 x 70 %.
    assert!((p.scaling.decider.target - 70.0).abs() < 1e-9);
}

#[test]
fn scenario_5_components_scale_separately() {
    let isvc = example("autoscale-adv.yaml");
    assert_eq!(isvc.name, "torch-transformer");
    let p = &isvc.predictor;
    assert_eq!(p.scaling.metric, ScaleMetric::Concurrency);
    assert!((p.scaling.decider.target - 1.4).abs() < 1e-9);
    let t = isvc.transformer.as_ref().unwrap();
    assert_eq!(t.kind, ComponentKind::Transformer);
    assert_eq!(t.scaling.metric, ScaleMetric::Rps);
    assert!((t.scaling.decider.target - 5.6).abs() < 1e-9);
    match &t.workload {
        Workload::Containers(c) => {
            assert_eq!(c[0].image, "kserve/image-transformer:latest");
            assert_eq!(c[0].command, vec!["python", "-m", "model"]);
            assert_eq!(c[0].args, vec!["--model_name", "mnist"]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn siesta_api_version_annotations_and_multi_document_files() {
    let text = r#"
apiVersion: serving.siesta.dev/v1beta1
kind: InferenceService
metadata:
  name: a
  annotations:
    autoscaling.knative.dev/window: "20s"
    autoscaling.knative.dev/panic-window-percentage: "20"
    autoscaling.knative.dev/target-utilization-percentage: "100"
    autoscaling.knative.dev/target-burst-capacity: "-1"
spec:
  predictor:
    scaleTarget: 4
    containerConcurrency: 2
    annotations:
      autoscaling.knative.dev/scale-down-delay: "30s"
      autoscaling.knative.dev/window: "10s"
    model: {modelFormat: {name: siesta}, storageUri: "siesta://mnist"}
---
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: b}
spec:
  predictor:
    minReplicas: 0
    maxReplicas: 3
    serviceAccountName: sa
    model: {modelFormat: {name: pytorch}, storageUri: "file:///m"}
"#;
    let all = parse(text, &ClusterDefaults::default()).unwrap();
    assert_eq!(all.len(), 2);
    let s = &all[0].predictor.scaling;
    assert_eq!(
        s.decider.stable_window,
        Duration::from_secs(10),
        "component annotation wins"
    );
    assert_eq!(s.panic_window, Duration::from_secs(2));
    assert_eq!(s.decider.target, 2.0, "min(scaleTarget 4, CC 2) x 100 %");
    assert_eq!(s.decider.target_burst_capacity, -1.0);
    assert_eq!(s.decider.scale_down_delay, Duration::from_secs(30));
    assert_eq!(
        (
            all[1].predictor.scaling.min_scale,
            all[1].predictor.scaling.max_scale
        ),
        (0, 3)
    );
    assert_eq!(all[1].ignored, vec!["spec.predictor.serviceAccountName"]);
}

fn rejected(spec: &str) -> String {
    let text = format!(
        "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata: {{name: x}}\nspec:\n{spec}"
    );
    parse(&text, &ClusterDefaults::default())
        .unwrap_err()
        .to_string()
}

#[test]
fn invalid_manifests_name_the_field_and_the_reason() {
    let model = "    model: {modelFormat: {name: tensorflow}, storageUri: \"gs://b/m\"}\n";
    let cases = [
        (
            format!("  predictor:\n    scaleMetric: cpu\n{model}"),
            "spec.predictor.scaleMetric: 'cpu' is not supported yet",
        ),
        (
            format!("  predictor:\n    scaleMetric: memory\n{model}"),
            "spec.predictor.scaleMetric: 'memory' is not supported yet",
        ),
        (
            format!("  predictor:\n    scaleMetric: latency\n{model}"),
            "spec.predictor.scaleMetric: 'latency' is not one of",
        ),
        (
            format!("  predictor:\n    minReplicas: -1\n{model}"),
            "spec.predictor.minReplicas",
        ),
        (
            format!("  predictor:\n    minReplicas: 3\n    maxReplicas: 2\n{model}"),
            "spec.predictor.maxReplicas: 2 is below minReplicas 3",
        ),
        (
            format!("  predictor:\n    scaleTarget: 0\n{model}"),
            "spec.predictor.scaleTarget",
        ),
        (
            format!("  predictor:\n    containerConcurrency: -2\n{model}"),
            "spec.predictor.containerConcurrency",
        ),
        (
            format!("  predictor:\n    timeout: 0\n{model}"),
            "spec.predictor.timeout",
        ),
        (
            format!("  predictor:\n    minReplicas: lots\n{model}"),
            "spec.predictor.minReplicas",
        ),
        (
            "  predictor: {}\n".to_string(),
            "spec.predictor.model: a component needs a model or containers",
        ),
        (
            format!("  predictor:\n    containers: [{{image: x}}]\n{model}"),
            "set either model or containers",
        ),
        (
            format!(
                "  predictor:\n    annotations: {{autoscaling.knative.dev/window: \"2s\"}}\n{model}"
            ),
            "autoscaling.knative.dev/window]: '2s' must be between",
        ),
        (
            format!(
                "  predictor:\n    annotations: {{autoscaling.knative.dev/class: hpa.autoscaling.knative.dev}}\n{model}"
            ),
            "is not supported: Siesta autoscales with the KPA",
        ),
        (
            format!(
                "  predictor:\n    annotations: {{autoscaling.knative.dev/targte: \"1\"}}\n{model}"
            ),
            "unknown autoscaling annotation",
        ),
        (
            format!(
                "  predictor:\n    annotations: {{autoscaling.knative.dev/panic-threshold-percentage: \"50\"}}\n{model}"
            ),
            "panic-threshold-percentage",
        ),
        (
            format!(
                "  predictor:\n    annotations: {{autoscaling.knative.dev/target-burst-capacity: \"-5\"}}\n{model}"
            ),
            "must be >= 0 or -1",
        ),
        (
            "  transformer:\n    containers: []\n".to_string(),
            "spec: missing field `predictor`",
        ),
        (
            "  predictor:\n    model: {modelFormat: {name: \"\"}}\n".to_string(),
            "spec.predictor.model.modelFormat.name: must not be empty",
        ),
        (
            "  predictor:\n    model: {modelFormat: {name: x}, protocolVersion: v3}\n".to_string(),
            "spec.predictor.model.protocolVersion",
        ),
    ];
    for (spec, want) in cases {
        let got = rejected(&spec);
        assert!(got.contains(want), "for\n{spec}\ngot: {got}\nwant: {want}");
    }
    let bad_version = parse(
        "apiVersion: v1\nkind: InferenceService\nmetadata: {name: x}\nspec: {predictor: {containers: [{image: i}]}}\n",
        &ClusterDefaults::default(),
    );
    assert!(
        bad_version
            .unwrap_err()
            .to_string()
            .starts_with("apiVersion: 'v1' is not supported")
    );
    let bad_name = parse(
        "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata: {name: Flowers_1}\nspec: {predictor: {containers: [{image: i}]}}\n",
        &ClusterDefaults::default(),
    );
    assert!(
        bad_name
            .unwrap_err()
            .to_string()
            .starts_with("metadata.name")
    );
    assert!(parse("", &ClusterDefaults::default()).is_err());
}

/// Objects from the API server go through the same checker as files: a wrong type, a missing
/// field or a huge number is an error with the field path, never a panic.
#[test]
fn api_server_objects_are_checked_like_files() {
    use serde_json::json;
    use siesta_lifecycle::manifest::from_json;
    let d = ClusterDefaults::default();
    let doc = |spec: serde_json::Value| {
        json!({"apiVersion": "serving.siesta.dev/v1beta1", "kind": "InferenceService",
               "metadata": {"name": "m", "namespace": "ns"}, "spec": spec})
    };
    let ok = from_json(
        doc(json!({"predictor": {"minReplicas": 0,
                   "model": {"modelFormat": {"name": "siesta"}, "storageUri": "siesta://mnist"}}})),
        &d,
    )
    .unwrap();
    assert_eq!((ok.name.as_str(), ok.namespace.as_str()), ("m", "ns"));
    assert_eq!(ok.predictor.scaling.min_scale, 0);
    for (spec, path) in [
        (
            json!({"predictor": {"minReplicas": "zero"}}),
            "spec.predictor.minReplicas",
        ),
        (
            json!({"predictor": {"minReplicas": 1e300}}),
            "spec.predictor.minReplicas",
        ),
        (
            json!({"predictor": {"maxReplicas": 99_999_999_999_i64, "model": {"modelFormat": {"name": "x"}}}}),
            "spec.predictor.maxReplicas",
        ),
        (json!({"predictor": {"model": {}}}), "spec.predictor.model"),
        (json!({}), "spec"),
        (json!({"predictor": {}}), "spec.predictor.model"),
    ] {
        let e = from_json(doc(spec.clone()), &d).unwrap_err();
        assert!(e.path.starts_with(path), "{spec}: {e}");
    }
    // Not an object at all: serde reads it as a sequence of the fields and says which one is wrong.
    let e = from_json(json!(["not", "an", "object"]), &d).unwrap_err();
    assert!(e.reason.contains("invalid type"), "{e}");
}
