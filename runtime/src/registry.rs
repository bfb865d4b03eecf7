//! The models this server knows, each in one state (loading, ready, unloaded, failed), and the
//! repository operations (index, load, unload) on them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;
use siesta_models::storage::{self, StorageOptions};
use siesta_models::{DeviceSpec, LoadOptions, Model, ModelSource};

use crate::error::{Result, ServeError};
use crate::handle::ModelHandle;
use crate::status::{LoadPhases, ModelState, ModelStatus};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelLocation {
    /// The MNIST CNN compiled into the binary.
    Embedded,
    /// A storage URI (local path, file://, http(s)://, or a mirrored gs:// s3:// pvc:// hf://).
    Uri(String),
}

#[derive(Debug, Clone)]
pub struct RegistryOptions {
    pub device: DeviceSpec,
    pub precision: siesta_models::Precision,
    pub queue_limit: usize,
    pub max_batch_size: Option<usize>,
    pub max_queue_delay_us: Option<u64>,
    /// KServe's `modelFormat.name` for the models this server loads.
    pub model_format: Option<String>,
    /// The manifest's `runtime`: forces an engine.
    pub engine: Option<siesta_models::Engine>,
    pub storage: StorageOptions,
    /// A directory of model directories that `load` can find by name.
    pub repository: Option<PathBuf>,
    /// Whether clients may load and unload models (the repository extension).
    pub control: ModelControl,
}

/// Triton's `--model-control-mode`: `none` (the default) serves the models the server started
/// with and refuses load/unload requests, so no client can take a replica's model away;
/// `explicit` lets clients load and unload through the repository extension.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ModelControl {
    #[default]
    None,
    Explicit,
}

impl std::str::FromStr for ModelControl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(ModelControl::None),
            "explicit" => Ok(ModelControl::Explicit),
            other => Err(format!("'{other}' is not one of none, explicit")),
        }
    }
}

enum SlotState {
    Loading,
    Ready(Arc<ModelHandle>),
    Unloaded,
    Failed(String),
}

struct Slot {
    location: ModelLocation,
    state: SlotState,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct IndexEntry {
    pub name: String,
    pub version: String,
    pub state: RepositoryState,
    pub reason: String,
}

/// A model's state in the repository extension's index (Triton's names, as its clients expect).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum RepositoryState {
    Loading,
    Ready,
    Unavailable,
}

impl RepositoryState {
    pub fn as_str(self) -> &'static str {
        match self {
            RepositoryState::Loading => "LOADING",
            RepositoryState::Ready => "READY",
            RepositoryState::Unavailable => "UNAVAILABLE",
        }
    }
}

pub struct ModelRegistry {
    opts: RegistryOptions,
    slots: Mutex<BTreeMap<String, Slot>>,
    /// Loads run one at a time: each can take seconds and a lot of memory.
    load_lock: tokio::sync::Mutex<()>,
}

impl ModelRegistry {
    pub fn new(opts: RegistryOptions) -> Arc<Self> {
        Arc::new(ModelRegistry {
            opts,
            slots: Mutex::new(BTreeMap::new()),
            load_lock: tokio::sync::Mutex::new(()),
        })
    }

    pub fn register(&self, name: &str, location: ModelLocation) {
        self.slots.lock().insert(
            name.to_string(),
            Slot {
                location,
                state: SlotState::Unloaded,
            },
        );
    }

    /// The ready handle for `name`: 404 when unknown, 503 while it is not loaded.
    pub fn get(&self, name: &str) -> Result<Arc<ModelHandle>> {
        match self.slots.lock().get(name).map(|s| &s.state) {
            None => Err(ServeError::ModelNotFound(name.to_string())),
            Some(SlotState::Ready(h)) => Ok(h.clone()),
            Some(_) => Err(ServeError::ModelNotReady(name.to_string())),
        }
    }

    pub fn handles(&self) -> Vec<Arc<ModelHandle>> {
        self.slots
            .lock()
            .values()
            .filter_map(|s| match &s.state {
                SlotState::Ready(h) => Some(h.clone()),
                _ => None,
            })
            .collect()
    }

