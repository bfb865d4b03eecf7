//! `siesta up` end to end on loopback: real replica processes, the real gateway, the real `hey`.
//! Windows are shortened (stable 6 s, grace 1 s, tick 200 ms) so the scenarios fit in seconds.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::up::Up;
use serde_json::Value;

const SCENARIO_1_AND_4: &str = "
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: flowers-sample
spec:
  predictor:
    minReplicas: 0
    maxReplicas: 5
    scaleTarget: 1
    scaleMetric: concurrency
    model:
      modelFormat: {name: siesta}
      storageUri: siesta://mnist
";

#[tokio::test]
async fn scales_from_zero_to_five_under_hey_and_back_to_zero_losing_nothing() {
    let up = Up::start(SCENARIO_1_AND_4);
    let url = format!("{}/v2/models/flowers-sample/infer", up.gateway);
    // Initial scale 1, then down to zero after the stable window and the grace period.
    up.wait_for("initial replica", Duration::from_secs(20), |s| {
        s["ready"] == 1
    })
    .await;
    up.wait_for("scale to zero", Duration::from_secs(20), |s| {
        s["ready"] == 0 && s["starting"] == 0
    })
    .await;

    // A request at zero is held until a replica is ready, then served.
    let dir = tempfile::tempdir().unwrap();
    let body = common::mnist_body_file(dir.path());
    let held = common::post_held_ms(&url, &body).await;
    assert!(held > 0.0, "the request waited for a replica");

    // hey -c 5 against target 1: five replicas, never more than maxReplicas.
    let watcher = {
        let gateway = up.gateway.clone();
        tokio::spawn(async move {
            let mut most = 0;
            for _ in 0..80 {
                let s: Value = reqwest::get(format!("{gateway}/siesta/status"))
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                most = most.max(s["components"][0]["desired"].as_u64().unwrap());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            most
        })
    };
    common::hey_all_ok(&["-z", "8s", "-c", "5"], &body, &url).await;
    let s = up.status().await;
    assert_eq!(s["ready"], 5, "{s}");
    assert!(watcher.await.unwrap() <= 5, "never above maxReplicas");

    // Traffic stops: back to zero after the window and grace, and the next request still works.
    up.wait_for("scale to zero after load", Duration::from_secs(30), |s| {
        s["ready"] == 0 && s["starting"] == 0
    })
    .await;
    assert_eq!(
        common::hey_all_ok(&["-n", "20", "-c", "2"], &body, &url).await,
        20
    );
    up.stop();
}

#[tokio::test]
async fn container_concurrency_is_never_exceeded_on_a_replica_and_excess_waits() {
    let up = Up::start(
        "
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: limited}
spec:
  predictor:
    minReplicas: 1
    maxReplicas: 1
    containerConcurrency: 2
    model: {modelFormat: {name: siesta}, storageUri: 'siesta://mnist'}
",
    );
    let s = up
        .wait_for("replica", Duration::from_secs(20), |s| s["ready"] == 1)
        .await;
    let replica = s["endpoints"][0]["addr"].as_str().unwrap().to_string();
    // `siesta status` shows the same from the command line.
    let port = up.gateway.rsplit(':').next().unwrap().to_string();
    let table = Command::new(env!("CARGO_BIN_EXE_siesta"))
        .args(["status", "--port", &port])
        .output()
        .unwrap();
    assert!(table.status.success());
    let table = String::from_utf8(table.stdout).unwrap();
    let row = table
        .lines()
        .find(|l| l.starts_with("limited-predictor"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("limited-predictor-1"), "{row}");
    // The live page is served by the gateway and reads its history: one sample per second of
    // the status, kept server-side (15 minutes).
    let page = reqwest::get(format!("{}/dashboard", up.gateway))
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.text().await.unwrap().contains("/siesta/history"));
    assert!(up.status().await["autoscaler"]["desired"].is_i64());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let history: Value = reqwest::get(format!("{}/siesta/history", up.gateway))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let samples = history["samples"].as_array().unwrap();
    assert!(samples.len() >= 2, "{history}");
    let last = &samples[samples.len() - 1];
    assert_eq!(
        last["components"]["limited-predictor"]["ready"], 1,
        "{last}"
    );
    let t = last["t"].as_u64().unwrap();
    let newer: Value = reqwest::get(format!("{}/siesta/history?since={t}", up.gateway))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        newer["samples"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["t"].as_u64().unwrap() > t),
        "{newer}"
    );
    let bad = reqwest::get(format!("{}/siesta/history?since=yesterday", up.gateway))
        .await
        .unwrap();
    assert_eq!(bad.status(), 400, "a malformed query is refused");
    let dir = tempfile::tempdir().unwrap();
    let body = common::mnist_body_file(dir.path());
    let url = format!("{}/v2/models/limited/infer", up.gateway);
    let codes =
        tokio::task::spawn_blocking(move || common::hey(&["-n", "400", "-c", "8"], &body, &url))
            .await
            .unwrap();
    assert_eq!(codes.len(), 400);
    assert!(
        codes.iter().all(|c| c == "200"),
        "excess requests waited instead of failing"
    );
    let metrics = reqwest::get(format!("http://{replica}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let peak: f64 = metrics
        .lines()
        .find(|l| l.starts_with("siesta_in_flight_requests_peak"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("peak metric");
    assert!(
        (1.0..=2.0).contains(&peak),
        "the replica saw {peak} requests at once"
    );
    up.stop();
}

#[tokio::test]
async fn rps_metric_scales_with_the_request_rate() {
    let trace_dir = tempfile::tempdir().unwrap();
    let trace = trace_dir.path().join("trace.jsonl");
    let up = Up::start_with(
        "
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: by-rate}
spec:
  predictor:
    minReplicas: 1
    maxReplicas: 6
    scaleTarget: 10
    scaleMetric: rps
    model: {modelFormat: {name: siesta}, storageUri: 'siesta://mnist'}
",
        &["--record-trace", trace.to_str().unwrap()],
    );
    up.wait_for("replica", Duration::from_secs(20), |s| s["ready"] == 1)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let body = common::mnist_body_file(dir.path());
    let url = format!("{}/v2/models/by-rate/infer", up.gateway);
    // 2 workers x 20 rps = 40 rps against 10 x 70 % = 7 rps per replica: ceil(40 / 7) = 6.
    let codes = tokio::task::spawn_blocking(move || {
        common::hey(&["-z", "6s", "-c", "2", "-q", "20"], &body, &url)
    })
    .await
    .unwrap();
    assert!(codes.iter().all(|c| c == "200"));
    let s = up.status().await;
    let ready = s["ready"].as_u64().unwrap() + s["starting"].as_u64().unwrap();
    assert!((4..=6).contains(&ready), "40 rps / 7 per replica: {s}");
    up.stop();

    // The recorded trace holds every answered request and replays through `siesta scale simulate`.
    let recorded = std::fs::read_to_string(&trace).unwrap();
    let lines: Vec<Value> = recorded
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), codes.len(), "one line per request");
    assert!(lines.iter().all(|l| l["component"] == "by-rate-predictor"));
    let manifest = trace_dir.path().join("isvc.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata: {name: by-rate}\nspec:\n  predictor:\n    \
         scaleTarget: 10\n    scaleMetric: rps\n    maxReplicas: 6\n    model: {modelFormat: {name: siesta}}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_siesta"))
        .args([
            "scale",
            "simulate",
            "--config",
            manifest.to_str().unwrap(),
            "--trace",
            trace.to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["summary"]["requests"].as_u64().unwrap() as usize,
        lines.len()
    );
    assert!(
        report["summary"]["max_replicas"].as_u64().unwrap() >= 4,
        "{}",
        report["summary"]
    );
}

