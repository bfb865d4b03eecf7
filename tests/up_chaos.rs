//! Chaos through `siesta up`: the real `hey` for 60 s while replicas are SIGKILLed at random and
//! the component's spec changes once (a rolling replacement of every replica). A request fails
//! only if it was on a replica when that replica was killed: the gateway counts those
//! (`siesta_gateway_lost_total`), and hey's failures must be exactly that many.
//!
//! Its own test binary so that no other scenario shares the two cores with its load.

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::up::Up;
use serde_json::Value;

const LOAD: Duration = Duration::from_secs(60);
/// The spec change comes a third of the way in, amid the kills.
const SPEC_CHANGE_AT: Duration = Duration::from_secs(20);
/// Kills stop before the load does, so that the last kill's losses are all inside it.
const KILLS_UNTIL: Duration = Duration::from_secs(52);

fn manifest(container_concurrency: u32) -> String {
    format!(
        "
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {{name: chaos}}
spec:
  predictor:
    minReplicas: 3
    maxReplicas: 5
    scaleTarget: 2
    containerConcurrency: {container_concurrency}
    model: {{modelFormat: {{name: siesta}}, storageUri: 'siesta://mnist'}}
"
    )
}

/// xorshift64: the kill schedule, reproducible from the seed the test prints.
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

fn replicas(status: &Value) -> Vec<String> {
    status["endpoints"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter_map(|e| e["replica"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn sigkill(replica: &str) -> bool {
    let pgrep = Command::new("pgrep")
        .args(["-f", "--", &format!("--replica-id {replica} ")])
        .output()
        .unwrap();
    let pid = String::from_utf8(pgrep.stdout).unwrap().trim().to_string();
    !pid.is_empty()
        && Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .unwrap()
            .success()
}

async fn lost_total(up: &Up) -> u64 {
    let text = reqwest::get(format!("{}/siesta/metrics", up.gateway))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("siesta_gateway_lost_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test]
async fn under_random_kills_and_a_spec_change_only_the_killed_replicas_requests_fail() {
    let up = Up::start(&manifest(0));
    up.wait_for("three replicas", Duration::from_secs(30), |s| {
        s["ready"] == 3
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let body = common::mnist_body_file(dir.path());
    let url = format!("{}/v2/models/chaos/infer", up.gateway);
    let seconds = format!("{}s", LOAD.as_secs());
    let load =
        tokio::task::spawn_blocking(move || common::hey(&["-z", &seconds, "-c", "8"], &body, &url));

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut kills = 0;
    let mut before_change: Option<HashSet<String>> = None;
    while started.elapsed() < KILLS_UNTIL {
        tokio::time::sleep(Duration::from_millis(3000 + rng.next(4000))).await;
        if before_change.is_none() && started.elapsed() >= SPEC_CHANGE_AT {
            // As `kubectl apply` would: the file is replaced whole.
            let status = up.status().await;
            before_change = Some(replicas(&status).into_iter().collect());
            let staged = up.dir.path().join("isvc.yaml.new");
            std::fs::write(&staged, manifest(4)).unwrap();
            std::fs::rename(&staged, up.dir.path().join("isvc.yaml")).unwrap();
            continue;
        }
        // Never the last ready replica: a component whose every replica keeps dying is a
        // crash loop, refused by design (up_scenarios tests that).
        let ready = replicas(&up.status().await);
        if ready.len() < 2 {
            continue;
        }
        let victim = &ready[rng.next(ready.len() as u64) as usize];
        if sigkill(victim) {
            kills += 1;
        }
    }
    let codes = load.await.unwrap();
    let lost = lost_total(&up).await;
    let failed = codes.iter().filter(|c| *c != "200").count() as u64;
    println!(
        "chaos (seed {seed}): {} requests in {} s, {kills} replicas SIGKILLed, {failed} failed, \
         {lost} lost on killed replicas by the gateway's count",
        codes.len(),
        LOAD.as_secs()
    );
    assert!(kills >= 4, "only {kills} kills");
    assert!(codes.len() > 1000, "{} requests", codes.len());
    assert_eq!(
        failed, lost,
        "every failed request was one on a killed replica, and each of those failed"
    );
    // At most every request in flight on each killed replica: 8 clients in all.
    assert!(lost <= 8 * kills, "{lost} lost in {kills} kills");

    // The spec change replaced every replica that served before it, and the new limit shows.
    let old = before_change.expect("the spec changed during the load");
    let s = up
        .wait_for("the rollout", Duration::from_secs(120), |s| {
            let now = replicas(s);
            s["container_concurrency"] == 4
                && now.len() >= 3
                && now.iter().all(|r| !old.contains(r))
        })
        .await;
    println!("after the rollout: {}", s["endpoints"]);
    up.stop();
}