    /// The metric label for requests naming `name`: its own if this server has such a model.
    pub fn metric_label(&self, name: &str) -> crate::metrics::ModelLabel {
        if self.slots.lock().contains_key(name) {
            crate::metrics::ModelLabel::served(name)
        } else {
            crate::metrics::ModelLabel::unknown()
        }
    }

    /// The first model that failed while serving (its worker panicked), if any.
    pub fn failed(&self) -> Option<String> {
        self.slots
            .lock()
            .iter()
            .find_map(|(name, s)| match &s.state {
                SlotState::Ready(h) if h.status.state() == ModelState::Failed => Some(name.clone()),
                _ => None,
            })
    }

    /// Live unless a model failed while serving, or (with model control off, where nothing can
    /// unload or reload a model) a model's load failed: either way only a new process helps.
    pub fn live(&self) -> bool {
        let control_off = self.opts.control == ModelControl::None;
        self.slots.lock().values().all(|s| match &s.state {
            SlotState::Ready(h) => h.status.state() != ModelState::Failed,
            SlotState::Failed(_) => !control_off,
            SlotState::Loading | SlotState::Unloaded => true,
        })
    }

    /// Ready means every model that is meant to be loaded is loaded and warmed up.
    pub fn all_ready(&self) -> bool {
        let slots = self.slots.lock();
        !slots.is_empty()
            && slots
                .values()
                .all(|s| matches!(s.state, SlotState::Ready(_) | SlotState::Unloaded))
            && slots
                .values()
                .any(|s| matches!(s.state, SlotState::Ready(_)))
            && slots.values().all(|s| match &s.state {
                SlotState::Ready(h) => h.status.state() != ModelState::Failed,
                _ => true,
            })
    }

