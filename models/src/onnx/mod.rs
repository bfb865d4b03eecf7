//! ONNX models through ONNX Runtime (`ort`, the library loaded at run time, see [`library`]): the
//! engine for `modelFormat: onnx` and for TensorFlow models (SavedModels are converted to ONNX
//! once, [`saved_model`]). CPU, or CUDA (TensorRT first where the library has it) on a GPU.
//!
//! Idle tiers: parking drops the session (its weights and, on a GPU, the provider's memory
//! arena go back); the model file's bytes stay in host memory, so resuming builds the session
//! again without touching storage.

mod derive;
mod library;
pub(crate) mod saved_model;
mod values;

use std::fmt;
use std::path::{Path, PathBuf};

use ort::ep::{self, ExecutionProvider};
use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};

use crate::config::{CONFIG_FILE, ModelConfig, TensorSpec};
use crate::device::DeviceSpec;
use crate::error::ModelError;
use crate::model::Model;
use crate::tensor::Tensor;

pub use library::LIBRARY_ENV;

/// Threads one CPU session computes with; unset, what the process may use (cgroup CPU limits
/// included, so a pod's `resources.limits.cpu`).
pub const THREADS_ENV: &str = "SIESTA_ONNX_THREADS";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    Cpu { threads: usize },
    Cuda { ordinal: usize },
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placement::Cpu { .. } => f.write_str("cpu"),
            Placement::Cuda { ordinal } => write!(f, "cuda:{ordinal}"),
        }
    }
}

pub struct OnnxModel {
    config: ModelConfig,
    file: PathBuf,
    /// The model file, kept so that a parked model comes back without reading storage.
    bytes: Vec<u8>,
    placement: Placement,
    session: Option<Session>,
}

