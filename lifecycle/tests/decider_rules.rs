//! Every rule of the KPA tick (autoscaling-semantics.md §1.4), one deterministic test each,
//! including the worked examples of §1.6.

use std::time::Duration;

use siesta_lifecycle::autoscaler::{Decider, DeciderSpec, Decision, Observation};

fn spec(target: f64, total: f64) -> DeciderSpec {
    DeciderSpec {
        target,
        total_target: total,
        ..DeciderSpec::default()
    }
}

fn obs(now_ms: u64, ready: u32, stable: f64, panic: f64) -> Observation {
    Observation {
        now_ms,
        ready,
        stable,
        panic,
        reachable: true,
    }
}

fn decide(d: &mut Decider, o: Observation) -> (i32, i32, bool) {
    let Decision {
        desired,
        excess_burst_capacity,
        panicking,
    } = d.scale(o);
    (desired, excess_burst_capacity, panicking)
}

#[test]
fn desired_is_ceil_of_observed_over_target() {
    let mut d = Decider::new(spec(10.0, 100.0), 0, 0);
    assert_eq!(decide(&mut d, obs(0, 2, 15.0, 15.0)).0, 2);
    assert_eq!(decide(&mut d, obs(2_000, 2, 20.0, 20.0)).0, 2);
    assert_eq!(decide(&mut d, obs(4_000, 2, 20.1, 20.1)).0, 3);
}

#[test]
fn worked_example_cc0_three_ready_no_panic_and_negative_ebc() {
    // CC=0: target 70 of 100, TBC 211. S=P=350 -> 5 replicas, 5/3 < 2 so no panic, EBC -261.
    let mut d = Decider::new(spec(70.0, 100.0), 0, 0);
    assert_eq!(decide(&mut d, obs(0, 3, 350.0, 350.0)), (5, -261, false));
    // P=50 -> EBC 39 (Serve); with 2 ready -> -61 (Proxy).
    let mut d = Decider::new(spec(70.0, 100.0), 0, 0);
    assert_eq!(decide(&mut d, obs(0, 3, 50.0, 50.0)).1, 39);
    assert_eq!(decide(&mut d, obs(2_000, 2, 50.0, 50.0)).1, -61);
}

#[test]
fn worked_example_cc1_panics_to_five() {
    // CC=1, TU 70 %: target 0.7, 1 ready, S=P=3 -> ceil(4.29) = 5, 5/1 >= 2 -> panic.
    let mut d = Decider::new(spec(0.7, 1.0), 0, 0);
    let (desired, ebc, panicking) = decide(&mut d, obs(0, 1, 3.0, 3.0));
    assert_eq!((desired, panicking), (5, true));
    assert_eq!(ebc, (1.0f64 - 211.0 - 3.0).floor() as i32);
    // TU 100 % -> 3.
    let mut d = Decider::new(spec(1.0, 1.0), 0, 0);
    assert_eq!(decide(&mut d, obs(0, 1, 3.0, 3.0)).0, 3);
}

#[test]
fn scale_from_zero_asks_for_one_replica_without_panic() {
    let mut d = Decider::new(spec(70.0, 100.0), 0, 0);
    assert_eq!(decide(&mut d, obs(0, 0, 1.0, 1.0)), (1, -212, false));
    // activation-scale 3 asks for 3 at once.
    let mut d = Decider::new(
        DeciderSpec {
            activation_scale: 3,
            ..spec(70.0, 100.0)
        },
        0,
        0,
    );
    assert_eq!(decide(&mut d, obs(0, 0, 1.0, 1.0)).0, 3);
}

#[test]
fn scale_up_is_limited_by_max_scale_up_rate_but_panic_sees_the_unclamped_want() {
    let mut d = Decider::new(
        DeciderSpec {
            max_scale_up_rate: 2.0,
            ..spec(10.0, 100.0)
        },
        0,
        0,
    );
    // Want 10 from 2 ready: up = ceil(2 x 2) = 4; the unclamped 10/2 >= 2 -> panic.
    let ebc = (2.0f64 * 100.0 - 211.0 - 100.0).floor() as i32;
    assert_eq!(decide(&mut d, obs(0, 2, 100.0, 100.0)), (4, ebc, true));
}

#[test]
fn activation_scale_is_not_clamped_by_the_scale_up_rate() {
    let mut d = Decider::new(
        DeciderSpec {
            max_scale_up_rate: 1.5,
            activation_scale: 5,
            ..spec(10.0, 100.0)
        },
        0,
        0,
    );
    // up = ceil(1.5 x 1) = 2, but activation scale 5 lifts the non-zero want to 5.
    assert_eq!(decide(&mut d, obs(0, 1, 1.0, 0.0)).0, 5);
    // A zero want stays zero.
    let mut d = Decider::new(
        DeciderSpec {
            activation_scale: 5,
            ..spec(10.0, 100.0)
        },
        0,
        0,
    );
    assert_eq!(decide(&mut d, obs(0, 0, 0.0, 0.0)).0, 0);
}

#[test]
fn scale_down_is_limited_by_max_scale_down_rate_only_when_reachable() {
    let mut d = Decider::new(spec(10.0, 100.0), 0, 0);
    assert_eq!(decide(&mut d, obs(0, 10, 0.0, 0.0)).0, 5, "floor(10 / 2)");
    assert_eq!(decide(&mut d, obs(2_000, 5, 0.0, 0.0)).0, 2);
    assert_eq!(decide(&mut d, obs(4_000, 2, 0.0, 0.0)).0, 1);
    assert_eq!(
        decide(&mut d, obs(6_000, 1, 0.0, 0.0)).0,
        0,
        "10 -> 5 -> 2 -> 1 -> 0"
    );
    let mut d = Decider::new(spec(10.0, 100.0), 0, 0);
    let unreachable = Observation {
        reachable: false,
        ..obs(0, 10, 0.0, 0.0)
    };
    assert_eq!(
        decide(&mut d, unreachable).0,
        0,
        "an unreachable component drops at once"
    );
}

