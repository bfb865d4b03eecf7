//! TorchServe model archives (`.mar`, made by `torch-model-archiver`). A storage URI may name the
//! archive itself, a directory holding one, or KServe's TorchServe layout (`model-store/*.mar`).
//! The archive is unpacked once into a cache directory beside it (atomically: a half-unpacked
//! archive is never used) and becomes an ordinary model directory:
//! - a `config.json` inside the archive (Siesta's) is used as is;
//! - else a TorchScript `serializedFile` with TorchServe's `image_classifier` handler becomes a
//!   `torchscript` model with that handler's input (3x224x224, ImageNet normalisation, resize 256)
//!   and labels from `index_to_name.json`;
//! - else a `state_dict` `serializedFile` of a torchvision classifier runs on the candle engine.
//!
//! Other handlers are custom Python that Siesta cannot run; the error says to add a config.json.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::architecture::Architecture;
use crate::config::{CONFIG_FILE, ModelConfig};
use crate::error::ModelError;
use crate::labels;

pub const EXTENSION: &str = "mar";
const MANIFEST: &str = "MAR-INF/MANIFEST.json";
const IMAGE_CLASSIFIER: &str = "image_classifier";
/// Where unpacked archives are kept, beside the archive.
const CACHE_DIR: &str = ".siesta-mar";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    model: ManifestModel,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestModel {
    model_name: String,
    serialized_file: Option<String>,
    #[serde(default)]
    handler: String,
    model_file: Option<String>,
}

/// The archive a model location stands for, if it is one (or holds exactly one, or one named
/// like the model).
pub fn find_archive(
    location: &Path,
    model_name: Option<&str>,
) -> Result<Option<PathBuf>, ModelError> {
    if location.is_file() {
        return Ok(is_archive(location).then(|| location.to_path_buf()));
    }
    if location.join(CONFIG_FILE).is_file() {
        return Ok(None);
    }
    let mut found = Vec::new();
    for dir in [location.to_path_buf(), location.join("model-store")] {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        found.extend(
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| is_archive(p)),
        );
    }
    found.sort();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => {
            let named = model_name.and_then(|n| {
                found
                    .iter()
                    .find(|p| p.file_stem().is_some_and(|s| s == n))
                    .cloned()
            });
            named.map(Some).ok_or_else(|| ModelError::File {
                path: location.to_path_buf(),
                reason: format!(
                    "holds {} model archives and none is named like the model: {}",
                    found.len(),
                    found
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
        }
    }
}

fn is_archive(p: &Path) -> bool {
    p.is_file() && p.extension().is_some_and(|e| e == EXTENSION)
}

/// Unpacks the archive (once per archive content) and returns the model directory it became.
pub fn unpack(archive: &Path) -> Result<PathBuf, ModelError> {
    let err = |reason: String| ModelError::File {
        path: archive.to_path_buf(),
        reason,
    };
    let meta = fs::metadata(archive).map_err(|e| err(e.to_string()))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let stem = archive
        .file_stem()
        .map_or("model".into(), |s| s.to_string_lossy().into_owned());
    // A rewritten archive gets a new directory; the size and mtime stand in for its content.
    let key = format!("{stem}-{}-{mtime}", meta.len());
    let parent = archive.parent().unwrap_or(Path::new("."));
    let cache = match fs::create_dir_all(parent.join(CACHE_DIR)) {
        Ok(()) => parent.join(CACHE_DIR),
        // A read-only model volume: unpack under the temp directory instead.
        Err(_) => std::env::temp_dir().join("siesta-mar"),
    };
    let target = cache.join(&key);
    if target.join(CONFIG_FILE).is_file() {
        return Ok(target);
    }
    fs::create_dir_all(&cache)
        .map_err(|e| err(format!("cannot create {}: {e}", cache.display())))?;
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{key}."))
        .tempdir_in(&cache)
        .map_err(|e| err(format!("cannot unpack into {}: {e}", cache.display())))?;
    let manifest = extract(archive, staging.path()).map_err(err)?;
    let config = config_for(&manifest, staging.path()).map_err(err)?;
    fs::write(staging.path().join(CONFIG_FILE), config).map_err(|e| err(e.to_string()))?;
    let staged = staging.keep();
    if let Err(e) = fs::rename(&staged, &target) {
        let _ = fs::remove_dir_all(&staged);
        // Another process unpacked the same archive first: use its copy.
        if !target.join(CONFIG_FILE).is_file() {
            return Err(err(format!(
                "cannot move the unpacked archive into place: {e}"
            )));
        }
    }
    tracing::info!(archive = %archive.display(), dir = %target.display(), "TorchServe archive unpacked");
    Ok(target)
}

fn extract(archive: &Path, into: &Path) -> Result<Manifest, String> {
    let file = fs::File::open(archive).map_err(|e| e.to_string())?;
    let mut zip =
        zip::ZipArchive::new(file).map_err(|e| format!("not a model archive (zip): {e}"))?;
    let mut manifest = None;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| e.to_string())?;
        let name = entry.name().map_err(|e| e.to_string())?.into_owned();
        let Some(rel) = entry.enclosed_name() else {
            return Err(format!("entry '{name}' points outside the archive"));
        };
        if name == MANIFEST {
            let mut text = String::new();
            entry.read_to_string(&mut text).map_err(|e| e.to_string())?;
            manifest = Some(
                serde_json::from_str::<Manifest>(&text).map_err(|e| format!("{MANIFEST}: {e}"))?,
            );
            continue;
        }
        let out = into.join(&rel);
        if entry.is_dir() {
            fs::create_dir_all(&out).map_err(|e| e.to_string())?;
            continue;
        }
        if let Some(p) = out.parent() {
            fs::create_dir_all(p).map_err(|e| e.to_string())?;
        }
        let mut f = fs::File::create(&out).map_err(|e| e.to_string())?;
        std::io::copy(&mut entry, &mut f).map_err(|e| format!("{}: {e}", rel.display()))?;
    }
    manifest.ok_or_else(|| format!("no {MANIFEST}: not made by torch-model-archiver"))
}

