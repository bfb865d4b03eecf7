//! `siesta status`: a table of what a running `siesta up` is doing.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use siesta_lifecycle::status::StatusDocument;

pub fn print(gateway: SocketAddr, json: bool) -> Result<()> {
    let url = format!("http://{gateway}/siesta/status");
    let doc: StatusDocument = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?
        .get(&url)
        .send()
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.json())
        .with_context(|| format!("no siesta gateway answered at {url}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!(
        "{:<32} {:>7} {:>5} {:>8} {:>6} {:>9} {:>5} {:>18} {:>4} {:>7} {:>7} {:>5}  REPLICAS",
        "COMPONENT",
        "DESIRED",
        "READY",
        "STARTING",
        "PARKED",
        "IN-FLIGHT",
        "HELD",
        "TARGET",
        "CC",
        "STABLE",
        "PANIC",
        "MODE"
    );
    for c in &doc.components {
        // Each replica with the GPU it was placed on, e.g. "flowers-predictor-3@gpu1".
        let mut replicas: Vec<String> = c
            .endpoints
            .iter()
            .map(|e| match e.gpu {
                Some(g) => format!("{}@gpu{g}", e.replica),
                None => e.replica.clone(),
            })
            .collect();
        if let Some(why) = &c.pending {
            replicas.push(format!("(pending: {why})"));
        }
        if let Some(l) = &c.crash_loop {
            replicas.push(format!(
                "(crash loop: {} failures, next start in {} s; last: {})",
                l.failures,
                l.retry_in_ms.div_ceil(1000),
                l.last_error
            ));
        }
        let a = &c.autoscaler;
        println!(
            "{:<32} {:>7} {:>5} {:>8} {:>6} {:>9} {:>5} {:>18} {:>4} {:>7.2} {:>7.2} {:>5}  {}",
            c.component,
            c.desired,
            c.ready,
            c.starting,
            c.parked,
            c.in_flight,
            c.waiting,
            format!("{:.2} {}", c.target, c.metric.as_str()),
            c.container_concurrency,
            a.stable,
            a.panic,
            if a.panicking { "panic" } else { "-" },
            replicas.join(" ")
        );
    }
    for g in &doc.gpus {
        println!(
            "GPU {} {}: {} of {} MiB free, {}% busy",
            g.index,
            g.name,
            g.free_bytes >> 20,
            g.total_bytes >> 20,
            g.utilization_percent
                .map_or("?".to_string(), |u| u.to_string())
        );
    }
    Ok(())
}
