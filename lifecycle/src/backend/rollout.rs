//! Which replicas to start and stop so that a component has as many as are wanted, and, after
//! its spec changed, replaces the old spec's replicas the way a Deployment's rolling update
//! does with `maxSurge: 1, maxUnavailable: 0`: one replica of the new spec at a time, and an
//! old one stops only once a new one is ready to take its share. A pure function of what the
//! supervisor sees, so the rules are tested without processes.

/// A replica that is not being stopped, as the plan sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Started from the component's current spec.
    pub current: bool,
    pub ready: bool,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// New replicas (of the current spec) to start.
    pub start: usize,
    /// Indices into the replicas seen, to stop (SIGTERM: they drain).
    pub stop: Vec<usize>,
}

/// One extra replica while the old spec's are replaced.
const SURGE: usize = 1;

pub fn plan(want: usize, seen: &[Seen]) -> Plan {
    let mut stop: Vec<usize> = Vec::new();
    // An old-spec replica still starting would serve the old spec: never wait for it.
    stop.extend((0..seen.len()).filter(|&i| !seen[i].current && !seen[i].ready));
    // Old ready replicas go as new ones become ready: never fewer than `want` ready.
    let ready = seen.iter().filter(|s| s.ready).count();
    let old_ready: Vec<usize> = (0..seen.len())
        .filter(|&i| !seen[i].current && seen[i].ready)
        .collect();
    stop.extend(old_ready.iter().take(ready.saturating_sub(want)));
    let old_left = old_ready.len() - old_ready.len().min(ready.saturating_sub(want));
    let surge = if old_left > 0 { SURGE } else { 0 };
    let live = seen.len() - stop.len();
    let current = seen.iter().filter(|s| s.current).count();
    let start = want
        .saturating_sub(current)
        .min((want + surge).saturating_sub(live));
    // More than wanted (scaled down): starting ones first (they serve nobody yet), then the
    // old spec's, then the newest.
    let excess = live.saturating_sub(want + surge);
    let mut order: Vec<usize> = (0..seen.len()).filter(|i| !stop.contains(i)).collect();
    order.sort_by_key(|&i| (seen[i].ready, seen[i].current, std::cmp::Reverse(i)));
    stop.extend(order.into_iter().take(excess));
    Plan { start, stop }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD_READY: Seen = Seen {
        current: false,
        ready: true,
    };
    const OLD_STARTING: Seen = Seen {
        current: false,
        ready: false,
    };
    const NEW_READY: Seen = Seen {
        current: true,
        ready: true,
    };
    const NEW_STARTING: Seen = Seen {
        current: true,
        ready: false,
    };

    fn plan_of(want: usize, seen: &[Seen]) -> (usize, Vec<usize>) {
        let p = plan(want, seen);
        (p.start, p.stop)
    }

    #[test]
    fn without_a_spec_change_it_scales_as_asked() {
        assert_eq!(plan_of(3, &[NEW_READY]), (2, vec![]));
        assert_eq!(plan_of(1, &[NEW_READY, NEW_READY]), (0, vec![1]));
        // Scaling down stops a starting replica before a ready one.
        assert_eq!(plan_of(1, &[NEW_READY, NEW_STARTING]), (0, vec![1]));
        assert_eq!(plan_of(0, &[NEW_READY, NEW_STARTING]), (0, vec![1, 0]));
        assert_eq!(plan_of(2, &[NEW_READY, NEW_STARTING]), (0, vec![]));
    }

    #[test]
    fn a_new_spec_replaces_ready_replicas_one_at_a_time_never_below_the_wanted_count() {
        // Two old replicas serving: one new one is started beside them.
        let mut seen = vec![OLD_READY, OLD_READY];
        assert_eq!(plan_of(2, &seen), (1, vec![]));
        // While it starts, nothing else happens.
        seen.push(NEW_STARTING);
        assert_eq!(plan_of(2, &seen), (0, vec![]));
        // Ready: one old one goes, the next new one starts.
        seen[2] = NEW_READY;
        assert_eq!(plan_of(2, &seen), (1, vec![0]));
        let mut seen = vec![OLD_READY, NEW_READY, NEW_STARTING];
        assert_eq!(plan_of(2, &seen), (0, vec![]));
        seen[2] = NEW_READY;
        assert_eq!(plan_of(2, &seen), (0, vec![0]));
        assert_eq!(plan_of(2, &[NEW_READY, NEW_READY]), (0, vec![]));
    }

    #[test]
    fn old_replicas_still_starting_are_stopped_at_once() {
        assert_eq!(plan_of(1, &[OLD_STARTING]), (1, vec![0]));
        // The ready old one stays until a new one is ready; two new ones is within the surge.
        assert_eq!(plan_of(2, &[OLD_READY, OLD_STARTING]), (2, vec![1]));
    }

    #[test]
    fn scaling_during_a_rollout_does_both() {
        // Up: new-spec replicas for the extra demand, plus the surge.
        assert_eq!(plan_of(3, &[OLD_READY]), (3, vec![]));
        // Down to zero: everything stops.
        assert_eq!(plan_of(0, &[OLD_READY, NEW_STARTING]), (0, vec![0, 1]));
        // Down to one with an old and a new ready: the old one goes.
        assert_eq!(plan_of(1, &[OLD_READY, NEW_READY]), (0, vec![0]));
    }

    #[test]
    fn every_plan_keeps_the_ready_within_the_surge_and_converges_on_the_new_spec() {
        let kinds = [OLD_READY, OLD_STARTING, NEW_READY, NEW_STARTING];
        for want in 0..5 {
            for n in 0..5u32 {
                for mix in 0..4usize.pow(n) {
                    let mut seen: Vec<Seen> =
                        (0..n).map(|i| kinds[mix / 4usize.pow(i) % 4]).collect();
                    // Each round: apply the plan, then whatever was starting becomes ready.
                    for _round in 0..12 {
                        let p = plan(want, &seen);
                        let mut stop = p.stop.clone();
                        stop.sort_unstable();
                        stop.dedup();
                        assert_eq!(stop.len(), p.stop.len(), "{want} {seen:?}");
                        let kept: Vec<Seen> = (0..seen.len())
                            .filter(|i| !stop.contains(i))
                            .map(|i| seen[i])
                            .collect();
                        let ready = seen.iter().filter(|s| s.ready).count();
                        let ready_kept = kept.iter().filter(|s| s.ready).count();
                        assert!(ready_kept >= ready.min(want), "{want} {seen:?} {p:?}");
                        assert!(
                            p.start == 0 || kept.len() + p.start <= want + SURGE,
                            "{want} {seen:?} {p:?}"
                        );
                        seen = kept;
                        seen.extend(std::iter::repeat_n(NEW_STARTING, p.start));
                        for s in &mut seen {
                            s.ready = true;
                        }
                    }
                    assert_eq!(seen, vec![NEW_READY; want], "from {n} replicas, mix {mix}");
                }
            }
        }
    }
}
