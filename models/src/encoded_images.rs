//! TensorFlow Serving's encoded-image signature, as the KServe walkthrough's flowers model has
//! it: clients send each picture's PNG or JPEG bytes and a key
//! (`{"instances": [{"image_bytes": {"b64": "..."}, "key": "1"}]}`), and the model answers
//! `{"prediction": class, "scores": [...], "key": "1"}` per picture. TF Serving decodes inside the
//! graph; Siesta decodes (`image_decode`), resizes and normalises (`siesta-kernels`, the model's
//! `image` block) and runs the network with any engine. `prediction` is the index of the highest
//! score, as the signature's `argmax` is.

use serde::{Deserialize, Serialize};
use siesta_kernels::{ImageTransform, ImageU8, Layout, softmax_in_place};

use crate::config::{ModelConfig, ScoreKind, TensorSpec};
use crate::error::ModelError;
use crate::image_decode::{DecodeError, decode};
use crate::model::Model;
use crate::tensor::{DataType, Tensor, bytes_elements};

/// `encoded_images` in `config.json`: the names the signature serves under.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EncodedImages {
    /// The BYTES input: one encoded picture per row.
    #[serde(default = "defaults::input")]
    pub input: String,
    /// A BYTES input answered back unchanged under the same name (TF Serving's `key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The INT64 output: the index of the highest score.
    #[serde(default = "defaults::prediction")]
    pub prediction: String,
    /// The FP32 output: one probability per class (softmax applied if the network gives logits).
    #[serde(default = "defaults::scores")]
    pub scores: String,
    /// Pictures larger than this many pixels are refused before decoding.
    #[serde(default = "defaults::max_pixels")]
    pub max_pixels: u64,
}

mod defaults {
    pub fn input() -> String {
        "image_bytes".into()
    }
    pub fn prediction() -> String {
        "prediction".into()
    }
    pub fn scores() -> String {
        "scores".into()
    }
    pub fn max_pixels() -> u64 {
        25_000_000
    }
}

/// Where the channels are in an image network's input (without the batch dimension): `[C, H, W]`
/// or `[H, W, C]` with 1 or 3 channels, fixed height and width. `(layout, channels, height,
/// width)`.
pub fn image_input_layout(dims: &[i64]) -> Result<(Layout, u32, u32, u32), String> {
    let [a, b, c] = dims else {
        return Err(format!(
            "shape {dims:?}: an image input is [C, H, W] or [H, W, C]"
        ));
    };
    let (layout, ch, h, w) = if matches!(a, 1 | 3) {
        (Layout::Nchw, *a, *b, *c)
    } else if matches!(c, 1 | 3) {
        (Layout::Nhwc, *c, *a, *b)
    } else {
        return Err(format!("shape {dims:?}: no channel dimension of 1 or 3"));
    };
    if h <= 0 || w <= 0 {
        return Err(format!(
            "shape {dims:?}: an image input needs a fixed height and width"
        ));
    }
    Ok((layout, ch as u32, h as u32, w as u32))
}

/// A network wrapped so that it serves the encoded-image signature.
pub struct EncodedImageModel {
    served: ModelConfig,
    network: Box<dyn Model>,
    signature: EncodedImages,
    transform: ImageTransform,
    layout: Layout,
    input_dims: Vec<usize>,
    scores_at: usize,
    softmax: bool,
}

