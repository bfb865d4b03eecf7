//! Built-in image classifiers with torchvision's module names, so a `state_dict()` saved from
//! torchvision (as safetensors or with `torch.save`) loads as is: ResNet-18/34/50/101/152,
//! MobileNetV2 and Inception v3. A config may name only the architecture and the weights file;
//! the input, the output (one logit per class, the class count read from the weights) and the
//! preprocessing come from torchvision's defaults for that architecture.

mod cpu_conv;
mod families;
mod inception_v3;
mod layers;
mod mobilenet_v2;
mod pixels;
mod resnet;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Module, Tensor as CTensor};
use candle_nn::VarBuilder;

use crate::config::{ImagePreprocessing, ModelConfig, ScoreKind, TensorSpec};
use crate::error::ModelError;
use crate::model::Model;
use crate::resident::{ResidentWeights, device_name};
use crate::tensor::{DataType, Tensor};

pub use families::other_family;
pub use resnet::Depth;

const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
const INPUT: &str = "input";
const OUTPUT: &str = "logits";
const DEFAULT_MAX_BATCH: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    ResNet(Depth),
    MobileNetV2,
    InceptionV3,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::ResNet(Depth::D18) => "resnet18",
            Arch::ResNet(Depth::D34) => "resnet34",
            Arch::ResNet(Depth::D50) => "resnet50",
            Arch::ResNet(Depth::D101) => "resnet101",
            Arch::ResNet(Depth::D152) => "resnet152",
            Arch::MobileNetV2 => "mobilenet_v2",
            Arch::InceptionV3 => "inception_v3",
        }
    }

    /// Recognises a torchvision state dict by its module names.
    pub fn guess<'a>(keys: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        let keys: Vec<&str> = keys.into_iter().collect();
        let has = |k: &str| keys.contains(&k);
        if has("Mixed_7c.branch_pool.conv.weight") {
            return Some(Arch::InceptionV3);
        }
        if has("features.18.0.weight") && has("classifier.1.weight") {
            return Some(Arch::MobileNetV2);
        }
        if !has("fc.weight") || !has("layer4.0.conv1.weight") {
            return None;
        }
        let blocks = |layer: usize| {
            let prefix = format!("layer{layer}.");
            keys.iter()
                .filter_map(|k| {
                    k.strip_prefix(&prefix)?
                        .split('.')
                        .next()?
                        .parse::<usize>()
                        .ok()
                })
                .max()
                .map_or(0, |m| m + 1)
        };
        let bottleneck = has("layer1.0.conv3.weight");
        let depth = match ([blocks(1), blocks(2), blocks(3), blocks(4)], bottleneck) {
            ([2, 2, 2, 2], false) => Depth::D18,
            ([3, 4, 6, 3], false) => Depth::D34,
            ([3, 4, 6, 3], true) => Depth::D50,
            ([3, 4, 23, 3], true) => Depth::D101,
            ([3, 8, 36, 3], true) => Depth::D152,
            _ => return None,
        };
        Some(Arch::ResNet(depth))
    }

    /// torchvision's evaluation transforms for the architecture: (resize, crop).
    fn sizes(self) -> (u32, i64) {
        match self {
            Arch::InceptionV3 => (342, 299),
            _ => (256, 224),
        }
    }

    /// Per-channel normalisation. Inception v3 is built with `transform_input=False`; torchvision's
    /// pretrained Inception weights expect `transform_input=True`, which is the same as feeding
    /// pixels normalised with mean = std = 0.5, so that is the default here.
    fn normalisation(self) -> (Vec<f32>, Vec<f32>) {
        match self {
            Arch::InceptionV3 => (vec![0.5; 3], vec![0.5; 3]),
            _ => (IMAGENET_MEAN.to_vec(), IMAGENET_STD.to_vec()),
        }
    }

    fn classifier_key(self) -> &'static str {
        match self {
            Arch::MobileNetV2 => "classifier.1.weight",
            _ => "fc.weight",
        }
    }

    fn features(self) -> usize {
        match self {
            Arch::ResNet(d) => d.features(),
            Arch::MobileNetV2 => mobilenet_v2::FEATURES,
            Arch::InceptionV3 => inception_v3::FEATURES,
        }
    }

    /// Classes, read from the classifier's weight: `[classes, features]`.
    pub fn classes(
        self,
        weights: &HashMap<String, CTensor>,
        file: &Path,
    ) -> Result<usize, ModelError> {
        let key = self.classifier_key();
        let bad = |reason: String| ModelError::File {
            path: file.to_path_buf(),
            reason,
        };
        let w = weights.get(key).ok_or_else(|| {
            bad(format!(
                "no '{key}' tensor: not a torchvision {} state dict",
                self.name()
            ))
        })?;
        match w.dims() {
            &[classes, features] if features == self.features() => Ok(classes),
            dims => Err(bad(format!(
                "'{key}' has shape {dims:?}; {} needs [classes, {}]",
                self.name(),
                self.features()
            ))),
        }
    }

    /// torchvision families that share an architecture's module names but not its shapes (so
    /// [`Arch::guess`] cannot tell them apart): ResNeXt's grouped and Wide ResNet's widened
    /// bottlenecks. Named so the load error can say what was found, instead of a shape mismatch.
    pub fn variant_of(self, weights: &HashMap<String, CTensor>) -> Option<String> {
        let Arch::ResNet(depth) = self else {
            return None;
        };
        if !depth.bottleneck() {
            return None;
        }
        let conv2 = weights.get("layer1.0.conv2.weight")?;
        let &[width, per_group, _, _] = conv2.dims() else {
            return None;
        };
        if per_group != width && per_group > 0 {
            Some(format!(
                "ResNeXt (grouped 3x3 convolutions: {} groups of {per_group} channels)",
                width / per_group
            ))
        } else if width != 64 {
            Some(format!(
                "Wide ResNet (bottleneck width {width} in layer1; {}'s is 64)",
                self.name()
            ))
        } else {
            None
        }
    }

    fn build(self, vb: VarBuilder<'_>, classes: usize) -> candle_core::Result<Net> {
        Ok(match self {
            Arch::ResNet(d) => Net::ResNet(resnet::ResNet::new(vb, d, classes)?),
            Arch::MobileNetV2 => Net::MobileNetV2(mobilenet_v2::MobileNetV2::new(vb, classes)?),
            Arch::InceptionV3 => Net::InceptionV3(inception_v3::InceptionV3::new(vb, classes)?),
        })
    }
}