#[tokio::test]
async fn a_replica_killed_under_load_is_replaced_and_only_its_requests_fail() {
    let up = Up::start(
        "
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: faults}
spec:
  predictor:
    minReplicas: 2
    maxReplicas: 2
    model: {modelFormat: {name: siesta}, storageUri: 'siesta://mnist'}
",
    );
    up.wait_for("two replicas", Duration::from_secs(20), |s| s["ready"] == 2)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let body = common::mnist_body_file(dir.path());
    let url = format!("{}/v2/models/faults/infer", up.gateway);
    let load =
        tokio::task::spawn_blocking(move || common::hey(&["-z", "5s", "-c", "4"], &body, &url));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let victim = up.status().await["endpoints"][0]["replica"]
        .as_str()
        .unwrap()
        .to_string();
    let pgrep = Command::new("pgrep")
        .args(["-f", "--", &format!("--replica-id {victim} ")])
        .output()
        .unwrap();
    let pid = String::from_utf8(pgrep.stdout).unwrap().trim().to_string();
    assert!(!pid.is_empty(), "found the replica process");
    assert!(
        Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .unwrap()
            .success()
    );
    let codes = load.await.unwrap();
    let failed = codes.iter().filter(|c| *c != "200").count();
    // CC 0 with 4 workers: at most the requests in flight on the killed replica fail.
    assert!(failed <= 4, "{failed} of {} failed", codes.len());
    assert!(codes.len() > 100);
    let s = up
        .wait_for("replacement", Duration::from_secs(20), |s| {
            s["ready"] == 2
                && s["endpoints"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|e| e["replica"] != victim.as_str())
        })
        .await;
    assert_eq!(s["ready"], 2);
    up.stop();
}

