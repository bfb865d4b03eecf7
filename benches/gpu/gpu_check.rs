//! The GPU side of benches/gpu/check.sh, built on a CPU machine (`--features cuda`) and run on
//! the GPU one: finds the driver and GPUs (NVML), checks every CUDA kernel against its CPU
//! reference, and times each kernel against that reference in the same process (ratio), then
//! writes one JSON results file. Without a driver it runs the CPU references alone, says that no
//! GPU was found, and marks the results as a dry run.
//!
//! `gpu-check RESULTS.json`

use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use siesta_kernels::Precision;
use siesta_kernels::cuda::{CudaKernels, driver_present};
use siesta_kernels::{ImageTransform, ImageU8, Layout, softmax_top_k};
use siesta_testkit::pixels::pixels;

/// A camera-sized batch: 64 images of 375x500 (ImageNet's most common size) to 224x224.
const BATCH: usize = 64;
const HEIGHT: usize = 375;
const WIDTH: usize = 500;
const CLASSES: usize = 1000;
const ROWS: usize = 256;

/// Median seconds of `f` over `iters` runs after one warm-up.
fn median_secs(iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut t = Vec::with_capacity(iters);
    for _ in 0..iters {
        let start = Instant::now();
        f()?;
        t.push(start.elapsed().as_secs_f64());
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

fn gpus() -> Value {
    match nvml_wrapper::Nvml::init() {
        Ok(nvml) => {
            let count = nvml.device_count().unwrap_or(0);
            let list: Vec<Value> = (0..count)
                .filter_map(|i| {
                    let d = nvml.device_by_index(i).ok()?;
                    let mem = d.memory_info().ok()?;
                    Some(
                        json!({"index": i, "name": d.name().ok()?, "total_bytes": mem.total,
                                "free_bytes": mem.free}),
                    )
                })
                .collect();
            json!({"nvml": true, "driver": nvml.sys_driver_version().ok(), "gpus": list})
        }
        Err(e) => json!({"nvml": false, "error": e.to_string(), "gpus": []}),
    }
}

fn main() -> Result<()> {
    let Some(path) = std::env::args().nth(1) else {
        bail!("usage: gpu-check RESULTS.json");
    };
    let transform = ImageTransform {
        resize_shorter: 256,
        crop_height: 224,
        crop_width: 224,
        mean: vec![0.485, 0.456, 0.406],
        std: vec![0.229, 0.224, 0.225],
    };
    let data: Vec<Vec<u8>> = (0..BATCH)
        .map(|i| pixels(HEIGHT * WIDTH * 3, i as u64))
        .collect();
    let images: Vec<ImageU8> = data
        .iter()
        .map(|d| ImageU8::new(d, HEIGHT as u32, WIDTH as u32, 3))
        .collect::<Result<_, _>>()?;
    let logits: Vec<f32> = pixels(ROWS * CLASSES, 99)
        .iter()
        .map(|&b| b as f32 / 16.0 - 8.0)
        .collect();

    // The CPU references, one core: what CPU replicas and the image transformer run.
    let mut cpu_pre = vec![0.0f32; transform.output_len() * BATCH];
    let cpu_pre_s = median_secs(5, || {
        for (img, out) in images
            .iter()
            .zip(cpu_pre.chunks_mut(transform.output_len()))
        {
            transform.apply_f32(img, Layout::Nchw, out)?;
        }
        Ok(())
    })?;
    let mut cpu_top = Vec::new();
    let cpu_top_s = median_secs(5, || {
        cpu_top = logits
            .chunks(CLASSES)
            .map(|r| softmax_top_k(&mut r.to_vec(), 5))
            .collect();
        Ok(())
    })?;
    let mut results = json!({
        "date": std::env::var("CHECK_DATE").ok(),
        "platform": gpus(),
        "cpu_reference": {
            "preprocess_images_per_s": BATCH as f64 / cpu_pre_s,
            "softmax_top5_rows_per_s": ROWS as f64 / cpu_top_s,
        },
        // check.sh measures Siesta's ResNet-50 (f32) and its idle tiers next to this file.
        "not_measured_yet": [
            "parked with the CUDA context destroyed (the context is kept: resume <= 10 ms is the goal)",
            "the softmax + top-k kernel inside a replica's request path (Triton's classification \
             extension ranks on the host; UINT8 pixel input does run the preprocessing kernel, \
             measured by check.sh)"
        ],
    });

    if !driver_present() {
        println!("no GPU found (no NVIDIA driver, libcuda.so.1): dry run, CPU references only");
        results["dry_run"] = json!(true);
    } else {
        results["dry_run"] = json!(false);
        let k = CudaKernels::new(0).context("loading the kernels on GPU 0")?;
        println!("GPU 0: {}", k.device_name());
        let mut checks = serde_json::Map::new();
        for precision in [Precision::F32, Precision::F16] {
            let gpu = k.preprocess(&images, &transform, Layout::Nchw, precision)?;
            let worst = cpu_pre
                .iter()
                .zip(&gpu)
                .map(|(a, b)| (a - b).abs() / a.abs().max(1.0))
                .fold(0.0f32, f32::max);
            let limit = if precision == Precision::F32 {
                1e-5
            } else {
                2e-3
            };
            let s = median_secs(20, || {
                k.preprocess(&images, &transform, Layout::Nchw, precision)?;
                Ok(())
            })?;
            checks.insert(
                format!("preprocess_{precision:?}").to_lowercase(),
                json!({"max_rel_diff": worst, "ok": worst < limit,
                       "images_per_s": BATCH as f64 / s, "x_cpu_reference": cpu_pre_s / s,
                       "note": "upload of uint8 images, kernel, download of the result: a replica would keep the result on the GPU"}),
            );
        }
        let gpu_top = k.softmax_top_k(&logits, CLASSES, 5)?;
        let same = gpu_top.iter().zip(&cpu_top).all(|(g, c)| {
            g.iter()
                .zip(c)
                .all(|(a, b)| a.index == b.index && (a.score - b.score).abs() < 1e-6)
        });
        let s = median_secs(20, || {
            k.softmax_top_k(&logits, CLASSES, 5)?;
            Ok(())
        })?;
        checks.insert(
            "softmax_top5".into(),
            json!({"ok": same, "rows_per_s": ROWS as f64 / s, "x_cpu_reference": cpu_top_s / s}),
        );
        let all_ok = checks.values().all(|c| c["ok"] == true);
        results["gpu_kernels"] = Value::Object(checks);
        results["gpu_kernels_ok"] = json!(all_ok);
    }
    let text = serde_json::to_string_pretty(&results)?;
    std::fs::write(&path, &text).with_context(|| format!("writing {path}"))?;
    println!("{text}");
    if results["gpu_kernels_ok"] == false {
        bail!("a CUDA kernel disagrees with its CPU reference");
    }
    Ok(())
}
