//! Readiness, idle release and exit, SIGTERM draining, overload and abandoned requests, on the
//! real binary.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{Server, held_out_digits, metric, mnist_v2_body};
use serde_json::Value;

/// Serves a copy of the embedded MNIST model over HTTP, holding the weights back until `release`
/// is dropped, so the test can look at the server while its model is still loading.
fn slow_model_server(release: std::sync::mpsc::Receiver<()>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for (i, stream) in listener.incoming().enumerate() {
            let mut s = stream.unwrap();
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let body: &[u8] = if req.starts_with("GET /mnist/config.json") {
                siesta_models::embedded::MNIST_CONFIG
            } else {
                if i > 0 {
                    let _ = release.recv();
                }
                siesta_models::embedded::MNIST_WEIGHTS
            };
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(body);
        }
    });
    format!("http://{addr}/mnist")
}

#[tokio::test]
async fn live_at_once_ready_only_after_load_and_warm_up() {
    let (tx, rx) = std::sync::mpsc::channel();
    let uri = slow_model_server(rx);
    let cache = tempfile::tempdir().unwrap();
    let server = Server::start(&[
        "--storage-uri",
        &uri,
        "--cache-dir",
        cache.path().to_str().unwrap(),
    ]);
    assert_eq!(server.get("/v2/health/live").await.status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready = server.get("/v2/health/ready").await;
    assert_eq!(
        ready.status(),
        503,
        "ready while the weights are still downloading"
    );
    let r = server.infer_zeros().await;
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("not ready"));
    drop(tx);
    server.wait_ready().await;
    // Readiness implies the warm-up inference ran.
    let m = server.metrics().await;
    assert!(
        metric(&m, "siesta_model_warm_up_seconds{model=\"mnist\"}").unwrap() > 0.0,
        "{m}"
    );
    let r = server.infer_zeros().await;
    assert_eq!(r.status(), 200);
    // The download landed in the cache as a complete directory and its record, nothing
    // half-written beside it and nothing left in staging.
    let entries: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(
        std::fs::read_dir(cache.path().join(".staging"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test]
async fn idle_release_frees_device_memory_and_the_next_request_restores_it() {
    let server = Server::start(&["--idle-release-after", "300ms"]);
    server.wait_ready().await;
    let (img, label) = held_out_digits().swap_remove(0);
    let before = server.metrics().await;
    let held = metric(
        &before,
        "siesta_device_memory_bytes{model=\"mnist\",device=\"cpu\"}",
    )
    .unwrap();
    assert!(held > 400_000.0, "weights on the device: {held}");

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = server.metrics().await;
        if metric(&m, "siesta_model_state{model=\"mnist\",state=\"released\"}") == Some(1.0) {
            assert_eq!(
                metric(
                    &m,
                    "siesta_device_memory_bytes{model=\"mnist\",device=\"cpu\"}"
                ),
                Some(0.0)
            );
            break;
        }
        assert!(Instant::now() < deadline, "model never released: {m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let meta: Value = server.get("/v2/models/mnist").await.json().await.unwrap();
    assert_eq!(meta["parameters"]["state"], "released");
    assert_eq!(server.get("/v2/health/ready").await.status(), 200);

    let resp = server
        .post_json("/v2/models/mnist/infer", &mnist_v2_body(&[img]))
        .await;
    assert_eq!(resp.status(), 200);
    let restored: f64 = resp.headers()["x-siesta-restored-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(restored > 0.0);
    let body: Value = resp.json().await.unwrap();
    let class = body["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "class")
        .unwrap();
    assert_eq!(class["data"][0], u64::from(label));
    let after = server.metrics().await;
    assert_eq!(
        metric(
            &after,
            "siesta_device_memory_bytes{model=\"mnist\",device=\"cpu\"}"
        ),
        Some(held)
    );
    // A second request finds the weights resident: no restore header.
    let resp = server.infer_zeros().await;
    assert!(!resp.headers().contains_key("x-siesta-restored-ms"));
}

#[tokio::test]
async fn idle_exit_drains_and_exits_zero() {
    let mut server = Server::start(&["--idle-exit-after", "500ms"]);
    server.wait_ready().await;
    let r = server.infer_zeros().await;
    assert_eq!(r.status(), 200);
    let started = Instant::now();
    let status = server.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0));
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "exited before the idle period"
    );
}

#[tokio::test]
async fn sigterm_finishes_every_in_flight_request_then_exits_zero() {
    // Long queue delay and a batch large enough that requests sit queued when SIGTERM lands.
    let mut server = Server::start(&["--max-queue-delay", "700ms", "--max-batch-size", "64"]);
    server.wait_ready().await;
    let client = reqwest::Client::new();
    let digits = held_out_digits();
    let mut tasks = Vec::new();
    for (img, label) in digits.into_iter().take(20) {
        let client = client.clone();
        let url = server.url("/v2/models/mnist/infer");
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .json(&mnist_v2_body(&[img]))
                .send()
                .await
                .unwrap();
            let status = r.status();
            let body: Value = r.json().await.unwrap();
            (status, body, label)
        }));
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    server.sigterm();
    let mut ok = 0;
    for t in tasks {
        let (status, body, label) = t.await.unwrap();
        assert_eq!(status, 200, "{body}");
        let class = body["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == "class")
            .unwrap();
        ok += usize::from(class["data"][0] == u64::from(label));
    }
    assert!(ok >= 19, "{ok} of 20 right");
    assert_eq!(server.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[tokio::test]
async fn overload_is_answered_at_once_with_429() {
    let server = Server::start(&["--queue-limit", "2", "--max-queue-delay", "400ms"]);
    server.wait_ready().await;
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let client = client.clone();
        let url = server.url("/v2/models/mnist/infer");
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let r = client
                .post(url)
                .json(&mnist_v2_body(&[vec![0.0; 784]]))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let retry_after = r.headers().contains_key("retry-after");
            let body: Value = r.json().await.unwrap();
            (status, started.elapsed(), retry_after, body)
        }));
    }
    let (mut ok, mut shed) = (0, 0);
    for t in tasks {
        let (status, took, retry_after, body) = t.await.unwrap();
        match status {
            200 => ok += 1,
            429 => {
                shed += 1;
                assert!(retry_after);
                assert!(body["error"].as_str().unwrap().contains("overloaded"));
                // Shed without waiting for the 400 ms batch window: fast, not a timeout.
                assert!(took < Duration::from_millis(350), "429 took {took:?}");
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    assert!(ok >= 2 && shed >= 1, "ok {ok}, shed {shed}");
}

#[tokio::test]
async fn a_request_whose_client_left_is_dropped_before_compute() {
    let server = Server::start(&["--max-queue-delay", "600ms"]);
    server.wait_ready().await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(150))
        .build()
        .unwrap();
    let r = client
        .post(server.url("/v2/models/mnist/infer"))
        .json(&mnist_v2_body(&[vec![0.0; 784]]))
        .send()
        .await;
    assert!(r.is_err(), "the client should have timed out");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let m = server.metrics().await;
    assert_eq!(
        metric(
            &m,
            "siesta_dropped_requests_total{model=\"mnist\",reason=\"client_gone\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert!(
        metric(&m, "siesta_batch_size_count{model=\"mnist\"}").is_none(),
        "no batch should have run: {m}"
    );
}

#[tokio::test]
async fn concurrent_requests_are_batched() {
    let server = Server::start(&["--max-queue-delay", "100ms"]);
    server.wait_ready().await;
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let client = client.clone();
        let url = server.url("/v2/models/mnist/infer");
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .json(&mnist_v2_body(&[vec![0.0; 784]]))
                .send()
                .await
                .unwrap();
            r.headers()["x-siesta-batch-rows"]
                .to_str()
                .unwrap()
                .parse::<usize>()
                .unwrap()
        }));
    }
    let mut biggest = 0;
    for t in tasks {
        biggest = biggest.max(t.await.unwrap());
    }
    assert!(
        biggest > 1,
        "8 concurrent requests inside a 100 ms window never shared a batch"
    );
    let m = server.metrics().await;
    assert!(
        metric(&m, "siesta_batch_size_count{model=\"mnist\"}").unwrap() < 8.0,
        "{m}"
    );
}