/// Fills what the config leaves out with the architecture's defaults and checks what it gives:
/// one FP32 `[3, H, W]` input (normalised pixels) or one UINT8 `[H, W, 3]` input (raw pixels,
/// normalised by the replica), and one FP32 `[classes]` output.
pub fn complete_config(
    config: &mut ModelConfig,
    arch: Arch,
    classes: usize,
    config_path: &Path,
) -> Result<(), ModelError> {
    let (resize, side) = arch.sizes();
    if config.inputs.is_empty() {
        config.inputs = vec![TensorSpec {
            name: INPUT.into(),
            datatype: DataType::F32,
            shape: vec![3, side, side],
        }];
        if config.max_batch_size == 0 {
            config.max_batch_size = DEFAULT_MAX_BATCH;
        }
    }
    if config.outputs.is_empty() {
        config.outputs = vec![TensorSpec {
            name: OUTPUT.into(),
            datatype: DataType::F32,
            shape: vec![classes as i64],
        }];
    }
    let bad = |reason: String| ModelError::Config {
        path: config_path.to_path_buf(),
        reason: format!("{}: {reason}", arch.name()),
    };
    let batch_dim = usize::from(config.max_batch_size == 0);
    match config.inputs.as_slice() {
        [i] if i.datatype == DataType::F32
            && i.shape.len() == 3 + batch_dim
            && i.shape[i.shape.len() - 3] == 3
            && i.shape[i.shape.len() - 2..].iter().all(|&d| d >= 75) => {}
        [i] if i.datatype == DataType::U8
            && i.shape.len() == 3 + batch_dim
            && i.shape[i.shape.len() - 1] == 3
            && i.shape[i.shape.len() - 3..i.shape.len() - 1]
                .iter()
                .all(|&d| d > 0) => {}
        _ => {
            return Err(bad(
                "needs one FP32 input shaped [3, H, W] (H, W >= 75), NCHW, or one UINT8 input \
                 shaped [H, W, 3] (raw pixels, fixed H and W)"
                    .into(),
            ));
        }
    }
    match config.outputs.as_slice() {
        [o] if o.datatype == DataType::F32 && o.shape.last() == Some(&(classes as i64)) => {}
        _ => {
            return Err(bad(format!(
                "needs one FP32 output shaped [{classes}] (the weights have {classes} classes)"
            )));
        }
    }
    if config.image.is_none() {
        let (mean, std) = arch.normalisation();
        config.image = Some(ImagePreprocessing {
            resize_shorter: resize,
            mean,
            std,
            scores_output: config.outputs[0].name.clone(),
            scores: ScoreKind::Logits,
        });
    }
    Ok(())
}

