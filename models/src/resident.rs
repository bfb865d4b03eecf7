//! Weights kept in host memory with an optional copy on the compute device, so a model can give
//! its device memory back when idle and come back without re-reading files.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor as CTensor};
use candle_nn::VarBuilder;

use crate::error::ModelError;

/// Builds the network from weights already on the device.
pub type Build<M> = Box<dyn Fn(VarBuilder<'_>) -> candle_core::Result<M> + Send>;

pub struct ResidentWeights<M> {
    host: HashMap<String, CTensor>,
    device: Device,
    /// What the network is built in: the host copy stays as loaded (f32), the device copy is
    /// converted on the way up.
    dtype: DType,
    build: Build<M>,
    built: Option<(M, u64)>,
}

impl<M> ResidentWeights<M> {
    pub fn new(
        host: HashMap<String, CTensor>,
        device: Device,
        build: Build<M>,
    ) -> Result<Self, ModelError> {
        Self::with_dtype(host, device, DType::F32, build)
    }

    pub fn with_dtype(
        host: HashMap<String, CTensor>,
        device: Device,
        dtype: DType,
        build: Build<M>,
    ) -> Result<Self, ModelError> {
        let mut w = ResidentWeights {
            host,
            device,
            dtype,
            build,
            built: None,
        };
        w.restore()?;
        Ok(w)
    }

    /// The device-resident network, rebuilt from host weights if it was released.
    pub fn get(&mut self) -> Result<&M, ModelError> {
        if self.built.is_none() {
            self.restore()?;
        }
        Ok(&self.built.as_ref().expect("restored above").0)
    }

    pub fn restore(&mut self) -> Result<(), ModelError> {
        if self.built.is_some() {
            return Ok(());
        }
        let mut on_device = HashMap::with_capacity(self.host.len());
        let mut bytes = 0u64;
        for (name, t) in &self.host {
            // On the CPU a deep copy, so that "released" really returns the device copy's memory
            // and resuming really pays for the transfer, as it does on a GPU.
            let t = if self.device.is_cpu() {
                t.copy()?
            } else {
                t.to_device(&self.device)?
            };
            let dtype = if t.dtype().is_float() {
                self.dtype
            } else {
                t.dtype()
            };
            bytes += (t.elem_count() * dtype.size_in_bytes()) as u64;
            on_device.insert(name.clone(), t);
        }
        // The builder converts each weight to `dtype` as the network takes it; layers that fold
        // weights (batch norm) read them in f32 first (vision::layers::ConvBn).
        let vb = VarBuilder::from_tensors(on_device, self.dtype, &self.device);
        self.built = Some(((self.build)(vb)?, bytes));
        Ok(())
    }

    pub fn release(&mut self) {
        if self.built.take().is_some() {
            // CUDA frees into the stream's memory pool; the pool hands memory back to the driver
            // (what NVML shows) at the next synchronisation.
            if let Err(e) = self.device.synchronize() {
                tracing::warn!(error = %e, "device synchronise after releasing weights failed");
            }
        }
    }

    pub fn device_bytes(&self) -> u64 {
        self.built.as_ref().map_or(0, |(_, b)| *b)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }
}

pub fn device_name(d: &Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => "cuda".into(),
        Device::Metal(_) => "metal".into(),
    }
}