impl EncodedImageModel {
    pub fn wrap(network: Box<dyn Model>, signature: EncodedImages) -> Result<Self, ModelError> {
        let config = network.config();
        let bad = |reason: String| ModelError::Config {
            path: crate::config::CONFIG_FILE.into(),
            reason: format!("encoded_images: {reason}"),
        };
        let image = config.image.clone().ok_or_else(|| {
            bad("needs the `image` block (resize, mean, std, scores output)".into())
        })?;
        if config.max_batch_size == 0 {
            return Err(bad(
                "the network needs a batch dimension (max_batch_size > 0)".into(),
            ));
        }
        let [input] = config.inputs.as_slice() else {
            return Err(bad(format!(
                "the network must take one input, not {}",
                config.inputs.len()
            )));
        };
        if input.datatype != DataType::F32 {
            return Err(bad(format!(
                "the network's input '{}' must be FP32",
                input.name
            )));
        }
        let (layout, channels, height, width) = image_input_layout(&input.shape)
            .map_err(|e| bad(format!("input '{}': {e}", input.name)))?;
        let transform = ImageTransform {
            resize_shorter: image.resize_shorter,
            crop_height: height,
            crop_width: width,
            mean: image.mean.clone(),
            std: image.std.clone(),
        };
        transform.validate().map_err(|e| bad(e.to_string()))?;
        if transform.channels() != channels {
            return Err(bad(format!(
                "image.mean has {} values; the input has {channels} channels",
                transform.channels()
            )));
        }
        let scores_at = config
            .outputs
            .iter()
            .position(|o| o.name == image.scores_output)
            .ok_or_else(|| bad(format!("no output '{}'", image.scores_output)))?;
        let scores = &config.outputs[scores_at];
        let classes = match scores.shape.as_slice() {
            [n] if *n > 0 && scores.datatype == DataType::F32 => *n,
            _ => {
                return Err(bad(format!(
                    "the scores output '{}' must be FP32 [classes]",
                    scores.name
                )));
            }
        };
        let bytes = |name: &str| TensorSpec {
            name: name.into(),
            datatype: DataType::Bytes,
            shape: Vec::new(),
        };
        let mut served = config.clone();
        served.inputs = std::iter::once(bytes(&signature.input))
            .chain(signature.key.as_deref().map(bytes))
            .collect();
        served.outputs = vec![
            TensorSpec {
                name: signature.prediction.clone(),
                datatype: DataType::I64,
                shape: Vec::new(),
            },
            TensorSpec {
                name: signature.scores.clone(),
                datatype: DataType::F32,
                shape: vec![classes],
            },
        ];
        served.outputs.extend(signature.key.as_deref().map(bytes));
        // The pictures arrive encoded: nothing for an image transformer to do in front.
        served.image = None;
        let input_dims = input.shape.iter().map(|&d| d as usize).collect();
        Ok(EncodedImageModel {
            served,
            softmax: image.scores == ScoreKind::Logits,
            network,
            signature,
            transform,
            layout,
            input_dims,
            scores_at,
        })
    }

    fn pixels(&self, pictures: &Tensor) -> Result<Tensor, ModelError> {
        let elements = bytes_elements(&pictures.data)?;
        let per_image = self.transform.output_len();
        let mut values = vec![0f32; elements.len() * per_image];
        let channels = self.transform.channels();
        for (i, (bytes, out)) in elements
            .iter()
            .zip(values.chunks_exact_mut(per_image))
            .enumerate()
        {
            let bad = |m: String| ModelError::Input(format!("{} {i}: {m}", self.signature.input));
            let (px, height, width) =
                decode(bytes, channels, self.signature.max_pixels).map_err(|e| match e {
                    DecodeError::Invalid(m) => bad(m),
                    DecodeError::TooManyPixels { width, height } => bad(format!(
                        "the picture is {width}x{height}, over {} pixels",
                        self.signature.max_pixels
                    )),
                })?;
            let img = ImageU8::new(&px, height, width, channels).map_err(|e| bad(e.to_string()))?;
            self.transform
                .apply_f32(&img, self.layout, out)
                .map_err(|e| bad(e.to_string()))?;
        }
        let mut shape = vec![elements.len()];
        shape.extend(&self.input_dims);
        let name = &self.network.config().inputs[0].name;
        Ok(Tensor::from_f32(name.clone(), shape, &values))
    }
}

impl Model for EncodedImageModel {
    fn config(&self) -> &ModelConfig {
        &self.served
    }