/// The first held-out digit as a 28x28 image in [0, 1], and its label.
fn held_out_digit() -> (Vec<f32>, u8) {
    common::held_out_digits().swap_remove(0)
}

/// A held-out digit as a PNG in the V1 image request that KServe's image transformer takes.
fn digit_png_body(dir: &std::path::Path) -> (std::path::PathBuf, u64) {
    let (img, label) = held_out_digit();
    let b64 = common::grey_image_b64(&common::to_pixels(&img), 28, image::ImageFormat::Png);
    let body = serde_json::json!({"instances": [{"image_bytes": {"b64": b64}, "key": "1"}]});
    let path = dir.join("image.json");
    std::fs::write(&path, body.to_string()).unwrap();
    (path, u64::from(label))
}

#[tokio::test]
async fn transformer_and_predictor_scale_separately_on_their_own_metric() {
    // Scenario 5's manifest as shipped: the transformer is `kserve/image-transformer`, which
    // Siesta's own image transformer replaces on one host; the TorchServe predictor's gs://
    // URI is mirrored to the shipped MNIST model.
    let manifest = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/examples/autoscale-adv.yaml"
    ))
    .unwrap();
    let mirror = format!(
        "gs://kfserving-examples/models/torchserve/image_classifier=file://{}/models/mnist",
        env!("CARGO_MANIFEST_DIR")
    );
    let up = Up::start_with(&manifest, &["--storage-mirror", &mirror]);
    let ready_both = |c: &std::collections::HashMap<String, Value>| {
        c["torch-transformer-predictor"]["ready"] == 1
            && c["torch-transformer-transformer"]["ready"] == 1
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = up.components().await;
        if ready_both(&c) {
            assert_eq!(c["torch-transformer-transformer"]["metric"], "rps");
            assert_eq!(c["torch-transformer-predictor"]["metric"], "concurrency");
            break;
        }
        assert!(Instant::now() < deadline, "components not ready: {c:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let dir = tempfile::tempdir().unwrap();
    let (body, label) = digit_png_body(dir.path());
    // One request by hand: client -> gateway -> transformer -> gateway -> predictor.
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/models/mnist:predict", up.gateway))
        .header("host", "torch-transformer.default.example.com")
        .body(std::fs::read(&body).unwrap())
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["predictions"][0]["prediction"], label, "{answer}");
    assert_eq!(answer["predictions"][0]["key"], "1");

    // 2 workers x 10 rps = 20 rps. Transformer: rps target 8 x 70 % = 5.6 per replica ->
    // ceil(20 / 5.6) = 4. Predictor: a few ms per call keeps its concurrency far below
    // 2 x 70 % = 1.4, so it stays at one replica.
    let url = format!("{}/v1/models/mnist:predict", up.gateway);
    let codes = tokio::task::spawn_blocking(move || {
        common::hey(
            &[
                "-z",
                "6s",
                "-c",
                "2",
                "-q",
                "10",
                "-host",
                "torch-transformer.default.example.com",
            ],
            &body,
            &url,
        )
    })
    .await
    .unwrap();
    assert!(codes.len() > 60, "{} requests", codes.len());
    assert!(codes.iter().all(|c| c == "200"), "{codes:?}");
    let c = up.components().await;
    let transformer = &c["torch-transformer-transformer"];
    let predictor = &c["torch-transformer-predictor"];
    let wanted = |s: &Value| s["desired"].as_u64().unwrap();
    assert!(
        (3..=4).contains(&wanted(transformer)),
        "transformer on rps: {transformer}"
    );
    assert_eq!(
        wanted(predictor),
        1,
        "predictor on concurrency: {predictor}"
    );
    // Both components saw the traffic: the transformer's calls came back through the gateway.
    let metrics = up.metrics().await;
    for component in [
        "torch-transformer-transformer",
        "torch-transformer-predictor",
    ] {
        let prefix =
            format!("siesta_gateway_requests_total{{component=\"{component}\",status=\"200\"}}");
        let n =
            common::metric(&metrics, &prefix).unwrap_or_else(|| panic!("no {prefix} in metrics"));
        assert!(n as usize >= codes.len(), "{component}: {n}");
    }
    up.stop();
}

