//! Times one engine's forward pass on one model directory, for benches/engines_vs_pytorch.sh
//! (CPU) and benches/gpu/check.sh (GPU): loads the model as `siesta serve` would (same loader,
//! the engine forced), feeds the same pseudo-random batch `iters` times after `warmup` passes,
//! prints one JSON line of timings.
//!
//! `bench-engine DIR ENGINE BATCH [ITERS] [WARMUP] [--device cuda:0] [--precision f16]
//! [--idle-tiers]`, ENGINE =
//! candle | torch | onnx. Threads come from RAYON_NUM_THREADS (candle) and OMP_NUM_THREADS
//! (libtorch reads it at start), set by the scripts.
//!
//! A model whose input is UINT8 pixels (a classifier's `[H, W, 3]`) gets pseudo-random bytes, so
//! the timing includes the replica's preprocessing kernel and a quarter of FP32's upload.
//!
//! `--idle-tiers` then measures the model's idle tiers in the same process: the device memory it
//! holds hot and parked (the engine's own count, and NVML's count for this process where there is
//! a driver), and the time from "parked" back to the first answer.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use siesta_lifecycle::backend::gpu::{GpuInventory, Nvml};
use siesta_models::{
    DataType, DeviceSpec, Engine, LoadOptions, Model, ModelSource, Precision, Tensor, load_model,
};

#[derive(Parser)]
struct Args {
    dir: PathBuf,
    engine: Engine,
    batch: usize,
    #[arg(default_value_t = 10)]
    iters: usize,
    #[arg(default_value_t = 2)]
    warmup: usize,
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    #[arg(long, default_value = "f32")]
    precision: Precision,
    #[arg(long)]
    idle_tiers: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let opts = LoadOptions {
        engine: Some(args.engine),
        device: args.device,
        precision: args.precision,
        ..Default::default()
    };
    let started = Instant::now();
    let mut model = load_model(&ModelSource::Dir(args.dir.clone()), &opts)?;
    let load_ms = ms_since(started);
    let input = random_batch(model.as_ref(), args.batch)?;
    let inputs = std::slice::from_ref(&input);

    let first = Instant::now();
    let mut checksum = forward_checksum(model.as_mut(), inputs)?;
    let first_forward_ms = ms_since(first);
    for _ in 0..args.warmup {
        model.forward(inputs)?;
    }
    let mut ms = Vec::with_capacity(args.iters);
    for _ in 0..args.iters {
        let t = Instant::now();
        checksum = forward_checksum(model.as_mut(), inputs)?;
        ms.push(ms_since(t));
    }
    ms.sort_by(f64::total_cmp);
    let median_ms = ms.get(ms.len() / 2).copied();
    let mut line = serde_json::json!({
        "engine": format!("{:?}", args.engine).to_lowercase(),
        "device": model.device_name(),
        "precision": args.precision.to_string(),
        "input": input.datatype.as_str(),
        "batch": args.batch,
        "iters": args.iters,
        // Process start is outside; this is loader + weights to the device (CUDA init included).
        "load_ms": load_ms,
        "first_forward_ms": first_forward_ms,
        "median_ms": median_ms,
        "min_ms": ms.first(),
        "images_per_s": median_ms.map(|m| args.batch as f64 / (m / 1e3)),
        "checksum": checksum.sum,
        "abs_checksum": checksum.abs_sum,
        "top1": checksum.top1,
    });
    if args.idle_tiers {
        line["idle_tiers"] = idle_tiers(model.as_mut(), inputs)?;
    }
    println!("{line}");
    Ok(())
}

/// Hot -> parked -> first answer again, in this process.
fn idle_tiers(model: &mut dyn Model, inputs: &[Tensor]) -> Result<serde_json::Value> {
    let nvml = Nvml::probe();
    let held = |model: &dyn Model| {
        serde_json::json!({
            "engine_device_bytes": model.device_memory_bytes(),
            "nvml_process_bytes": nvml.as_ref().map(process_gpu_bytes),
        })
    };
    let hot = held(model);
    let t = Instant::now();
    model.release_device_memory();
    let release_ms = ms_since(t);
    let parked = held(model);
    let t = Instant::now();
    model.restore_device_memory()?;
    forward_checksum(model, inputs)?;
    let resume_to_first_answer_ms = ms_since(t);
    Ok(serde_json::json!({
        "hot": hot,
        "release_ms": release_ms,
        "parked": parked,
        "resume_to_first_answer_ms": resume_to_first_answer_ms,
        "context_kept": true,
    }))
}

/// What NVML says this process holds, summed over the GPUs.
fn process_gpu_bytes(nvml: &Nvml) -> u64 {
    let me = std::process::id();
    nvml.gpus()
        .iter()
        .flat_map(|g| g.processes.iter())
        .filter(|(pid, _)| *pid == me)
        .map(|(_, bytes)| bytes)
        .sum()
}

/// What two runs of one model on one input must agree on: the sum of the first output, the sum
/// of its magnitudes (the scale a difference is judged against: a plain sum of logits may
/// cancel to near zero) and the first row's top class.
struct Checksum {
    sum: f64,
    abs_sum: f64,
    top1: usize,
}

fn forward_checksum(model: &mut dyn Model, inputs: &[Tensor]) -> Result<Checksum> {
    let out = model.forward(inputs)?;
    let values = out[0].to_f32_vec()?;
    let row = out[0].shape.last().copied().unwrap_or(values.len()).max(1);
    Ok(Checksum {
        sum: values.iter().map(|&v| f64::from(v)).sum(),
        abs_sum: values.iter().map(|&v| f64::from(v).abs()).sum(),
        top1: siesta_kernels::top_k(&values[..row.min(values.len())], 1)
            .first()
            .map_or(0, |s| s.index),
    })
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// The same pseudo-random batch for every engine (SplitMix64): roughly N(0, 1) for FP32 inputs,
/// uniform bytes for UINT8 pixels.
fn random_batch(model: &dyn Model, batch: usize) -> Result<Tensor> {
    let spec = &model.config().inputs[0];
    let mut shape = vec![batch];
    shape.extend(spec.shape.iter().map(|&d| d as usize));
    let n: usize = shape.iter().product();
    let mut state = 0x5EED_u64;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    if spec.datatype == DataType::U8 {
        let bytes = (0..n).map(|_| (next() >> 56) as u8).collect();
        return Ok(Tensor::new(&spec.name, DataType::U8, shape, bytes)?);
    }
    let values: Vec<f32> = (0..n)
        .map(|_| {
            let sum: f32 = (0..4)
                .map(|_| (next() >> 40) as f32 / (1u64 << 24) as f32)
                .sum();
            (sum - 2.0) * 1.732
        })
        .collect();
    Ok(Tensor::from_f32(&spec.name, shape, &values))
}