    fn forward(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, ModelError> {
        let pictures = &inputs[0];
        let rows = pictures.shape.first().copied().unwrap_or(0);
        let pixels = self.pixels(pictures)?;
        let outputs = self.network.forward(std::slice::from_ref(&pixels))?;
        let scores = &outputs[self.scores_at];
        let mut values = scores.to_f32_vec()?;
        let classes = values.len() / rows.max(1);
        let mut prediction = Vec::with_capacity(rows * 8);
        for row in values.chunks_exact_mut(classes.max(1)) {
            if self.softmax {
                softmax_in_place(row);
            }
            // The first of equal maxima, as TensorFlow's argmax.
            let best = row
                .iter()
                .enumerate()
                .fold(0, |best, (i, v)| if *v > row[best] { i } else { best });
            prediction.extend_from_slice(&(best as i64).to_le_bytes());
        }
        let mut answer = vec![
            Tensor::new(
                self.signature.prediction.clone(),
                DataType::I64,
                vec![rows],
                prediction,
            )?,
            Tensor::from_f32(self.signature.scores.clone(), vec![rows, classes], &values),
        ];
        if let (Some(key), Some(sent)) = (&self.signature.key, inputs.get(1)) {
            answer.push(Tensor::new(
                key.clone(),
                DataType::Bytes,
                sent.shape.clone(),
                sent.data.clone(),
            )?);
        }
        Ok(answer)
    }

    fn release_device_memory(&mut self) {
        self.network.release_device_memory();
    }

    fn restore_device_memory(&mut self) -> Result<(), ModelError> {
        self.network.restore_device_memory()
    }

    fn device_memory_bytes(&self) -> u64 {
        self.network.device_memory_bytes()
    }

    fn device_name(&self) -> String {
        self.network.device_name()
    }

    /// Zeros as pixels: an empty picture is a client's error, not a warm-up.
    fn warm_up(&mut self) -> Result<(), ModelError> {
        self.network.warm_up()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::loader::{LoadOptions, ModelSource, load_model};
    use crate::tensor::{DataType, Tensor};

    fn stand_in() -> Box<dyn crate::Model> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("flowers-standin");
        load_model(&ModelSource::Dir(dir), &LoadOptions::default()).unwrap()
    }

    fn bytes_tensor(name: &str, elements: &[&[u8]]) -> Tensor {
        let mut data = Vec::new();
        for e in elements {
            data.extend_from_slice(&(e.len() as u32).to_le_bytes());
            data.extend_from_slice(e);
        }
        Tensor::new(name, DataType::Bytes, vec![elements.len()], data).unwrap()
    }

    fn png(pixels: &[u8], width: u32, height: u32) -> Vec<u8> {
        let img = image::GrayImage::from_raw(width, height, pixels.to_vec()).unwrap();
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    /// PNG's chunk checksum (CRC-32, IEEE).
    fn crc32(bytes: &[u8]) -> u32 {
        !bytes.iter().fold(!0u32, |crc, b| {
            (0..8).fold(crc ^ u32::from(*b), |c, _| {
                if c & 1 == 1 {
                    (c >> 1) ^ 0xEDB8_8320
                } else {
                    c >> 1
                }
            })
        })
    }

    #[test]
    fn the_flowers_stand_in_is_the_shipped_mnist_model() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert!(
            std::fs::read(root.join("flowers-standin/model.safetensors")).unwrap()
                == std::fs::read(root.join("mnist/model.safetensors")).unwrap(),
            "retrained MNIST weights: copy them to models/flowers-standin too"
        );
    }

    #[test]
    fn pictures_in_prediction_scores_and_key_out() {
        let mut model = stand_in();
        let names: Vec<_> = model
            .config()
            .inputs
            .iter()
            .map(|i| i.name.as_str())
            .collect();
        assert_eq!(names, ["image_bytes", "key"]);
        // A held-out digit drawn at 56x56: resized to 28x28 on the way in.
        let digits = crate::digits::load_digits().unwrap();
        let held_out = &digits[(0..digits.len())
            .find(|i| crate::digits::is_held_out(*i))
            .unwrap()];
        let (digit, label) = (
            crate::mnist::digit_to_mnist(&held_out.pixels),
            held_out.label,
        );
        let big: Vec<u8> = (0..56 * 56)
            .map(|i| (digit[(i / 56 / 2) * 28 + (i % 56) / 2] * 255.0).round() as u8)
            .collect();
        let blank = png(&[0; 28 * 28], 28, 28);
        let out = model
            .forward(&[
                bytes_tensor("image_bytes", &[&png(&big, 56, 56), &blank]),
                bytes_tensor("key", &[b"a", b"b"]),
            ])
            .unwrap();
        let names: Vec<_> = out.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["prediction", "scores", "key"]);
        let prediction = i64::from_le_bytes(out[0].data[..8].try_into().unwrap());
        assert_eq!(prediction, i64::from(label));
        let scores = out[1].to_f32_vec().unwrap();
        assert_eq!(out[1].shape, [2, 10]);
        assert!((scores[..10].iter().sum::<f32>() - 1.0).abs() < 1e-4);
        assert_eq!(out[2].data, bytes_tensor("key", &[b"a", b"b"]).data);
    }

    #[test]
    fn what_is_not_a_picture_is_the_clients_error_naming_the_row() {
        let mut model = stand_in();
        let good = png(&[0; 28 * 28], 28, 28);
        // A PNG header claiming 100000 x 100000 pixels: refused before decoding.
        let mut bomb = good.clone();
        bomb[16..24].copy_from_slice(&[0, 1, 0x86, 0xa0, 0, 1, 0x86, 0xa0]);
        let crc = crc32(&bomb[12..29]);
        bomb[29..33].copy_from_slice(&crc.to_be_bytes());
        for (bad, want) in [
            (
                &b"not a picture"[..],
                "image_bytes 1: not a JPEG or PNG image",
            ),
            (
                &b"GIF89a"[..],
                "image_bytes 1: cannot read the image: The image format Gif",
            ),
            (&good[..good.len() / 2], "image_bytes 1: cannot decode"),
            (&bomb[..], "image_bytes 1: the picture is 100000x100000"),
            (&b""[..], "image_bytes 1:"),
        ] {
            let err = model
                .forward(&[
                    bytes_tensor("image_bytes", &[&good, bad]),
                    bytes_tensor("key", &[b"a", b"b"]),
                ])
                .unwrap_err();
            assert!(
                matches!(err, crate::ModelError::Input(_)) && err.to_string().contains(want),
                "{err}"
            );
        }
    }
}
