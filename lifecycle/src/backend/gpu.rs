//! GPUs on this host: what NVML says about them, and which one a new replica goes to (the one
//! with the most free memory that fits the model: `tiers::place`).
//! Without an NVIDIA driver there is no NVML, no GPU, and replicas run on CPU.

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
    /// Whether `free_bytes` already reflects what running replicas use (NVML). A simulated
    /// inventory does not: placement then subtracts what hot replicas report.
    fn reports_usage(&self) -> bool {
        true
    }
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

    fn reports_usage(&self) -> bool {
        false
    }
}
