//! The controller against a FAKE Kubernetes API server (tests/fake_api.rs says what it does and
//! does not do): the five scenario manifests become the expected Deployments and Services, the
//! replicas the autoscaler sets (0 -> N -> 0) show in the status, and removed components go.

use std::sync::Arc;

use kube::core::DynamicObject;
use serde_json::{Value, json};
use siesta_k8s::controller::{Context, reconcile};
use siesta_k8s::desired::Settings;
use siesta_testkit::fake_kube::FakeApi;

const NS: &str = "models";

fn isvc_path(group: &str, name: &str) -> String {
    format!("/apis/{group}/v1beta1/namespaces/{NS}/inferenceservices/{name}")
}

fn deployment_path(name: &str) -> String {
    format!("/apis/apps/v1/namespaces/{NS}/deployments/{name}")
}

fn service_path(name: &str) -> String {
    format!("/api/v1/namespaces/{NS}/services/{name}")
}

/// A manifest as the API server would hand it to the controller.
fn submitted(api: &FakeApi, yaml: &str, group: &str) -> DynamicObject {
    let mut v: Value = serde_yaml::from_str(yaml).unwrap();
    v["apiVersion"] = json!(format!("{group}/v1beta1"));
    v["metadata"]["namespace"] = json!(NS);
    v["metadata"]["uid"] = json!(format!("isvc-{}", v["metadata"]["name"].as_str().unwrap()));
    v["metadata"]["generation"] = json!(1);
    api.insert(
        &isvc_path(group, v["metadata"]["name"].as_str().unwrap()),
        v.clone(),
    );
    serde_json::from_value(v).unwrap()
}

fn ctx(api: &FakeApi, group: &str) -> Arc<Context> {
    Arc::new(Context {
        client: api.client(),
        settings: Settings {
            api_group: group.into(),
            ..Settings::default()
        },
    })
}

const SCENARIOS: [(&str, &str, bool); 5] = [
    (
        "autoscale.yaml",
        include_str!("../../deploy/examples/autoscale.yaml"),
        false,
    ),
    (
        "autoscale-qps.yaml",
        include_str!("../../deploy/examples/autoscale-qps.yaml"),
        false,
    ),
    (
        "autoscale-custom.yaml",
        include_str!("../../deploy/examples/autoscale-custom.yaml"),
        false,
    ),
    (
        "scale-down-to-zero.yaml",
        include_str!("../../deploy/examples/scale-down-to-zero.yaml"),
        false,
    ),
    (
        "autoscale-adv.yaml",
        include_str!("../../deploy/examples/autoscale-adv.yaml"),
        true,
    ),
];

#[tokio::test]
async fn the_five_scenario_manifests_become_deployments_services_and_status() {
    for group in [siesta_k8s::crd::SIESTA_GROUP, siesta_k8s::crd::KSERVE_GROUP] {
        for (file, yaml, has_transformer) in SCENARIOS {
            let api = FakeApi::default();
            let obj = submitted(&api, yaml, group);
            let name = obj.metadata.name.clone().unwrap();
            reconcile(Arc::new(obj), ctx(&api, group))
                .await
                .unwrap_or_else(|e| panic!("{file}: {e}"));

            let predictor = api
                .get(&deployment_path(&format!("{name}-predictor")))
                .expect(file);
            assert_eq!(
                predictor["metadata"]["ownerReferences"][0]["apiVersion"],
                format!("{group}/v1beta1")
            );
            assert_eq!(
                predictor["metadata"]["ownerReferences"][0]["uid"],
                format!("isvc-{name}")
            );
            let container = &predictor["spec"]["template"]["spec"]["containers"][0];
            assert_eq!(
                container["readinessProbe"]["httpGet"]["path"], "/v2/health/ready",
                "{file}"
            );
            assert!(
                api.get(&service_path(&format!("{name}-predictor")))
                    .is_some(),
                "{file}"
            );
            assert_eq!(
                api.get(&deployment_path(&format!("{name}-transformer")))
                    .is_some(),
                has_transformer,
                "{file}"
            );
            let status = &api.get(&isvc_path(group, &name)).unwrap()["status"];
            assert_eq!(
                status["url"],
                format!("http://{name}.{NS}.example.com"),
                "{file}"
            );
            assert_eq!(
                status["components"]["predictor"]["replicas"], "0/1",
                "{file}"
            );
            assert_eq!(status["conditions"][0]["type"], "Ready");
            assert_eq!(
                status["conditions"][0]["status"], "False",
                "{file}: no replica is ready yet"
            );
        }
    }
}

