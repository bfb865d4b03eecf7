//! `KubeBackend` against a FAKE Kubernetes API server (tests/fake_api says what it does and
//! does not do); the tests play the kubelet and the EndpointSlice controller by writing Pods and
//! EndpointSlices into it. What is checked: scaling goes through the Deployment's scale
//! subresource, endpoints arrive through watches (no polling) and only once ready, and a GPU pod
//! waiting for its node is kept until the startup deadline (kserve#1247).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::{Timestamp, ToSpan};
use serde_json::{Value, json};
use siesta_k8s::backend::KubeBackend;
use siesta_lifecycle::backend::{ComponentKey, ReplicaBackend, ReplicaTemplate};
use siesta_lifecycle::manifest::ComponentKind;
use siesta_testkit::fake_kube::FakeApi;

const NS: &str = "models";
const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/models/deployments/m-predictor";

fn key() -> ComponentKey {
    ComponentKey {
        service: "m".into(),
        kind: ComponentKind::Predictor,
    }
}

fn template() -> ReplicaTemplate {
    ReplicaTemplate {
        args: vec![],
        env: vec![],
        gpu_memory_bytes: None,
        tiers: None,
    }
}

fn backend(api: &FakeApi) -> KubeBackend {
    KubeBackend::new(
        api.client(),
        NS,
        Duration::from_secs(600),
        Arc::new(Timestamp::now),
    )
}

fn deployment(api: &FakeApi, replicas: u32) {
    api.insert(
        DEPLOYMENT,
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "m-predictor", "namespace": NS,
                            "labels": {"serving.siesta.dev/inferenceservice": "m", "serving.siesta.dev/component": "predictor"}},
               "spec": {"replicas": replicas, "selector": {}, "template": {}},
               "status": {"replicas": replicas}}),
    );
}

fn pod(api: &FakeApi, name: &str, age_secs: i64, ready: bool, unschedulable: Option<&str>) {
    let created = Timestamp::now() - age_secs.seconds();
    let mut conditions =
        vec![json!({"type": "Ready", "status": if ready { "True" } else { "False" }})];
    if let Some(msg) = unschedulable {
        conditions.push(json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": msg}));
    }
    api.insert(
        &format!("/api/v1/namespaces/{NS}/pods/{name}"),
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": NS, "creationTimestamp": created.to_string(),
                            "labels": {"serving.siesta.dev/inferenceservice": "m", "serving.siesta.dev/component": "predictor"}},
               "status": {"phase": if unschedulable.is_some() { "Pending" } else { "Running" }, "conditions": conditions}}),
    );
}

fn slice(api: &FakeApi, endpoints: Value) {
    api.insert(
        &format!("/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices/m-predictor-x1"),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
               "metadata": {"name": "m-predictor-x1", "namespace": NS,
                            "labels": {"kubernetes.io/service-name": "m-predictor"}},
               "ports": [{"name": "http", "port": 8080}, {"name": "grpc", "port": 8081}],
               "endpoints": endpoints}),
    );
}

async fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    for _ in 0..200 {
        if ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

fn replicas(api: &FakeApi) -> Value {
    api.get(DEPLOYMENT).unwrap()["spec"]["replicas"].clone()
}

#[tokio::test]
async fn scales_through_the_scale_subresource_and_learns_ready_endpoints_from_watches() {
    let api = FakeApi::default();
    let b = backend(&api);
    b.register(&key(), template());
    let mut endpoints = b.endpoints(&key()).unwrap();
    // The controller has not made the Deployment yet: the backend retries.
    b.scale(&key(), 3).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    deployment(&api, 1);
    eventually("replicas 3", || replicas(&api) == 3).await;
    let requests = api.state.lock().unwrap().requests.clone();
    assert!(
        requests
            .iter()
            .any(|(m, p)| m == "PATCH" && p == &format!("{DEPLOYMENT}/scale")),
        "{requests:?}"
    );
    assert!(
        requests.iter().any(|(_, p)| p.contains("watch=true")),
        "endpoints and pods are watched"
    );

    // Two pods serve, one still loads its model (its readiness probe fails: kserve#2882).
    slice(
        &api,
        json!([
            {"addresses": ["10.1.0.1"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": "m-a"}},
            {"addresses": ["10.1.0.2"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": "m-b"}},
            {"addresses": ["10.1.0.3"], "conditions": {"ready": false}, "targetRef": {"kind": "Pod", "name": "m-c"}},
        ]),
    );
    tokio::time::timeout(Duration::from_secs(5), endpoints.wait_for(|e| e.len() == 2))
        .await
        .expect("endpoints arrive by watch")
        .unwrap();
    let got: Vec<String> = endpoints
        .borrow()
        .iter()
        .map(|e| e.addr.to_string())
        .collect();
    assert_eq!(got, ["10.1.0.1:8080", "10.1.0.2:8080"]);
    assert_eq!(
        endpoints.borrow()[0].grpc.unwrap().to_string(),
        "10.1.0.1:8081"
    );

    // Scale to zero: replicas 0, endpoints gone once the slice empties.
    b.scale(&key(), 0).unwrap();
    eventually("replicas 0", || replicas(&api) == 0).await;
    slice(&api, json!([]));
    tokio::time::timeout(Duration::from_secs(5), endpoints.wait_for(|e| e.is_empty()))
        .await
        .unwrap()
        .unwrap();

    // A restarted gateway leaves the count alone until its autoscaler decides.
    api.edit(DEPLOYMENT, |d| d["spec"]["replicas"] = json!(2));
    b.shutdown().await;
    let again = backend(&api);
    again.register(&key(), template());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(replicas(&api), 2);
}

#[tokio::test]
async fn a_gpu_pod_waiting_for_a_new_node_is_kept_until_the_startup_deadline() {
    let api = FakeApi::default();
    deployment(&api, 1);
    pod(
        &api,
        "m-gpu",
        100,
        false,
        Some(
            "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available",
        ),
    );
    let b = backend(&api);
    b.register(&key(), template());
    // The autoscaler saw no traffic for its window and asks for zero (kserve#1247).
    b.scale(&key(), 0).unwrap();
    eventually("status with the pending reason", || {
        b.status(&key()).unwrap().pending.is_some()
    })
    .await;
    let st = b.status(&key()).unwrap();
    assert_eq!((st.desired, st.starting, st.ready), (1, 1, 0), "{st:?}");
    let why = st.pending.unwrap();
    assert!(
        why.contains("m-gpu unschedulable") && why.contains("nvidia.com/gpu"),
        "{why}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(replicas(&api), 1, "the pod waiting for its node stays");

    // The node never came: past the startup deadline the autoscaler's zero stands.
    pod(&api, "m-gpu", 700, false, Some("0/3 nodes are available"));
    eventually("replicas 0 after the deadline", || replicas(&api) == 0).await;
    let why = b.status(&key()).unwrap().pending.unwrap();
    assert!(why.contains("startup deadline 600 s"), "{why}");

    // Someone scales by hand: the autoscaler's count is put back.
    api.edit(DEPLOYMENT, |d| d["spec"]["replicas"] = json!(4));
    eventually("replicas back to 0", || replicas(&api) == 0).await;

    // With a ready pod, a starting one is not kept: the autoscaler decides alone.
    pod(&api, "m-ready", 30, true, None);
    pod(&api, "m-gpu", 10, false, Some("0/3 nodes are available"));
    b.scale(&key(), 2).unwrap();
    eventually("replicas 2", || replicas(&api) == 2).await;
    b.scale(&key(), 0).unwrap();
    eventually("replicas 0 with a ready pod", || replicas(&api) == 0).await;
}
