//! The three tiers to zero, as rules: a replica is hot (weights on the device, routable),
//! parked (device memory given back, process and host copy kept, not routable), or gone.
//! Pure functions of what the supervisor sees, with the time passed in, so that every rule is
//! tested without processes or clocks.
//!
//! - **Scale down** parks surplus ready replicas of the current spec, up to the component's
//!   `parked-replicas`; the rest exit.
//! - **Scale up** resumes parked replicas first (the most recently parked, whose host copy is
//!   warmest), then starts new ones.
//! - **Parked replicas exit** after `park-timeout`, when over the limit (oldest first), when
//!   they are of an older spec, and one per round while the host is short of memory.
//! - **GPU memory is the scheduled resource**: a replica becomes hot on a GPU only where its
//!   device memory fits. Parked replicas hold none. Where it does not fit and the component has
//!   requests waiting, the least recently used idle hot replicas of *other* components are
//!   parked, never below their `minReplicas`; if that cannot make room it waits and says why.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::ComponentKey;

/// How long a hot replica must have been idle before memory pressure parks it: one that just
/// answered is likely to be asked again at once.
pub const EVICT_AFTER_IDLE: Duration = Duration::from_secs(2);

/// A parked (or parking) replica as the rules see it.
#[derive(Debug, Clone)]
pub struct ParkedSeen {
    pub id: String,
    pub since: Instant,
    /// Of the component's current spec.
    pub current: bool,
    /// Parked to make room for another component, not by its own scale-down.
    pub evicted: bool,
}

/// Of the replicas the rollout plan stops, which are parked instead: ready ones of the current
/// spec, while fewer than `limit` are parked.
pub fn park_instead(
    limit: u32,
    parked_now: usize,
    stop_candidates: &[(usize, bool)],
) -> Vec<usize> {
    let room = (limit as usize).saturating_sub(parked_now);
    stop_candidates
        .iter()
        .filter(|(_, parkable)| *parkable)
        .map(|(i, _)| *i)
        .take(room)
        .collect()
}

/// Parked replicas to stop now.
pub fn expire(
    parked: &[ParkedSeen],
    limit: u32,
    timeout: Duration,
    host_memory_short: bool,
    now: Instant,
) -> Vec<String> {
    let mut stop: Vec<String> = parked
        .iter()
        .filter(|p| !p.current || now.saturating_duration_since(p.since) >= timeout)
        .map(|p| p.id.clone())
        .collect();
    let mut kept: Vec<&ParkedSeen> = parked.iter().filter(|p| !stop.contains(&p.id)).collect();
    // Newest first: the oldest go when there are too many.
    kept.sort_by_key(|p| std::cmp::Reverse(p.since));
    let mut over = kept.split_off(kept.len().min(limit as usize));
    if host_memory_short && over.is_empty() {
        over.extend(kept.pop());
    }
    stop.extend(over.into_iter().map(|p| p.id.clone()));
    stop
}

/// Whether a component may gain hot replicas now. One whose replicas were parked to make room
/// for another waits for a request of its own (`has_demand`): its desired count still stands
/// from before, and taking the room back at once would undo the placement that parked it.
pub fn may_grow(parked: &[ParkedSeen], has_demand: bool) -> bool {
    has_demand || !parked.iter().any(|p| p.evicted)
}

/// Parked replicas to resume for `wanted` more hot ones: the most recently parked first.
pub fn resume_order(parked: &[ParkedSeen], wanted: usize) -> Vec<String> {
    let mut current: Vec<&ParkedSeen> = parked.iter().filter(|p| p.current).collect();
    current.sort_by_key(|p| std::cmp::Reverse(p.since));
    current
        .into_iter()
        .take(wanted)
        .map(|p| p.id.clone())
        .collect()
}

/// One GPU's memory as placement counts it.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuRoom {
    pub index: u32,
    pub name: String,
    /// Free for a new hot replica: what the GPU reports free (or, for a simulated inventory,
    /// its total less what hot replicas use), less what starting and resuming replicas will
    /// take.
    pub available: u64,
}

/// A hot replica that memory pressure might park.
#[derive(Debug, Clone)]
pub struct HotSeen {
    pub id: String,
    pub component: ComponentKey,
    pub gpu: u32,
    /// Its device memory (measured once it reported, else the estimate it was placed with).
    pub bytes: u64,
    pub in_flight: u32,
    pub last_used: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// It fits on this GPU now.
    Fits(u32),
    /// It will fit on this GPU once these replicas (of other components) are parked.
    AfterParking { gpu: u32, park: Vec<String> },
    /// Nothing can make room now; the reason is shown in the status.
    Wait(String),
}

