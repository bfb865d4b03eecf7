//! `siesta up`: turns flags into cluster defaults and runs the lifecycle manager until SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use siesta_lifecycle::backend::Listening;
use siesta_lifecycle::backend::gpu::{GpuInventory, Nvml, SimulatedGpus};
use siesta_lifecycle::manifest;
use siesta_lifecycle::up::{self as lifecycle_up, GpuMemoryEstimate, UpConfig};
use siesta_models::DeviceSpec;
use siesta_models::embedded::MNIST_WEIGHTS;
use siesta_models::storage::{ModelCache, RemoteUri};

use crate::UpArgs;

pub async fn run(a: UpArgs) -> Result<()> {
    let defaults = a.scaling.defaults()?;
    let services = manifest::files::read(&a.files, &defaults)?;
    let watch = manifest::files::Watch::new(a.files.clone(), defaults.clone());
    let mut replica_args = vec!["--device".to_string(), a.device.to_string()];
    for (from, to) in &a.storage_mirror {
        replica_args.extend(["--storage-mirror".to_string(), format!("{from}={to}")]);
    }
    let cache = ModelCache::new(&a.cache_dir.unwrap_or_else(crate::default_cache_dir), None);
    replica_args.extend([
        "--cache-dir".to_string(),
        cache.root().display().to_string(),
    ]);
    let gpus: Option<Arc<dyn GpuInventory>> = match a.device {
        // Pinned to a device (cpu, or one named GPU): no placement.
        DeviceSpec::Cpu | DeviceSpec::Cuda(_) => None,
        DeviceSpec::Auto if !a.simulate_gpus.is_empty() => {
            Some(Arc::new(SimulatedGpus::with_free_mib(&a.simulate_gpus)))
        }
        DeviceSpec::Auto => Nvml::probe().map(|n| Arc::new(n) as Arc<dyn GpuInventory>),
    };
    let overhead = a.gpu_memory_overhead_mib << 20;
    let mirrors = a.storage_mirror.clone();
    let gpu_memory: GpuMemoryEstimate = Arc::new(move |uri| {
        Some(model_bytes(uri, &mirrors, &cache).unwrap_or(UNKNOWN_MODEL_BYTES) + overhead)
    });
    let cfg = UpConfig {
        services,
        addr: SocketAddr::new(a.host, a.port),
        siesta_bin: std::env::current_exe().context("locating the siesta binary")?,
        log_dir: a.log_dir,
        replica_args,
        hold_limit: a.scaling.hold_queue,
        body_budget: a.scaling.max_buffered_body_bytes,
        body_timeout: a.scaling.body_timeout,
        enable_scale_to_zero: defaults.enable_scale_to_zero,
        record_trace: a.record_trace,
        gpus,
        gpu_memory,
        connections: a.connections.limits(),
        watch: Some(watch),
        metrics: {
            let handle = siesta_runtime::metrics::install();
            Arc::new(move || handle.render())
        },
    };
    lifecycle_up::run(
        cfg,
        // gRPC (h2c) shares the gateway's port.
        |addr| {
            Listening {
                http: addr,
                grpc: Some(addr),
            }
            .announce()
        },
        shutdown_signal(),
    )
    .await?;
    Ok(())
}

/// Assumed for models whose size cannot be known without downloading them.
const UNKNOWN_MODEL_BYTES: u64 = 1 << 30;

/// The size of a model's files where it can be known without a download: the embedded model,
/// local directories (directly or through a mirror), and remote models in the shared cache.
fn model_bytes(uri: Option<&str>, mirrors: &[(String, String)], cache: &ModelCache) -> Option<u64> {
    let uri = match uri {
        None | Some("siesta://mnist") => return Some(MNIST_WEIGHTS.len() as u64),
        Some(u) => u,
    };
    let mapped = mirrors
        .iter()
        .filter(|(from, _)| uri.starts_with(from.as_str()))
        .max_by_key(|(from, _)| from.len())
        .map_or_else(
            || uri.to_string(),
            |(from, to)| format!("{to}{}", &uri[from.len()..]),
        );
    if let Ok(Some(remote)) = RemoteUri::parse(&mapped) {
        return cache.recorded_bytes(&remote.to_string());
    }
    if mapped.contains("://") && !mapped.starts_with("file://") {
        return None;
    }
    let dir = std::path::Path::new(mapped.trim_start_matches("file://"));
    let total = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok()?.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    Some(total)
}

pub(crate) async fn shutdown_signal() {
    match siesta_runtime::signals::ShutdownSignal::register() {
        Ok(signal) => {
            let name = signal.recv().await;
            tracing::info!("{name}: stopping the gateway and every replica");
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for signals; stop with SIGKILL");
            std::future::pending().await
        }
    }
}
