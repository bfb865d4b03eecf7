//! The cluster path end to end, with a FAKE Kubernetes API server (k8s/tests/fake_api: no API
//! server can be installed where these tests run). Real: `siesta controller`'s reconcile loop
//! (watches included), `siesta gateway` with its autoscaler and `KubeBackend`, the replicas
//! (`siesta serve` processes started from the Deployment's own container args), and `hey`.
//! The test plays the kubelet, the Deployment controller and the EndpointSlice controller: it
//! runs as many replicas as a Deployment's `spec.replicas` says on loopback ports, and publishes
//! Pods and EndpointSlices whose readiness follows each replica's `/v2/health/ready`.
//! Windows are shortened (stable 6 s, grace 1 s, tick 200 ms) as in tests/up_scenarios.rs.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use siesta_k8s::desired::Settings;
use siesta_k8s::gateway::GatewayConfig;
use siesta_lifecycle::backend::Listening;
use siesta_lifecycle::manifest::ClusterDefaults;
use siesta_testkit::fake_kube::FakeApi;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const NS: &str = "models";
const GROUP: &str = siesta_k8s::crd::SIESTA_GROUP;
/// The scenario's `flowers-sample` (minReplicas 0, target 1) on the shipped MNIST model.
fn isvc() -> Value {
    json!({
        "apiVersion": format!("{GROUP}/v1beta1"),
        "kind": "InferenceService",
        "metadata": {"name": "flowers-sample", "namespace": NS, "uid": "isvc-flowers", "generation": 1},
        "spec": {"predictor": {
            "minReplicas": 0, "maxReplicas": 5, "scaleTarget": 1, "scaleMetric": "concurrency",
            "model": {"modelFormat": {"name": "siesta"}, "storageUri": "siesta://mnist"}
        }}
    })
}

fn isvc_path() -> String {
    format!("/apis/{GROUP}/v1beta1/namespaces/{NS}/inferenceservices/flowers-sample")
}

const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/models/deployments/flowers-sample-predictor";

/// One replica the stand-in kubelet runs.
struct PodProcess {
    name: String,
    child: Child,
    http: SocketAddr,
    ready: bool,
}

fn pod_path(name: &str) -> String {
    format!("/api/v1/namespaces/{NS}/pods/{name}")
}

fn slice_path(name: &str) -> String {
    format!("/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices/{name}")
}

/// The container's args with the pod network's fixed ports swapped for free loopback ones.
fn loopback_args(container: &Value) -> Vec<String> {
    let args: Vec<String> = container["args"]
        .as_array()
        .expect("the Deployment's container has args")
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let mut out = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let replace = match a.as_str() {
            "--host" => Some("127.0.0.1"),
            "--http-port" | "--grpc-port" => Some("0"),
            _ => None,
        };
        out.push(a);
        if let Some(v) = replace {
            it.next();
            out.push(v.to_string());
        }
    }
    out
}

/// The slice the EndpointSlice controller would publish for one pod.
fn slice(
    deployment: &str,
    pod: &str,
    http: SocketAddr,
    grpc: Option<SocketAddr>,
    ready: bool,
    terminating: bool,
) -> Value {
    let mut ports = vec![json!({"name": "http", "port": http.port()})];
    if let Some(g) = grpc {
        ports.push(json!({"name": "grpc", "port": g.port()}));
    }
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
           "metadata": {"name": pod, "namespace": NS, "labels": {"kubernetes.io/service-name": deployment}},
           "ports": ports,
           "endpoints": [{"addresses": [http.ip().to_string()],
                          "conditions": {"ready": ready, "serving": ready, "terminating": terminating},
                          "targetRef": {"kind": "Pod", "name": pod}}]})
}

async fn start_pod(api: &FakeApi, deployment: &Value, n: usize) -> PodProcess {
    let name = format!("{}-{n}", deployment["metadata"]["name"].as_str().unwrap());
    let template = &deployment["spec"]["template"];
    let container = &template["spec"]["containers"][0];
    let args = loopback_args(container);
    assert_eq!(
        args[0], "serve",
        "the image's entrypoint is siesta: {args:?}"
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_siesta"))
        .args(&args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .await
        .unwrap();
    let Listening { http, grpc } = line.parse().expect("the listening line");
    let dep_name = deployment["metadata"]["name"].as_str().unwrap();
    api.insert(
        &pod_path(&name),
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": NS, "labels": template["metadata"]["labels"],
                            "creationTimestamp": k8s_openapi_now()},
               "status": {"phase": "Running", "conditions": [{"type": "PodScheduled", "status": "True"},
                                                               {"type": "Ready", "status": "False"}]}}),
    );
    api.insert(
        &slice_path(&name),
        slice(dep_name, &name, http, grpc, false, false),
    );
    PodProcess {
        name,
        child,
        http,
        ready: false,
    }
}

fn k8s_openapi_now() -> String {
    siesta_k8s::backend::now().to_string()
}