#[test]
fn panic_is_entered_extended_and_left_only_a_stable_window_after_the_last_trigger() {
    let mut d = Decider::new(spec(10.0, 100.0), 0, 0);
    assert_eq!(
        decide(&mut d, obs(0, 1, 10.0, 30.0)),
        (3, (100.0f64 - 211.0 - 30.0).floor() as i32, true)
    );
    // Demand falls: still panicking, and panic never scales down.
    assert_eq!(decide(&mut d, obs(30_000, 3, 10.0, 10.0)).0, 3);
    assert!(d.is_panicking());
    // Extended at 40 s by a new burst (6/3 >= 2).
    assert_eq!(decide(&mut d, obs(40_000, 3, 10.0, 60.0)).0, 6);
    // 100 s = 40 s + 60 s: not yet strictly after the window.
    assert_eq!(
        decide(&mut d, obs(100_000, 6, 10.0, 10.0)),
        (6, (600.0f64 - 211.0 - 10.0).floor() as i32, true)
    );
    // 100.001 s: panic ends, the stable want takes over (clamped by the down rate: floor(6/2) = 3).
    let (desired, _, panicking) = decide(&mut d, obs(100_001, 6, 10.0, 10.0));
    assert_eq!((desired, panicking), (3, false));
}

#[test]
fn in_panic_the_stable_want_counts_when_it_is_larger() {
    let mut d = Decider::new(spec(10.0, 100.0), 0, 0);
    assert_eq!(decide(&mut d, obs(0, 1, 0.0, 20.0)).0, 2);
    // Panic window calm, stable window high: desired = max(stable, panic).
    assert_eq!(decide(&mut d, obs(2_000, 2, 50.0, 0.0)).0, 5);
}

#[test]
fn a_decider_started_with_replicas_starts_in_panic_holding_them() {
    let mut d = Decider::new(spec(10.0, 100.0), 0, 5);
    assert_eq!(decide(&mut d, obs(2_000, 5, 0.0, 0.0)).0, 5);
    assert!(d.is_panicking());
    assert_eq!(
        decide(&mut d, obs(60_001, 5, 0.0, 0.0)).0,
        2,
        "panic over after a stable window"
    );
    let d = Decider::new(spec(10.0, 100.0), 0, 1);
    assert!(!d.is_panicking(), "one replica: normal behaviour");
}

#[test]
fn scale_down_delay_holds_the_max_of_the_window() {
    let s = DeciderSpec {
        scale_down_delay: Duration::from_secs(10),
        ..spec(10.0, 100.0)
    };
    let mut d = Decider::new(s, 0, 0);
    assert_eq!(decide(&mut d, obs(0, 5, 50.0, 0.0)).0, 5);
    for t in [2_000, 4_000, 6_000, 8_000] {
        assert_eq!(decide(&mut d, obs(t, 5, 0.0, 0.0)).0, 5, "held at {t} ms");
    }
    assert_eq!(
        decide(&mut d, obs(10_000, 5, 0.0, 0.0)).0,
        2,
        "the 5 expired after 5 buckets of 2 s"
    );
    // Not reachable: the delay window is bypassed.
    let s = DeciderSpec {
        scale_down_delay: Duration::from_secs(10),
        ..spec(10.0, 100.0)
    };
    let mut d = Decider::new(s, 0, 0);
    decide(&mut d, obs(0, 5, 50.0, 0.0));
    let o = Observation {
        reachable: false,
        ..obs(2_000, 5, 0.0, 0.0)
    };
    assert_eq!(decide(&mut d, o).0, 0);
}

#[test]
fn excess_burst_capacity_follows_tbc() {
    for (tbc, ebc) in [
        (0.0, 0),
        (-1.0, -1),
        (211.0, (300.0f64 - 211.0 - 40.0).floor() as i32),
    ] {
        let mut d = Decider::new(
            DeciderSpec {
                target_burst_capacity: tbc,
                ..spec(70.0, 100.0)
            },
            0,
            0,
        );
        assert_eq!(decide(&mut d, obs(0, 3, 40.0, 40.0)).1, ebc, "tbc {tbc}");
    }
}

#[test]
fn spec_files_take_knative_defaults_and_reject_bad_values() {
    let s = DeciderSpec::from_yaml("target: 1\nstable_window: 6s\n").unwrap();
    assert_eq!(s.target, 1.0);
    assert_eq!(s.stable_window, Duration::from_secs(6));
    assert_eq!(s.total_target, 100.0);
    assert_eq!(s.target_burst_capacity, 211.0);
    assert_eq!(s.panic_threshold, 2.0);
    assert_eq!(s.max_scale_down_rate, 2.0);
    assert!(DeciderSpec::from_yaml("max_scale_down_rate: 1\n").is_err());
    assert!(DeciderSpec::from_yaml("target_burst_capacity: -2\n").is_err());
    assert!(DeciderSpec::from_yaml("stable_window: soon\n").is_err());
    assert!(
        DeciderSpec::from_yaml("targte: 1\n").is_err(),
        "unknown keys are typos"
    );
}
