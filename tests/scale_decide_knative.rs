//! Knative's own autoscaler unit-test cases (knative/serving pkg/autoscaler/scaling/
//! autoscaler_test.go), replayed through `siesta scale decide`: the same code as the live
//! autoscaler, fed JSON lines. Knative's helper `newTestAutoscaler(target, tbc)` is: total =
//! target / 0.75, panic threshold 2, up and down rates 10, stable window 60 s, created with one
//! ready pod. Excess burst capacity is compared with Knative's own +-1 tolerance.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

struct Step {
    now_ms: u64,
    ready: u32,
    stable: f64,
    panic: f64,
    reachable: bool,
    desired: i64,
    ebc: Option<i64>,
}

fn step(now_ms: u64, ready: u32, stable: f64, panic: f64, desired: i64, ebc: Option<i64>) -> Step {
    Step {
        now_ms,
        ready,
        stable,
        panic,
        reachable: true,
        desired,
        ebc,
    }
}

/// Knative's expectedEBC(totCap, targetBC, recordedConcurrency, numPods).
fn ebc(target: f64, tbc: f64, panic: f64, pods: f64) -> Option<i64> {
    Some((target / 0.75 * pods - tbc - panic).floor() as i64)
}

/// The spec of Knative's newTestAutoscaler(target, tbc).
fn test_autoscaler(target: f64, tbc: f64, extra: &str) -> String {
    format!(
        "target: {target}\ntotal_target: {}\ntarget_burst_capacity: {tbc}\npanic_threshold: 2\n\
         max_scale_up_rate: 10\nmax_scale_down_rate: 10\nstable_window: 60s\ninitial_ready: 1\n{extra}",
        target / 0.75
    )
}

