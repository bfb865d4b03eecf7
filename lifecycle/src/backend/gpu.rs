//! GPUs on this host: what NVML says about them, and which one a new replica goes to (the one
//! with the most free memory that fits the model, after what starting replicas will take).
//! Without an NVIDIA driver there is no NVML, no GPU, and replicas run on CPU.

use std::collections::HashMap;

/// One GPU as NVML sees it now.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GpuInfo {
    pub index: u32,
    pub name: String,
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub utilization_percent: Option<u32>,
    /// Device memory per process id.
    pub processes: Vec<(u32, u64)>,
}

pub trait GpuInventory: Send + Sync + 'static {
    fn gpus(&self) -> Vec<GpuInfo>;
}

/// NVML through `nvml-wrapper`, which loads `libnvidia-ml.so` at run time: the binary needs no
/// driver to build or start.
pub struct Nvml(nvml_wrapper::Nvml);

impl Nvml {
    /// `None` (with one log line) where there is no driver.
    pub fn probe() -> Option<Nvml> {
        match nvml_wrapper::Nvml::init() {
            Ok(n) => Some(Nvml(n)),
            Err(e) => {
                tracing::info!(error = %e, "no NVML (no NVIDIA driver): replicas run on CPU");
                None
            }
        }
    }
}

impl GpuInventory for Nvml {
    fn gpus(&self) -> Vec<GpuInfo> {
        let count = self.0.device_count().unwrap_or(0);
        (0..count)
            .filter_map(|index| {
                let dev = self.0.device_by_index(index).ok()?;
                let mem = dev.memory_info().ok()?;
                let processes = dev
                    .running_compute_processes()
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|p| match p.used_gpu_memory {
                        nvml_wrapper::enums::device::UsedGpuMemory::Used(b) => Some((p.pid, b)),
                        nvml_wrapper::enums::device::UsedGpuMemory::Unavailable => None,
                    })
                    .collect();
                Some(GpuInfo {
                    index,
                    name: dev.name().unwrap_or_else(|_| "unknown".into()),
                    total_bytes: mem.total,
                    free_bytes: mem.free,
                    utilization_percent: dev.utilization_rates().ok().map(|u| u.gpu),
                    processes,
                })
            })
            .collect()
    }
}

/// A fixed inventory: GPU placement on machines without a GPU (planning, and the tests, which
/// say so). Replicas placed on it run on CPU.
pub struct SimulatedGpus(pub Vec<GpuInfo>);

impl SimulatedGpus {
    pub fn with_free_mib(free: &[u64]) -> Self {
        SimulatedGpus(
            free.iter()
                .enumerate()
                .map(|(i, &mib)| GpuInfo {
                    index: i as u32,
                    name: "simulated".into(),
                    total_bytes: mib << 20,
                    free_bytes: mib << 20,
                    utilization_percent: None,
                    processes: Vec::new(),
                })
                .collect(),
        )
    }
}

impl GpuInventory for SimulatedGpus {
    fn gpus(&self) -> Vec<GpuInfo> {
        self.0.clone()
    }
}

/// Picks the GPU for a replica that needs `need` bytes. `promised` is memory already promised to
/// replicas that are still starting (NVML does not see it yet). The error says why none fits.
pub fn place(gpus: &[GpuInfo], promised: &HashMap<u32, u64>, need: u64) -> Result<u32, String> {
    let available = |g: &GpuInfo| {
        g.free_bytes
            .saturating_sub(promised.get(&g.index).copied().unwrap_or(0))
    };
    let best = gpus
        .iter()
        .max_by_key(|g| (available(g), std::cmp::Reverse(g.index)))
        .ok_or_else(|| "no GPU on this host".to_string())?;
    if available(best) >= need {
        return Ok(best.index);
    }
    Err(format!(
        "no GPU has {} MiB free for the model: {}",
        need >> 20,
        gpus.iter()
            .map(|g| format!("GPU {} ({}) {} MiB", g.index, g.name, available(g) >> 20))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn gpu(index: u32, free_gib: u64) -> GpuInfo {
        GpuInfo {
            index,
            name: "H100".into(),
            total_bytes: 80 * GIB,
            free_bytes: free_gib * GIB,
            utilization_percent: Some(0),
            processes: vec![],
        }
    }

    #[test]
    fn the_gpu_with_the_most_free_memory_wins() {
        let gpus = [gpu(0, 10), gpu(1, 30), gpu(2, 20)];
        assert_eq!(place(&gpus, &HashMap::new(), 5 * GIB), Ok(1));
        // Equal free memory: the lower index.
        assert_eq!(place(&[gpu(0, 8), gpu(1, 8)], &HashMap::new(), GIB), Ok(0));
    }

    #[test]
    fn memory_promised_to_starting_replicas_counts() {
        let gpus = [gpu(0, 10), gpu(1, 30)];
        let promised = HashMap::from([(1, 25 * GIB)]);
        assert_eq!(place(&gpus, &promised, 5 * GIB), Ok(0));
    }

    #[test]
    fn nothing_fits_says_why() {
        let err = place(&[gpu(0, 1), gpu(1, 2)], &HashMap::new(), 4 * GIB).unwrap_err();
        assert!(err.contains("4096 MiB"), "{err}");
        assert!(err.contains("GPU 1 (H100) 2048 MiB"), "{err}");
        assert!(place(&[], &HashMap::new(), 1).is_err());
    }
}