pub enum Net {
    ResNet(resnet::ResNet),
    MobileNetV2(mobilenet_v2::MobileNetV2),
    InceptionV3(inception_v3::InceptionV3),
}

impl Module for Net {
    fn forward(&self, x: &CTensor) -> candle_core::Result<CTensor> {
        match self {
            Net::ResNet(n) => n.forward(x),
            Net::MobileNetV2(n) => n.forward(x),
            Net::InceptionV3(n) => n.forward(x),
        }
    }
}

pub struct VisionModel {
    config: ModelConfig,
    weights: ResidentWeights<Net>,
    /// Set when the input is UINT8 pixels.
    pixels: Option<pixels::PixelInput>,
}

impl VisionModel {
    /// `host` holds the state dict; `config` has been through [`complete_config`].
    pub fn new(
        config: ModelConfig,
        arch: Arch,
        classes: usize,
        host: HashMap<String, CTensor>,
        device: candle_core::Device,
        dtype: candle_core::DType,
    ) -> Result<Self, ModelError> {
        let pixels = match (config.inputs.first(), &config.image) {
            (Some(i), Some(img)) if i.datatype == DataType::U8 => Some(pixels::PixelInput::new(
                arch.sizes().1 as u32,
                img.mean.clone(),
                img.std.clone(),
            )?),
            _ => None,
        };
        let weights = ResidentWeights::with_dtype(
            host,
            device,
            dtype,
            Box::new(move |vb| arch.build(vb, classes)),
        )?;
        Ok(VisionModel {
            config,
            weights,
            pixels,
        })
    }
}