/// Where a replica needing `need` bytes becomes hot. `hot` holds every hot replica on the
/// host; `floor` each component's hot count and its `minReplicas`. Memory pressure parks only
/// for a component with requests waiting (`has_demand`): a component merely below its desired
/// count after being parked for another waits for its next request, so two idle components
/// never take turns evicting each other.
pub fn place(
    gpus: &[GpuRoom],
    need: u64,
    requester: &ComponentKey,
    has_demand: bool,
    hot: &[HotSeen],
    floor: &HashMap<ComponentKey, (u32, u32)>,
    now: Instant,
) -> Placement {
    if gpus.is_empty() {
        return Placement::Wait("no GPU on this host".into());
    }
    if let Some(g) = gpus
        .iter()
        .filter(|g| g.available >= need)
        .max_by_key(|g| (g.available, std::cmp::Reverse(g.index)))
    {
        return Placement::Fits(g.index);
    }
    let short = || {
        gpus.iter()
            .map(|g| format!("GPU {} ({}) {} free", g.index, g.name, mib(g.available)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // Per GPU: park idle replicas of other components, least recently used first, until the
    // model fits; the GPU that needs the fewest parked wins.
    let mut best: Option<(usize, u32, Vec<String>)> = None;
    for g in gpus {
        let mut candidates: Vec<&HotSeen> = hot
            .iter()
            .filter(|h| {
                h.gpu == g.index
                    && h.component != *requester
                    && h.in_flight == 0
                    && now.saturating_duration_since(h.last_used) >= EVICT_AFTER_IDLE
            })
            .collect();
        candidates.sort_by_key(|h| h.last_used);
        let mut left: HashMap<&ComponentKey, u32> =
            floor.iter().map(|(k, (hot, _))| (k, *hot)).collect();
        let mut freed = g.available;
        let mut park = Vec::new();
        for h in candidates {
            if freed >= need {
                break;
            }
            let min = floor.get(&h.component).map_or(0, |(_, min)| *min);
            let count = left.entry(&h.component).or_insert(0);
            if *count <= min {
                continue;
            }
            *count -= 1;
            freed += h.bytes;
            park.push(h.id.clone());
        }
        if freed >= need && best.as_ref().is_none_or(|(n, _, _)| park.len() < *n) {
            best = Some((park.len(), g.index, park));
        }
    }
    match best {
        Some((_, gpu, park)) if has_demand => Placement::AfterParking { gpu, park },
        Some(_) => Placement::Wait(format!(
            "no GPU has {} free for the model ({}); on its next request idle replicas of other \
             components are parked to make room",
            mib(need),
            short()
        )),
        None => Placement::Wait(format!(
            "no GPU has {} free for the model ({}), and parking the idle replicas of other \
             components above their minReplicas would not free enough: waiting",
            mib(need),
            short()
        )),
    }
}

/// `1.5 MiB`.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::ComponentKind;

    const MIB: u64 = 1 << 20;

    fn key(s: &str) -> ComponentKey {
        ComponentKey {
            service: s.into(),
            kind: ComponentKind::Predictor,
        }
    }

    fn parked(id: &str, since: Instant, current: bool) -> ParkedSeen {
        ParkedSeen {
            id: id.into(),
            since,
            current,
            evicted: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_component_parked_for_another_grows_again_only_on_its_own_request() {
        let t0 = Instant::now();
        let mut p = vec![parked("a", t0, true)];
        assert!(may_grow(&p, false), "parked by its own scale-down");
        p[0].evicted = true;
        assert!(!may_grow(&p, false));
        assert!(may_grow(&p, true));
        assert!(may_grow(&[], false));
    }

    #[test]
    fn scale_down_parks_ready_replicas_of_the_current_spec_up_to_the_limit() {
        // (index, parkable): 1 is still starting or of an old spec.
        let stop = [(3, true), (1, false), (2, true)];
        assert_eq!(park_instead(1, 0, &stop), vec![3]);
        assert_eq!(park_instead(5, 0, &stop), vec![3, 2]);
        assert_eq!(park_instead(1, 1, &stop), Vec::<usize>::new());
        assert_eq!(
            park_instead(0, 0, &stop),
            Vec::<usize>::new(),
            "parking off"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn parked_replicas_exit_on_timeout_over_the_limit_on_an_old_spec_and_when_memory_is_short()
     {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let p = [
            parked("a", t0, true),
            parked("b", t0 + s(10), true),
            parked("c", t0 + s(20), true),
        ];
        let timeout = s(600);
        assert!(expire(&p, 3, timeout, false, t0 + s(30)).is_empty());
        // Over the limit of 2: the oldest goes.
        assert_eq!(expire(&p, 2, timeout, false, t0 + s(30)), vec!["a"]);
        // The timeout, counted per replica from when it was parked.
        assert_eq!(expire(&p, 3, timeout, false, t0 + s(600)), vec!["a"]);
        assert_eq!(
            expire(&p, 3, timeout, false, t0 + s(620)),
            vec!["a", "b", "c"]
        );
        // Old spec: at once.
        let old = [parked("a", t0, false), parked("b", t0, true)];
        assert_eq!(expire(&old, 3, timeout, false, t0), vec!["a"]);
        // Host memory short: one more per round, the oldest.
        assert_eq!(expire(&p, 3, timeout, true, t0 + s(30)), vec!["a"]);
        assert_eq!(expire(&p, 2, timeout, true, t0 + s(30)), vec!["a"]);
    }

    #[tokio::test(start_paused = true)]
    async fn scale_up_resumes_the_most_recently_parked_of_the_current_spec_first() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let p = [
            parked("a", t0, true),
            parked("b", t0 + s(5), false),
            parked("c", t0 + s(9), true),
        ];
        assert_eq!(resume_order(&p, 1), vec!["c"]);
        assert_eq!(resume_order(&p, 5), vec!["c", "a"]);
    }

    fn hot(id: &str, c: &str, gpu: u32, mib: u64, in_flight: u32, last_used: Instant) -> HotSeen {
        HotSeen {
            id: id.into(),
            component: key(c),
            gpu,
            bytes: mib * MIB,
            in_flight,
            last_used,
        }
    }

    fn room(index: u32, mib: u64) -> GpuRoom {
        GpuRoom {
            index,
            name: "H200".into(),
            available: mib * MIB,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn memory_pressure_parks_the_least_recently_used_idle_replicas_of_others_above_their_minimum()
     {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let now = t0 + s(100);
        let gpus = [room(0, 100), room(1, 50)];
        let hot = [
            hot("a-1", "a", 0, 400, 0, t0 + s(10)),
            hot("b-1", "b", 0, 400, 0, t0 + s(5)),
            hot("c-1", "c", 0, 400, 1, t0),
            hot("d-1", "d", 1, 400, 0, t0 + s(99)),
            hot("e-1", "e", 1, 400, 0, t0 + s(1)),
        ];
        let floor: HashMap<ComponentKey, (u32, u32)> = [
            (key("a"), (1, 0)),
            (key("b"), (1, 0)),
            (key("c"), (1, 0)),
            (key("d"), (1, 0)),
            (key("e"), (1, 1)),
        ]
        .into();
        // Fits without parking: the GPU with the most room.
        assert_eq!(
            place(&gpus, 80 * MIB, &key("x"), true, &hot, &floor, now),
            Placement::Fits(0)
        );
        // 450 MiB: on GPU 0, one idle replica frees 400 -> b (least recently used) goes; c is
        // busy. GPU 1 cannot: d was used 1 s ago, e is at its minReplicas.
        assert_eq!(
            place(&gpus, 450 * MIB, &key("x"), true, &hot, &floor, now),
            Placement::AfterParking {
                gpu: 0,
                park: vec!["b-1".into()]
            }
        );
        // 850 MiB needs two: b then a.
        assert_eq!(
            place(&gpus, 850 * MIB, &key("x"), true, &hot, &floor, now),
            Placement::AfterParking {
                gpu: 0,
                park: vec!["b-1".into(), "a-1".into()]
            }
        );
        // A component never parks its own replicas for itself.
        assert_eq!(
            place(&gpus, 450 * MIB, &key("b"), true, &hot, &floor, now),
            Placement::AfterParking {
                gpu: 0,
                park: vec!["a-1".into()]
            }
        );
        // Too much even with every idle replica parked: wait, saying why.
        match place(&gpus, 2000 * MIB, &key("x"), true, &hot, &floor, now) {
            Placement::Wait(why) => {
                assert!(why.contains("2000.0 MiB"), "{why}");
                assert!(why.contains("GPU 0 (H200) 100.0 MiB free"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        // No request waiting: no parking for it.
        assert!(matches!(
            place(&gpus, 450 * MIB, &key("x"), false, &hot, &floor, now),
            Placement::Wait(why) if why.contains("next request")
        ));
        assert!(matches!(
            place(&[], MIB, &key("x"), true, &hot, &floor, now),
            Placement::Wait(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_component_is_never_parked_below_its_minimum_even_with_several_hot() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(60);
        let hot = [
            hot("a-1", "a", 0, 100, 0, t0),
            hot("a-2", "a", 0, 100, 0, t0),
            hot("a-3", "a", 0, 100, 0, t0),
        ];
        let floor: HashMap<ComponentKey, (u32, u32)> = [(key("a"), (3, 2))].into();
        assert_eq!(
            place(&[room(0, 0)], 100 * MIB, &key("x"), true, &hot, &floor, now),
            Placement::AfterParking {
                gpu: 0,
                park: vec!["a-1".into()]
            }
        );
        assert!(matches!(
            place(&[room(0, 0)], 200 * MIB, &key("x"), true, &hot, &floor, now),
            Placement::Wait(_)
        ));
    }
}
