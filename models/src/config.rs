//! The model directory's `config.json`: architecture, weights, inputs, outputs, batching and labels.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::architecture::Architecture;
use crate::error::ModelError;
use crate::tensor::DataType;

pub const CONFIG_FILE: &str = "config.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    /// Dimensions per batch row (without the batch dimension when `max_batch_size > 0`); -1 = any size.
    pub shape: Vec<i64>,
}

/// torchvision's `Resize(resize_shorter) -> CenterCrop -> ToTensor -> Normalize(mean, std)`; the
/// crop size, channels and layout come from the model's first input.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImagePreprocessing {
    /// 0 resizes straight to the input size.
    #[serde(default)]
    pub resize_shorter: u32,
    /// Per channel, in units of `pixel / 255`.
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// The output that holds one score per label.
    pub scores_output: String,
    #[serde(default)]
    pub scores: ScoreKind,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ScoreKind {
    /// Raw scores: the transformer applies softmax.
    #[default]
    Logits,
    /// Already probabilities.
    Probabilities,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelConfig {
    pub name: String,
    /// What the model is, and so which engine runs it.
    pub architecture: Architecture,
    /// Weights file inside the model directory (safetensors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<String>,
    /// Hex sha256 of the weights file; checked when the model is downloaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_sha256: Option<String>,
    /// Rows per batch; 0 means the model has no batch dimension and is never batched.
    #[serde(default)]
    pub max_batch_size: usize,
    /// How long the batcher waits after the oldest request to fill a batch. 0 (the default)
    /// batches only what queued while the model was busy, so a lone request never waits.
    #[serde(default)]
    pub max_queue_delay_us: u64,
    /// May be left out for the built-in image classifiers (`resnet50`, ...), which know theirs.
    #[serde(default)]
    pub inputs: Vec<TensorSpec>,
    #[serde(default)]
    pub outputs: Vec<TensorSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// For image classifiers: how a picture becomes the input, and where the scores come out
    /// (the image transformer reads it from the model's V2 metadata).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImagePreprocessing>,
    /// Serve TensorFlow Serving's encoded-image signature in front of the network: pictures in
    /// as PNG/JPEG bytes (+ a key), prediction and scores out (`encoded_images.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoded_images: Option<crate::encoded_images::EncodedImages>,
    /// Free-form facts about the model (e.g. held-out accuracy), shown in metadata.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub info: serde_json::Map<String, serde_json::Value>,
}

impl ModelConfig {
    pub fn from_json(bytes: &[u8], path: &Path) -> Result<Self, ModelError> {
        let cfg: ModelConfig = serde_json::from_slice(bytes).map_err(|e| ModelError::Config {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    pub fn read(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join(CONFIG_FILE);
        let bytes = std::fs::read(&path).map_err(|e| ModelError::File {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Self::from_json(&bytes, &path)
    }

    fn validate(&self, path: &Path) -> Result<(), ModelError> {
        let bad = |reason: String| ModelError::Config {
            path: path.to_path_buf(),
            reason,
        };
        let completed_at_load = self.architecture.vision().is_some();
        if !completed_at_load && (self.inputs.is_empty() || self.outputs.is_empty()) {
            return Err(bad("a model needs at least one input and one output".into()));
        }
        for spec in self.inputs.iter().chain(&self.outputs) {
            if spec.shape.iter().any(|&d| d < -1 || d == 0) {
                return Err(bad(format!(
                    "tensor '{}': dimensions must be > 0 or -1",
                    spec.name
                )));
            }
        }
        if let Some(img) = &self.image {
            let filled_in_later = completed_at_load && self.outputs.is_empty();
            if !filled_in_later && !self.outputs.iter().any(|o| o.name == img.scores_output) {
                return Err(bad(format!(
                    "image.scores_output '{}' is not one of the outputs",
                    img.scores_output
                )));
            }
            if img.mean.is_empty() || img.mean.len() != img.std.len() {
                return Err(bad(
                    "image.mean and image.std need one value per channel".into()
                ));
            }
        }
        if let Some(w) = &self.weights
            && (w.contains("..") || Path::new(w).is_absolute())
        {
            return Err(bad(format!(
                "weights '{w}' must be a file inside the model directory"
            )));
        }
        Ok(())
    }

    /// The shape as the protocols publish it: with a leading -1 when the model batches.
    pub fn published_shape(&self, spec: &TensorSpec) -> Vec<i64> {
        if self.max_batch_size > 0 {
            std::iter::once(-1)
                .chain(spec.shape.iter().copied())
                .collect()
        } else {
            spec.shape.clone()
        }
    }
}
