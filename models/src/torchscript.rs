//! TorchScript models (`torch.jit.save`) through libtorch (`tch`), the `torch` feature. Runs
//! what PyTorch users already have, with PyTorch's own kernels: the numbers are PyTorch's.
//! Outputs: the module returns one tensor or a tuple of tensors, in the order of the config's
//! outputs.

use std::path::Path;

use tch::{CModule, Device, IValue, Kind};

use crate::config::ModelConfig;
use crate::device::DeviceSpec;
use crate::error::ModelError;
use crate::model::Model;
use crate::precision::Precision;
use crate::tensor::{DataType, Tensor};

pub struct TorchScriptModel {
    config: ModelConfig,
    module: CModule,
    /// Where the model computes; it is moved to the CPU while released.
    device: Device,
    on_device: bool,
    /// What the module's floating-point parameters and inputs are (`--precision`).
    float: Kind,
}

fn tch_device(spec: DeviceSpec) -> Result<Device, ModelError> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Auto => Ok(Device::cuda_if_available()),
        DeviceSpec::Cuda(n)
            if tch::Cuda::is_available() && n < tch::Cuda::device_count() as usize =>
        {
            Ok(Device::Cuda(n))
        }
        DeviceSpec::Cuda(_) => Err(ModelError::Device(
            spec.to_string(),
            format!(
                "libtorch sees {} CUDA device(s)",
                if tch::Cuda::is_available() {
                    tch::Cuda::device_count()
                } else {
                    0
                }
            ),
        )),
    }
}

fn kind(dt: DataType) -> Option<Kind> {
    Some(match dt {
        DataType::F32 => Kind::Float,
        DataType::F64 => Kind::Double,
        DataType::F16 => Kind::Half,
        DataType::I64 => Kind::Int64,
        DataType::I32 => Kind::Int,
        DataType::U8 => Kind::Uint8,
        DataType::I8 => Kind::Int8,
        DataType::Bool => Kind::Bool,
        _ => return None,
    })
}

impl TorchScriptModel {
    pub fn load(
        config: ModelConfig,
        path: &Path,
        device: DeviceSpec,
        precision: Precision,
    ) -> Result<Self, ModelError> {
        let device = tch_device(device)?;
        let mut module = CModule::load_on_device(path, device).map_err(|e| ModelError::File {
            path: path.to_path_buf(),
            reason: format!("not a TorchScript module (torch.jit.save): {e}"),
        })?;
        for spec in config.inputs.iter().chain(&config.outputs) {
            if kind(spec.datatype).is_none() {
                return Err(ModelError::Config {
                    path: path.with_file_name(crate::config::CONFIG_FILE),
                    reason: format!("tensor '{}': libtorch has no {}", spec.name, spec.datatype),
                });
            }
        }
        let float = match precision {
            Precision::F32 => Kind::Float,
            Precision::F16 => Kind::Half,
        };
        if float != Kind::Float {
            module.to(device, float, false);
        }
        tracing::info!(model = %config.name, ?device, %precision, "TorchScript module loaded");
        Ok(TorchScriptModel {
            config,
            module,
            device,
            on_device: true,
            float,
        })
    }

    fn outputs(&self, value: IValue) -> Result<Vec<tch::Tensor>, ModelError> {
        let bad = |what: String| ModelError::Inference(format!("the module returned {what}"));
        match value {
            IValue::Tensor(t) => Ok(vec![t]),
            IValue::Tuple(items) | IValue::GenericList(items) => items
                .into_iter()
                .map(|v| match v {
                    IValue::Tensor(t) => Ok(t),
                    other => Err(bad(format!("a non-tensor item {other:?}"))),
                })
                .collect(),
            IValue::TensorList(ts) => Ok(ts),
            other => Err(bad(format!("{other:?}"))),
        }
    }
}

fn to_host(name: &str, want: DataType, t: &tch::Tensor) -> Result<Tensor, ModelError> {
    let k = kind(want).expect("checked at load");
    let t = t.to_device(Device::Cpu).to_kind(k).contiguous();
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let mut bytes = vec![0u8; t.numel() * want.element_size().unwrap_or(1)];
    t.copy_data_u8(&mut bytes, t.numel());
    Ok(Tensor::new(name, want, shape, bytes)?)
}

impl Model for TorchScriptModel {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn forward(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, ModelError> {
        let args: Vec<IValue> = inputs
            .iter()
            .map(|t| {
                let k = kind(t.datatype).expect("checked at load");
                let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
                let x = tch::Tensor::from_data_size(&t.data, &shape, k).to_device(self.device);
                // Floating-point inputs follow the module's precision; the config's type is
                // what the client sends.
                IValue::Tensor(if x.is_floating_point() && k != self.float {
                    x.to_kind(self.float)
                } else {
                    x
                })
            })
            .collect();
        let value = tch::no_grad(|| self.module.forward_is(&args))
            .map_err(|e| ModelError::Inference(e.to_string()))?;
        let outs = self.outputs(value)?;
        if outs.len() != self.config.outputs.len() {
            return Err(ModelError::Inference(format!(
                "the module returned {} tensors; the config lists {} outputs",
                outs.len(),
                self.config.outputs.len()
            )));
        }
        self.config
            .outputs
            .iter()
            .zip(&outs)
            .map(|(spec, t)| to_host(&spec.name, spec.datatype, t))
            .collect()
    }

    fn release_device_memory(&mut self) {
        if self.device != Device::Cpu && self.on_device {
            self.module.to(Device::Cpu, self.float, false);
            self.on_device = false;
            if !crate::torch_cuda_cache::empty() {
                tracing::info!(
                    "this build cannot empty libtorch's CUDA cache: the parked weights' GPU blocks \
                     stay reserved by libtorch until the process exits"
                );
            }
        }
    }

    fn restore_device_memory(&mut self) -> Result<(), ModelError> {
        if !self.on_device {
            self.module.to(self.device, self.float, false);
            self.on_device = true;
        }
        Ok(())
    }

    fn device_memory_bytes(&self) -> u64 {
        if self.device == Device::Cpu || !self.on_device {
            return 0;
        }
        self.module
            .named_parameters()
            .map(|ps| {
                ps.iter()
                    .map(|(_, t)| (t.numel() * t.kind().elt_size_in_bytes()) as u64)
                    .sum()
            })
            .unwrap_or(0)
    }

    fn device_name(&self) -> String {
        match self.device {
            Device::Cuda(n) => format!("cuda:{n}"),
            _ => "cpu".into(),
        }
    }
}