    pub fn index(&self) -> Vec<IndexEntry> {
        let mut entries: BTreeMap<String, IndexEntry> = BTreeMap::new();
        if let Some(repo) = &self.opts.repository
            && let Ok(dir) = std::fs::read_dir(repo)
        {
            for e in dir.flatten() {
                if e.path().join(siesta_models::config::CONFIG_FILE).is_file() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    entries.insert(
                        name.clone(),
                        IndexEntry {
                            name,
                            version: "1".into(),
                            state: RepositoryState::Unavailable,
                            reason: "unloaded".into(),
                        },
                    );
                }
            }
        }
        for (name, slot) in self.slots.lock().iter() {
            let (state, reason) = match &slot.state {
                SlotState::Loading => (RepositoryState::Loading, String::new()),
                SlotState::Ready(h) => match h.status.state() {
                    ModelState::Released => (
                        RepositoryState::Ready,
                        "device memory released while idle".into(),
                    ),
                    _ => (RepositoryState::Ready, String::new()),
                },
                SlotState::Unloaded => (RepositoryState::Unavailable, "unloaded".into()),
                SlotState::Failed(r) => (
                    RepositoryState::Unavailable,
                    siesta_http_server::redact::for_client(r),
                ),
            };
            entries.insert(
                name.clone(),
                IndexEntry {
                    name: name.clone(),
                    version: "1".into(),
                    state,
                    reason,
                },
            );
        }
        entries.into_values().collect()
    }

    /// Loads (or reloads) `name`: from its registered location, or from the repository directory.
    pub async fn load(&self, name: &str) -> Result<()> {
        let _serial = self.load_lock.lock().await;
        let location = {
            let mut slots = self.slots.lock();
            let location = match slots.get(name) {
                Some(slot) if matches!(slot.state, SlotState::Ready(_)) => return Ok(()),
                Some(slot) => slot.location.clone(),
                None => self.find_in_repository(name)?,
            };
            slots.insert(
                name.to_string(),
                Slot {
                    location: location.clone(),
                    state: SlotState::Loading,
                },
            );
            location
        };
        let status = Arc::new(ModelStatus::new(name));
        let opts = self.opts.clone();
        let model_name = name.to_string();
        let loaded =
            tokio::task::spawn_blocking(move || load_and_warm_up(&model_name, &location, &opts))
                .await
                .map_err(|e| ServeError::Load(format!("loader task failed: {e}")))
                .and_then(|r| r);
        let mut slots = self.slots.lock();
        let slot = slots.get_mut(name).expect("slot inserted above");
        match loaded {
            Ok((model, phases)) => {
                status.set_load_phases(phases);
                let handle = ModelHandle::start(model, status, self.opts.queue_limit);
                tracing::info!(model = name, "model ready");
                slot.state = SlotState::Ready(handle);
                Ok(())
            }
            Err(e) => {
                status.set_state(ModelState::Failed);
                tracing::error!(model = name, error = %e, "model load failed");
                slot.state = SlotState::Failed(e.to_string());
                Err(e)
            }
        }
    }

    /// A client's load request (repository extension): refused unless model control is explicit.
    pub async fn request_load(&self, name: &str) -> Result<()> {
        if self.opts.control != ModelControl::Explicit {
            return Err(ServeError::ModelControlOff("loading"));
        }
        self.load(name).await
    }

    /// A client's unload request (repository extension): refused unless model control is explicit.
    pub fn request_unload(&self, name: &str) -> Result<()> {
        if self.opts.control != ModelControl::Explicit {
            return Err(ServeError::ModelControlOff("unloading"));
        }
        self.unload(name)
    }

    pub fn unload(&self, name: &str) -> Result<()> {
        let mut slots = self.slots.lock();
        let slot = slots
            .get_mut(name)
            .ok_or_else(|| ServeError::ModelNotFound(name.to_string()))?;
        if let SlotState::Ready(h) = std::mem::replace(&mut slot.state, SlotState::Unloaded) {
            // Dropping the last handle closes the queue; the worker thread then exits and frees the model.
            h.status.set_state(ModelState::Unloaded);
            h.status.clear_device_bytes();
        }
        tracing::info!(model = name, "model unloaded");
        Ok(())
    }

    fn find_in_repository(&self, name: &str) -> Result<ModelLocation> {
        let repo = self
            .opts
            .repository
            .as_ref()
            .ok_or_else(|| ServeError::ModelNotFound(name.to_string()))?;
        if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
            return Err(ServeError::InvalidInput(format!(
                "'{name}' is not a model name"
            )));
        }
        let dir = repo.join(name);
        if !dir.join(siesta_models::config::CONFIG_FILE).is_file() {
            return Err(ServeError::ModelNotFound(name.to_string()));
        }
        Ok(ModelLocation::Uri(dir.to_string_lossy().into_owned()))
    }
}

