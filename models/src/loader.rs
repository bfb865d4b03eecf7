//! Builds a [`Model`] from a model directory (or the embedded default): reads `config.json`,
//! picks the architecture and loads the weights into host memory, then onto the device.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor as CTensor};

use crate::architecture::Architecture;
use crate::config::{CONFIG_FILE, ModelConfig};
use crate::device::DeviceSpec;
use crate::embedded;
use crate::encoded_images::EncodedImageModel;
use crate::engine::{self, Engine};
use crate::error::ModelError;
use crate::identity::IdentityModel;
use crate::mnist::{MnistCnn, MnistModel};
use crate::model::Model;
use crate::onnx::OnnxModel;
use crate::precision::Precision;
use crate::resident::ResidentWeights;
use crate::vision::{self, VisionModel};
use crate::{labels, mar, state_dict};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// The MNIST CNN compiled into the binary.
    EmbeddedMnist,
    /// A local model directory (already resolved from its storage URI).
    Dir(PathBuf),
}

/// What the server's flags change in a model's own config.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    pub name: Option<String>,
    pub max_batch_size: Option<usize>,
    pub max_queue_delay_us: Option<u64>,
    pub device: DeviceSpec,
    /// KServe's `modelFormat.name`, checked against what the directory holds.
    pub model_format: Option<String>,
    /// Forces an engine (the manifest's `runtime`).
    pub engine: Option<Engine>,
    /// What the model computes in (`--precision`).
    pub precision: Precision,
}

pub fn load_model(source: &ModelSource, opts: &LoadOptions) -> Result<Box<dyn Model>, ModelError> {
    let network = load_network(source, opts)?;
    match network.config().encoded_images.clone() {
        Some(signature) => Ok(Box::new(EncodedImageModel::wrap(network, signature)?)),
        None => Ok(network),
    }
}

