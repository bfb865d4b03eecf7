//! `siesta up`: turns flags into cluster defaults and runs the lifecycle manager until SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use siesta_lifecycle::manifest::{self, ClusterDefaults};
use siesta_lifecycle::up::{self as lifecycle_up, UpConfig};

use crate::UpArgs;

pub async fn run(a: UpArgs) -> Result<()> {
    anyhow::ensure!(a.tick.as_millis() >= 100, "--tick must be at least 100ms");
    let defaults = ClusterDefaults {
        stable_window: a.stable_window,
        panic_window_percentage: a.panic_window_percentage,
        scale_to_zero_grace: a.scale_to_zero_grace,
        tick: a.tick,
        target_burst_capacity: a.target_burst_capacity,
        enable_scale_to_zero: !a.no_scale_to_zero,
        ..ClusterDefaults::default()
    };
    let mut services = Vec::new();
    for file in &a.files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let parsed =
            manifest::parse(&text, &defaults).with_context(|| format!("in {}", file.display()))?;
        for isvc in &parsed {
            for path in &isvc.ignored {
                tracing::warn!(service = %isvc.name, field = %path, "field has no effect in Siesta");
            }
        }
        services.extend(parsed);
    }
    let mut replica_args = vec!["--device".to_string(), a.device.to_string()];
    for (from, to) in &a.storage_mirror {
        replica_args.extend(["--storage-mirror".to_string(), format!("{from}={to}")]);
    }
    let cfg = UpConfig {
        services,
        addr: SocketAddr::new(a.host, a.port),
        siesta_bin: std::env::current_exe().context("locating the siesta binary")?,
        log_dir: a.log_dir,
        replica_args,
        hold_limit: a.hold_queue,
        enable_scale_to_zero: !a.no_scale_to_zero,
        record_trace: a.record_trace,
        metrics: {
            let handle = siesta_runtime::metrics::install();
            Arc::new(move || handle.render())
        },
    };
    lifecycle_up::run(
        cfg,
        |addr| {
            println!("siesta gateway listening http={addr}");
            let _ = std::io::stdout().flush();
        },
        shutdown_signal(),
    )
    .await?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping the gateway and every replica"),
        _ = int.recv() => tracing::info!("SIGINT: stopping the gateway and every replica"),
    }
}
