//! Retrains the shipped MNIST CNN on the scikit-learn digits data set (upscaled to 28x28) and
//! writes `models/mnist/{model.safetensors,config.json}` atomically. Deterministic: fixed seed
//! for the initial weights and the batch order.
//!
//! `cargo run --release -p siesta-models --bin train-mnist [-- OUT_DIR]`

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{D, DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap, loss};
use siesta_models::architecture::Architecture;
use siesta_models::digits::{is_held_out, load_digits};
use siesta_models::mnist::{MnistCnn, SIDE, digit_to_mnist};

const EPOCHS: usize = 30;
const BATCH: usize = 64;
const SEED: u64 = 20261127;

fn main() -> Result<()> {
    let out_dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("mnist"));
    let device = Device::Cpu;
    let digits = load_digits().map_err(anyhow::Error::msg)?;
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (i, d) in digits.iter().enumerate() {
        let set = if is_held_out(i) {
            &mut test
        } else {
            &mut train
        };
        set.push((digit_to_mnist(&d.pixels), d.label));
    }
    println!("digits: {} train, {} held out", train.len(), test.len());

    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
    let net = MnistCnn::new(vb)?;
    let mut rng = SplitMix(SEED);
    seeded_init(&varmap, &mut rng)?;
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: 2e-3,
            weight_decay: 1e-4,
            ..Default::default()
        },
    )?;
    let mut order: Vec<usize> = (0..train.len()).collect();
    for epoch in 0..EPOCHS {
        for i in (1..order.len()).rev() {
            order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
        }
        let mut total = 0.0;
        for chunk in order.chunks(BATCH) {
            let (x, y) = batch(chunk.iter().map(|&i| &train[i]), &device)?;
            let l = loss::cross_entropy(&net.logits(&x)?, &y)?;
            opt.backward_step(&l)?;
            total += l.to_scalar::<f32>()? * chunk.len() as f32;
        }
        if epoch % 5 == 4 || epoch == EPOCHS - 1 {
            println!(
                "epoch {:>2}: train loss {:.4}, held-out accuracy {:.4}",
                epoch + 1,
                total / train.len() as f32,
                accuracy(&net, &test, &device)?
            );
        }
    }
    let acc = accuracy(&net, &test, &device)?;
    write_model(&varmap, &out_dir, acc, test.len())?;
    println!(
        "held-out accuracy {acc:.4} on {} digits; wrote {}",
        test.len(),
        out_dir.display()
    );
    Ok(())
}

/// Kaiming-uniform weights and zero biases from the seeded generator (candle cannot seed its CPU
/// generator), visited in name order so the result is reproducible.
fn seeded_init(varmap: &VarMap, rng: &mut SplitMix) -> Result<()> {
    let vars = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    for name in names {
        let var = &vars[name];
        let dims = var.dims().to_vec();
        let n: usize = dims.iter().product();
        let values: Vec<f32> = if name.ends_with("bias") {
            vec![0.0; n]
        } else {
            let fan_in: usize = dims[1..].iter().product();
            let bound = (6.0 / fan_in as f64).sqrt();
            (0..n)
                .map(|_| ((rng.next() as f64 / u64::MAX as f64) * 2.0 - 1.0) * bound)
                .map(|v| v as f32)
                .collect()
        };
        var.set(&Tensor::from_vec(values, dims, var.device())?)?;
    }
    Ok(())
}

fn batch<'a>(
    items: impl Iterator<Item = &'a (Vec<f32>, u8)>,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for (x, y) in items {
        xs.extend_from_slice(x);
        ys.push(u32::from(*y));
    }
    let n = ys.len();
    Ok((
        Tensor::from_vec(xs, (n, 1, SIDE, SIDE), device)?,
        Tensor::from_vec(ys, n, device)?,
    ))
}

fn accuracy(net: &MnistCnn, set: &[(Vec<f32>, u8)], device: &Device) -> Result<f32> {
    let (x, y) = batch(set.iter(), device)?;
    let pred = net.logits(&x)?.argmax(D::Minus1)?;
    let correct = pred
        .eq(&y)?
        .to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()?;
    Ok(correct / set.len() as f32)
}

fn write_model(varmap: &VarMap, dir: &PathBuf, acc: f32, held_out: usize) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(".model.safetensors.tmp");
    varmap.save(&tmp)?;
    std::fs::rename(&tmp, dir.join("model.safetensors"))?;
    let config = serde_json::json!({
        "name": "mnist",
        "architecture": Architecture::MnistCnn.name(),
        "weights": "model.safetensors",
        "max_batch_size": 64,
        "max_queue_delay_us": 0,
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, SIDE, SIDE]}],
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [10]},
            {"name": "class", "datatype": "INT64", "shape": []}
        ],
        "labels": (0..10).map(|d| d.to_string()).collect::<Vec<_>>(),
        "image": {
            "resize_shorter": SIDE,
            "mean": [0.0],
            "std": [1.0],
            "scores_output": "probabilities",
            "scores": "probabilities"
        },
        "info": {
            "trained_on": "scikit-learn digits (UCI), upscaled to 28x28; every fifth sample held out",
            "held_out_accuracy": (acc * 10000.0).round() / 10000.0,
            "held_out_samples": held_out,
            "input_range": "pixel intensities in [0, 1], 0 = background"
        }
    });
    let tmp = dir.join(".config.json.tmp");
    let mut text = serde_json::to_vec_pretty(&config)?;
    text.push(b'\n');
    std::fs::write(&tmp, text).context("writing config")?;
    std::fs::rename(&tmp, dir.join("config.json"))?;
    Ok(())
}

/// A tiny seeded generator for the batch order.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
