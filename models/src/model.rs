//! The one interface every engine implements. Synchronous and owned by one thread: the runtime's
//! worker thread is the only caller, so engines need no locking.

use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::tensor::Tensor;

pub trait Model: Send {
    fn config(&self) -> &ModelConfig;

    /// Runs one batch. `inputs` follow `config().inputs` in order and are already validated
    /// against it; the result holds every output of `config().outputs`, in order.
    fn forward(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, ModelError>;

    /// Frees every buffer the model holds on its compute device; weights stay in host memory.
    fn release_device_memory(&mut self);

    /// Rebuilds the device copy of the weights from host memory.
    fn restore_device_memory(&mut self) -> Result<(), ModelError>;

    /// Bytes of weights currently held on the compute device.
    fn device_memory_bytes(&self) -> u64;

    /// Name of the compute device (`cpu`, `cuda:0`).
    fn device_name(&self) -> String;

    /// One inference on zeros, so the first real request does not pay for lazy initialisation
    /// and readiness means the model really runs.
    fn warm_up(&mut self) -> Result<(), ModelError> {
        let cfg = self.config().clone();
        let inputs: Vec<Tensor> = cfg
            .inputs
            .iter()
            .map(|spec| {
                let shape: Vec<usize> = cfg
                    .published_shape(spec)
                    .iter()
                    .map(|&d| if d < 0 { 1 } else { d as usize })
                    .collect();
                let n: usize = shape.iter().product();
                let bytes = n * spec.datatype.element_size().unwrap_or(4);
                Tensor::new(&spec.name, spec.datatype, shape, vec![0; bytes])
            })
            .collect::<Result<_, _>>()?;
        self.forward(&inputs)?;
        Ok(())
    }
}
