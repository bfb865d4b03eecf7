//! Times one engine's forward pass on one model directory, for benches/engines_vs_pytorch.sh:
//! loads the model as `siesta serve` would (same loader, `--runtime` forcing the engine), feeds
//! the same random batch `iters` times after `warmup` passes, prints one JSON line of timings.
//!
//! `bench-engine DIR ENGINE BATCH [ITERS] [WARMUP]`, ENGINE = candle | torch | onnx. Threads come
//! from RAYON_NUM_THREADS (candle) and OMP_NUM_THREADS (libtorch reads it at start), set by the
//! script.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use siesta_models::{DeviceSpec, Engine, LoadOptions, ModelSource, Tensor, load_model};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, engine, batch, rest @ ..] = args.as_slice() else {
        bail!("usage: bench-engine DIR candle|torch|onnx BATCH [ITERS] [WARMUP]");
    };
    let engine: Engine = engine.parse()?;
    let batch: usize = batch.parse().context("BATCH")?;
    let iters: usize = rest
        .first()
        .map_or(Ok(10), |s| s.parse())
        .context("ITERS")?;
    let warmup: usize = rest.get(1).map_or(Ok(2), |s| s.parse()).context("WARMUP")?;

    let opts = LoadOptions {
        engine: Some(engine),
        device: DeviceSpec::Cpu,
        ..Default::default()
    };
    let started = Instant::now();
    let mut model = load_model(&ModelSource::Dir(PathBuf::from(dir)), &opts)?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let spec = model.config().inputs[0].clone();
    let mut shape = vec![batch];
    shape.extend(spec.shape.iter().map(|&d| d as usize));
    let n: usize = shape.iter().product();
    // The same pseudo-random batch for every engine (SplitMix64 -> roughly N(0, 1)).
    let mut state = 0x5EED_u64;
    let values: Vec<f32> = (0..n)
        .map(|_| {
            let mut sum = 0.0;
            for _ in 0..4 {
                state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                sum += ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32;
            }
            (sum - 2.0) * 1.732
        })
        .collect();
    let input = Tensor::from_f32(&spec.name, shape, &values);
    let inputs = std::slice::from_ref(&input);
    for _ in 0..warmup {
        model.forward(inputs)?;
    }
    let mut ms = Vec::with_capacity(iters);
    let mut checksum = 0.0f64;
    for _ in 0..iters {
        let t = Instant::now();
        let out = model.forward(inputs)?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        checksum = out[0].to_f32_vec()?.iter().map(|&v| f64::from(v)).sum();
    }
    ms.sort_by(f64::total_cmp);
    println!(
        "{}",
        serde_json::json!({
            "engine": format!("{engine:?}").to_lowercase(),
            "batch": batch,
            "iters": iters,
            "load_ms": load_ms,
            "median_ms": ms[ms.len() / 2],
            "min_ms": ms[0],
            "checksum": checksum,
        })
    );
    Ok(())
}