#[tokio::test]
async fn replicas_the_autoscaler_sets_show_in_status_from_zero_to_n_and_back() {
    let api = FakeApi::default();
    let group = siesta_k8s::crd::SIESTA_GROUP;
    let yaml = include_str!("../../deploy/examples/scale-down-to-zero.yaml");
    let obj = Arc::new(submitted(&api, yaml, group));
    let name = obj.metadata.name.clone().unwrap();
    let dep = deployment_path(&format!("{name}-predictor"));
    let ctx = ctx(&api, group);
    reconcile(obj.clone(), ctx.clone()).await.unwrap();

    let mut seen = Vec::new();
    // The autoscaler's decisions (through the scale subresource) and the kubelet's readiness.
    for (replicas, ready) in [(0, 0), (3, 1), (3, 3), (0, 0)] {
        api.edit(&dep, |d| {
            d["spec"]["replicas"] = json!(replicas);
            d["status"]["readyReplicas"] = json!(ready);
        });
        reconcile(obj.clone(), ctx.clone()).await.unwrap();
        // The controller's apply never takes the count back.
        assert_eq!(api.get(&dep).unwrap()["spec"]["replicas"], replicas);
        let status = api.get(&isvc_path(group, &name)).unwrap()["status"].clone();
        seen.push((
            status["components"]["predictor"]["replicas"]
                .as_str()
                .unwrap()
                .to_string(),
            status["conditions"][0]["status"]
                .as_str()
                .unwrap()
                .to_string(),
        ));
    }
    let want = [
        ("0/0", "True"),
        ("1/3", "True"),
        ("3/3", "True"),
        ("0/0", "True"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(
        seen, want,
        "scaled to zero counts as ready: the gateway holds requests"
    );
}

#[tokio::test]
async fn a_transformer_removed_from_the_spec_is_deleted_and_bad_specs_are_errors() {
    let api = FakeApi::default();
    let group = siesta_k8s::crd::SIESTA_GROUP;
    let with = include_str!("../../deploy/examples/autoscale-adv.yaml");
    let obj = submitted(&api, with, group);
    let name = obj.metadata.name.clone().unwrap();
    reconcile(Arc::new(obj.clone()), ctx(&api, group))
        .await
        .unwrap();
    assert!(
        api.get(&deployment_path(&format!("{name}-transformer")))
            .is_some()
    );

    let mut without = obj.clone();
    without.data["spec"]
        .as_object_mut()
        .unwrap()
        .remove("transformer");
    reconcile(Arc::new(without), ctx(&api, group))
        .await
        .unwrap();
    assert!(
        api.get(&deployment_path(&format!("{name}-transformer")))
            .is_none()
    );
    assert!(
        api.get(&service_path(&format!("{name}-transformer")))
            .is_none()
    );
    assert!(
        api.get(&deployment_path(&format!("{name}-predictor")))
            .is_some()
    );

    let mut broken = obj;
    broken.data["spec"]["predictor"] = json!({"minReplicas": 0});
    let err = reconcile(Arc::new(broken), ctx(&api, group))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&name)
            && err.contains("spec.predictor.model: a component needs a model or containers"),
        "{err}"
    );
}

#[tokio::test]
async fn a_crash_looping_component_says_why_in_the_inference_services_status() {
    let api = FakeApi::default();
    let group = siesta_k8s::crd::SIESTA_GROUP;
    let yaml = include_str!("../../deploy/examples/autoscale.yaml");
    let obj = Arc::new(submitted(&api, yaml, group));
    let name = obj.metadata.name.clone().unwrap();
    let ctx = ctx(&api, group);
    reconcile(obj.clone(), ctx.clone()).await.unwrap();
    let dep = deployment_path(&format!("{name}-predictor"));
    api.edit(&dep, |d| {
        d["spec"]["replicas"] = json!(1);
        d["status"]["readyReplicas"] = json!(0);
    });
    // What the kubelet reports for a replica whose model cannot be loaded.
    let labels = api.get(&dep).unwrap()["spec"]["template"]["metadata"]["labels"].clone();
    api.insert(
        &format!("/api/v1/namespaces/{NS}/pods/{name}-predictor-abc"),
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("{name}-predictor-abc"), "namespace": NS, "labels": labels},
            "status": {"phase": "Running",
                "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [{
                    "name": "replica", "image": "siesta", "imageID": "", "ready": false,
                    "restartCount": 3,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                        "message": "Error: model 'flowers-sample' failed to load: no such path /mnt/models"}}
                }]}
        }),
    );
    reconcile(obj.clone(), ctx.clone()).await.unwrap();
    let status = api.get(&isvc_path(group, &name)).unwrap()["status"].clone();
    let predictor = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "PredictorReady")
        .unwrap()
        .clone();
    assert_eq!(predictor["status"], "False", "{status}");
    assert_eq!(predictor["reason"], "CrashLoopBackOff", "{status}");
    assert_eq!(
        predictor["message"],
        "replicas keep failing (3 restarts): CrashLoopBackOff: exit code 1 (Error): \
         Error: model 'flowers-sample' failed to load: no such path /mnt/models",
        "{status}"
    );
}

