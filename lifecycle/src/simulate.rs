//! `siesta scale simulate`: replays a request trace against one component's autoscaling
//! settings on a simulated clock, so `scaleTarget`, windows and `minReplicas` can be tuned before
//! any traffic hits them. The autoscaler is the live one (`autoscaler::Autoscaler`, with its
//! schedule, wake-up at zero and demand accounting); only the replicas and the clock are simulated
//! (`tests/simulate_matches_live.rs` replays one trace through both and compares the decisions).
//!
//! Model: requests arrive at `t_ms` and need `duration_ms` on a replica; a replica takes
//! `cold_start` to become ready and runs at most `containerConcurrency` requests (0 = any);
//! requests wait in the gateway in arrival order. Demand is counted from arrival, as the gateway
//! does. Scaling down removes the newest replicas first (starting ones before ready ones); a
//! removed replica takes no new request and finishes the ones it runs, as a draining replica does.
//!
//! Tiers follow the live backend's rules (`backend::tiers`: the same functions): a removed
//! ready replica is parked while fewer than `parked-replicas` are, scaling up resumes the most
//! recently parked first (ready after `resume`, not `cold_start`), and parked replicas exit
//! after `park-timeout`. Hot (ready or starting) replicas hold `device_bytes` each; parked ones
//! hold none.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::autoscaler::Autoscaler;
use crate::backend::tiers::{self, ParkedSeen};
use crate::gateway::stats::DemandStats;
use crate::manifest::{ComponentScaling, TierPolicy};

/// The tiers as the simulation models them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimTiers {
    pub policy: TierPolicy,
    /// A parked replica's time to ready again.
    pub resume: Duration,
    /// Device memory of one hot replica.
    pub device_bytes: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TraceRequest {
    pub t_ms: u64,
    pub duration_ms: u64,
    /// Set in traces recorded by `siesta up` (`{service}-{predictor|transformer}`).
    #[serde(default)]
    pub component: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Sample {
    pub t_s: u64,
    pub desired: u32,
    pub ready: u32,
    pub in_flight: u32,
    pub queued: u32,
}

/// One request of the autoscaler to its backend: this many replicas, at this time.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct ScaleRequest {
    pub t_ms: u64,
    pub replicas: u32,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    pub requests: usize,
    pub wait_p50_ms: u64,
    pub wait_p99_ms: u64,
    pub wait_max_ms: u64,
    /// Replicas started as new processes.
    pub cold_starts: u32,
    /// Parked replicas brought back.
    pub resumes: u32,
    pub max_replicas: u32,
    /// Replica-seconds hot (ready, starting or draining) and parked.
    pub replica_seconds: f64,
    pub parked_replica_seconds: f64,
    /// Device memory held over time, GB x s (hot replicas only).
    pub device_memory_gb_seconds: f64,
}

pub struct Report {
    pub timeline: Vec<Sample>,
    pub scale_requests: Vec<ScaleRequest>,
    pub summary: Summary,
}

struct Replica {
    id: u64,
    ready_at: u64,
    /// When each running request completes.
    running: Vec<u64>,
    /// Parks once drained (scaled down while parking had room).
    park: bool,
}

