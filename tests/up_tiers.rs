//! The three tiers to zero through `siesta up`: real replica processes parked on scale-down and
//! resumed at zero, the park timeout, parking off, and GPU memory as the scheduled resource
//! (`--simulate-gpus`: a stated inventory on this GPU-less machine; the replicas' own
//! device-memory accounting on the CPU fills it).

mod common;

use std::time::Duration;

use common::up::Up;

fn service(name: &str, annotations: &str) -> String {
    format!(
        "
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: {name}
  annotations: {{{annotations}}}
spec:
  predictor:
    minReplicas: 0
    maxReplicas: 2
    model:
      modelFormat: {{name: siesta}}
      storageUri: siesta://mnist
"
    )
}

struct Answer {
    held_ms: f64,
    cold_start: Option<String>,
    phases: Option<String>,
}

async fn predict(gateway: &str, service: &str, body: &std::path::Path) -> Answer {
    let resp = reqwest::Client::new()
        .post(format!("{gateway}/v2/models/{service}/infer"))
        .header("content-type", "application/json")
        .body(std::fs::read(body).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    let text = |k: &str| h.get(k).map(|v| v.to_str().unwrap().to_string());
    Answer {
        held_ms: text("x-siesta-held-ms").unwrap().parse().unwrap(),
        cold_start: text("x-siesta-cold-start"),
        phases: text("x-siesta-cold-start-ms"),
    }
}

/// `siesta_cold_start_seconds_count{component,kind}`.
fn cold_starts(metrics: &str, component: &str, kind: &str) -> f64 {
    common::metric(
        metrics,
        &format!("siesta_cold_start_seconds_count{{component=\"{component}\",kind=\"{kind}\"}}"),
    )
    .unwrap_or(0.0)
}

/// `siesta up` with one service, its initial replica ready, and an MNIST request body.
async fn one_service(annotations: &str) -> (Up, tempfile::TempDir, std::path::PathBuf) {
    let up = Up::start(&service("m", annotations));
    let dir = tempfile::tempdir().unwrap();
    let body = common::mnist_body_file(dir.path());
    up.wait_for("initial replica", Duration::from_secs(20), |s| {
        s["ready"] == 1
    })
    .await;
    (up, dir, body)
}

fn phase(phases: &str, name: &str) -> f64 {
    phases
        .split(';')
        .find_map(|p| p.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("{name} in {phases}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn scale_down_parks_a_request_at_zero_resumes_it_and_the_park_timeout_ends_it() {
    let (up, _dir, body) = one_service("siesta.dev/park-timeout: 6s").await;
    // Scale to zero keeps the process, parked: no endpoint, no device memory.
    let s = up
        .wait_for("parked at zero", Duration::from_secs(20), |s| {
            s["ready"] == 0 && s["starting"] == 0 && s["parked"] == 1
        })
        .await;
    assert!(s["endpoints"].as_array().unwrap().is_empty(), "{s}");
    // Replica control is never reachable through the gateway.
    let r = reqwest::Client::new()
        .post(format!("{}/siesta/replica/park", up.gateway))
        .header("x-siesta-control-token", "guess")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // A request at zero resumes it: held for the resume only, no process start.
    let a = predict(&up.gateway, "m", &body).await;
    assert_eq!(
        a.cold_start.as_deref(),
        Some("resume"),
        "held {} ms",
        a.held_ms
    );
    let phases = a.phases.unwrap();
    assert_eq!(phase(&phases, "load"), 0.0, "{phases}");
    assert_eq!(phase(&phases, "warmup"), 0.0, "{phases}");
    assert!(
        phase(&phases, "upload") > 0.0,
        "the weights went back: {phases}"
    );
    println!(
        "request at zero, parked replica: held {:.2} ms ({phases})",
        a.held_ms
    );
    let s = up.status().await;
    assert_eq!(
        (s["ready"].as_u64(), s["parked"].as_u64()),
        (Some(1), Some(0)),
        "{s}"
    );
    // Served by the replica already there: the next one is not a cold start.
    assert_eq!(predict(&up.gateway, "m", &body).await.cold_start, None);

    // Parked again after the window; past the park timeout the process exits.
    up.wait_for("parked again", Duration::from_secs(20), |s| {
        s["ready"] == 0 && s["parked"] == 1
    })
    .await;
    up.wait_for("park timeout", Duration::from_secs(20), |s| {
        s["ready"] == 0 && s["parked"] == 0 && s["starting"] == 0
    })
    .await;
    // Nothing parked: the next request at zero starts a process.
    let b = predict(&up.gateway, "m", &body).await;
    assert_eq!(b.cold_start.as_deref(), Some("spawn"));
    let phases = b.phases.unwrap();
    assert!(phase(&phases, "load") > 0.0, "{phases}");
    assert!(phase(&phases, "process") > 0.0, "{phases}");
    println!(
        "request at zero, new process: held {:.2} ms ({phases})",
        b.held_ms
    );
    let metrics = up.metrics().await;
    assert_eq!(cold_starts(&metrics, "m-predictor", "resume"), 1.0);
    assert_eq!(cold_starts(&metrics, "m-predictor", "spawn"), 1.0);
    assert!(
        metrics.contains("siesta_replica_tier{component=\"m-predictor\",tier=\"hot\"} 1"),
        "{metrics}"
    );
    up.stop();
}

#[tokio::test]
async fn parked_replicas_zero_turns_parking_off() {
    let (up, _dir, body) = one_service("siesta.dev/parked-replicas: \"0\"").await;
    let s = up
        .wait_for("zero", Duration::from_secs(20), |s| {
            s["ready"] == 0 && s["starting"] == 0
        })
        .await;
    assert_eq!(s["parked"], 0, "{s}");
    let a = predict(&up.gateway, "m", &body).await;
    assert_eq!(a.cold_start.as_deref(), Some("spawn"));
    up.stop();
}

/// Three services on one simulated GPU that holds two of them hot: a request for the third
/// parks the least recently used idle one of the others, never a busy or recently used one.
#[tokio::test]
async fn a_request_where_gpu_memory_is_short_parks_the_least_recently_used_idle_replica() {
    // A 60 s window holds them at their initial scale of one for the test: only memory
    // pressure parks them.
    let manifests: String = ["a", "b", "c"]
        .iter()
        .map(|n| service(n, "autoscaling.knative.dev/window: 60s") + "---\n")
        .collect();
    // The shipped MNIST model's weights are 0.42 MiB: two fit in 1 MiB, three do not.
    let up = Up::start_with(
        &manifests,
        &[
            "--device",
            "auto",
            "--simulate-gpus",
            "1",
            "--gpu-memory-overhead-mib",
            "0",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let body = common::mnist_body_file(dir.path());
    // Two become hot at their initial scale; the third waits, saying why.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let all = loop {
        let all = up.components().await;
        assert!(
            std::time::Instant::now() < deadline,
            "two hot, one pending: {all:?}"
        );
        let ready: u64 = all.values().map(|c| c["ready"].as_u64().unwrap()).sum();
        if ready == 2 && all.values().any(|c| c["pending"].is_string()) {
            break all;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (cold, warm): (Vec<_>, Vec<_>) = all.iter().partition(|(_, c)| c["ready"] == 0);
    let cold = cold[0].0.trim_end_matches("-predictor").to_string();
    let reason = all[&format!("{cold}-predictor")]["pending"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains("no GPU has"), "{reason}");
    let mut warm: Vec<String> = warm
        .iter()
        .map(|(k, _)| k.trim_end_matches("-predictor").to_string())
        .collect();
    warm.sort();
    // Use the second hot one now, the first stays idle: the first is least recently used.
    tokio::time::sleep(Duration::from_secs(3)).await;
    predict(&up.gateway, &warm[1], &body).await;
    let a = predict(&up.gateway, &cold, &body).await;
    assert_eq!(
        a.cold_start.as_deref(),
        Some("spawn"),
        "held {} ms",
        a.held_ms
    );
    let all = up.components().await;
    let of = |n: &str| all[&format!("{n}-predictor")].clone();
    assert_eq!(
        (
            of(&warm[0])["ready"].as_u64(),
            of(&warm[0])["parked"].as_u64()
        ),
        (Some(0), Some(1)),
        "{all:?}"
    );
    assert_eq!(of(&warm[1])["ready"], 1, "{all:?}");
    assert_eq!(of(&cold)["ready"], 1, "{all:?}");
    // The parked one comes back on its next request, parking the now least recently used.
    tokio::time::sleep(Duration::from_secs(3)).await;
    predict(&up.gateway, &cold, &body).await;
    let back = predict(&up.gateway, &warm[0], &body).await;
    assert_eq!(back.cold_start.as_deref(), Some("resume"));
    let all = up.components().await;
    let of = |n: &str| all[&format!("{n}-predictor")].clone();
    assert_eq!(of(&warm[1])["parked"], 1, "{all:?}");
    assert_eq!(of(&cold)["ready"], 1, "{all:?}");
    up.stop();
}

/// Load that needs three replicas, a pause that scales to zero (two parked: the limit, the
/// third exits), and the same load again: the two come back by resume and one new process
/// starts; no request of either run is lost.
#[tokio::test]
async fn scale_up_resumes_parked_replicas_before_starting_new_ones_losing_nothing() {
    let up = Up::start(
        &service("m", "siesta.dev/parked-replicas: \"2\"")
            .replace("maxReplicas: 2", "maxReplicas: 3\n    scaleTarget: 1"),
    );
    let dir = tempfile::tempdir().unwrap();
    let body = common::mnist_body_file(dir.path());
    let url = format!("{}/v2/models/m/infer", up.gateway);
    up.wait_for("initial replica", Duration::from_secs(20), |s| {
        s["ready"] == 1
    })
    .await;
    let sent = common::hey_all_ok(&["-z", "4s", "-c", "3"], &body, &url).await;
    assert!(sent > 0);
    up.wait_for("three hot", Duration::from_secs(10), |s| s["ready"] == 3)
        .await;
    up.wait_for("zero, two parked", Duration::from_secs(30), |s| {
        s["ready"] == 0 && s["starting"] == 0 && s["parked"] == 2
    })
    .await;
    common::hey_all_ok(&["-z", "4s", "-c", "3"], &body, &url).await;
    up.wait_for("three hot again", Duration::from_secs(10), |s| {
        s["ready"] == 3 && s["parked"] == 0
    })
    .await;
    let metrics = up.metrics().await;
    let starts = |kind: &str| {
        common::metric(
            &metrics,
            &format!("siesta_replica_starts_total{{component=\"m-predictor\",kind=\"{kind}\"}}"),
        )
    };
    assert_eq!(starts("resume"), Some(2.0), "{metrics}");
    assert_eq!(
        starts("spawn"),
        Some(4.0),
        "three for the first run, one for the second: {metrics}"
    );
    up.stop();
}

/// `siesta up` killed with SIGKILL cannot stop its replicas; they notice their parent is gone
/// and exit by themselves, parked ones included.
#[tokio::test]
async fn replicas_exit_when_siesta_up_is_killed() {
    let (mut up, _dir, _body) = one_service("").await;
    let s = up
        .wait_for("parked at zero", Duration::from_secs(20), |s| {
            s["parked"] == 1
        })
        .await;
    assert_eq!(s["ready"], 0);
    let up_pid = up.child.id().to_string();
    let children = |parent: &str| -> Vec<String> {
        let out = std::process::Command::new("pgrep")
            .args(["-P", parent])
            .output()
            .unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    };
    let replicas = children(&up_pid);
    assert_eq!(replicas.len(), 1, "{replicas:?}");
    up.child.kill().unwrap();
    up.child.wait().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    // Gone, or a zombie waiting for whoever adopted it to reap it.
    let running = |pid: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| {
                !stat
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(false)
    };
    while running(&replicas[0]) {
        assert!(
            std::time::Instant::now() < deadline,
            "replica {} still running 10 s after its parent was killed",
            replicas[0]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