async fn probe_ready(addr: SocketAddr) -> bool {
    matches!(
        reqwest::get(format!("http://{addr}/v2/health/ready")).await,
        Ok(r) if r.status() == 200
    )
}

/// Plays the kubelet and the Deployment and EndpointSlice controllers until `stop`.
async fn kubelet(api: FakeApi, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut running: HashMap<String, Vec<PodProcess>> = HashMap::new();
    let mut n = 0;
    loop {
        for path in api
            .paths()
            .into_iter()
            .filter(|p| p.contains("/deployments/"))
        {
            let d = api.get(&path).unwrap();
            let dep_name = d["metadata"]["name"].as_str().unwrap().to_string();
            let want = d["spec"]["replicas"].as_u64().unwrap_or(0) as usize;
            let pods = running.entry(dep_name.clone()).or_default();
            while pods.len() < want {
                n += 1;
                pods.push(start_pod(&api, &d, n).await);
            }
            while pods.len() > want {
                // The newest goes first; it drains before it disappears, as with preStop + SIGTERM.
                let mut p = pods.pop().unwrap();
                api.edit(&pod_path(&p.name), |v| {
                    v["metadata"]["deletionTimestamp"] = json!(k8s_openapi_now())
                });
                api.insert(
                    &slice_path(&p.name),
                    slice(&dep_name, &p.name, p.http, None, false, true),
                );
                let pid = p.child.id().unwrap().to_string();
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid])
                    .status();
                let api = api.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(35), p.child.wait()).await;
                    api.remove(&pod_path(&p.name));
                    api.remove(&slice_path(&p.name));
                });
            }
            for p in pods.iter_mut().filter(|p| !p.ready) {
                if probe_ready(p.http).await {
                    p.ready = true;
                    api.edit(&pod_path(&p.name), |v| {
                        v["status"]["conditions"][1]["status"] = json!("True")
                    });
                    let s = api.get(&slice_path(&p.name)).unwrap();
                    let mut s = s;
                    s["endpoints"][0]["conditions"] =
                        json!({"ready": true, "serving": true, "terminating": false});
                    api.insert(&slice_path(&p.name), s);
                }
            }
            let status = json!({"replicas": pods.len(), "readyReplicas": pods.iter().filter(|p| p.ready).count()});
            if d["status"]["replicas"] != status["replicas"]
                || d["status"]["readyReplicas"] != status["readyReplicas"]
            {
                api.edit(&path, |v| v["status"] = status);
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

struct Cluster {
    api: FakeApi,
    gateway: String,
    stop_kubelet: tokio::sync::watch::Sender<bool>,
    stop_gateway: Option<tokio::sync::oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Cluster {
    async fn start() -> Cluster {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .with_test_writer()
            .try_init();
        let api = FakeApi::default();
        api.insert(&isvc_path(), isvc());
        let controller = tokio::spawn(siesta_k8s::controller::run(
            api.client(),
            Settings {
                api_group: GROUP.into(),
                ..Settings::default()
            },
        ));
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let cfg = GatewayConfig {
            api_group: GROUP.into(),
            namespace: None,
            addr: "127.0.0.1:0".parse().unwrap(),
            startup_deadline: Duration::from_secs(600),
            hold_limit: 1000,
            body_budget: siesta_lifecycle::gateway::DEFAULT_BODY_BUDGET,
            body_timeout: siesta_lifecycle::gateway::BODY_TIMEOUT,
            defaults: ClusterDefaults {
                stable_window: Duration::from_secs(6),
                scale_to_zero_grace: Duration::from_secs(1),
                tick: Duration::from_millis(200),
                ..ClusterDefaults::default()
            },
            metrics: Arc::new(String::new),
            clock: Arc::new(siesta_k8s::backend::now),
            control_token: None,
            connections: Default::default(),
        };
        let gateway = tokio::spawn({
            let client = api.client();
            async move {
                siesta_k8s::gateway::run(
                    client,
                    cfg,
                    move |a| {
                        let _ = addr_tx.send(a);
                    },
                    async move {
                        let _ = stop_rx.await;
                    },
                )
                .await
                .unwrap();
            }
        });
        let addr = addr_rx.await.unwrap();
        let (stop_kubelet, stop) = tokio::sync::watch::channel(false);
        let kubelet = tokio::spawn(kubelet(api.clone(), stop));
        Cluster {
            api,
            gateway: format!("http://{addr}"),
            stop_kubelet,
            stop_gateway: Some(stop_tx),
            tasks: vec![controller, gateway, kubelet],
        }
    }

    async fn component(&self) -> Value {
        let s: Value = reqwest::get(format!("{}/siesta/status", self.gateway))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        s["components"][0].clone()
    }

    async fn wait_for(&self, what: &str, limit: Duration, ok: impl Fn(&Value, &Value) -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            let c = self.component().await;
            let d = self.api.get(DEPLOYMENT).unwrap_or(Value::Null);
            if ok(&c, &d) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what} not reached within {limit:?}: gateway {c}, deployment {d}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn isvc_predictor_replicas(&self) -> Value {
        self.api.get(&isvc_path()).unwrap()["status"]["components"]["predictor"]["replicas"].clone()
    }

    async fn stop(mut self) {
        let _ = self.stop_gateway.take().unwrap().send(());
        let _ = self.stop_kubelet.send(true);
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deployment_scales_from_zero_to_five_under_hey_and_back_to_zero_losing_nothing() {
    let mut cluster = Cluster::start().await;
    // The controller makes the Deployment (Kubernetes' default of one replica); the gateway's
    // autoscaler takes the count over and, with no traffic, scales it to zero.
    cluster
        .wait_for(
            "the first replica ready behind the gateway",
            Duration::from_secs(30),
            |c, _| c["ready"] == 1,
        )
        .await;
    cluster
        .wait_for("scale to zero", Duration::from_secs(30), |c, d| {
            c["ready"] == 0 && d["spec"]["replicas"] == 0 && d["status"]["replicas"] == 0
        })
        .await;

    // A request at zero is held while the Deployment scales up and its pod loads the model.
    let url = format!("{}/v2/models/flowers-sample/infer", cluster.gateway);
    let dir = tempfile::tempdir().unwrap();
    let body = common::mnist_body_file(dir.path());
    let held = common::post_held_ms(&url, &body).await;
    assert!(held > 0.0, "the request waited for a replica");
    // One request against target 1 at Knative's 70 % utilisation: ceil(1 / 0.7) = 2 replicas
    // (knative/serving#8682 reports the same extra pod).
    let r = cluster.api.get(DEPLOYMENT).unwrap()["spec"]["replicas"]
        .as_u64()
        .unwrap();
    assert!((1..=2).contains(&r), "{r}");

    // hey -c 5 against target 1: the Deployment goes to five, never above maxReplicas.
    let most = {
        let api = cluster.api.clone();
        tokio::spawn(async move {
            let mut most = 0;
            for _ in 0..90 {
                let r = api.get(DEPLOYMENT).unwrap()["spec"]["replicas"]
                    .as_u64()
                    .unwrap();
                most = most.max(r);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            most
        })
    };
    common::hey_all_ok(&["-z", "8s", "-c", "5"], &body, &url).await;
    cluster
        .wait_for("five ready replicas", Duration::from_secs(10), |c, d| {
            c["ready"] == 5 && d["spec"]["replicas"] == 5
        })
        .await;
    assert!(most.await.unwrap() <= 5, "never above maxReplicas");
    // The controller's status follows the Deployment.
    for _ in 0..50 {
        if cluster.isvc_predictor_replicas() == "5/5" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cluster.isvc_predictor_replicas(), "5/5");

    // Traffic stops: back to zero, and the next burst is still served in full.
    cluster
        .wait_for(
            "scale to zero after load",
            Duration::from_secs(40),
            |c, d| c["ready"] == 0 && d["spec"]["replicas"] == 0 && d["status"]["replicas"] == 0,
        )
        .await;
    assert_eq!(
        common::hey_all_ok(&["-n", "20", "-c", "2"], &body, &url).await,
        20
    );
    let scale_patches = cluster
        .api
        .state
        .lock()
        .unwrap()
        .requests
        .iter()
        .filter(|(m, p)| m == "PATCH" && p.ends_with("/deployments/flowers-sample-predictor/scale"))
        .count();
    assert!(scale_patches >= 4, "0, 1, up to 5, 0, 1: {scale_patches}");

    // A spec change while a request is held at zero: the gateway applies it in place, so the
    // request is still served (before, the service was reinstalled and the held request waited
    // for its timeout on a pool nobody served any more). The kubelet is paused meanwhile, so
    // the request is held for certain while the spec changes.
    cluster
        .wait_for("zero again", Duration::from_secs(40), |c, d| {
            c["ready"] == 0 && d["status"]["replicas"] == 0
        })
        .await;
    let _ = cluster.stop_kubelet.send(true);
    let held = tokio::spawn({
        let url = url.clone();
        let body = std::fs::read(&body).unwrap();
        async move {
            reqwest::Client::new()
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
        }
    });
    cluster
        .wait_for("a held request", Duration::from_secs(10), |c, _| {
            c["waiting"] == 1
        })
        .await;
    cluster.api.edit(&isvc_path(), |isvc| {
        isvc["spec"]["predictor"]["containerConcurrency"] = json!(2);
        isvc["metadata"]["generation"] = json!(2);
    });
    cluster
        .wait_for(
            "the new spec, the request still held",
            Duration::from_secs(10),
            |c, _| c["container_concurrency"] == 2 && c["waiting"] == 1,
        )
        .await;
    let (resume, resumed) = tokio::sync::watch::channel(false);
    cluster.stop_kubelet = resume;
    cluster
        .tasks
        .push(tokio::spawn(kubelet(cluster.api.clone(), resumed)));
    let r = tokio::time::timeout(Duration::from_secs(30), held)
        .await
        .expect("the held request is answered")
        .unwrap()
        .unwrap();
    assert_eq!(r.status(), 200);
    cluster.stop().await;
}