pub fn simulate(
    scaling: &ComponentScaling,
    container_concurrency: u32,
    enable_scale_to_zero: bool,
    trace: &[TraceRequest],
    cold_start: Duration,
    tier: SimTiers,
) -> Report {
    let mut trace: Vec<TraceRequest> = trace.to_vec();
    trace.sort_by_key(|r| r.t_ms);
    let cold_ms = cold_start.as_millis() as u64;
    let mut autoscaler = Autoscaler::new(scaling, enable_scale_to_zero, 0);
    let mut demand = DemandStats::new(0);
    let mut replicas: Vec<Replica> = Vec::new();
    let mut draining: Vec<Replica> = Vec::new();
    // The rules take tokio's instants: the simulated millisecond `ms` is `t0 + ms`.
    let t0 = tokio::time::Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let mut parked: Vec<ParkedSeen> = Vec::new();
    let mut next_id = 0u64;
    let (mut resumes, mut parked_ms) = (0u32, 0u64);
    let mut queue: VecDeque<(u64, u64)> = VecDeque::new();
    let mut waits: Vec<u64> = Vec::new();
    let mut scale_requests = Vec::new();
    let mut next = 0usize;
    let (mut desired, mut cold_starts, mut max_replicas, mut replica_ms) = (0u32, 0u32, 0u32, 0u64);
    let mut timeline = Vec::new();
    let end = trace.last().map_or(0, |r| r.t_ms + r.duration_ms)
        + scaling.decider.stable_window.as_millis() as u64
        + scaling.scale_to_zero_grace.as_millis() as u64
        + 10_000;
    for now in 0..=end {
        // Completions, then arrivals, then dispatch in arrival order.
        for r in replicas.iter_mut().chain(draining.iter_mut()) {
            r.running.retain(|&done| {
                if done <= now {
                    demand.end(now);
                }
                done > now
            });
        }
        for r in draining.iter().filter(|r| r.park && r.running.is_empty()) {
            parked.push(ParkedSeen {
                id: r.id.to_string(),
                since: at(now),
                current: true,
                evicted: false,
            });
        }
        draining.retain(|r| !r.running.is_empty());
        let expired = tiers::expire(
            &parked,
            tier.policy.parked_replicas,
            tier.policy.park_timeout,
            false,
            at(now),
        );
        parked.retain(|p| !expired.contains(&p.id));
        let ready = replicas.iter().filter(|r| r.ready_at <= now).count() as u32;
        let mut woken = false;
        while next < trace.len() && trace[next].t_ms <= now {
            demand.start(now);
            queue.push_back((trace[next].t_ms, trace[next].duration_ms));
            // The gateway wakes the autoscaler when a request finds no ready replica.
            woken |= ready == 0;
            next += 1;
        }
        while let Some(&(arrived, duration)) = queue.front() {
            let slot = replicas
                .iter_mut()
                .filter(|r| {
                    r.ready_at <= now
                        && (container_concurrency == 0
                            || (r.running.len() as u32) < container_concurrency)
                })
                .min_by_key(|r| r.running.len());
            let Some(r) = slot else { break };
            r.running.push(now + duration.max(1));
            waits.push(now - arrived);
            queue.pop_front();
        }
        // The schedule first, then the wake-up, as the live loop orders them.
        let timed = (now >= autoscaler.next_due_ms())
            .then(|| autoscaler.on_time(now, ready, || demand.report(now)))
            .flatten();
        let woke = woken
            .then(|| autoscaler.on_wake(now, ready, demand.in_flight()))
            .flatten();
        for n in [timed, woke]
            .into_iter()
            .flatten()
            .filter_map(|s| s.outcome.replicas)
        {
            scale_requests.push(ScaleRequest {
                t_ms: now,
                replicas: n,
            });
            desired = n;
            let wanted = (desired as usize).saturating_sub(replicas.len());
            for id in tiers::resume_order(&parked, wanted) {
                parked.retain(|p| p.id != id);
                replicas.push(Replica {
                    id: id.parse().expect("simulated ids are numbers"),
                    ready_at: now + tier.resume.as_millis() as u64,
                    running: Vec::new(),
                    park: false,
                });
                resumes += 1;
            }
            while (replicas.len() as u32) < desired {
                next_id += 1;
                replicas.push(Replica {
                    id: next_id,
                    ready_at: now + cold_ms,
                    running: Vec::new(),
                    park: false,
                });
                cold_starts += 1;
            }
            while (replicas.len() as u32) > desired {
                let newest = (0..replicas.len())
                    .max_by_key(|&i| (replicas[i].ready_at, i))
                    .expect("more replicas than desired");
                let mut r = replicas.remove(newest);
                let parking = parked.len() + draining.iter().filter(|d| d.park).count();
                r.park = r.ready_at <= now
                    && !tiers::park_instead(tier.policy.parked_replicas, parking, &[(0, true)])
                        .is_empty();
                if !r.running.is_empty() || r.park {
                    draining.push(r);
                }
            }
        }
        max_replicas = max_replicas.max((replicas.len() + draining.len()) as u32);
        replica_ms += (replicas.len() + draining.len()) as u64;
        parked_ms += parked.len() as u64;
        if now % 1000 == 999 {
            timeline.push(Sample {
                t_s: now / 1000,
                desired,
                ready,
                in_flight: replicas
                    .iter()
                    .chain(&draining)
                    .map(|r| r.running.len() as u32)
                    .sum(),
                queued: queue.len() as u32,
            });
        }
    }
    waits.sort_unstable();
    let pct = |q: f64| {
        waits
            .get(((waits.len() as f64 * q) as usize).min(waits.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Report {
        timeline,
        scale_requests,
        summary: Summary {
            requests: waits.len(),
            wait_p50_ms: pct(0.5),
            wait_p99_ms: pct(0.99),
            wait_max_ms: waits.last().copied().unwrap_or(0),
            cold_starts,
            resumes,
            max_replicas,
            replica_seconds: replica_ms as f64 / 1000.0,
            parked_replica_seconds: parked_ms as f64 / 1000.0,
            device_memory_gb_seconds: replica_ms as f64 / 1000.0 * tier.device_bytes as f64 / 1e9,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{ClusterDefaults, parse};

    /// One 10 ms request at `t_ms`.
    fn request_at(t_ms: u64) -> TraceRequest {
        TraceRequest {
            t_ms,
            duration_ms: 10,
            component: None,
        }
    }

    fn exit_only() -> SimTiers {
        SimTiers {
            policy: TierPolicy {
                parked_replicas: 0,
                ..TierPolicy::default()
            },
            resume: Duration::from_millis(2),
            device_bytes: 1 << 30,
        }
    }

    fn scaling(spec: &str) -> (ComponentScaling, u32) {
        let text = format!(
            "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata: {{name: s}}\nspec:\n  predictor:\n{spec}    model: {{modelFormat: {{name: x}}}}\n"
        );
        let isvc = parse(&text, &ClusterDefaults::default()).unwrap().remove(0);
        (isvc.predictor.scaling, isvc.predictor.container_concurrency)
    }

    /// `workers` closed-loop clients, each sending back-to-back requests of `ms`, for `secs`.
    fn closed_loop(workers: u64, ms: u64, secs: u64) -> Vec<TraceRequest> {
        (0..workers)
            .flat_map(|_| {
                (0..secs * 1000 / ms).map(move |i| TraceRequest {
                    t_ms: 1_000 + i * ms,
                    duration_ms: ms,
                    component: None,
                })
            })
            .collect()
    }

    #[test]
    fn five_busy_clients_against_target_one_need_ceil_5_over_0_7_replicas() {
        let (s, cc) = scaling("    scaleTarget: 1\n    minReplicas: 0\n");
        let r = simulate(
            &s,
            cc,
            true,
            &closed_loop(5, 100, 60),
            Duration::from_millis(30),
            exit_only(),
        );
        assert_eq!(r.summary.max_replicas, 8, "{:?}", r.summary);
        assert_eq!(
            r.timeline.last().unwrap().desired,
            0,
            "back to zero after the window and grace"
        );
        assert_eq!(r.summary.requests, 5 * 600);
    }

    #[test]
    fn a_request_at_zero_waits_one_cold_start() {
        let (s, cc) = scaling("    minReplicas: 0\n");
        let trace = [request_at(200_000)];
        let r = simulate(
            &s,
            cc,
            true,
            &trace,
            Duration::from_millis(250),
            exit_only(),
        );
        assert_eq!(
            r.summary.cold_starts, 2,
            "the initial replica, then one at 200 s"
        );
        assert_eq!(r.summary.wait_max_ms, 250);
    }

    #[test]
    fn a_parked_replica_answers_a_request_at_zero_in_its_resume_time_and_holds_no_device_memory() {
        let (s, cc) = scaling("    minReplicas: 0\n");
        let trace = [request_at(200_000), request_at(900_000)];
        let tiers = SimTiers {
            policy: TierPolicy::default(),
            ..exit_only()
        };
        let parked = simulate(&s, cc, true, &trace, Duration::from_millis(250), tiers);
        let exited = simulate(
            &s,
            cc,
            true,
            &trace,
            Duration::from_millis(250),
            exit_only(),
        );
        // The initial replica parks at zero and is resumed at 200 s; the park timeout (10 min)
        // passes before 900 s, so that request starts a process.
        assert_eq!(
            (parked.summary.cold_starts, parked.summary.resumes),
            (2, 1),
            "{:?}",
            parked.summary
        );
        assert_eq!(
            parked.summary.wait_max_ms, 250,
            "the request after the park timeout"
        );
        let first = simulate(&s, cc, true, &trace[..1], Duration::from_millis(250), tiers);
        assert_eq!(
            first.summary.wait_max_ms, 2,
            "the resume time, not the cold start"
        );
        assert_eq!((exited.summary.cold_starts, exited.summary.resumes), (3, 0));
        // Same hot time (the autoscaler decides the same), parked time on top, no device memory.
        assert!(
            (parked.summary.replica_seconds - exited.summary.replica_seconds).abs() < 0.01,
            "{:?} {:?}",
            parked.summary,
            exited.summary
        );
        // Parked from the first scale to zero to 200 s, then for the whole park timeout.
        assert!(
            parked.summary.parked_replica_seconds > 600.0,
            "{:?}",
            parked.summary
        );
        assert!(
            (parked.summary.device_memory_gb_seconds - exited.summary.device_memory_gb_seconds)
                .abs()
                < 0.01
        );
    }

    #[test]
    fn container_concurrency_queues_the_excess() {
        let (s, cc) =
            scaling("    containerConcurrency: 1\n    minReplicas: 1\n    maxReplicas: 1\n");
        let r = simulate(
            &s,
            cc,
            true,
            &closed_loop(2, 100, 10),
            Duration::from_millis(30),
            exit_only(),
        );
        assert_eq!(r.summary.max_replicas, 1);
        assert!(
            r.summary.wait_p50_ms > 0,
            "one of two requests always waits: {:?}",
            r.summary
        );
    }
}
