//! Which engine runs a model, and what the manifest may say about it: KServe's `modelFormat`
//! (what the model is) is checked against the model directory, and `runtime` (which server runs
//! it) can force an engine when a directory holds the same model in several forms, e.g. a
//! torchvision state dict, its TorchScript trace and its ONNX export side by side.

use std::path::Path;
use std::str::FromStr;

use crate::architecture::Architecture;
use crate::config::{CONFIG_FILE, ModelConfig};
use crate::error::ModelError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// Built-in architectures in pure Rust (mnist_cnn, torchvision classifiers).
    Candle,
    /// TorchScript through libtorch (the `torch` feature).
    Torch,
    /// ONNX graphs through ONNX Runtime (and TensorFlow SavedModels, converted once).
    Onnx,
}

impl Engine {
    fn file(self) -> &'static str {
        match self {
            Engine::Torch => "model.pt",
            Engine::Onnx => "model.onnx",
            Engine::Candle => "model.safetensors",
        }
    }
}

impl FromStr for Engine {
    type Err = ModelError;

    /// Siesta's names, and KServe's ServingRuntime names where they mean one of Siesta's engines
    /// (TensorFlow models run here as their tf2onnx export).
    fn from_str(s: &str) -> Result<Self, ModelError> {
        Ok(match s {
            "candle" | "siesta-candle" => Engine::Candle,
            "torch" | "libtorch" | "torchscript" | "siesta-torch" | "kserve-torchserve" => {
                Engine::Torch
            }
            "onnx" | "onnxruntime" | "siesta-onnx" | "kserve-tensorflow-serving" => Engine::Onnx,
            other => {
                return Err(ModelError::Config {
                    path: CONFIG_FILE.into(),
                    reason: format!(
                        "runtime '{other}' is not one Siesta has (candle, torch, onnx or \
                         onnxruntime; or KServe's kserve-torchserve, kserve-tensorflow-serving)"
                    ),
                });
            }
        })
    }
}

/// KServe `modelFormat.name` values and the architectures that can be that format. A format
/// Siesta has no engine for is an error; a model that is not of the format it claims is served
/// with a warning, since a storage mirror may stand a local model in for the manifest's.
pub fn check_format(format: &str, config: &ModelConfig, dir: &Path) -> Result<(), ModelError> {
    let format = format.to_ascii_lowercase();
    let engine = config.architecture.engine();
    let fits = match format.as_str() {
        // PyTorch-made models: TorchScript files, state dicts of built-in architectures.
        "pytorch" => matches!(engine, Engine::Torch | Engine::Candle),
        // tf2onnx exports (a SavedModel is converted at load) and any ONNX file.
        "tensorflow" | "onnx" => engine == Engine::Onnx,
        "siesta" => true,
        other => {
            return Err(ModelError::Config {
                path: dir.to_path_buf(),
                reason: format!(
                    "modelFormat '{other}' is not supported by Siesta (pytorch, tensorflow, onnx)"
                ),
            });
        }
    };
    if !fits {
        tracing::warn!(
            model = %config.name,
            dir = %dir.display(),
            "modelFormat '{format}' does not match this model (architecture '{}'); serving it anyway",
            config.architecture
        );
    }
    Ok(())
}

/// Points the config at the file the forced engine runs, keeping its inputs, outputs and
/// preprocessing (so the three engines serve the same contract).
pub fn force(engine: Engine, config: &mut ModelConfig, dir: &Path) -> Result<(), ModelError> {
    if config.architecture.engine() == engine {
        return Ok(());
    }
    if engine == Engine::Candle {
        return Err(ModelError::Config {
            path: dir.join(CONFIG_FILE),
            reason: format!(
                "runtime candle runs the built-in architectures (mnist_cnn, {}), not '{}'",
                Architecture::vision_names(),
                config.architecture
            ),
        });
    }
    if config
        .inputs
        .first()
        .is_some_and(|i| i.datatype == crate::tensor::DataType::U8)
        && config.architecture.vision().is_some()
    {
        return Err(ModelError::Config {
            path: dir.join(CONFIG_FILE),
            reason: format!(
                "the UINT8 pixel input of {} is normalised by the candle engine; the {engine:?} \
                 engine's file takes the network's FP32 input",
                config.architecture
            ),
        });
    }
    let file = engine.file();
    if !dir.join(file).is_file() {
        return Err(ModelError::File {
            path: dir.join(file),
            reason: format!(
                "the runtime asks for the {engine:?} engine, which runs this file, and it is not there"
            ),
        });
    }
    config.architecture = match engine {
        Engine::Torch => Architecture::TorchScript,
        _ => Architecture::Onnx,
    };
    config.weights = Some(file.into());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(arch: &str) -> ModelConfig {
        serde_json::from_value(serde_json::json!({
            "name": "m", "architecture": arch, "weights": "model.safetensors",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 224, 224]}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [5]}]}))
        .unwrap()
    }

    #[test]
    fn the_runtime_switches_engines_keeping_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config("resnet50");
        let err = force(Engine::Onnx, &mut c, dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("model.onnx"), "{err}");
        std::fs::write(dir.path().join("model.onnx"), b"").unwrap();
        force(Engine::Onnx, &mut c, dir.path()).unwrap();
        assert_eq!(
            (c.architecture.name(), c.weights.as_deref()),
            ("onnx", Some("model.onnx"))
        );
        assert_eq!(c.outputs[0].name, "logits");
        let err = force(Engine::Candle, &mut c, dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("runtime candle") && err.contains("'onnx'"),
            "{err}"
        );
        assert_eq!(
            "kserve-torchserve".parse::<Engine>().unwrap(),
            Engine::Torch
        );
        assert!(
            "triton"
                .parse::<Engine>()
                .unwrap_err()
                .to_string()
                .contains("triton")
        );
    }

    #[test]
    fn model_formats_are_checked_against_the_model() {
        let dir = Path::new("/m");
        check_format("pytorch", &config("mnist_cnn"), dir).unwrap();
        check_format("PyTorch", &config("torchscript"), dir).unwrap();
        check_format("tensorflow", &config("onnx"), dir).unwrap();
        // A mirrored stand-in: served, with a warning.
        check_format("tensorflow", &config("resnet18"), dir).unwrap();
        let err = check_format("sklearn", &config("onnx"), dir)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not supported"), "{err}");
    }
}