/// Replica control (park, resume, the tier report) exists only with a token, answers a
/// missing or wrong one 403 with a JSON error, and parks for real: the model's device copy is
/// given back, a request meanwhile restores it on demand, and resume brings it back.
#[tokio::test]
async fn replica_control_needs_its_token_and_parks_and_resumes_the_model() {
    let s = Server::start_with(
        &[],
        "warn",
        std::process::Stdio::inherit(),
        &[("SIESTA_CONTROL_TOKEN", "0123456789abcdef")],
    );
    s.wait_ready().await;
    let client = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, token: Option<&str>| {
        let mut req = client.request(method, s.url(path));
        if let Some(t) = token {
            req = req.header("x-siesta-control-token", t);
        }
        req.send()
    };
    for token in [
        None,
        Some(""),
        Some("0123456789abcdeX"),
        Some("0123456789abcdef0"),
    ] {
        let r = call(reqwest::Method::POST, "/siesta/replica/park", token)
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{token:?}");
        let body: Value = r.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("token"), "{body}");
    }
    let t = Some("0123456789abcdef");
    let report: Value = call(reqwest::Method::GET, "/siesta/replica", t)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["tier"], "hot", "{report}");
    let hot_bytes = report["device_memory_bytes"].as_u64().unwrap();
    assert!(hot_bytes > 0, "{report}");
    assert!(
        report["models"][0]["load"]["load"].as_f64().unwrap() > 0.0,
        "{report}"
    );

    let parked: Value = call(reqwest::Method::POST, "/siesta/replica/park", t)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(parked["tier"], "parked", "{parked}");
    assert_eq!(parked["device_memory_bytes"], 0, "{parked}");
    // A request that reaches a parked replica anyway is served: the weights come back on demand.
    let r = s.infer_zeros().await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-siesta-restored-ms"));
    call(reqwest::Method::POST, "/siesta/replica/park", t)
        .await
        .unwrap();
    let resumed: Value = call(reqwest::Method::POST, "/siesta/replica/resume", t)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(resumed["tier"], "hot", "{resumed}");
    assert_eq!(resumed["device_memory_bytes"].as_u64(), Some(hot_bytes));
    assert!(resumed["upload_ms"].as_f64().unwrap() > 0.0, "{resumed}");
    // Resumed already: the next request pays no restore.
    let r = s.infer_zeros().await;
    assert!(!r.headers().contains_key("x-siesta-restored-ms"));
    // The wrong method on a control route is refused, not run.
    let r = call(reqwest::Method::GET, "/siesta/replica/park", t)
        .await
        .unwrap();
    assert_eq!(r.status(), 405);

    // Without a token in its environment a replica has no control routes at all.
    let plain = Server::start(&[]);
    plain.wait_ready().await;
    let r = client
        .post(plain.url("/siesta/replica/park"))
        .header("x-siesta-control-token", "anything")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());
}