/// TorchScript archives are zips with a `code/` directory; `torch.save` state dicts have none.
fn is_torchscript(path: &Path) -> bool {
    let Ok(file) = fs::File::open(path) else {
        return false;
    };
    let Ok(zip) = zip::ZipArchive::new(file) else {
        return false;
    };
    zip.file_names()
        .any(|n| n.is_ok_and(|n| n.contains("/code/")))
}

fn config_for(manifest: &Manifest, dir: &Path) -> Result<Vec<u8>, String> {
    let m = &manifest.model;
    if let Ok(bytes) = fs::read(dir.join(CONFIG_FILE)) {
        let mut config =
            ModelConfig::from_json(&bytes, &dir.join(CONFIG_FILE)).map_err(|e| e.to_string())?;
        config.name.clone_from(&m.model_name);
        return serde_json::to_vec(&config).map_err(|e| e.to_string());
    }
    let serialized = m
        .serialized_file
        .as_deref()
        .ok_or("the manifest names no serializedFile")?;
    let weights = dir.join(serialized);
    if !weights.is_file() {
        return Err(format!(
            "serializedFile '{serialized}' is not in the archive"
        ));
    }
    let handler = m.handler.rsplit('/').next().unwrap_or_default();
    let handler = handler.strip_suffix(".py").unwrap_or(handler);
    let config = if is_torchscript(&weights) {
        if handler != IMAGE_CLASSIFIER {
            return Err(format!(
                "handler '{}' is custom Python, which Siesta does not run: add a Siesta config.json \
                 (inputs, outputs) to the archive (--extra-files) for its TorchScript model",
                m.handler
            ));
        }
        let classes = labels::index_to_name(dir).map_err(|e| e.to_string())?.len();
        let classes = if classes == 0 { -1 } else { classes as i64 };
        // TorchServe's image_classifier: Resize(256), CenterCrop(224), ImageNet normalisation,
        // softmax + top-5 in its postprocess (the transformer's job here).
        serde_json::json!({
            "name": m.model_name,
            "architecture": Architecture::TorchScript.name(),
            "weights": serialized,
            "max_batch_size": 8,
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 224, 224]}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [classes]}],
            "image": {"resize_shorter": 256, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                      "scores_output": "logits", "scores": "logits"},
        })
    } else {
        // Eager mode: the model class is Python (modelFile); a torchvision classifier's state
        // dict is recognised and built by the candle engine instead.
        let state = crate::state_dict::load(&weights).map_err(|e| e.to_string())?;
        let arch = crate::vision::Arch::guess(state.keys().map(String::as_str)).ok_or_else(|| {
            format!(
                "serializedFile '{serialized}' is an eager-mode state dict for modelFile {:?}, which is \
                 Python; Siesta runs it only when it is a torchvision classifier ({}), or save the \
                 model with torch.jit.save instead",
                m.model_file.as_deref().unwrap_or("(none)"),
                Architecture::vision_names()
            )
        })?;
        serde_json::json!({"name": m.model_name, "architecture": arch.name(), "weights": serialized})
    };
    Ok(config.to_string().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Writes an archive as torch-model-archiver lays it out: the files at the top, the manifest
    /// under MAR-INF/.
    fn archive(path: &Path, manifest: serde_json::Value, files: &[(&str, Vec<u8>)]) {
        let mut zip = zip::ZipWriter::new(fs::File::create(path).unwrap());
        let opts = zip::write::SimpleFileOptions::default();
        for (name, bytes) in files {
            zip.start_file(*name, opts).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.start_file(MANIFEST, opts).unwrap();
        zip.write_all(manifest.to_string().as_bytes()).unwrap();
        zip.finish().unwrap();
    }

    /// Enough of a TorchScript file to be told apart from a state dict: a zip with `code/`.
    fn torchscript_bytes() -> Vec<u8> {
        let mut buf = std::io::Cursor::new(Vec::new());
        let mut zip = zip::ZipWriter::new(&mut buf);
        zip.start_file(
            "m/code/__torch__.py",
            zip::write::SimpleFileOptions::default(),
        )
        .unwrap();
        zip.write_all(b"class M: pass").unwrap();
        zip.finish().unwrap();
        buf.into_inner()
    }

    fn manifest(handler: &str) -> serde_json::Value {
        serde_json::json!({"runtime": "python", "model": {"modelName": "flowers", "serializedFile": "m.pt",
                           "handler": handler, "modelVersion": "1.0"}})
    }

    #[test]
    fn an_image_classifier_archive_becomes_a_torchscript_model_dir_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("model-store");
        fs::create_dir(&store).unwrap();
        let labels = br#"{"0": "daisy", "1": "roses", "2": "tulips"}"#.to_vec();
        archive(
            &store.join("flowers.mar"),
            manifest("image_classifier"),
            &[
                ("m.pt", torchscript_bytes()),
                ("index_to_name.json", labels),
            ],
        );
        let found = find_archive(dir.path(), None).unwrap().unwrap();
        let unpacked = unpack(&found).unwrap();
        let config = ModelConfig::read(&unpacked).unwrap();
        assert_eq!(config.name, "flowers");
        assert_eq!(config.architecture, Architecture::TorchScript);
        assert_eq!(config.outputs[0].shape, vec![3]);
        assert_eq!(config.image.unwrap().resize_shorter, 256);
        assert!(unpacked.join("m.pt").is_file());
        // Unchanged archive: the same directory, no second copy left behind.
        assert_eq!(unpack(&found).unwrap(), unpacked);
        assert_eq!(fs::read_dir(unpacked.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn archives_siesta_cannot_run_are_errors_that_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let custom = dir.path().join("custom.mar");
        archive(
            &custom,
            manifest("my_handler.py"),
            &[("m.pt", torchscript_bytes())],
        );
        let err = unpack(&custom).unwrap_err().to_string();
        assert!(
            err.contains("custom.mar") && err.contains("config.json"),
            "{err}"
        );

        let eager = dir.path().join("eager.mar");
        let state =
            candle_core::Tensor::zeros(3, candle_core::DType::F32, &candle_core::Device::Cpu)
                .unwrap();
        let st = dir.path().join("w.safetensors");
        candle_core::safetensors::save(
            &std::collections::HashMap::from([("fc9.weight", state)]),
            &st,
        )
        .unwrap();
        let mut m = manifest("image_classifier");
        m["model"]["serializedFile"] = "w.safetensors".into();
        m["model"]["modelFile"] = "model.py".into();
        archive(&eager, m, &[("w.safetensors", fs::read(&st).unwrap())]);
        let err = unpack(&eager).unwrap_err().to_string();
        assert!(
            err.contains("model.py") && err.contains("torch.jit.save"),
            "{err}"
        );

        let evil = dir.path().join("evil.mar");
        archive(
            &evil,
            manifest("image_classifier"),
            &[("../escape.pt", vec![1])],
        );
        let err = unpack(&evil).unwrap_err().to_string();
        assert!(err.contains("outside the archive"), "{err}");
        assert!(!dir.path().join("escape.pt").exists());
        // Nothing half-unpacked is left to be mistaken for a model.
        let left: Vec<_> = fs::read_dir(dir.path().join(CACHE_DIR))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    #[test]
    fn several_archives_are_told_apart_by_the_model_name() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a", "b"] {
            archive(
                &dir.path().join(format!("{name}.mar")),
                manifest("image_classifier"),
                &[],
            );
        }
        assert_eq!(
            find_archive(dir.path(), Some("b")).unwrap().unwrap(),
            dir.path().join("b.mar")
        );
        let err = find_archive(dir.path(), Some("c")).unwrap_err().to_string();
        assert!(err.contains("a.mar") && err.contains("b.mar"), "{err}");
        fs::write(dir.path().join(CONFIG_FILE), "{}").unwrap();
        assert_eq!(find_archive(dir.path(), None).unwrap(), None);
    }
}