/// The model as its engine runs it, before any signature is put in front.
fn load_network(source: &ModelSource, opts: &LoadOptions) -> Result<Box<dyn Model>, ModelError> {
    let unpacked;
    let source = match source {
        ModelSource::Dir(dir) => match mar::find_archive(dir, opts.name.as_deref())? {
            Some(archive) => {
                unpacked = ModelSource::Dir(mar::unpack(&archive)?);
                &unpacked
            }
            None => source,
        },
        ModelSource::EmbeddedMnist => source,
    };
    // A bare ONNX file's session, built while its config was read from the graph.
    let mut onnx_prepared = None;
    let (mut config, weights) = match source {
        ModelSource::EmbeddedMnist => {
            let config = ModelConfig::from_json(
                embedded::MNIST_CONFIG,
                Path::new("<embedded>/config.json"),
            )?;
            (config, WeightsFrom::Buffer(embedded::MNIST_WEIGHTS))
        }
        ModelSource::Dir(dir) => {
            let bare = if dir.join(CONFIG_FILE).exists() {
                None
            } else {
                match OnnxModel::config_for_bare_dir(dir, opts.device)? {
                    Some((c, session)) => {
                        onnx_prepared = Some(session);
                        Some((c, None))
                    }
                    None => vision_config_for_bare_dir(dir)?,
                }
            };
            let (mut config, recognised_from) = match bare {
                Some((c, weights)) => (c, weights),
                None => (ModelConfig::read(dir)?, None),
            };
            if config.labels.is_empty() {
                config.labels = labels::index_to_name(dir)?;
            }
            let weights = match (&config.weights, recognised_from) {
                // Read once to recognise the architecture: not read again.
                (Some(file), Some(loaded)) => WeightsFrom::Loaded(dir.join(file), loaded),
                (Some(file), None) => WeightsFrom::File(dir.join(file)),
                (None, _) => WeightsFrom::None,
            };
            (config, weights)
        }
    };
    // Built-in image classifiers learn their class count from the weights, so their config is
    // completed before the server's flags apply.
    let mut vision = match config.architecture.vision() {
        Some(arch) => {
            let host = weights.load()?;
            if let Some(variant) = arch.variant_of(&host) {
                return Err(ModelError::File {
                    path: weights.path(),
                    reason: format!("{}, not {}", export_instead(&variant), arch.name()),
                });
            }
            let classes = arch.classes(&host, &weights.path())?;
            vision::complete_config(
                &mut config,
                arch,
                classes,
                &weights.path().with_file_name(CONFIG_FILE),
            )?;
            Some((arch, classes, host))
        }
        None => None,
    };
    let dir = match source {
        ModelSource::Dir(d) => d.as_path(),
        ModelSource::EmbeddedMnist => Path::new("<embedded>"),
    };
    if let Some(format) = &opts.model_format {
        engine::check_format(format, &config, dir)?;
    }
    if let Some(forced) = opts.engine {
        engine::force(forced, &mut config, dir)?;
        if forced != Engine::Candle {
            vision = None;
        }
    }
    if let Some(name) = &opts.name {
        config.name.clone_from(name);
    }
    if let Some(n) = opts.max_batch_size {
        if config.max_batch_size == 0 && n > 0 {
            return Err(ModelError::Config {
                path: PathBuf::from(CONFIG_FILE),
                reason: format!(
                    "model '{}' has no batch dimension (max_batch_size 0)",
                    config.name
                ),
            });
        }
        config.max_batch_size = n;
    }
    if let Some(us) = opts.max_queue_delay_us {
        config.max_queue_delay_us = us;
    }
    let half_capable = vision.is_some() || config.architecture == Architecture::TorchScript;
    if opts.precision != Precision::F32 && !half_capable {
        return Err(ModelError::Config {
            path: PathBuf::from(CONFIG_FILE),
            reason: format!(
                "precision {} is for the torchvision classifiers and TorchScript models; \
                 '{}' computes in f32",
                opts.precision, config.architecture
            ),
        });
    }
    match config.architecture {
        Architecture::MnistCnn => {
            let device = opts.device.resolve()?;
            let host = weights.load()?;
            let resident = ResidentWeights::new(host, device, Box::new(MnistCnn::new))?;
            Ok(Box::new(MnistModel::new(config, resident)))
        }
        Architecture::Vision(_) => {
            let Some((arch, classes, host)) = vision else {
                return Err(ModelError::Config {
                    path: PathBuf::from(CONFIG_FILE),
                    reason: "the candle engine builds the torchvision classifiers".into(),
                });
            };
            let device = opts.device.resolve()?;
            let built = VisionModel::new(
                config,
                arch,
                classes,
                host,
                device,
                crate::precision::dtype(opts.precision),
            );
            // Building the network is where a state dict that does not fit shows: a load error
            // naming the file, not an inference one.
            let model = built.map_err(|e| match e {
                ModelError::Inference(reason) => ModelError::File {
                    path: weights.path(),
                    reason: format!("does not fit {}: {reason}", arch.name()),
                },
                other => other,
            })?;
            Ok(Box::new(model))
        }
        Architecture::Identity => Ok(Box::new(IdentityModel::new(config)?)),
        Architecture::TorchScript => {
            let ModelSource::Dir(dir) = source else {
                return Err(ModelError::UnknownArchitecture(
                    "torchscript (embedded)".into(),
                ));
            };
            let file = dir.join(config.weights.as_deref().unwrap_or("model.pt"));
            load_torchscript(config, &file, opts.device, opts.precision)
        }
        Architecture::Onnx => {
            let ModelSource::Dir(dir) = source else {
                return Err(ModelError::UnknownArchitecture("onnx (embedded)".into()));
            };
            let file = OnnxModel::file(dir, &config);
            Ok(Box::new(OnnxModel::load(
                config,
                &file,
                opts.device,
                onnx_prepared,
            )?))
        }
    }
}

