//! candle's CUDA backend in a `cuda` build. Without an NVIDIA driver (CI) the contract runs:
//! `cuda:N` is a clear error, never a panic (cudarc panics when libcuda is missing), and `auto`
//! is the CPU. With a GPU, the embedded MNIST CNN on the GPU against the same model on the CPU,
//! and its idle tier: parked holds no weights on the device, resuming answers the same.

use siesta_models::{DeviceSpec, LoadOptions, Model, ModelSource, Tensor, load_model};

fn load(device: DeviceSpec) -> Box<dyn Model> {
    let opts = LoadOptions {
        device,
        ..Default::default()
    };
    load_model(&ModelSource::EmbeddedMnist, &opts).expect("load the embedded MNIST model")
}

fn digits_batch() -> Tensor {
    // Four 28x28 images with different strokes, so the logits differ per row.
    let values: Vec<f32> = (0..4 * 28 * 28)
        .map(|i| {
            let (img, px) = (i / 784, i % 784);
            let (y, x) = (px / 28, px % 28);
            if (x + img * 3) % 7 < 2 || (y * (img + 1)) % 11 < 2 {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    Tensor::from_f32("input", vec![4, 1, 28, 28], &values)
}

fn logits(model: &mut dyn Model, batch: &Tensor) -> Vec<f32> {
    let out = model.forward(std::slice::from_ref(batch)).expect("forward");
    out[0].to_f32_vec().expect("f32 logits")
}

#[test]
fn without_a_driver_cuda_is_a_clear_error_and_auto_is_the_cpu() {
    if siesta_kernels::cuda::driver_present() {
        eprintln!("SKIPPED: an NVIDIA driver is present; the no-driver contract is not exercised");
        return;
    }
    let err = DeviceSpec::Cuda(0).resolve().unwrap_err().to_string();
    assert!(
        err.contains("cuda:0") && err.contains("no NVIDIA driver"),
        "{err}"
    );
    assert!(DeviceSpec::Auto.resolve().unwrap().is_cpu());
    assert_eq!(load(DeviceSpec::Auto).device_name(), "cpu");
}

#[test]
fn on_a_gpu_the_model_matches_the_cpu_and_its_idle_tier_frees_the_device_copy() {
    if !siesta_kernels::cuda::driver_present() {
        eprintln!("SKIPPED: no NVIDIA driver (libcuda.so.1) on this machine");
        return;
    }
    let batch = digits_batch();
    let mut cpu = load(DeviceSpec::Cpu);
    let mut gpu = load(DeviceSpec::Cuda(0));
    assert_eq!(gpu.device_name(), "cuda");
    let want = logits(cpu.as_mut(), &batch);
    let got = logits(gpu.as_mut(), &batch);
    assert_eq!(want.len(), got.len());
    for (w, g) in want.iter().zip(&got) {
        assert!(
            (w - g).abs() <= 1e-3 * w.abs().max(1.0),
            "cpu {w} vs gpu {g}"
        );
    }
    let hot = gpu.device_memory_bytes();
    assert!(hot > 0);
    gpu.release_device_memory();
    assert_eq!(gpu.device_memory_bytes(), 0);
    gpu.restore_device_memory().unwrap();
    assert_eq!(gpu.device_memory_bytes(), hot);
    assert_eq!(
        logits(gpu.as_mut(), &batch),
        got,
        "resumed from parked: same answers"
    );
}
