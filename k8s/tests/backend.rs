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
use siesta_k8s::parking::DELETION_COST;
use siesta_lifecycle::backend::{ComponentKey, ReplicaBackend, ReplicaTemplate, ReplicaTiers};
use siesta_lifecycle::manifest::{ComponentKind, TierPolicy};
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

/// A replica's control endpoint as the tests' pods serve it: answers park and resume with a
/// tier report and records each call (path and token).
async fn control_server(ip: &str, port: u16) -> (u16, Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind((ip, port)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let calls: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let seen = calls.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = vec![0u8; 4096];
            let n = s.read(&mut head).await.unwrap();
            let text = String::from_utf8_lossy(&head[..n]).to_string();
            let path = text.split_whitespace().nth(1).unwrap_or("").to_string();
            let token = text
                .lines()
                .find_map(|l| l.strip_prefix("x-siesta-control-token: "))
                .unwrap_or("")
                .to_string();
            seen.lock().unwrap().push(format!("{path} {token}"));
            let tier = if path.ends_with("/park") {
                "parked"
            } else {
                "hot"
            };
            let body = format!("{{\"tier\":\"{tier}\",\"device_memory_bytes\":0,\"took_ms\":0.5}}");
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(answer.as_bytes()).await.unwrap();
        }
    });
    (port, calls)
}

fn sharing_template(park_timeout: Duration) -> ReplicaTemplate {
    ReplicaTemplate {
        tiers: Some(ReplicaTiers {
            policy: TierPolicy {
                parked_replicas: 1,
                park_timeout,
                gpu_sharing: true,
            },
            min_replicas: 0,
        }),
        ..template()
    }
}

fn slice_on(api: &FakeApi, port: u16, pods: &[(&str, &str)]) {
    let endpoints: Vec<Value> = pods
        .iter()
        .map(|(name, ip)| {
            json!({"addresses": [ip], "conditions": {"ready": true},
                                 "targetRef": {"kind": "Pod", "name": name}})
        })
        .collect();
    api.insert(
        &format!("/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices/m-predictor-x1"),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
               "metadata": {"name": "m-predictor-x1", "namespace": NS,
                            "labels": {"kubernetes.io/service-name": "m-predictor"}},
               "ports": [{"name": "http", "port": port}],
               "endpoints": endpoints}),
    );
}

/// With `siesta.dev/gpu-sharing: "true"` (and the control token), scaling down parks a pod:
/// it stays in the Deployment's count and leaves the endpoints; scaling up resumes it before
/// any new pod is asked for; past the park timeout it is marked as the pod the ReplicaSet
/// deletes first, and the count drops. The pods' control endpoints are real HTTP servers on
/// loopback addresses (the FAKE API server stands in for the cluster only).
#[tokio::test]
async fn with_gpu_sharing_scale_down_parks_a_pod_and_scale_up_resumes_it() {
    let api = FakeApi::default();
    deployment(&api, 2);
    let (port, calls_a) = control_server("127.0.0.2", 0).await;
    let (_, calls_b) = control_server("127.0.0.3", port).await;
    pod(&api, "m-a", 300, true, None);
    pod(&api, "m-b", 100, true, None);
    slice_on(&api, port, &[("m-a", "127.0.0.2"), ("m-b", "127.0.0.3")]);
    let b = backend(&api).with_control_token(Some("secret-token".into()));
    b.register(&key(), sharing_template(Duration::from_secs(2)));
    let endpoints = b.endpoints(&key()).unwrap();
    b.scale(&key(), 2).unwrap();
    eventually("two endpoints", || endpoints.borrow().len() == 2).await;

    // Down to one: the younger pod (m-b) is parked, not deleted.
    b.scale(&key(), 1).unwrap();
    eventually("m-b parked", || {
        b.status(&key()).unwrap().parked == 1 && endpoints.borrow().len() == 1
    })
    .await;
    assert_eq!(endpoints.borrow()[0].replica, "m-a");
    assert_eq!(replicas(&api), 2, "the parked pod stays in the Deployment");
    assert_eq!(
        calls_b.lock().unwrap().clone(),
        vec!["/siesta/replica/park secret-token".to_string()]
    );
    assert!(calls_a.lock().unwrap().is_empty());
    let st = b.status(&key()).unwrap();
    assert_eq!((st.desired, st.ready, st.parked), (1, 1, 1), "{st:?}");

    // Up to two: m-b is resumed, no new pod is asked for.
    b.scale(&key(), 2).unwrap();
    eventually("m-b back", || endpoints.borrow().len() == 2).await;
    assert_eq!(replicas(&api), 2);
    assert_eq!(
        calls_b.lock().unwrap().last().unwrap(),
        "/siesta/replica/resume secret-token"
    );

    // Down to zero: one parked (the limit), the other goes. The parked pod carries the highest
    // deletion cost, so the ReplicaSet (played here) deletes the hot one.
    b.scale(&key(), 0).unwrap();
    eventually("one parked, count 1", || {
        b.status(&key()).unwrap().parked == 1 && replicas(&api) == 1
    })
    .await;
    let cost = |name: &str| {
        api.get(&format!("/api/v1/namespaces/{NS}/pods/{name}"))
            .unwrap()["metadata"]["annotations"][DELETION_COST]
            .clone()
    };
    let (parked, hot) = if cost("m-a") == "1000" {
        ("m-a", "m-b")
    } else {
        ("m-b", "m-a")
    };
    assert_eq!(cost(parked), "1000", "the parked pod is kept");
    assert_eq!(cost(hot), Value::Null);
    api.remove(&format!("/api/v1/namespaces/{NS}/pods/{hot}"));
    let ip = if parked == "m-a" {
        "127.0.0.2"
    } else {
        "127.0.0.3"
    };
    slice_on(&api, port, &[(parked, ip)]);
    eventually("no endpoint", || endpoints.borrow().is_empty()).await;
    // Past the park timeout it gets the lowest cost, and the count drops to zero.
    eventually("park timeout", || replicas(&api) == 0).await;
    assert_eq!(cost(parked), "-1000");
}

/// Without `siesta.dev/gpu-sharing` a parked pod would free nothing (the device plugin gives
/// it a whole GPU): scale-down deletes pods and no control call is made.
#[tokio::test]
async fn without_gpu_sharing_nothing_is_parked() {
    let api = FakeApi::default();
    deployment(&api, 2);
    let (port, calls) = control_server("127.0.0.4", 0).await;
    pod(&api, "m-a", 300, true, None);
    pod(&api, "m-b", 100, true, None);
    slice_on(&api, port, &[("m-a", "127.0.0.4"), ("m-b", "127.0.0.4")]);
    let b = backend(&api).with_control_token(Some("secret-token".into()));
    let mut t = sharing_template(Duration::from_secs(60));
    t.tiers.as_mut().unwrap().policy.gpu_sharing = false;
    b.register(&key(), t);
    b.scale(&key(), 2).unwrap();
    eventually("replicas 2", || replicas(&api) == 2).await;
    b.scale(&key(), 1).unwrap();
    eventually("replicas 1", || replicas(&api) == 1).await;
    b.scale(&key(), 0).unwrap();
    eventually("replicas 0", || replicas(&api) == 0).await;
    assert_eq!(b.status(&key()).unwrap().parked, 0);
    assert!(
        calls.lock().unwrap().is_empty(),
        "{:?}",
        calls.lock().unwrap()
    );
}