#[cfg(feature = "torch")]
fn load_torchscript(
    config: ModelConfig,
    file: &Path,
    device: DeviceSpec,
    precision: Precision,
) -> Result<Box<dyn Model>, ModelError> {
    Ok(Box::new(crate::torchscript::TorchScriptModel::load(
        config, file, device, precision,
    )?))
}

#[cfg(not(feature = "torch"))]
fn load_torchscript(
    _config: ModelConfig,
    file: &Path,
    _device: DeviceSpec,
    _precision: Precision,
) -> Result<Box<dyn Model>, ModelError> {
    Err(ModelError::File {
        path: file.to_path_buf(),
        reason: "TorchScript needs libtorch: this siesta was built without the `torch` feature \
                 (cargo build --release --features torch, see the README)"
            .into(),
    })
}

enum WeightsFrom {
    Buffer(&'static [u8]),
    File(PathBuf),
    Loaded(PathBuf, HashMap<String, CTensor>),
    None,
}

impl WeightsFrom {
    fn load(&self) -> Result<HashMap<String, CTensor>, ModelError> {
        match self {
            WeightsFrom::Buffer(b) => candle_core::safetensors::load_buffer(b, &Device::Cpu)
                .map_err(|e| ModelError::File {
                    path: PathBuf::from("<embedded>/model.safetensors"),
                    reason: e.to_string(),
                }),
            WeightsFrom::File(path) => state_dict::load(path),
            WeightsFrom::Loaded(_, tensors) => Ok(tensors.clone()),
            WeightsFrom::None => Err(ModelError::Config {
                path: PathBuf::from(CONFIG_FILE),
                reason: "this architecture needs a `weights` file".into(),
            }),
        }
    }

    fn path(&self) -> PathBuf {
        match self {
            WeightsFrom::Buffer(_) => PathBuf::from("<embedded>/model.safetensors"),
            WeightsFrom::File(p) | WeightsFrom::Loaded(p, _) => p.clone(),
            WeightsFrom::None => PathBuf::from(CONFIG_FILE),
        }
    }
}

/// Weights files a directory without `config.json` may hold, most specific first.
const BARE_WEIGHTS: [&str; 4] = ["model.safetensors", "model.pth", "model.pt", "model.bin"];

/// A directory holding only a torchvision state dict: the architecture is recognised from its
/// module names. The weights read to recognise it are handed back, so loading reads them once.
type Recognised = (ModelConfig, Option<HashMap<String, CTensor>>);

fn vision_config_for_bare_dir(dir: &Path) -> Result<Option<Recognised>, ModelError> {
    let Some(file) = BARE_WEIGHTS
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
    else {
        return Ok(None);
    };
    let weights = state_dict::load(&file)?;
    let keys = || weights.keys().map(String::as_str);
    let arch = vision::Arch::guess(keys()).ok_or_else(|| ModelError::File {
        path: file.clone(),
        reason: match vision::other_family(keys()) {
            Some(family) => export_instead(family),
            None => format!(
                "no config.json, and the state dict is not one Siesta recognises ({}); add a \
                 config.json naming the architecture",
                Architecture::vision_names()
            ),
        },
    })?;
    let name = dir
        .file_name()
        .map_or("model".into(), |n| n.to_string_lossy().into_owned());
    let config = serde_json::json!({
        "name": name,
        "architecture": arch.name(),
        "weights": file.file_name().map(|f| f.to_string_lossy().into_owned()),
    });
    let config = ModelConfig::from_json(config.to_string().as_bytes(), &dir.join(CONFIG_FILE))?;
    Ok(Some((config, Some(weights))))
}

/// What a state dict of a torchvision family Siesta does not build gets told.
fn export_instead(family: &str) -> String {
    format!(
        "a torchvision {family} state dict: Siesta builds {} from state dicts; export it to ONNX \
         (torch.onnx.export) or TorchScript (torch.jit.trace) and serve that file",
        Architecture::vision_names()
    )
}