fn replay(name: &str, spec: &str, steps: &[Step]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spec.yaml");
    std::fs::write(&path, spec).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_siesta"))
        .args(["scale", "decide", "--config", path.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for s in steps {
        let line = json!({"now_ms": s.now_ms, "ready": s.ready, "stable": s.stable, "panic": s.panic, "reachable": s.reachable});
        writeln!(stdin, "{line}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{name}: exit {:?}", out.status);
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), steps.len(), "{name}");
    for (i, (s, got)) in steps.iter().zip(&lines).enumerate() {
        assert_eq!(
            got["desired"].as_i64().unwrap(),
            s.desired,
            "{name} step {i}: {got}"
        );
        if let Some(want) = s.ebc {
            let e = got["excess_burst_capacity"].as_i64().unwrap();
            assert!(
                (e - want).abs() <= 1,
                "{name} step {i}: ebc {e}, want {want}"
            );
        }
    }
}

const MIN: u64 = 60_000;

#[test]
fn scale_down_delay() {
    let spec = "target: 10\ntotal_target: 0\ntarget_burst_capacity: 0\nmax_scale_down_rate: 10\n\
                max_scale_up_rate: 10\npanic_threshold: 100\nscale_down_delay: 5m\n";
    replay(
        "TestAutoscalerScaleDownDelay",
        spec,
        &[
            step(2_000, 0, 40.0, 40.0, 4, Some(0)),
            step(5 * MIN, 0, 0.0, 0.0, 4, Some(0)),
            step(5 * MIN + 2_000, 0, 0.0, 0.0, 0, Some(0)),
            // "gradual"
            step(9 * MIN, 0, 40.0, 40.0, 4, None),
            step(10 * MIN, 0, 30.0, 30.0, 4, None),
            step(11 * MIN, 0, 0.0, 0.0, 4, None),
            step(14 * MIN, 0, 0.0, 0.0, 3, None),
            step(15 * MIN, 0, 0.0, 0.0, 0, None),
        ],
    );
    let zero = spec.replace("5m", "0s");
    replay(
        "TestAutoscalerScaleDownDelayZero",
        &zero,
        &[
            step(0, 0, 40.0, 40.0, 4, None),
            step(500, 0, 20.0, 20.0, 2, None),
        ],
    );
}

#[test]
fn stable_mode() {
    replay(
        "TestAutoscalerStableModeIncreaseWithConcurrencyDefault",
        &test_autoscaler(10.0, 101.0, ""),
        &[
            step(0, 1, 50.0, 10.0, 5, ebc(10.0, 101.0, 10.0, 1.0)),
            step(0, 1, 100.0, 10.0, 10, ebc(10.0, 101.0, 10.0, 1.0)),
        ],
    );
    replay(
        "TestAutoscalerStableModeDecrease",
        &test_autoscaler(10.0, 98.0, ""),
        &[
            step(0, 8, 100.0, 100.0, 10, ebc(10.0, 98.0, 100.0, 8.0)),
            step(0, 8, 50.0, 50.0, 5, ebc(10.0, 98.0, 50.0, 8.0)),
        ],
    );
    replay(
        "TestAutoscalerStableModeNoTrafficScaleToZero",
        &test_autoscaler(10.0, 75.0, ""),
        &[
            step(0, 1, 1.0, 0.0, 1, ebc(10.0, 75.0, 0.0, 1.0)),
            step(0, 1, 0.0, 0.0, 0, ebc(10.0, 75.0, 0.0, 1.0)),
        ],
    );
}

#[test]
fn panic_mode() {
    let t0 = 1_000_000;
    replay(
        "TestAutoscalerUnpanicAfterSlowIncrease",
        &test_autoscaler(1.0, 98.0, ""),
        &[
            step(t0, 10, 11.0, 25.0, 25, ebc(1.0, 98.0, 25.0, 10.0)),
            step(t0 + 30_000, 40, 30.0, 41.0, 41, ebc(1.0, 98.0, 41.0, 40.0)),
            step(t0 + 62_000, 55, 50.0, 56.0, 50, ebc(1.0, 98.0, 56.0, 55.0)),
        ],
    );
    replay(
        "TestAutoscalerExtendPanicWindow",
        &test_autoscaler(1.0, 98.0, ""),
        &[
            step(t0, 10, 11.0, 25.0, 25, None),
            step(t0 + 30_000, 40, 30.0, 80.0, 80, ebc(1.0, 98.0, 80.0, 40.0)),
        ],
    );
    replay(
        "TestAutoscalerPanicModeExponentialTrackAndStabilize",
        &test_autoscaler(1.0, 101.0, ""),
        &[
            step(t0, 1, 6.0, 6.0, 6, ebc(1.0, 101.0, 6.0, 1.0)),
            step(t0, 6, 36.0, 36.0, 36, ebc(1.0, 101.0, 36.0, 6.0)),
            step(
                t0 + 1_000,
                36,
                216.0,
                216.0,
                216,
                ebc(1.0, 101.0, 216.0, 36.0),
            ),
            step(
                t0 + 1_000,
                216,
                1296.0,
                1296.0,
                1296,
                ebc(1.0, 101.0, 1296.0, 216.0),
            ),
            step(
                t0 + 2_000,
                1296,
                1296.0,
                1296.0,
                1296,
                ebc(1.0, 101.0, 1296.0, 1296.0),
            ),
        ],
    );
    replay(
        "TestAutoscalerPanicThenUnPanicScaleDown",
        &test_autoscaler(10.0, 93.0, ""),
        &[
            step(t0, 1, 100.0, 100.0, 10, ebc(10.0, 93.0, 100.0, 1.0)),
            step(t0, 10, 100.0, 1000.0, 100, ebc(10.0, 93.0, 1000.0, 10.0)),
            step(t0 + 30_000, 10, 1.0, 1.0, 100, ebc(10.0, 93.0, 1.0, 10.0)),
            step(t0 + 61_000, 10, 1.0, 1.0, 1, ebc(10.0, 93.0, 1.0, 10.0)),
        ],
    );
}

#[test]
fn rate_limits_and_reachability() {
    replay(
        "TestAutoscalerRateLimitScaleUp",
        &test_autoscaler(10.0, 61.0, ""),
        &[
            step(0, 1, 1000.0, 1001.0, 10, ebc(10.0, 61.0, 1001.0, 1.0)),
            step(0, 10, 1000.0, 1001.0, 100, ebc(10.0, 61.0, 1001.0, 10.0)),
        ],
    );
    replay(
        "TestAutoscalerRateLimitScaleDown",
        &test_autoscaler(10.0, 61.0, ""),
        &[
            step(0, 100, 1.0, 1.0, 10, ebc(10.0, 61.0, 1.0, 100.0)),
            step(0, 10, 1.0, 1.0, 1, ebc(10.0, 61.0, 1.0, 10.0)),
        ],
    );
    replay(
        "TestAutoscalerUseOnePodAsMinimumIfEndpointsNotFound",
        &test_autoscaler(10.0, 81.0, ""),
        &[step(0, 0, 1000.0, 888.0, 10, ebc(10.0, 81.0, 888.0, 0.0))],
    );
    // TestAutoscalerScale table: (name, target, tbc, stable, panic, ready, override, desired, ebc).
    struct Row(
        &'static str,
        f64,
        f64,
        f64,
        f64,
        u32,
        &'static str,
        i64,
        Option<i64>,
    );
    let table = [
        Row(
            "AutoscalerNoDataAtZeroNoAutoscale",
            10.0,
            100.0,
            0.0,
            0.0,
            1,
            "",
            0,
            ebc(10.0, 100.0, 0.0, 1.0),
        ),
        Row(
            "AutoscalerStableModeUnlimitedTBC",
            181.0,
            -1.0,
            21.0,
            26.0,
            1,
            "",
            1,
            Some(-1),
        ),
        Row("Autoscaler0TBC", 10.0, 0.0, 50.0, 49.0, 1, "", 5, Some(0)),
        Row(
            "AutoscalerStableModeNoChange",
            10.0,
            100.0,
            50.0,
            50.0,
            1,
            "",
            5,
            ebc(10.0, 100.0, 50.0, 1.0),
        ),
        Row(
            "AutoscalerStableModeNoChangeAlreadyScaled",
            10.0,
            100.0,
            50.0,
            50.0,
            5,
            "",
            5,
            ebc(10.0, 100.0, 50.0, 5.0),
        ),
        Row(
            "AutoscalerStableModeIncreaseWithSmallScaleUpRate",
            1.0,
            1982.0,
            3.0,
            3.1,
            2,
            "max_scale_up_rate: 1.1\n",
            3,
            ebc(1.0, 1982.0, 3.1, 2.0),
        ),
        Row(
            "AutoscalerStableModeDecreaseWithSmallScaleDownRate",
            10.0,
            1982.0,
            1.0,
            1.0,
            100,
            "max_scale_down_rate: 1.1\n",
            90,
            ebc(10.0, 1982.0, 1.0, 100.0),
        ),
        Row(
            "AutoscalerPanicModeDoublePodCount",
            10.0,
            84.0,
            50.0,
            100.0,
            1,
            "",
            10,
            ebc(10.0, 84.0, 100.0, 1.0),
        ),
    ];
    for Row(name, target, tbc, stable, panic, ready, extra, desired, want_ebc) in table {
        let spec = test_autoscaler(target, tbc, "");
        // serde_yaml rejects a repeated key: the override replaces the helper's value.
        let spec = match extra.split_once(':') {
            None => spec,
            Some((key, _)) => {
                spec.lines()
                    .filter(|l| !l.starts_with(key))
                    .collect::<Vec<_>>()
                    .join("\n")
                    + "\n"
                    + extra
            }
        };
        replay(
            name,
            &spec,
            &[step(0, ready, stable, panic, desired, want_ebc)],
        );
    }
    let mut unreachable = step(0, 100, 1.0, 1.0, 1, ebc(10.0, 1982.0, 1.0, 100.0));
    unreachable.reachable = false;
    let spec = test_autoscaler(10.0, 1982.0, "")
        .replace("max_scale_down_rate: 10", "max_scale_down_rate: 1.1");
    replay(
        "AutoscalerStableModeDecreaseNonReachable",
        &spec,
        &[unreachable],
    );
}

#[test]
fn panic_with_stable_above_or_below_panic() {
    // Knative sets panicTime 5 s ago and maxPanicPods 5 by hand; created with 5 ready the
    // decider starts in exactly that state.
    let spec = test_autoscaler(1.0, 100.0, "").replace("initial_ready: 1", "initial_ready: 5");
    replay(
        "AutoscalerPanicStableLargerThanPanic",
        &spec,
        &[step(5_000, 5, 50.0, 30.0, 50, ebc(1.0, 100.0, 30.0, 5.0))],
    );
    replay(
        "AutoscalerPanicStableLessThanPanic",
        &spec,
        &[step(5_000, 5, 20.0, 30.0, 30, ebc(1.0, 100.0, 30.0, 5.0))],
    );
}

#[test]
fn bad_input_lines_fail_with_the_line_number() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spec.yaml");
    std::fs::write(&path, "target: 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_siesta"))
        .args(["scale", "decide", "--config", path.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(b"{\"now_ms\": 0, \"ready\": 1, \"stable\": 1, \"panic\": 1}\n{\"now_ms\": \"soon\"}\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 2"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