#[tokio::test]
async fn grpc_through_the_gateway_scales_from_zero_and_errors_are_grpc_statuses() {
    use siesta_runtime::grpc::pb;
    let up = Up::start_with(
        "
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: digits}
spec:
  predictor:
    minReplicas: 0
    model: {modelFormat: {name: siesta}, storageUri: 'siesta://mnist'}
",
        &["--header-read-timeout", "1s"],
    );
    up.wait_for("initial replica", Duration::from_secs(20), |s| {
        s["ready"] == 1
    })
    .await;
    // The gateway, like a replica, closes a connection whose request head never completes.
    let mut slow = tokio::net::TcpStream::connect(up.gateway.trim_start_matches("http://"))
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut slow, b"GET /v2/health/ready HTTP/1.1\r\nho")
        .await
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut slow, &mut rest),
    )
    .await
    .expect("the gateway closes a connection whose head never completes")
    .unwrap();
    up.wait_for("scale to zero", Duration::from_secs(30), |s| {
        s["ready"] == 0 && s["starting"] == 0
    })
    .await;
    // h2c to the gateway; the model name inside each message picks the InferenceService.
    let mut client =
        pb::grpc_inference_service_client::GrpcInferenceServiceClient::connect(up.gateway.clone())
            .await
            .unwrap();
    let (img, label) = held_out_digit();
    let req = pb::ModelInferRequest {
        model_name: "digits".into(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![1, 1, 28, 28],
            parameters: Default::default(),
            contents: None,
        }],
        raw_input_contents: vec![img.iter().flat_map(|v| v.to_le_bytes()).collect()],
        ..Default::default()
    };
    // At zero: the call is held while a replica starts, then answered.
    let resp = client.model_infer(req.clone()).await.unwrap();
    let held: f64 = resp
        .metadata()
        .get("x-siesta-held-ms")
        .expect("held header")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(held > 0.0, "the call waited for a replica");
    let resp = resp.into_inner();
    let class_at = resp.outputs.iter().position(|o| o.name == "class").unwrap();
    let class = i64::from_le_bytes(resp.raw_output_contents[class_at][..8].try_into().unwrap());
    assert_eq!(class, i64::from(label));
    for _ in 0..20 {
        client.model_infer(req.clone()).await.unwrap();
    }
    // Routed by `:authority` (KServe's `{name}.{namespace}.{domain}`): the call is held before
    // its message is read; another namespace's `digits` is no route, whatever the message says.
    for (authority, ok) in [
        ("http://digits.default.example.com", true),
        ("http://digits.elsewhere.example.com", false),
    ] {
        let channel = tonic::transport::Endpoint::from_shared(up.gateway.clone())
            .unwrap()
            .origin(authority.parse().unwrap())
            .connect()
            .await
            .unwrap();
        let mut by_host =
            pb::grpc_inference_service_client::GrpcInferenceServiceClient::new(channel);
        match by_host.model_infer(req.clone()).await {
            Ok(_) => assert!(ok, "{authority} was routed"),
            Err(e) => {
                assert!(!ok, "{authority}: {e}");
                assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
            }
        }
    }
    // Replica control is not forwarded, on either protocol: the model keeps serving.
    let err = client
        .repository_model_unload(pb::RepositoryModelUnloadRequest {
            model_name: "digits".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::PermissionDenied,
        "{}",
        err.message()
    );
    let http = reqwest::Client::new();
    for path in [
        "/v2/repository/models/digits/unload",
        "/v2/repository/models/digits/load",
    ] {
        let r = http
            .post(format!("{}{path}", up.gateway))
            .header("host", "digits.default.example.com")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
        let body: Value = r.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("replica control"),
            "{body}"
        );
    }
    let r = http
        .get(format!("{}/v2/models/digits/ready", up.gateway))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "metadata and health are forwarded");
    // A body beyond the gateway's retry buffer (64 KiB) streams through to the replica.
    let batch = common::mnist_v2_body(&vec![img.clone(); 64]).to_string();
    assert!(batch.len() > 256 << 10, "{} bytes", batch.len());
    let r = http
        .post(format!("{}/v2/models/digits/infer", up.gateway))
        .body(batch)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let out: Value = r.json().await.unwrap();
    assert_eq!(
        out["outputs"][0]["shape"][0], 64,
        "{}",
        out["outputs"][0]["shape"]
    );
    // One declared beyond the gateway's limit is refused before a byte of it is read.
    let mut big = tokio::net::TcpStream::connect(up.gateway.trim_start_matches("http://"))
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut big,
        b"POST /v2/models/digits/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 999999999\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = [0u8; 12];
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_exact(&mut big, &mut head),
    )
    .await
    .expect("answered without the body")
    .unwrap();
    assert_eq!(&head, b"HTTP/1.1 413");
    client.model_infer(req.clone()).await.unwrap();
    assert!(
        client
            .model_ready(pb::ModelReadyRequest {
                name: "digits".into(),
                version: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    // The replica's own errors come through; the gateway's are gRPC statuses too.
    let err = client
        .model_infer(pb::ModelInferRequest {
            model_name: "digits".into(),
            inputs: req.inputs.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::InvalidArgument,
        "{}",
        err.message()
    );
    let err = client
        .model_infer(pb::ModelInferRequest {
            model_name: "nobody".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains("nobody"), "{}", err.message());
    up.stop();
}

#[tokio::test]
async fn replicas_go_to_the_gpu_with_the_most_free_memory_or_wait_saying_why() {
    // No GPU on these machines: a simulated inventory (two GPUs, 2 and 8 GiB free) stands in
    // for NVML. Placement is real: the replica processes get CUDA_VISIBLE_DEVICES (and run on
    // CPU, since this build has no CUDA).
    let manifest = "
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: placed}
spec:
  predictor:
    minReplicas: 2
    model: {modelFormat: {name: siesta}, storageUri: 'siesta://mnist'}
";
    let up = Up::start_with(
        manifest,
        &["--device", "auto", "--simulate-gpus", "2048,8192"],
    );
    let s = up
        .wait_for("two replicas", Duration::from_secs(30), |s| s["ready"] == 2)
        .await;
    for e in s["endpoints"].as_array().unwrap() {
        assert_eq!(e["gpu"], 1, "{s}");
        let pid = e["pid"].as_u64().unwrap();
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        assert!(
            env.split(|b| *b == 0)
                .any(|v| v == b"CUDA_VISIBLE_DEVICES=1"),
            "replica {pid} was not given GPU 1"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_siesta"))
        .args(["status", "--port", up.gateway.rsplit(':').next().unwrap()])
        .output()
        .unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("placed-predictor-1@gpu1"), "{table}");
    assert!(
        table.contains("GPU 1 simulated: 8192 of 8192 MiB free"),
        "{table}"
    );
    up.stop();

    // A model that fits no GPU: the replica stays pending, and the status says why.
    let up = Up::start_with(
        manifest,
        &[
            "--device",
            "auto",
            "--simulate-gpus",
            "2048,8192",
            "--gpu-memory-overhead-mib",
            "16384",
        ],
    );
    let s = up
        .wait_for("pending reason", Duration::from_secs(10), |s| {
            s["pending"].is_string()
        })
        .await;
    assert_eq!(s["ready"], 0);
    assert_eq!(s["starting"], 0);
    let why = s["pending"].as_str().unwrap();
    assert!(why.contains("no GPU has 16384.4 MiB free"), "{why}");
    assert!(why.contains("would not free enough"), "{why}");
    up.stop();
}

#[tokio::test]
async fn a_component_that_cannot_start_backs_off_and_its_held_requests_learn_why() {
    let up = Up::start(
        "
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: broken}
spec:
  predictor:
    minReplicas: 0
    model: {modelFormat: {name: siesta}, storageUri: 'file:///nonexistent/model'}
",
    );
    // A held request is answered as soon as the component is known to be crash-looping, with
    // the replica's own error, not after the 300 s timeout.
    let asked = Instant::now();
    let r = reqwest::Client::new()
        .post(format!("{}/v2/models/broken/infer", up.gateway))
        .body(common::mnist_v2_body(&[vec![0.0; 784]]).to_string())
        .send()
        .await
        .unwrap();
    let waited = asked.elapsed();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("keep failing"), "{error}");
    // The replica's own error, without the host's directories (the status keeps them).
    assert!(
        error.contains("no such path …/model"),
        "the replica's own error: {error}"
    );
    assert!(!error.contains("/nonexistent"), "{error}");
    assert!(
        waited < Duration::from_secs(30),
        "answered after {waited:?}"
    );

    // The status says so; restarts are spaced (10 s after the second failure), not ~5 a second.
    let s = up
        .wait_for("crash loop in the status", Duration::from_secs(10), |s| {
            !s["crash_loop"].is_null()
        })
        .await;
    let failures = s["crash_loop"]["failures"].as_u64().unwrap();
    assert!(
        s["crash_loop"]["last_error"]
            .as_str()
            .unwrap()
            .contains("nonexistent"),
        "{s}"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let later = up.status().await;
    assert_eq!(
        later["crash_loop"]["failures"].as_u64(),
        Some(failures),
        "{later}"
    );
    // One log file per replica slot, each attempt appended to it.
    let logs: Vec<_> = std::fs::read_dir(up.dir.path().join("logs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(logs, ["broken-predictor-1.log"], "{logs:?}");
    let log = std::fs::read_to_string(up.dir.path().join("logs/broken-predictor-1.log")).unwrap();
    assert!(log.matches("--- siesta: replica").count() >= 2, "{log}");
    up.stop();
}

#[tokio::test]
async fn shutdown_answers_every_held_request() {
    // A model store that accepts connections and never answers: the replica stays loading and
    // the request stays held.
    let store_addr = common::stuck_model_store();
    let up = Up::start(&format!(
        "
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {{name: stuck}}
spec:
  predictor:
    minReplicas: 0
    model: {{modelFormat: {{name: siesta}}, storageUri: 'http://{store_addr}/model/config.json'}}
"
    ));
    let url = format!("{}/v2/models/stuck/infer", up.gateway);
    let held = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .body(common::mnist_v2_body(&[vec![0.0; 784]]).to_string())
            .send()
            .await
    });
    up.wait_for("a held request", Duration::from_secs(10), |s| {
        s["waiting"] == 1
    })
    .await;
    let pid = up.child.id().to_string();
    let asked = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let r = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("the held request is answered during shutdown")
        .unwrap()
        .expect("an answer, not a dropped connection");
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("shutting down"),
        "{body}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    // And the replica stuck loading stops with it: `siesta up` exits cleanly, soon.
    let mut up = up;
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = up.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "siesta up did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn a_spec_change_keeps_held_requests_and_replaces_the_replicas() {
    // A model store that accepts connections and never answers: the first replica stays
    // loading, so the request stays held until the spec changes.
    let store_addr = common::stuck_model_store();
    let spec = |uri: &str| {
        format!(
            "
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {{name: changing}}
spec:
  predictor:
    minReplicas: 0
    model: {{modelFormat: {{name: siesta}}, storageUri: '{uri}'}}
"
        )
    };
    let up = Up::start(&spec(&format!("http://{store_addr}/model/config.json")));
    let (img, label) = held_out_digit();
    let url = format!("{}/v2/models/changing/infer", up.gateway);
    let held = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .body(common::mnist_v2_body(&[img]).to_string())
            .send()
            .await
    });
    up.wait_for("a held request", Duration::from_secs(10), |s| {
        s["waiting"] == 1 && s["starting"] == 1
    })
    .await;
    // A broken edit first (bad YAML, then a bad field): logged and ignored, the service and
    // its held request stay as they were.
    for broken in [
        "apiVersion: [unclosed\n".to_string(),
        spec("siesta://mnist").replace("minReplicas: 0", "minReplicas: -3"),
    ] {
        std::fs::write(up.dir.path().join("isvc.yaml"), broken).unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let s = up.status().await;
        assert_eq!(
            (s["waiting"].as_u64(), s["starting"].as_u64()),
            (Some(1), Some(1)),
            "{s}"
        );
    }
    // As `kubectl apply` would: the file is replaced whole, now with a model that loads.
    let staged = up.dir.path().join("isvc.yaml.new");
    std::fs::write(&staged, spec("siesta://mnist")).unwrap();
    std::fs::rename(&staged, up.dir.path().join("isvc.yaml")).unwrap();
    let r = tokio::time::timeout(Duration::from_secs(30), held)
        .await
        .expect("the held request is answered once the new spec's replica is ready")
        .unwrap()
        .unwrap();
    assert_eq!(r.status(), 200);
    let out: Value = r.json().await.unwrap();
    let scores: Vec<f64> = out["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let argmax = (0..scores.len())
        .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
        .unwrap();
    assert_eq!(argmax as u8, label);
    // The stuck replica of the old spec was stopped, not left loading beside the new one.
    let s = up
        .wait_for("one replica", Duration::from_secs(10), |s| {
            s["ready"] == 1 && s["starting"] == 0
        })
        .await;
    assert_eq!(s["endpoints"][0]["replica"], "changing-predictor-2", "{s}");
    up.stop();
}

#[tokio::test]
async fn hostile_clients_through_the_gateway_get_their_limits_and_leave_nothing_behind() {
    let store_addr = common::stuck_model_store();
    let up = Up::start_with(
        &format!(
            "
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {{name: hostile}}
spec:
  predictor:
    minReplicas: 1
    maxReplicas: 1
    model: {{modelFormat: {{name: siesta}}, storageUri: 'siesta://mnist'}}
---
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {{name: held}}
spec:
  predictor:
    minReplicas: 0
    model: {{modelFormat: {{name: siesta}}, storageUri: 'http://{store_addr}/model/config.json'}}
"
        ),
        &[
            "--header-read-timeout",
            "1s",
            "--http2-max-streams",
            "4",
            "--body-timeout",
            "1s",
        ],
    );
    let ready = Instant::now() + Duration::from_secs(20);
    while up.components().await["hostile-predictor"]["ready"] != 1 {
        assert!(Instant::now() < ready, "the replica did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gw = up.gateway.clone();

    // Half a request head: cut off after the header read timeout.
    let took = tokio::task::spawn_blocking({
        let gw = gw.clone();
        move || common::raw::half_a_header_is_cut_off(&gw)
    })
    .await
    .unwrap();
    assert!(took < Duration::from_secs(5), "{took:?}");

    // A body that stalls once a replica slot is its: 408 after --body-timeout, slot freed.
    let (status, _) = tokio::task::spawn_blocking({
        let gw = gw.clone();
        move || {
            common::raw::raw_exchange(
                &gw,
                b"POST /v2/models/hostile/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{\"inputs\"",
                false,
                None,
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(status, 408);

    // Declared past the limit: 413 before anything is held or read, even for a service at zero.
    let (status, body) = tokio::task::spawn_blocking({
        let gw = gw.clone();
        move || {
            common::raw::raw_exchange(
                &gw,
                b"POST /v2/models/held/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 104857600\r\n\r\n",
                false,
                None,
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    assert_eq!(up.components().await["held-predictor"]["waiting"], 0);

    // Undeclared (chunked) past the limit: refused, and streamed rather than buffered (the
    // gateway's memory stays far below the 70 MiB sent).
    let sent = tokio::task::spawn_blocking({
        let gw = gw.clone();
        move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(gw.trim_start_matches("http://")).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            s.write_all(
                b"POST /v2/models/hostile/infer HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n",
            )
            .unwrap();
            let chunk = [b' '; 1 << 20];
            let mut sent = 0;
            for _ in 0..70 {
                let head = format!("{:x}\r\n", chunk.len());
                if s.write_all(head.as_bytes()).is_err()
                    || s.write_all(&chunk).is_err()
                    || s.write_all(b"\r\n").is_err()
                {
                    break;
                }
                sent += 1;
            }
            let _ = s.write_all(b"0\r\n\r\n");
            let mut buf = Vec::new();
            // A 413, or the connection closed on a client still sending: both refuse it.
            let _ = s.read_to_end(&mut buf);
            let head = String::from_utf8_lossy(&buf[..buf.len().min(12)]).to_string();
            assert!(buf.is_empty() || head.starts_with("HTTP/1.1 413"), "{head}");
            sent
        }
    })
    .await
    .unwrap();
    assert!(sent >= 60, "only {sent} MiB were taken before the refusal");
    let rss_mib = std::fs::read_to_string(format!("/proc/{}/status", up.child.id()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .unwrap()
        >> 10;
    assert!(
        rss_mib < 48,
        "the gateway holds {rss_mib} MiB after a 70 MiB body"
    );

    // One HTTP/2 connection cannot hold more requests than its stream limit; requests whose
    // client went away leave no trace.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let h2 = h2.clone();
            let url = format!("{gw}/v2/models/held/infer");
            tokio::spawn(async move {
                h2.post(url)
                    .body(common::mnist_v2_body(&[vec![0.0; 784]]).to_string())
                    .send()
                    .await
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while up.components().await["held-predictor"]["waiting"] != 4 {
        assert!(Instant::now() < deadline, "four streams held");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(up.components().await["held-predictor"]["waiting"], 4);
    for c in &calls {
        c.abort();
    }
    drop(h2);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = up.components().await;
        if c["held-predictor"]["waiting"] == 0 && c["held-predictor"]["in_flight"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "abandoned requests still counted: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Invented model names: 404, and no metric series of their own.
    let client = reqwest::Client::new();
    for i in 0..50 {
        let r = client
            .post(format!("{gw}/v2/models/junk{i}/infer"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }
    let metrics = client
        .get(format!("{gw}/siesta/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!metrics.contains("junk"), "invented names became labels");

    // And the gateway still serves.
    let r = client
        .post(format!("{gw}/v2/models/hostile/infer"))
        .body(common::mnist_v2_body(&[vec![0.0; 784]]).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    up.stop();
}

#[tokio::test]
async fn the_walkthrough_request_is_answered_by_the_shipped_flowers_stand_in() {
    // Scenario 1's manifest as shipped, its gs:// flowers URI mirrored to the stand-in (the MNIST
    // CNN behind TF Serving's encoded-image signature), and the walkthrough's input.json shape
    // unchanged: PNGs of held-out digits, each with a key.
    let root = env!("CARGO_MANIFEST_DIR");
    let manifest =
        std::fs::read_to_string(format!("{root}/deploy/examples/autoscale.yaml")).unwrap();
    let mirror = format!(
        "gs://kfserving-examples/models/tensorflow/flowers=file://{root}/models/flowers-standin"
    );
    let up = Up::start_with(&manifest, &["--storage-mirror", &mirror]);
    let digits: Vec<(Vec<f32>, u8)> = common::held_out_digits().into_iter().take(8).collect();
    let instances: Vec<Value> = digits
        .iter()
        .enumerate()
        .map(|(i, (img, _))| {
            let b64 = common::grey_image_b64(&common::to_pixels(img), 28, image::ImageFormat::Png);
            serde_json::json!({"image_bytes": {"b64": b64}, "key": format!("{i}")})
        })
        .collect();
    let client = reqwest::Client::new();
    let url = format!("{}/v1/models/flowers-sample:predict", up.gateway);
    let resp = client
        .post(&url)
        .header("host", "flowers-sample.default.example.com")
        .json(&serde_json::json!({ "instances": instances }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let predictions = body["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), digits.len());
    let mut right = 0;
    for (i, (p, (_, label))) in predictions.iter().zip(&digits).enumerate() {
        assert_eq!(p["key"], format!("{i}"), "{p}");
        let scores: Vec<f64> = serde_json::from_value(p["scores"].clone()).unwrap();
        assert_eq!(scores.len(), 10);
        assert!((scores.iter().sum::<f64>() - 1.0).abs() < 1e-4, "{p}");
        right += usize::from(p["prediction"] == u64::from(*label));
    }
    // 99.7 % held out: a miss among eight would be a decoding fault, not the model.
    assert_eq!(right, digits.len(), "{body}");
    // A picture that is not one: 400 with the instance named, as JSON.
    let resp = client
        .post(&url)
        .json(&serde_json::json!({"instances": [{"image_bytes": {"b64": "aGVsbG8="}, "key": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert!(
        err["error"].as_str().unwrap().contains("image_bytes 0"),
        "{err}"
    );
    up.stop();
}
