//! The CUDA kernels against the CPU references. On a machine without an NVIDIA driver (CI),
//! what runs is the fallback contract: creating the kernels is an error saying so, never a
//! panic; the comparisons need a GPU and say plainly that they were skipped
//! (benches/gpu/check.sh runs them on one).

#![cfg(feature = "cuda")]

use siesta_kernels::Precision;
use siesta_kernels::cuda::{CudaKernels, driver_present};
use siesta_kernels::{ImageTransform, ImageU8, KernelError, Layout, softmax_top_k};
use siesta_testkit::pixels::pixels;

fn imagenet() -> ImageTransform {
    ImageTransform {
        resize_shorter: 256,
        crop_height: 224,
        crop_width: 224,
        mean: vec![0.485, 0.456, 0.406],
        std: vec![0.229, 0.224, 0.225],
    }
}

#[test]
fn without_a_driver_the_kernels_are_an_error_not_a_panic() {
    if driver_present() {
        eprintln!("an NVIDIA driver is present: the no-driver contract is not exercised here");
        return;
    }
    match CudaKernels::new(0) {
        Err(KernelError::NoDriver(names)) => assert!(names.contains("libcuda.so"), "{names}"),
        Err(e) => panic!("expected NoDriver, got {e}"),
        Ok(_) => panic!("kernels without a driver"),
    }
}

#[test]
fn gpu_preprocessing_and_top_k_match_the_cpu_references() {
    if !driver_present() {
        eprintln!(
            "SKIPPED: no NVIDIA driver on this machine (benches/gpu/check.sh runs this on a GPU)"
        );
        return;
    }
    let k = CudaKernels::new(0).expect("a driver is present, so the kernels load");
    let t = imagenet();
    for (h, w, layout) in [
        (375, 500, Layout::Nchw),
        (480, 320, Layout::Nhwc),
        (224, 224, Layout::Nchw),
    ] {
        let data: Vec<Vec<u8>> = (0..3).map(|i| pixels(h * w * 3, i)).collect();
        let images: Vec<ImageU8> = data
            .iter()
            .map(|d| ImageU8::new(d, h as u32, w as u32, 3).unwrap())
            .collect();
        let mut cpu = vec![0.0f32; t.output_len() * images.len()];
        for (img, out) in images.iter().zip(cpu.chunks_mut(t.output_len())) {
            t.apply_f32(img, layout, out).unwrap();
        }
        let gpu = k.preprocess(&images, &t, layout, Precision::F32).unwrap();
        let worst = cpu
            .iter()
            .zip(&gpu)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "{h}x{w} {layout:?}: f32 max diff {worst}");
        let half = k.preprocess(&images, &t, layout, Precision::F16).unwrap();
        let worst = cpu
            .iter()
            .zip(&half)
            .map(|(a, b)| (a - b).abs() / a.abs().max(1.0))
            .fold(0.0f32, f32::max);
        assert!(
            worst < 2e-3,
            "{h}x{w} {layout:?}: f16 max relative diff {worst}"
        );
    }

    let cols = 1000;
    let mut logits: Vec<f32> = pixels(4 * cols, 7)
        .iter()
        .map(|&b| b as f32 / 16.0 - 8.0)
        .collect();
    logits[2 * cols + 5] = f32::NAN;
    let gpu = k.softmax_top_k(&logits, cols, 5).unwrap();
    for (r, row) in logits.chunks(cols).enumerate() {
        let want = softmax_top_k(&mut row.to_vec(), 5);
        let got = &gpu[r];
        assert_eq!(
            got.iter().map(|s| s.index).collect::<Vec<_>>(),
            want.iter().map(|s| s.index).collect::<Vec<_>>(),
            "row {r}"
        );
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g.score.is_nan() && w.score.is_nan()) || (g.score - w.score).abs() < 1e-6,
                "row {r}: {g:?} vs {w:?}"
            );
        }
    }
}

#[test]
fn a_batch_of_mixed_sizes_is_refused_before_any_gpu_work() {
    if !driver_present() {
        eprintln!("SKIPPED: no NVIDIA driver on this machine");
        return;
    }
    let k = CudaKernels::new(0).unwrap();
    let (a, b) = (pixels(300 * 300 * 3, 1), pixels(300 * 400 * 3, 2));
    let images = [
        ImageU8::new(&a, 300, 300, 3).unwrap(),
        ImageU8::new(&b, 300, 400, 3).unwrap(),
    ];
    assert!(matches!(
        k.preprocess(&images, &imagenet(), Layout::Nchw, Precision::F32),
        Err(KernelError::MixedSizes { index: 1, .. })
    ));
}
