//! What a `cuda` build finds when it starts: the NVIDIA driver and GPUs (through NVML, which
//! creates no CUDA context and so holds no device memory), or one line saying it serves on CPU.

use siesta_models::DeviceSpec;

/// Logs what was found from a background thread: loading the driver and NVML takes time that
/// must not come out of the replica's cold start.
pub fn report(device: DeviceSpec) {
    if device == DeviceSpec::Cpu {
        return;
    }
    std::thread::spawn(move || probe(device));
}

fn probe(device: DeviceSpec) {
    if !siesta_kernels::cuda::driver_present() {
        // With `cuda:N` the model load fails and says why; `auto` falls back, and this is the
        // one line that says so.
        if device == DeviceSpec::Auto {
            tracing::warn!(
                "built with CUDA, but this machine has no NVIDIA driver (libcuda.so.1): serving on the CPU"
            );
        }
        return;
    }
    let gpus = nvml_wrapper::Nvml::init().and_then(|nvml| {
        (0..nvml.device_count()?)
            .map(|i| nvml.device_by_index(i)?.name())
            .collect::<Result<Vec<_>, _>>()
    });
    match gpus {
        Ok(names) => {
            tracing::info!(gpus = ?names, %device, "NVIDIA driver found: candle models and Siesta's kernels run on the GPU")
        }
        Err(e) => tracing::warn!(error = %e, "NVIDIA driver found, but NVML cannot list the GPUs"),
    }
}