fn load_and_warm_up(
    name: &str,
    location: &ModelLocation,
    opts: &RegistryOptions,
) -> Result<(Box<dyn Model>, LoadPhases)> {
    let fetch_started = tokio::time::Instant::now();
    // Held until the model is loaded: the cache does not evict an entry being read.
    let resolved = match location {
        ModelLocation::Embedded => None,
        ModelLocation::Uri(uri) => {
            let resolved = storage::resolve(uri, &opts.storage)?;
            crate::metrics::model_fetched(name, &resolved.fetched);
            Some(resolved)
        }
    };
    let source = match &resolved {
        None => ModelSource::EmbeddedMnist,
        Some(r) => ModelSource::Dir(r.dir.clone()),
    };
    let load_opts = LoadOptions {
        name: Some(name.to_string()),
        max_batch_size: opts.max_batch_size,
        max_queue_delay_us: opts.max_queue_delay_us,
        device: opts.device,
        model_format: opts.model_format.clone(),
        engine: opts.engine,
        precision: opts.precision,
    };
    let fetch = fetch_started.elapsed();
    let started = tokio::time::Instant::now();
    let mut model = siesta_models::load_model(&source, &load_opts)?;
    let loaded = started.elapsed();
    drop(resolved);
    model.warm_up()?;
    crate::metrics::load_phases(name, loaded, started.elapsed() - loaded);
    tracing::info!(
        model = name,
        load_ms = loaded.as_secs_f64() * 1e3,
        warm_up_ms = (started.elapsed() - loaded).as_secs_f64() * 1e3,
        "model loaded and warmed up"
    );
    Ok((
        model,
        LoadPhases {
            fetch,
            load: loaded,
            warm_up: started.elapsed() - loaded,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(repository: Option<PathBuf>) -> Arc<ModelRegistry> {
        ModelRegistry::new(RegistryOptions {
            device: DeviceSpec::Cpu,
            precision: siesta_models::Precision::F32,
            queue_limit: 8,
            max_batch_size: None,
            max_queue_delay_us: None,
            model_format: None,
            engine: None,
            storage: StorageOptions::default(),
            repository,
            control: ModelControl::Explicit,
        })
    }

    fn state(r: &ModelRegistry, name: &str) -> (RepositoryState, String) {
        let e = r
            .index()
            .into_iter()
            .find(|e| e.name == name)
            .expect("indexed");
        (e.state, e.reason)
    }

    #[tokio::test]
    async fn a_model_goes_unloaded_ready_unloaded_ready() {
        let r = registry(None);
        r.register("mnist", ModelLocation::Embedded);
        assert!(matches!(r.get("mnist"), Err(ServeError::ModelNotReady(_))));
        assert_eq!(
            state(&r, "mnist"),
            (RepositoryState::Unavailable, "unloaded".into())
        );
        assert!(!r.all_ready(), "nothing is loaded yet");

        r.load("mnist").await.unwrap();
        assert!(r.get("mnist").is_ok());
        assert_eq!(state(&r, "mnist"), (RepositoryState::Ready, String::new()));
        assert!(r.all_ready());
        let handle = r.get("mnist").unwrap();
        r.load("mnist").await.unwrap();
        assert!(
            Arc::ptr_eq(&handle, &r.get("mnist").unwrap()),
            "loading a ready model keeps it"
        );

        r.unload("mnist").unwrap();
        assert!(matches!(r.get("mnist"), Err(ServeError::ModelNotReady(_))));
        assert_eq!(handle.status.state(), ModelState::Unloaded);
        assert_eq!(
            state(&r, "mnist"),
            (RepositoryState::Unavailable, "unloaded".into())
        );
        assert!(!r.all_ready(), "ready needs at least one loaded model");

        r.load("mnist").await.unwrap();
        assert_eq!(state(&r, "mnist"), (RepositoryState::Ready, String::new()));
    }

    #[tokio::test]
    async fn a_failed_load_is_kept_with_its_reason_and_can_be_retried() {
        let r = registry(None);
        let missing = std::env::temp_dir().join("siesta-registry-test-no-such-model");
        r.register(
            "gone",
            ModelLocation::Uri(missing.to_string_lossy().into_owned()),
        );
        let err = r.load("gone").await.unwrap_err();
        assert!(matches!(err, ServeError::Load(_)), "{err:?}");
        let (s, reason) = state(&r, "gone");
        assert_eq!(s, RepositoryState::Unavailable);
        assert!(
            reason.contains("siesta-registry-test-no-such-model"),
            "{reason}"
        );
        assert!(matches!(r.get("gone"), Err(ServeError::ModelNotReady(_))));
        assert!(!r.all_ready());
        // A retry goes through loading again (and fails the same way).
        assert!(r.load("gone").await.is_err());
    }

    #[tokio::test]
    async fn unknown_names_are_not_found_and_repository_names_cannot_escape() {
        let repo =
            std::env::temp_dir().join(format!("siesta-registry-repo-{}", std::process::id()));
        std::fs::create_dir_all(&repo).unwrap();
        let r = registry(Some(repo.clone()));
        assert!(matches!(r.get("x"), Err(ServeError::ModelNotFound(_))));
        assert!(matches!(r.unload("x"), Err(ServeError::ModelNotFound(_))));
        assert!(matches!(
            r.load("x").await,
            Err(ServeError::ModelNotFound(_))
        ));
        for bad in ["../etc", "a/b", "..", ""] {
            assert!(
                matches!(r.load(bad).await, Err(ServeError::InvalidInput(_))),
                "{bad:?}"
            );
        }
        let _ = std::fs::remove_dir_all(&repo);
    }
}
