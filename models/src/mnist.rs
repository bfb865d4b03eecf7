//! The MNIST-shaped CNN (1x28x28 in, 10 classes out) that Siesta ships as its default model.
//!
//! Input: pixel intensities in [0, 1] (torchvision `ToTensor` convention), shape [N, 1, 28, 28].
//! The network normalises with MNIST's mean/std itself, so clients send plain pixels.

use candle_core::{D, Module, Tensor as CTensor};
use candle_nn::{Conv2d, Conv2dConfig, Linear, VarBuilder, conv2d, linear};

use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::model::Model;
use crate::resident::{ResidentWeights, device_name};
use crate::tensor::{DataType, Tensor};

pub const SIDE: usize = 28;
const MEAN: f64 = 0.1307;
const STD: f64 = 0.3081;

pub struct MnistCnn {
    conv1: Conv2d,
    conv2: Conv2d,
    fc1: Linear,
    fc2: Linear,
}

impl MnistCnn {
    pub fn new(vb: VarBuilder<'_>) -> candle_core::Result<Self> {
        let pad = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        Ok(MnistCnn {
            conv1: conv2d(1, 16, 3, pad, vb.pp("conv1"))?,
            conv2: conv2d(16, 32, 3, pad, vb.pp("conv2"))?,
            fc1: linear(32 * 7 * 7, 64, vb.pp("fc1"))?,
            fc2: linear(64, 10, vb.pp("fc2"))?,
        })
    }

    /// Logits, [N, 10].
    pub fn logits(&self, x: &CTensor) -> candle_core::Result<CTensor> {
        let x = ((x - MEAN)? / STD)?;
        let x = self.conv1.forward(&x)?.relu()?.max_pool2d(2)?;
        let x = self.conv2.forward(&x)?.relu()?.max_pool2d(2)?;
        let x = x.flatten_from(1)?;
        let x = self.fc1.forward(&x)?.relu()?;
        self.fc2.forward(&x)
    }
}

/// The served model: probabilities and the arg-max class for each row.
pub struct MnistModel {
    config: ModelConfig,
    weights: ResidentWeights<MnistCnn>,
}

impl MnistModel {
    pub fn new(config: ModelConfig, weights: ResidentWeights<MnistCnn>) -> Self {
        MnistModel { config, weights }
    }
}

impl Model for MnistModel {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn forward(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, ModelError> {
        let input = inputs
            .first()
            .ok_or_else(|| ModelError::Input("missing input".into()))?;
        let n = input.shape.first().copied().unwrap_or(0);
        let values = input.to_f32_vec()?;
        let device = self.weights.device().clone();
        let x = CTensor::from_vec(values, (n, 1, SIDE, SIDE), &device)?;
        let net = self.weights.get()?;
        let probs = candle_nn::ops::softmax(&net.logits(&x)?, D::Minus1)?;
        let classes: Vec<i64> = probs
            .argmax(D::Minus1)?
            .to_vec1::<u32>()?
            .into_iter()
            .map(i64::from)
            .collect();
        let probs: Vec<f32> = probs.flatten_all()?.to_vec1()?;
        let mut out = Vec::with_capacity(self.config.outputs.len());
        for spec in &self.config.outputs {
            out.push(match spec.datatype {
                DataType::F32 => Tensor::from_f32(&spec.name, vec![n, 10], &probs),
                DataType::I64 => Tensor::new(
                    &spec.name,
                    DataType::I64,
                    vec![n],
                    classes.iter().flat_map(|c| c.to_le_bytes()).collect(),
                )?,
                other => {
                    return Err(ModelError::Inference(format!(
                        "mnist_cnn output '{}' cannot be {other}",
                        spec.name
                    )));
                }
            });
        }
        Ok(out)
    }

    fn release_device_memory(&mut self) {
        self.weights.release();
    }

    fn restore_device_memory(&mut self) -> Result<(), ModelError> {
        self.weights.restore()
    }

    fn device_memory_bytes(&self) -> u64 {
        self.weights.device_bytes()
    }

    fn device_name(&self) -> String {
        device_name(self.weights.device())
    }
}

/// Turns one scikit-learn digit (8x8, values 0..16) into an MNIST-style 28x28 image in [0, 1]:
/// bilinear upscaling into a 20x20 box centred in the frame, as MNIST centres its digits.
pub fn digit_to_mnist(pixels: &[f32; 64]) -> Vec<f32> {
    const BOX: usize = 20;
    const OFFSET: usize = (SIDE - BOX) / 2;
    let mut out = vec![0.0f32; SIDE * SIDE];
    let scale = 8.0 / BOX as f32;
    for y in 0..BOX {
        for x in 0..BOX {
            // align_corners = false sampling, clamped at the edges.
            let sy = ((y as f32 + 0.5) * scale - 0.5).clamp(0.0, 7.0);
            let sx = ((x as f32 + 0.5) * scale - 0.5).clamp(0.0, 7.0);
            let (y0, x0) = (sy.floor() as usize, sx.floor() as usize);
            let (y1, x1) = ((y0 + 1).min(7), (x0 + 1).min(7));
            let (fy, fx) = (sy - y0 as f32, sx - x0 as f32);
            let p = |yy: usize, xx: usize| pixels[yy * 8 + xx] / 16.0;
            let top = p(y0, x0) * (1.0 - fx) + p(y0, x1) * fx;
            let bottom = p(y1, x0) * (1.0 - fx) + p(y1, x1) * fx;
            out[(y + OFFSET) * SIDE + x + OFFSET] = top * (1.0 - fy) + bottom * fy;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digit_upscaling_keeps_range_and_centres_the_digit() {
        let mut px = [0.0f32; 64];
        px[27] = 16.0; // row 3, col 3
        let img = digit_to_mnist(&px);
        assert!(img.iter().all(|v| (0.0..=1.0).contains(v)));
        for y in 0..SIDE {
            for x in 0..SIDE {
                if !(4..24).contains(&y) || !(4..24).contains(&x) {
                    assert_eq!(img[y * SIDE + x], 0.0, "border pixel ({y},{x})");
                }
            }
        }
        assert!(img.iter().any(|&v| v > 0.5));
    }
}