fn cpu_threads() -> usize {
    std::env::var(THREADS_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// A session option set, or why not (ort hands the builder back inside its error).
fn option(
    set: Result<SessionBuilder, ort::Error<SessionBuilder>>,
) -> Result<SessionBuilder, String> {
    set.map_err(|e| e.to_string())
}

fn build_session(bytes: &[u8], placement: Placement, file: &Path) -> Result<Session, ModelError> {
    let env = library::environment(file)?;
    let file_err = |e: String| ModelError::File {
        path: file.to_path_buf(),
        reason: e,
    };
    let builder = Session::builder(env).map_err(|e| file_err(e.to_string()))?;
    let mut builder =
        option(builder.with_optimization_level(GraphOptimizationLevel::All)).map_err(file_err)?;
    builder = match placement {
        Placement::Cpu { threads } => option(builder.with_intra_threads(threads))
            .and_then(|b| option(b.with_inter_threads(1)))
            .map_err(file_err)?,
        Placement::Cuda { ordinal } => {
            let mut providers = Vec::new();
            if ep::TensorRT::is_available().unwrap_or(false) {
                // TensorRT builds an engine per model on first use: cached, so a resumed or
                // restarted replica does not build it again.
                let cache = std::env::temp_dir().join("siesta-tensorrt");
                providers.push(
                    ep::TensorRT::default()
                        .with_device_id(ordinal as i32)
                        .with_engine_cache(true)
                        .with_engine_cache_path(cache.display())
                        .build(),
                );
            }
            providers.push(
                ep::CUDA::default()
                    .with_device_id(ordinal as i32)
                    .build()
                    .error_on_failure(),
            );
            builder.with_execution_providers(providers).map_err(|e| {
                ModelError::Device(
                    placement.to_string(),
                    format!(
                        "ONNX Runtime's CUDA provider: {e} (the CPU build of onnxruntime has none: \
                         install onnxruntime-gpu and point {LIBRARY_ENV} at its capi/ folder)"
                    ),
                )
            })?
        }
    };
    builder
        .commit_from_memory(bytes)
        .map_err(|e| file_err(e.to_string()))
}

/// Where `device` puts an ONNX model: `auto` is the first GPU when the loaded library has the
/// CUDA provider and it starts there, else the CPU.
fn place(
    device: DeviceSpec,
    bytes: &[u8],
    file: &Path,
) -> Result<(Placement, Session), ModelError> {
    let cpu = Placement::Cpu {
        threads: cpu_threads(),
    };
    match device {
        DeviceSpec::Cpu => Ok((cpu, build_session(bytes, cpu, file)?)),
        DeviceSpec::Cuda(ordinal) => {
            let at = Placement::Cuda { ordinal };
            Ok((at, build_session(bytes, at, file)?))
        }
        DeviceSpec::Auto => {
            library::environment(file)?;
            if ep::CUDA::is_available().unwrap_or(false) {
                let at = Placement::Cuda { ordinal: 0 };
                match build_session(bytes, at, file) {
                    Ok(session) => return Ok((at, session)),
                    Err(e) => {
                        tracing::info!(error = %e, "ONNX on the CPU: the CUDA provider did not start")
                    }
                }
            }
            Ok((cpu, build_session(bytes, cpu, file)?))
        }
    }
}

/// The session built while a bare file's graph was read for its config, handed on to
/// [`OnnxModel::load`], so that a start builds one session, not two.
pub struct Prepared {
    file: PathBuf,
    bytes: Vec<u8>,
    placement: Placement,
    session: Session,
}

impl Prepared {
    fn new(file: &Path, device: DeviceSpec) -> Result<Self, ModelError> {
        let bytes = std::fs::read(file).map_err(|e| ModelError::File {
            path: file.to_path_buf(),
            reason: e.to_string(),
        })?;
        let (placement, session) = place(device, &bytes, file)?;
        Ok(Prepared {
            file: file.to_path_buf(),
            bytes,
            placement,
            session,
        })
    }
}

impl OnnxModel {
    /// `prepared` is used when it holds `path`; otherwise the file is read and placed here.
    pub fn load(
        config: ModelConfig,
        path: &Path,
        device: DeviceSpec,
        prepared: Option<Prepared>,
    ) -> Result<Self, ModelError> {
        let prepared = match prepared {
            Some(p) if p.file == path => p,
            _ => Prepared::new(path, device)?,
        };
        check_contract(&config, &prepared.session, path)?;
        tracing::info!(model = %config.name, device = %prepared.placement, "ONNX model loaded");
        Ok(OnnxModel {
            config,
            file: prepared.file,
            bytes: prepared.bytes,
            placement: prepared.placement,
            session: Some(prepared.session),
        })
    }

    /// A directory with no `config.json`: an ONNX file (`model.onnx`) described by its own
    /// graph, or a TensorFlow SavedModel converted to one. The session read for that is
    /// the one the model then runs with.
    pub fn config_for_bare_dir(
        dir: &Path,
        device: DeviceSpec,
    ) -> Result<Option<(ModelConfig, Prepared)>, ModelError> {
        let file = if saved_model::is_saved_model(dir) {
            let python = std::env::var("SIESTA_PYTHON").unwrap_or_else(|_| "python3".into());
            saved_model::onnx_for(dir, &python)?
        } else if dir.join(saved_model::CONVERTED).is_file() {
            dir.join(saved_model::CONVERTED)
        } else {
            return Ok(None);
        };
        let prepared = Prepared::new(&file, device)?;
        let session = &prepared.session;
        let name = dir
            .file_name()
            .map_or("model".into(), |n| n.to_string_lossy().into_owned());
        // A converted SavedModel whose signature takes encoded pictures carries its config.
        let carried = session
            .metadata()
            .ok()
            .and_then(|m| m.custom(saved_model::CONFIG_KEY));
        let config = match carried {
            Some(json) => {
                let mut config =
                    ModelConfig::from_json(json.as_bytes(), &file.with_file_name(CONFIG_FILE))?;
                config.name = name;
                // The converter wrote the file under a temporary name.
                config.weights = file.file_name().map(|f| f.to_string_lossy().into_owned());
                config
            }
            None => derive::config_from_graph(&name, &file, session.inputs(), session.outputs())
                .map_err(|reason| ModelError::File {
                    path: file.clone(),
                    reason,
                })?,
        };
        Ok(Some((config, prepared)))
    }

    /// The model file a directory's config names.
    pub fn file(dir: &Path, config: &ModelConfig) -> PathBuf {
        dir.join(config.weights.as_deref().unwrap_or("model.onnx"))
    }
}

/// The config's inputs and outputs against the graph's: names, count, datatypes, and the fixed
/// dimensions, so that a mismatch is a load error naming the file, not an inference error.
fn check_contract(config: &ModelConfig, session: &Session, path: &Path) -> Result<(), ModelError> {
    let cfg_err = |reason: String| ModelError::Config {
        path: path.with_file_name(crate::config::CONFIG_FILE),
        reason,
    };
    let batched = config.max_batch_size > 0;
    let check = |kind: &str, wanted: &[TensorSpec], graph: &[ort::value::Outlet]| {
        let names: Vec<&str> = graph.iter().map(|o| o.name()).collect();
        for spec in wanted {
            let Some(outlet) = graph.iter().find(|o| o.name() == spec.name) else {
                return Err(cfg_err(format!(
                    "{kind} '{}' is not an {kind} of {} (it has: {})",
                    spec.name,
                    path.display(),
                    names.join(", ")
                )));
            };
            let (have, _) = derive::spec(outlet).map_err(&cfg_err)?;
            if have.datatype != spec.datatype {
                return Err(cfg_err(format!(
                    "{kind} '{}' is {} in the graph, {} in the config",
                    spec.name, have.datatype, spec.datatype
                )));
            }
            let graph_dims = if batched && !have.shape.is_empty() {
                &have.shape[1..]
            } else {
                &have.shape[..]
            };
            let fits = graph_dims.len() == spec.shape.len()
                && graph_dims
                    .iter()
                    .zip(&spec.shape)
                    .all(|(g, c)| *g < 0 || *c < 0 || g == c);
            if !fits && !graph_dims.is_empty() {
                return Err(cfg_err(format!(
                    "{kind} '{}' has shape {:?} in the graph ({}), {:?} in the config",
                    spec.name,
                    have.shape,
                    if batched {
                        "first dimension = batch"
                    } else {
                        "no batch dimension"
                    },
                    spec.shape
                )));
            }
        }
        Ok(())
    };
    check("input", &config.inputs, session.inputs())?;
    if session.inputs().len() != config.inputs.len() {
        let names: Vec<&str> = session.inputs().iter().map(|o| o.name()).collect();
        return Err(cfg_err(format!(
            "the graph takes {} inputs ({}); the config lists {}",
            names.len(),
            names.join(", "),
            config.inputs.len()
        )));
    }
    check("output", &config.outputs, session.outputs())
}

impl Model for OnnxModel {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn forward(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, ModelError> {
        if self.session.is_none() {
            self.restore_device_memory()?;
        }
        let session = self.session.as_mut().expect("restored above");
        let feed = self
            .config
            .inputs
            .iter()
            .zip(inputs)
            .map(|(spec, t)| Ok((spec.name.as_str(), values::to_ort(t)?)))
            .collect::<Result<Vec<_>, ModelError>>()?;
        let outputs = session
            .run(feed)
            .map_err(|e| ModelError::Inference(e.to_string()))?;
        self.config
            .outputs
            .iter()
            .map(|spec| {
                let value = outputs.get(&spec.name).ok_or_else(|| {
                    ModelError::Inference(format!("the graph produced no '{}'", spec.name))
                })?;
                values::from_ort(&spec.name, spec.datatype, value)
            })
            .collect()
    }

    fn release_device_memory(&mut self) {
        self.session = None;
    }

    fn restore_device_memory(&mut self) -> Result<(), ModelError> {
        if self.session.is_none() {
            self.session = Some(build_session(&self.bytes, self.placement, &self.file)?);
        }
        Ok(())
    }

    /// The session's copy of the weights, which the file's size bounds from above.
    fn device_memory_bytes(&self) -> u64 {
        if self.session.is_some() {
            self.bytes.len() as u64
        } else {
            0
        }
    }

    fn device_name(&self) -> String {
        self.placement.to_string()
    }
}
