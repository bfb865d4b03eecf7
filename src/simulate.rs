//! `siesta scale simulate`: reads the manifest and trace, prints what the autoscaler would do.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use siesta_lifecycle::manifest::{self, ClusterDefaults};
use siesta_lifecycle::simulate::{SimTiers, TraceRequest, simulate};

pub fn run(
    config: &Path,
    trace: &Path,
    cold_start: Duration,
    resume: Duration,
    device_memory_bytes: u64,
    json: bool,
) -> Result<()> {
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let defaults = ClusterDefaults::default();
    let isvc = manifest::parse(&text, &defaults)
        .with_context(|| format!("in {}", config.display()))?
        .remove(0);
    let requests: Vec<TraceRequest> = std::fs::read_to_string(trace)
        .with_context(|| format!("reading {}", trace.display()))?
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{} line {}: {l}", trace.display(), i + 1))
        })
        .collect::<Result<_>>()?;
    // A trace recorded by `siesta up` holds every component; simulate the predictor's part.
    let component = format!("{}-predictor", isvc.name);
    let requests: Vec<TraceRequest> = requests
        .into_iter()
        .filter(|r| r.component.as_ref().is_none_or(|c| *c == component))
        .collect();
    let p = &isvc.predictor;
    let report = simulate(
        &p.scaling,
        p.container_concurrency,
        defaults.enable_scale_to_zero,
        &requests,
        cold_start,
        SimTiers {
            policy: p.tiers,
            resume,
            device_bytes: device_memory_bytes,
        },
    );
    if json {
        println!(
            "{}",
            serde_json::json!({
                "timeline": report.timeline,
                "scale_requests": report.scale_requests,
                "summary": report.summary,
            })
        );
        return Ok(());
    }
    println!(
        "{:>6} {:>7} {:>5} {:>9} {:>6}",
        "T(s)", "DESIRED", "READY", "IN-FLIGHT", "QUEUED"
    );
    for s in &report.timeline {
        println!(
            "{:>6} {:>7} {:>5} {:>9} {:>6}",
            s.t_s, s.desired, s.ready, s.in_flight, s.queued
        );
    }
    let s = &report.summary;
    println!(
        "{} requests; wait p50 {} ms, p99 {} ms, max {} ms; {} cold starts (new processes), {} resumes; \
         at most {} replicas; {:.0} replica-seconds hot, {:.0} parked; {:.1} device-memory GB x s",
        s.requests,
        s.wait_p50_ms,
        s.wait_p99_ms,
        s.wait_max_ms,
        s.cold_starts,
        s.resumes,
        s.max_replicas,
        s.replica_seconds,
        s.parked_replica_seconds,
        s.device_memory_gb_seconds
    );
    Ok(())
}
