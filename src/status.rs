//! `siesta status`: a table of what a running `siesta up` is doing.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

pub fn print(gateway: SocketAddr, json: bool) -> Result<()> {
    let url = format!("http://{gateway}/siesta/status");
    let doc: Value = reqwest::blocking::Client::builder()
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
        "{:<32} {:>7} {:>5} {:>8} {:>9} {:>5} {:>18} {:>4} {:>7} {:>7} {:>5}  REPLICAS",
        "COMPONENT",
        "DESIRED",
        "READY",
        "STARTING",
        "IN-FLIGHT",
        "HELD",
        "TARGET",
        "CC",
        "STABLE",
        "PANIC",
        "MODE"
    );
    for c in doc["components"].as_array().into_iter().flatten() {
        // Each replica with the GPU it was placed on, e.g. "flowers-predictor-3@gpu1".
        let mut replicas: Vec<String> = c["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| {
                let name = e["replica"].as_str()?;
                Some(match e["gpu"].as_u64() {
                    Some(g) => format!("{name}@gpu{g}"),
                    None => name.to_string(),
                })
            })
            .collect();
        if let Some(why) = c["pending"].as_str() {
            replicas.push(format!("(pending: {why})"));
        }
        let a = &c["autoscaler"];
        println!(
            "{:<32} {:>7} {:>5} {:>8} {:>9} {:>5} {:>18} {:>4} {:>7.2} {:>7.2} {:>5}  {}",
            c["component"].as_str().unwrap_or("?"),
            c["desired"].to_string(),
            c["ready"].to_string(),
            c["starting"].to_string(),
            c["in_flight"].to_string(),
            c["waiting"].to_string(),
            format!(
                "{:.2} {}",
                c["target"].as_f64().unwrap_or(0.0),
                c["metric"].as_str().unwrap_or("")
            ),
            c["container_concurrency"].to_string(),
            a["stable"].as_f64().unwrap_or(0.0),
            a["panic"].as_f64().unwrap_or(0.0),
            if a["panicking"].as_bool().unwrap_or(false) {
                "panic"
            } else {
                "-"
            },
            replicas.join(" ")
        );
    }
    for g in doc["gpus"].as_array().into_iter().flatten() {
        println!(
            "GPU {} {}: {} of {} MiB free, {}% busy",
            g["index"],
            g["name"].as_str().unwrap_or("?"),
            g["free_bytes"].as_u64().unwrap_or(0) >> 20,
            g["total_bytes"].as_u64().unwrap_or(0) >> 20,
            g["utilization_percent"]
                .as_u64()
                .map_or("?".to_string(), |u| u.to_string())
        );
    }
    Ok(())
}