impl Model for VisionModel {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn forward(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, ModelError> {
        let input = inputs
            .first()
            .ok_or_else(|| ModelError::Input("missing input".into()))?;
        let dims: Vec<usize> = input.shape.clone();
        let device = self.weights.device().clone();
        let dtype = self.weights.dtype();
        let (n, x) = match &mut self.pixels {
            Some(pixels) => {
                let x = pixels.network_input(input, &device, dtype)?;
                (x.dim(0)?, x)
            }
            None => {
                let (n, c, h, w) = match dims.as_slice() {
                    &[n, c, h, w] => (n, c, h, w),
                    &[c, h, w] => (1, c, h, w),
                    other => {
                        return Err(ModelError::Input(format!(
                            "expected [N, 3, H, W], got {other:?}"
                        )));
                    }
                };
                let x = CTensor::from_vec(input.to_f32_vec()?, (n, c, h, w), &device)?;
                (n, x.to_dtype(dtype)?)
            }
        };
        let logits = self
            .weights
            .get()?
            .forward(&x)?
            .to_dtype(candle_core::DType::F32)?;
        let classes = logits.dim(1)?;
        let values: Vec<f32> = logits.flatten_all()?.to_vec1()?;
        let spec = &self.config.outputs[0];
        let shape = if dims.len() == 4 {
            vec![n, classes]
        } else {
            vec![classes]
        };
        Ok(vec![Tensor::from_f32(&spec.name, shape, &values)])
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

#[cfg(test)]
mod tests {
    use super::*;

    fn resnet_keys(blocks: [usize; 4], bottleneck: bool) -> Vec<String> {
        let mut keys = vec!["conv1.weight".to_string(), "fc.weight".to_string()];
        for (l, n) in blocks.iter().enumerate() {
            for b in 0..*n {
                keys.push(format!("layer{}.{b}.conv1.weight", l + 1));
                if bottleneck {
                    keys.push(format!("layer{}.{b}.conv3.weight", l + 1));
                }
            }
        }
        keys
    }

    #[test]
    fn state_dicts_are_recognised_by_their_module_names() {
        let cases = [
            (
                resnet_keys([2, 2, 2, 2], false),
                Some(Arch::ResNet(Depth::D18)),
            ),
            (
                resnet_keys([3, 4, 6, 3], false),
                Some(Arch::ResNet(Depth::D34)),
            ),
            (
                resnet_keys([3, 4, 6, 3], true),
                Some(Arch::ResNet(Depth::D50)),
            ),
            (
                resnet_keys([3, 4, 23, 3], true),
                Some(Arch::ResNet(Depth::D101)),
            ),
            (resnet_keys([1, 1, 1, 1], false), None),
            (
                vec!["features.18.0.weight".into(), "classifier.1.weight".into()],
                Some(Arch::MobileNetV2),
            ),
            (
                vec!["Mixed_7c.branch_pool.conv.weight".into()],
                Some(Arch::InceptionV3),
            ),
            (vec!["conv1.weight".into(), "fc1.weight".into()], None),
        ];
        for (keys, want) in cases {
            assert_eq!(
                Arch::guess(keys.iter().map(String::as_str)),
                want,
                "{keys:?}"
            );
        }
    }

    #[test]
    fn resnext_and_wide_resnet_are_told_apart_from_resnet50_by_their_shapes() {
        let with_conv2 = |dims: (usize, usize, usize, usize)| {
            let t =
                CTensor::zeros(dims, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
            HashMap::from([("layer1.0.conv2.weight".to_string(), t)])
        };
        let r50 = Arch::ResNet(Depth::D50);
        assert_eq!(r50.variant_of(&with_conv2((64, 64, 3, 3))), None);
        assert!(
            r50.variant_of(&with_conv2((128, 4, 3, 3)))
                .unwrap()
                .contains("ResNeXt (grouped 3x3 convolutions: 32 groups")
        );
        assert!(
            r50.variant_of(&with_conv2((128, 128, 3, 3)))
                .unwrap()
                .contains("Wide ResNet")
        );
        assert_eq!(
            Arch::ResNet(Depth::D18).variant_of(&with_conv2((128, 4, 3, 3))),
            None
        );
    }

    #[test]
    fn a_config_naming_only_the_architecture_gets_torchvision_defaults() {
        let mut cfg: ModelConfig = serde_json::from_str(
            r#"{"name":"r","architecture":"resnet50","weights":"w.safetensors"}"#,
        )
        .unwrap();
        complete_config(
            &mut cfg,
            Arch::ResNet(Depth::D50),
            5,
            Path::new("config.json"),
        )
        .unwrap();
        assert_eq!(cfg.inputs[0].shape, vec![3, 224, 224]);
        assert_eq!(cfg.outputs[0].shape, vec![5]);
        assert_eq!(cfg.max_batch_size, DEFAULT_MAX_BATCH);
        let img = cfg.image.unwrap();
        assert_eq!((img.resize_shorter, img.mean[0]), (256, 0.485));

        let mut cfg: ModelConfig = serde_json::from_str(
            r#"{"name":"r","architecture":"resnet50","max_batch_size":4,
                "inputs":[{"name":"x","datatype":"FP32","shape":[3,224,224]}],
                "outputs":[{"name":"y","datatype":"FP32","shape":[1000]}]}"#,
        )
        .unwrap();
        let err = complete_config(
            &mut cfg,
            Arch::ResNet(Depth::D50),
            5,
            Path::new("config.json"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("config.json") && err.contains("[5]"), "{err}");
    }
}
