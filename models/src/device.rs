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
    /// The candle device. This build has no CUDA backend (the `cuda` feature arrives with the GPU
    /// work), so `cuda:N` is a clear error and `auto` falls back to the CPU with one log line.
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
}
