//! ONNX models through candle-onnx: the path for TensorFlow-derived models (tf2onnx exports)
//! and anything else exported to ONNX. The graph is rewritten once at load ([`rewrite`]) so the
//! operators those exports use run, and checked against the config's inputs and outputs.
//! candle-onnx evaluates on the CPU.

mod derive;
mod rewrite;
pub(crate) mod saved_model;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor as CTensor};
use candle_onnx::onnx::ModelProto;

use crate::config::ModelConfig;
use crate::device::DeviceSpec;
use crate::error::ModelError;
use crate::model::Model;
use crate::tensor::{DataType, Tensor};

pub struct OnnxModel {
    config: ModelConfig,
    /// The graph without its initializers...
    proto: ModelProto,
    /// ...which are converted to tensors once here and fed with every call: left in the graph,
    /// candle-onnx converts each of them again on every evaluation (ResNet-50: 100 MB a call).
    weights: HashMap<String, CTensor>,
}

impl OnnxModel {
    pub fn load(config: ModelConfig, path: &Path, device: DeviceSpec) -> Result<Self, ModelError> {
        let file_err = |reason: String| ModelError::File {
            path: path.to_path_buf(),
            reason,
        };
        if matches!(device, DeviceSpec::Cuda(_)) {
            return Err(ModelError::Device(
                device.to_string(),
                "the ONNX engine (candle-onnx) runs on the CPU only".into(),
            ));
        }
        let mut proto = candle_onnx::read_file(path).map_err(|e| file_err(e.to_string()))?;
        let graph = proto
            .graph
            .as_mut()
            .ok_or_else(|| file_err("no graph in the model".into()))?;
        rewrite::rewrite(graph).map_err(file_err)?;
        let initializers: Vec<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let graph_inputs: Vec<&str> = graph
            .input
            .iter()
            .map(|i| i.name.as_str())
            .filter(|n| !initializers.contains(n))
            .collect();
        let graph_outputs: Vec<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
        let cfg_err = |reason: String| ModelError::Config {
            path: path.with_file_name(crate::config::CONFIG_FILE),
            reason,
        };
        for spec in &config.inputs {
            if !graph_inputs.contains(&spec.name.as_str()) {
                return Err(cfg_err(format!(
                    "input '{}' is not an input of {} (it has: {})",
                    spec.name,
                    path.display(),
                    graph_inputs.join(", ")
                )));
            }
        }
        if graph_inputs.len() != config.inputs.len() {
            return Err(cfg_err(format!(
                "the graph takes {} inputs ({}); the config lists {}",
                graph_inputs.len(),
                graph_inputs.join(", "),
                config.inputs.len()
            )));
        }
        for spec in &config.outputs {
            if !graph_outputs.contains(&spec.name.as_str()) {
                return Err(cfg_err(format!(
                    "output '{}' is not an output of {} (it has: {})",
                    spec.name,
                    path.display(),
                    graph_outputs.join(", ")
                )));
            }
        }
        let graph = proto.graph.as_mut().expect("checked above");
        let weights = std::mem::take(&mut graph.initializer)
            .iter()
            .map(|t| {
                let tensor = candle_onnx::eval::get_tensor(t, &t.name)
                    .map_err(|e| file_err(format!("initializer '{}': {e}", t.name)))?;
                Ok((t.name.clone(), tensor))
            })
            .collect::<Result<_, ModelError>>()?;
        Ok(OnnxModel {
            config,
            proto,
            weights,
        })
    }

    /// A directory with no `config.json`: an ONNX file (`model.onnx`) described by its own
    /// graph, or a TensorFlow SavedModel converted to one.
    pub fn config_for_bare_dir(dir: &Path) -> Result<Option<ModelConfig>, ModelError> {
        let file = if saved_model::is_saved_model(dir) {
            let python = std::env::var("SIESTA_PYTHON").unwrap_or_else(|_| "python3".into());
            saved_model::onnx_for(dir, &python)?
        } else if dir.join(saved_model::CONVERTED).is_file() {
            dir.join(saved_model::CONVERTED)
        } else {
            return Ok(None);
        };
        let proto = candle_onnx::read_file(&file).map_err(|e| ModelError::File {
            path: file.clone(),
            reason: e.to_string(),
        })?;
        let name = dir
            .file_name()
            .map_or("model".into(), |n| n.to_string_lossy().into_owned());
        derive::config_from_graph(&name, &file, &proto)
            .map(Some)
            .map_err(|reason| ModelError::File { path: file, reason })
    }

    /// The model file a directory's config names.
    pub fn file(dir: &Path, config: &ModelConfig) -> PathBuf {
        dir.join(config.weights.as_deref().unwrap_or("model.onnx"))
    }
}

fn to_candle(t: &Tensor) -> Result<CTensor, ModelError> {
    let dtype = match t.datatype {
        DataType::F32 => DType::F32,
        DataType::F64 => DType::F64,
        DataType::F16 => DType::F16,
        DataType::I64 => DType::I64,
        DataType::U8 => DType::U8,
        DataType::U32 => DType::U32,
        other => {
            return Err(ModelError::Input(format!(
                "input '{}': the ONNX engine does not take {other}",
                t.name
            )));
        }
    };
    Ok(CTensor::from_raw_buffer(
        &t.data,
        dtype,
        &t.shape,
        &Device::Cpu,
    )?)
}

fn from_candle(name: &str, want: DataType, t: &CTensor) -> Result<Tensor, ModelError> {
    let shape = t.dims().to_vec();
    let flat = t.flatten_all()?;
    let bytes: Vec<u8> = match want {
        DataType::F32 => flat
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DataType::F64 => flat
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DataType::I64 => flat
            .to_dtype(DType::I64)?
            .to_vec1::<i64>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        other => {
            return Err(ModelError::Inference(format!(
                "output '{name}': the ONNX engine does not produce {other}"
            )));
        }
    };
    Ok(Tensor::new(name, want, shape, bytes)?)
}

impl Model for OnnxModel {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn forward(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, ModelError> {
        let mut feed = self.weights.clone();
        for (spec, t) in self.config.inputs.iter().zip(inputs) {
            feed.insert(spec.name.clone(), to_candle(t)?);
        }
        let mut results = candle_onnx::simple_eval(&self.proto, feed)?;
        self.config
            .outputs
            .iter()
            .map(|spec| {
                let t = results.remove(&spec.name).ok_or_else(|| {
                    ModelError::Inference(format!("the graph produced no '{}'", spec.name))
                })?;
                from_candle(&spec.name, spec.datatype, &t)
            })
            .collect()
    }

    // candle-onnx keeps the weights in the graph on the host and evaluates on the CPU: there
    // is no device copy to release.
    fn release_device_memory(&mut self) {}

    fn restore_device_memory(&mut self) -> Result<(), ModelError> {
        Ok(())
    }

    fn device_memory_bytes(&self) -> u64 {
        0
    }

    fn device_name(&self) -> String {
        "cpu".into()
    }
}
