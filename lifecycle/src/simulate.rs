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

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::autoscaler::Autoscaler;
use crate::gateway::stats::DemandStats;
use crate::manifest::ComponentScaling;

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
    pub cold_starts: u32,
    pub max_replicas: u32,
    pub replica_seconds: f64,
}

pub struct Report {
    pub timeline: Vec<Sample>,
    pub scale_requests: Vec<ScaleRequest>,
    pub summary: Summary,
}

struct Replica {
    ready_at: u64,
    /// When each running request completes.
    running: Vec<u64>,
}

pub fn simulate(
    scaling: &ComponentScaling,
    container_concurrency: u32,
    enable_scale_to_zero: bool,
    trace: &[TraceRequest],
    cold_start: Duration,
) -> Report {
    let mut trace: Vec<TraceRequest> = trace.to_vec();
    trace.sort_by_key(|r| r.t_ms);
    let cold_ms = cold_start.as_millis() as u64;
    let mut autoscaler = Autoscaler::new(scaling, enable_scale_to_zero, 0);
    let mut demand = DemandStats::new(0);
    let mut replicas: Vec<Replica> = Vec::new();
    let mut draining: Vec<Replica> = Vec::new();
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
        draining.retain(|r| !r.running.is_empty());
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
            while (replicas.len() as u32) < desired {
                replicas.push(Replica {
                    ready_at: now + cold_ms,
                    running: Vec::new(),
                });
                cold_starts += 1;
            }
            while (replicas.len() as u32) > desired {
                let newest = (0..replicas.len())
                    .max_by_key(|&i| (replicas[i].ready_at, i))
                    .expect("more replicas than desired");
                let r = replicas.remove(newest);
                if !r.running.is_empty() {
                    draining.push(r);
                }
            }
        }
        max_replicas = max_replicas.max((replicas.len() + draining.len()) as u32);
        replica_ms += (replicas.len() + draining.len()) as u64;
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
            max_replicas,
            replica_seconds: replica_ms as f64 / 1000.0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{ClusterDefaults, parse};

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
        let trace = [TraceRequest {
            t_ms: 200_000,
            duration_ms: 10,
            component: None,
        }];
        let r = simulate(&s, cc, true, &trace, Duration::from_millis(250));
        assert_eq!(
            r.summary.cold_starts, 2,
            "the initial replica, then one at 200 s"
        );
        assert_eq!(r.summary.wait_max_ms, 250);
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
        );
        assert_eq!(r.summary.max_replicas, 1);
        assert!(
            r.summary.wait_p50_ms > 0,
            "one of two requests always waits: {:?}",
            r.summary
        );
    }
}
