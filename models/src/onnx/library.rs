//! ONNX Runtime's shared library, found and loaded once per process. Siesta does not link it:
//! users bring the build they need (the PyPI `onnxruntime` wheel for CPUs, `onnxruntime-gpu` for
//! the CUDA and TensorRT providers), so one siesta binary serves with either.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;

use crate::error::ModelError;

/// Where the library is looked for first: a file, or a folder holding it (e.g. the wheel's
/// `site-packages/onnxruntime/capi`). The same variable `ort` itself reads.
pub const LIBRARY_ENV: &str = "ORT_DYLIB_PATH";
const LIBRARY: &str = "libonnxruntime.so";

static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();

/// The process's ONNX Runtime environment; the first call loads the library.
pub fn environment(model_file: &Path) -> Result<&'static Environment, ModelError> {
    ENVIRONMENT
        .get_or_init(load)
        .as_ref()
        .map_err(|reason| ModelError::File {
            path: model_file.to_path_buf(),
            reason: reason.clone(),
        })
}

fn load() -> Result<Environment, String> {
    let searched = candidates();
    let Some(library) = searched.iter().find_map(|place| find_in(place)) else {
        return Err(format!(
            "the ONNX engine needs ONNX Runtime's library ({LIBRARY}), and it is not in {}. \
             Install it with `pip install onnxruntime==1.31.1` (onnxruntime-gpu for CUDA) and set \
             {LIBRARY_ENV}=$(python3 -c 'import onnxruntime, os; \
             print(os.path.dirname(onnxruntime.__file__))')/capi, or put the library beside the \
             siesta binary",
            describe(&searched)
        ));
    };
    let builder = ort::init_from(&library)
        .map_err(|e| format!("loading ONNX Runtime from {}: {e}", library.display()))?;
    let environment = builder
        .with_name("siesta")
        .build()
        .map_err(|e| format!("ONNX Runtime from {}: {e}", library.display()))?;
    tracing::info!(library = %library.display(), version = ort::info(), "ONNX Runtime loaded");
    Ok(environment)
}

/// `ORT_DYLIB_PATH`, then the folder of the running binary.
fn candidates() -> Vec<PathBuf> {
    let mut places = Vec::new();
    if let Some(p) = std::env::var_os(LIBRARY_ENV).filter(|p| !p.is_empty()) {
        places.push(PathBuf::from(p));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        places.push(dir);
    }
    places
}

/// A file as it is; in a folder, `libonnxruntime.so` or else its versioned name (the wheel
/// ships only `libonnxruntime.so.1.31.1`). The providers' libraries are never taken for it.
fn find_in(place: &Path) -> Option<PathBuf> {
    if place.is_file() {
        return Some(place.to_path_buf());
    }
    let exact = place.join(LIBRARY);
    if exact.is_file() {
        return Some(exact);
    }
    let mut versioned: Vec<PathBuf> = std::fs::read_dir(place)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{LIBRARY}.")))
        })
        .collect();
    versioned.sort();
    versioned.pop()
}

fn describe(places: &[PathBuf]) -> String {
    if places.is_empty() {
        return "any place searched".into();
    }
    places
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" or ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_yields_the_library_not_a_provider() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(find_in(dir.path()), None);
        std::fs::write(dir.path().join("libonnxruntime_providers_shared.so"), b"").unwrap();
        assert_eq!(find_in(dir.path()), None);
        std::fs::write(dir.path().join("libonnxruntime.so.1.31.1"), b"").unwrap();
        assert_eq!(
            find_in(dir.path()),
            Some(dir.path().join("libonnxruntime.so.1.31.1"))
        );
        std::fs::write(dir.path().join("libonnxruntime.so"), b"").unwrap();
        assert_eq!(
            find_in(dir.path()),
            Some(dir.path().join("libonnxruntime.so"))
        );
        let file = dir.path().join("libonnxruntime.so.1.31.1");
        assert_eq!(find_in(&file), Some(file.clone()));
        assert_eq!(find_in(&dir.path().join("missing")), None);
    }
}
