//! `--device cpu|cuda:N|auto`: which compute device a model runs on.

use std::fmt;
use std::str::FromStr;

use crate::error::ModelError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
    #[default]
    Auto,
}

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "auto" => Ok(DeviceSpec::Auto),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| format!("'{s}' is not a device: use cpu, cuda:N or auto")),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceSpec::Auto => f.write_str("auto"),
        }
    }
}

impl DeviceSpec {
    /// The candle device. Without the `cuda` feature `cuda:N` is a clear error and `auto` falls
    /// back to the CPU with one log line.
    #[cfg(not(feature = "cuda"))]
    pub fn resolve(self) -> Result<candle_core::Device, ModelError> {
        match self {
            DeviceSpec::Cpu => Ok(candle_core::Device::Cpu),
            DeviceSpec::Cuda(_) => Err(ModelError::Device(
                self.to_string(),
                "this siesta binary was built without the `cuda` feature".into(),
            )),
            DeviceSpec::Auto => {
                tracing::info!(
                    device = "cpu",
                    "no CUDA support in this build; using the CPU"
                );
                Ok(candle_core::Device::Cpu)
            }
        }
    }

    /// The candle device. `auto` is the first GPU when the driver opens one, else the CPU (the
    /// binary's start-up report says why, once); `cuda:N` without a usable GPU is an error.
    #[cfg(feature = "cuda")]
    pub fn resolve(self) -> Result<candle_core::Device, ModelError> {
        match self {
            DeviceSpec::Cpu => Ok(candle_core::Device::Cpu),
            DeviceSpec::Cuda(n) => {
                cuda::open(n).map_err(|why| ModelError::Device(self.to_string(), why))
            }
            DeviceSpec::Auto => match cuda::open(0) {
                Ok(device) => Ok(device),
                Err(why) => {
                    tracing::debug!(%why, "no usable GPU; using the CPU");
                    Ok(candle_core::Device::Cpu)
                }
            },
        }
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    use candle_core::Device;

    /// One candle CUDA device (context + stream) per GPU per process: every model on a GPU
    /// shares it, and a parked model that comes back finds the context still there.
    static OPENED: OnceLock<Mutex<HashMap<usize, Device>>> = OnceLock::new();

    pub fn open(ordinal: usize) -> Result<Device, String> {
        // cudarc loads libcuda at run time and panics when it is missing: ask first.
        if !siesta_kernels::cuda::driver_present() {
            return Err("this machine has no NVIDIA driver (libcuda.so.1)".into());
        }
        let mut opened = OPENED
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(device) = opened.get(&ordinal) {
            return Ok(device.clone());
        }
        let device = Device::new_cuda(ordinal).map_err(|e| e.to_string())?;
        opened.insert(ordinal, device.clone());
        Ok(device)
    }
}
