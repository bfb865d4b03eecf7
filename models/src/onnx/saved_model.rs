//! `modelFormat: tensorflow`: a SavedModel directory runs as ONNX. It is converted once with
//! tf2onnx when Python has it, and the result is kept next to the model (`model.onnx`, written
//! under a temporary name and renamed); without tf2onnx the error says how to convert it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::ModelError;

pub const SAVED_MODEL: &str = "saved_model.pb";
pub const CONVERTED: &str = "model.onnx";

pub fn is_saved_model(dir: &Path) -> bool {
    dir.join(SAVED_MODEL).is_file()
}

fn how_to(dir: &Path) -> String {
    format!(
        "{} is a TensorFlow SavedModel; Siesta runs TensorFlow models as ONNX. Install tf2onnx \
         (pip install tensorflow tf2onnx) and it is converted on first load, or convert it yourself: \
         python -m tf2onnx.convert --saved-model {} --output {}/{CONVERTED} --opset 13",
        dir.display(),
        dir.display(),
        dir.display()
    )
}

/// The ONNX file for a SavedModel directory, converting it if needed.
pub fn onnx_for(dir: &Path, python: &str) -> Result<PathBuf, ModelError> {
    let out = dir.join(CONVERTED);
    if out.is_file() {
        return Ok(out);
    }
    let has_tf2onnx = Command::new(python)
        .args(["-c", "import tf2onnx"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_tf2onnx {
        return Err(ModelError::File {
            path: dir.join(SAVED_MODEL),
            reason: how_to(dir),
        });
    }
    let tmp = dir.join(format!(".{CONVERTED}.{}.tmp", std::process::id()));
    tracing::info!(dir = %dir.display(), "converting the SavedModel with tf2onnx (once)");
    let result = Command::new(python)
        .args(["-m", "tf2onnx.convert", "--saved-model"])
        .arg(dir)
        .arg("--output")
        .arg(&tmp)
        .args(["--opset", "13"])
        .output()
        .map_err(|e| e.to_string())
        .and_then(|o| {
            if o.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
                    .join(" | "))
            }
        })
        .and_then(|()| std::fs::rename(&tmp, &out).map_err(|e| e.to_string()));
    if let Err(reason) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(ModelError::File {
            path: dir.join(SAVED_MODEL),
            reason: format!("tf2onnx failed: {reason}"),
        });
    }
    Ok(out)
}
