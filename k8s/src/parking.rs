//! Parked pods, for components whose cluster shares GPUs (`siesta.dev/gpu-sharing: "true"`:
//! time-slicing or MPS, where a pod that gives its device memory back really frees it for
//! another). Without sharing, the device plugin gives a pod a whole GPU until it is deleted, so
//! parking would free nothing and the backend deletes pods as Knative does.
//!
//! A parked pod stays in the Deployment (its count is the autoscaler's plus the parked ones)
//! and out of the gateway's endpoints; the gateway parks and resumes it through the replica's
//! control endpoint on the pod network, with the token the controller put into the pod's
//! environment. One that must go (park timeout, over the limit) is marked with the lowest
//! `controller.kubernetes.io/pod-deletion-cost` before the count drops, so that the ReplicaSet
//! deletes that pod and not a hot one. The rules are the local backend's (`tiers`).

use std::collections::HashMap;
use std::net::SocketAddr;

use siesta_lifecycle::backend::tiers::{self, ParkedSeen};
use siesta_lifecycle::manifest::TierPolicy;
use tokio::time::Instant;

/// The annotation the ReplicaSet controller deletes the lowest values of first.
pub const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParkedPod {
    pub addr: SocketAddr,
    pub since: Instant,
    /// Leaving: marked for deletion, no longer counted, never routed to again.
    pub retiring: bool,
}

/// Parked pods of one component, by pod name.
pub type Parked = HashMap<String, ParkedPod>;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct ParkingPlan {
    /// Parked pods to resume (most recently parked first).
    pub resume: Vec<String>,
    /// Hot pods to park (the youngest first).
    pub park: Vec<String>,
    /// Parked pods to let go.
    pub retire: Vec<String>,
    /// The Deployment's count: the autoscaler's plus the pods that stay parked.
    pub replicas: u32,
}

/// `hot_ready`: ready pods that are not parked, youngest first; `starting`: live pods that are
/// not ready yet.
pub fn plan(
    want: u32,
    hot_ready: &[String],
    starting: u32,
    parked: &Parked,
    policy: TierPolicy,
    now: Instant,
) -> ParkingPlan {
    let seen: Vec<ParkedSeen> = parked
        .iter()
        .filter(|(_, p)| !p.retiring)
        .map(|(name, p)| ParkedSeen {
            id: name.clone(),
            since: p.since,
            current: true,
            evicted: false,
        })
        .collect();
    let retire = tiers::expire(
        &seen,
        policy.parked_replicas,
        policy.park_timeout,
        false,
        now,
    );
    let staying: Vec<ParkedSeen> = seen
        .into_iter()
        .filter(|p| !retire.contains(&p.id))
        .collect();
    let hot = hot_ready.len() as u32 + starting;
    let mut out = ParkingPlan {
        retire,
        ..Default::default()
    };
    if want > hot {
        out.resume = tiers::resume_order(&staying, (want - hot) as usize);
    } else if hot_ready.len() as u32 > want && starting == 0 {
        let surplus: Vec<(usize, bool)> = (0..(hot_ready.len() - want as usize))
            .map(|i| (i, true))
            .collect();
        out.park = tiers::park_instead(policy.parked_replicas, staying.len(), &surplus)
            .into_iter()
            .map(|i| hot_ready[i].clone())
            .collect();
    }
    out.replicas = want + (staying.len() - out.resume.len() + out.park.len()) as u32;
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn policy(limit: u32) -> TierPolicy {
        TierPolicy {
            parked_replicas: limit,
            park_timeout: Duration::from_secs(60),
            gpu_sharing: true,
        }
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    fn parked_at(name: &str, since: Instant) -> (String, ParkedPod) {
        (
            name.into(),
            ParkedPod {
                addr: ([10, 0, 0, 9], 8080).into(),
                since,
                retiring: false,
            },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn scale_down_parks_the_youngest_surplus_and_keeps_them_in_the_count() {
        let now = Instant::now();
        let p = plan(
            1,
            &names(&["m-c", "m-b", "m-a"]),
            0,
            &Parked::new(),
            policy(1),
            now,
        );
        assert_eq!(
            p.park,
            names(&["m-c"]),
            "one parked (the limit), the youngest"
        );
        assert_eq!(p.replicas, 2, "the parked pod stays in the Deployment");
        // Still starting: nothing is parked while a rollout or scale-up is in progress.
        let p = plan(
            1,
            &names(&["m-b", "m-a"]),
            1,
            &Parked::new(),
            policy(1),
            now,
        );
        assert!(p.park.is_empty());
        // Parking off: the count simply drops.
        let p = plan(0, &names(&["m-a"]), 0, &Parked::new(), policy(0), now);
        assert_eq!((p.park.len(), p.replicas), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn scale_up_resumes_before_the_count_grows_and_the_timeout_retires() {
        let t0 = Instant::now();
        let parked: Parked = [parked_at("m-b", t0)].into();
        let p = plan(2, &names(&["m-a"]), 0, &parked, policy(1), t0);
        assert_eq!(p.resume, names(&["m-b"]));
        assert_eq!(p.replicas, 2, "no new pod: the parked one comes back");
        let p = plan(3, &names(&["m-a"]), 0, &parked, policy(1), t0);
        assert_eq!((p.resume.len(), p.replicas), (1, 3));
        let later = t0 + Duration::from_secs(60);
        let p = plan(1, &names(&["m-a"]), 0, &parked, policy(1), later);
        assert_eq!(p.retire, names(&["m-b"]));
        assert_eq!(p.replicas, 1, "the retiring pod is no longer counted");
        // A retiring one is neither counted nor resumed.
        let mut retiring = parked.clone();
        retiring.get_mut("m-b").unwrap().retiring = true;
        let p = plan(2, &names(&["m-a"]), 0, &retiring, policy(1), t0);
        assert_eq!((p.resume.len(), p.replicas), (0, 2));
    }
}
