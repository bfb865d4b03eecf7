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
}
