//! `identity`: returns each input as the output at the same position. Triton ships the same kind
//! of model for protocol testing; here it lets the tests send every datatype end to end.

use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::model::Model;
use crate::tensor::Tensor;

pub struct IdentityModel {
    config: ModelConfig,
}

impl IdentityModel {
    pub fn new(config: ModelConfig) -> Result<Self, ModelError> {
        if config.inputs.len() != config.outputs.len()
            || config
                .inputs
                .iter()
                .zip(&config.outputs)
                .any(|(i, o)| i.datatype != o.datatype)
        {
            return Err(ModelError::Inference(
                "identity needs outputs matching its inputs one to one, with the same datatypes"
                    .into(),
            ));
        }
        Ok(IdentityModel { config })
    }
}

impl Model for IdentityModel {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn forward(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, ModelError> {
        Ok(inputs
            .iter()
            .zip(&self.config.outputs)
            .map(|(t, spec)| Tensor {
                name: spec.name.clone(),
                ..t.clone()
            })
            .collect())
    }

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
