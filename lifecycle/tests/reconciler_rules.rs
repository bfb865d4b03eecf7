//! The PA reconciler rules (autoscaling-semantics.md §1.5): bounds, initial scale, the three
//! scale-to-zero gates, Serve/Proxy mode and the condition, each with explicit time.

use std::time::Duration;

use siesta_lifecycle::autoscaler::{
    Condition, Decision, Mode, Outcome, Reconciler, ReconcilerSpec,
};

fn decision(desired: i32, ebc: i32) -> Option<Decision> {
    Some(Decision {
        desired,
        excess_burst_capacity: ebc,
        panicking: false,
    })
}

const S: u64 = 1_000;

#[test]
fn bounds_clamp_the_decision() {
    let mut r = Reconciler::new(
        ReconcilerSpec {
            min_scale: 2,
            max_scale: 3,
            ..Default::default()
        },
        0,
    );
    assert_eq!(r.reconcile(0, decision(10, 0), 0).replicas, Some(3));
    assert_eq!(
        r.reconcile(S, decision(0, 0), 3).replicas,
        Some(2),
        "min-scale holds replicas"
    );
    assert_eq!(r.condition(), Condition::Active);
}

#[test]
fn a_new_component_starts_at_its_initial_scale_even_with_min_zero() {
    let spec = ReconcilerSpec {
        min_scale: 0,
        initial_scale: 2,
        ..Default::default()
    };
    let mut r = Reconciler::new(spec, 0);
    let o = r.reconcile(0, None, 0);
    assert_eq!(
        (o.replicas, o.condition, o.mode),
        (Some(2), Condition::Activating, Mode::Proxy)
    );
    assert_eq!(
        r.reconcile(S, decision(0, 0), 1).condition,
        Condition::Activating,
        "1 of 2 ready"
    );
    assert_eq!(
        r.reconcile(2 * S, decision(2, 0), 2).condition,
        Condition::Active
    );
}

#[test]
fn scale_to_zero_waits_for_the_stable_window_then_the_grace_period() {
    let spec = ReconcilerSpec {
        min_scale: 0,
        ..Default::default()
    };
    let mut r = Reconciler::new(spec, 0);
    assert_eq!(r.reconcile(0, None, 0).replicas, Some(1), "initial scale 1");
    let o = r.reconcile(5 * S, decision(1, 10), 1);
    assert_eq!((o.condition, o.mode), (Condition::Active, Mode::Serve));

    // Traffic stops at 10 s: active only 5 s, so hold 1 and look again when the window is over.
    let o = r.reconcile(10 * S, decision(0, 10), 1);
    assert_eq!(
        o,
        Outcome {
            replicas: Some(1),
            mode: Mode::Serve,
            condition: Condition::Active,
            requeue_after: Some(Duration::from_secs(55))
        }
    );
    // Active for the whole stable window: 0 decided but not applied; the buffer goes in the path.
    let o = r.reconcile(65 * S, decision(0, 10), 1);
    assert_eq!(
        (o.replicas, o.condition, o.mode),
        (None, Condition::Inactive, Mode::Proxy)
    );
    // Inactive 15 s of the 30 s grace: still nothing removed.
    let o = r.reconcile(80 * S, decision(0, 10), 1);
    assert_eq!(
        (o.replicas, o.requeue_after),
        (None, Some(Duration::from_secs(15)))
    );
    // Grace over: scale to zero.
    let o = r.reconcile(95 * S, decision(0, 10), 1);
    assert_eq!(
        (o.replicas, o.condition, o.mode),
        (Some(0), Condition::Inactive, Mode::Proxy)
    );

    // The next request: scale from zero, held in the buffer until the replica is ready.
    let o = r.reconcile(200 * S, decision(1, -200), 0);
    assert_eq!(
        (o.replicas, o.condition, o.mode),
        (Some(1), Condition::Activating, Mode::Proxy)
    );
    let o = r.reconcile(201 * S, decision(1, 5), 1);
    assert_eq!((o.condition, o.mode), (Condition::Active, Mode::Serve));
}

#[test]
fn retention_keeps_the_last_replica_longer_than_the_grace_period() {
    let spec = ReconcilerSpec {
        min_scale: 0,
        scale_to_zero_pod_retention: Duration::from_secs(90),
        ..Default::default()
    };
    let mut r = Reconciler::new(spec, 0);
    r.reconcile(0, None, 0);
    r.reconcile(S, decision(1, 10), 1);
    r.reconcile(61 * S, decision(0, 10), 1);
    assert_eq!(r.condition(), Condition::Inactive);
    assert_eq!(
        r.reconcile(91 * S, decision(0, 10), 1).replicas,
        None,
        "grace met, retention not"
    );
    assert_eq!(
        r.reconcile(151 * S, decision(0, 10), 1).replicas,
        Some(0),
        "retention met and in proxy for the grace"
    );
}

#[test]
fn scale_to_zero_can_be_disabled() {
    let spec = ReconcilerSpec {
        min_scale: 0,
        enable_scale_to_zero: false,
        ..Default::default()
    };
    let mut r = Reconciler::new(spec, 0);
    r.reconcile(0, None, 0);
    r.reconcile(S, decision(1, 10), 1);
    assert_eq!(r.reconcile(500 * S, decision(0, 10), 1).replicas, Some(1));
}

#[test]
fn activation_gives_up_after_the_activation_timeout() {
    let spec = ReconcilerSpec {
        min_scale: 0,
        initial_scale: 0,
        ..Default::default()
    };
    let mut r = Reconciler::new(spec, 0);
    let o = r.reconcile(10 * S, decision(0, 0), 0);
    assert_eq!(
        (o.replicas, o.condition, o.requeue_after),
        (None, Condition::Activating, Some(Duration::from_secs(620)))
    );
    let o = r.reconcile(630 * S, decision(0, 0), 0);
    assert_eq!((o.replicas, o.condition), (Some(0), Condition::Inactive));
}

#[test]
fn no_data_changes_nothing_unless_activating() {
    let mut r = Reconciler::new(ReconcilerSpec::default(), 0);
    r.reconcile(0, None, 0);
    r.reconcile(S, decision(3, 0), 3);
    let o = r.reconcile(2 * S, None, 3);
    assert_eq!((o.replicas, o.condition), (None, Condition::Active));
}

#[test]
fn serve_needs_positive_excess_burst_capacity() {
    let mut r = Reconciler::new(ReconcilerSpec::default(), 0);
    assert_eq!(r.reconcile(0, decision(2, -1), 2).mode, Mode::Proxy);
    assert_eq!(r.reconcile(S, decision(2, 0), 2).mode, Mode::Serve);
}