#[tokio::test]
async fn storage_secrets_of_the_service_account_the_node_cache_and_a_pvc_reach_the_replica() {
    let api = FakeApi::default();
    let group = siesta_k8s::crd::SIESTA_GROUP;
    // KServe's convention: the service account lists secrets; their keys and annotations say
    // which store they are for. One listed secret does not exist.
    api.insert(
        &format!("/api/v1/namespaces/{NS}/serviceaccounts/models-reader"),
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": "models-reader", "namespace": NS},
               "secrets": [{"name": "s3creds"}, {"name": "gone"}]}),
    );
    api.insert(
        &format!("/api/v1/namespaces/{NS}/secrets/s3creds"),
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "s3creds", "namespace": NS,
                            "annotations": {"serving.kserve.io/s3-endpoint": "minio.storage:9000",
                                            "serving.kserve.io/s3-usehttps": "0"}},
               "data": {"AWS_ACCESS_KEY_ID": "QUtJQQ==", "AWS_SECRET_ACCESS_KEY": "c2VjcmV0"}}),
    );
    let yaml = "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata: {name: private}\n\
                spec:\n  predictor:\n    serviceAccountName: models-reader\n    model:\n      \
                modelFormat: {name: onnx}\n      storageUri: s3://models/private\n      \
                env: [{name: S3_USE_HTTPS, value: '1'}]\n";
    let obj = Arc::new(submitted(&api, yaml, group));
    reconcile(obj, ctx(&api, group)).await.unwrap();
    let pod =
        api.get(&deployment_path("private-predictor")).unwrap()["spec"]["template"]["spec"].clone();
    let ct = &pod["containers"][0];
    let env: std::collections::BTreeMap<String, Value> = ct["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e.clone()))
        .collect();
    assert_eq!(
        env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"],
        json!({"name": "s3creds", "key": "AWS_SECRET_ACCESS_KEY"})
    );
    assert_eq!(env["S3_ENDPOINT"]["value"], "minio.storage:9000");
    assert_eq!(
        env["S3_USE_HTTPS"]["value"], "1",
        "the user's own env wins: {env:?}"
    );
    assert_eq!(env["SIESTA_CACHE_DIR"]["value"], "/var/cache/siesta/models");
    assert!(
        !pod.to_string().contains("c2VjcmV0"),
        "no secret value in the pod spec"
    );
    assert_eq!(
        pod["volumes"],
        json!([{"name": "siesta-model-cache",
                "hostPath": {"path": "/var/cache/siesta/models", "type": "DirectoryOrCreate"}}])
    );
    assert_eq!(
        ct["volumeMounts"][0]["mountPath"],
        "/var/cache/siesta/models"
    );

    // pvc://: the claim mounted read-only where KServe mounts it.
    let yaml = "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata: {name: onpvc}\n\
                spec:\n  predictor:\n    model:\n      modelFormat: {name: onnx}\n      \
                storageUri: pvc://model-claim/resnet\n";
    let obj = Arc::new(submitted(&api, yaml, group));
    reconcile(obj, ctx(&api, group)).await.unwrap();
    let pod =
        api.get(&deployment_path("onpvc-predictor")).unwrap()["spec"]["template"]["spec"].clone();
    assert!(
        pod["volumes"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "kserve-pvc-source",
            "persistentVolumeClaim": {"claimName": "model-claim", "readOnly": true}})),
        "{pod}"
    );
    assert!(
        pod["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap()
            .contains(
                &json!({"name": "kserve-pvc-source", "mountPath": "/mnt/pvc", "readOnly": true})
            )
    );
}
