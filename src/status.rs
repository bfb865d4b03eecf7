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
        "{:<32} {:>7} {:>5} {:>8} {:>9} {:>5} {:>18} {:>4}  REPLICAS",
        "COMPONENT", "DESIRED", "READY", "STARTING", "IN-FLIGHT", "HELD", "TARGET", "CC"
    );
    for c in doc["components"].as_array().into_iter().flatten() {
        let replicas: Vec<&str> = c["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["replica"].as_str())
            .collect();
        println!(
            "{:<32} {:>7} {:>5} {:>8} {:>9} {:>5} {:>18} {:>4}  {}",
            c["component"].as_str().unwrap_or("?"),
            c["desired"],
            c["ready"],
            c["starting"],
            c["in_flight"],
            c["waiting"],
            format!(
                "{:.2} {}",
                c["target"].as_f64().unwrap_or(0.0),
                c["metric"].as_str().unwrap_or("")
            ),
            c["container_concurrency"],
            replicas.join(" ")
        );
    }
    Ok(())
}
