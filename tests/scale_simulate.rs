//! `siesta scale simulate` replays a trace through the autoscaler on a simulated clock.

use std::process::Command;

#[test]
fn simulate_prints_the_timeline_and_summary() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("isvc.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata: {name: s}\nspec:\n  predictor:\n    \
         minReplicas: 0\n    maxReplicas: 3\n    scaleTarget: 1\n    model: {modelFormat: {name: siesta}, storageUri: 'siesta://mnist'}\n",
    )
    .unwrap();
    let trace = dir.path().join("trace.jsonl");
    let lines: Vec<String> = (0..400)
        .map(|i| format!("{{\"t_ms\": {}, \"duration_ms\": 100}}", 5_000 + i * 25))
        .collect();
    std::fs::write(&trace, lines.join("\n")).unwrap();
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
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let summary = &report["summary"];
    assert_eq!(summary["requests"], 400);
    assert_eq!(
        summary["max_replicas"], 3,
        "4 in flight on average, capped by maxReplicas: {summary}"
    );
    let last = report["timeline"].as_array().unwrap().last().unwrap();
    assert_eq!(last["desired"], 0, "idle at the end: back to zero");

    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"t_ms\": \"soon\"}\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_siesta"))
        .args([
            "scale",
            "simulate",
            "--config",
            manifest.to_str().unwrap(),
            "--trace",
            bad.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1"));
}
