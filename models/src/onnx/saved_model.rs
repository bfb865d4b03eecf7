//! `modelFormat: tensorflow`: a SavedModel directory runs as ONNX. It is converted once by
//! `models/tf/saved_model_to_onnx.py` (embedded here) with tf2onnx when Python has it, and the
//! result is kept next to the model (`model.onnx`, written under a temporary name and renamed);
//! without tf2onnx the error says how to convert it. A signature taking encoded pictures comes
//! out as the network plus, in the ONNX file's metadata, the config that puts Siesta's decoding
//! in front of it ([`CONFIG_KEY`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::ModelError;

pub const SAVED_MODEL: &str = "saved_model.pb";
pub const CONVERTED: &str = "model.onnx";
/// The ONNX metadata key under which the converter leaves a `config.json` for the file.
pub const CONFIG_KEY: &str = "siesta.config";
const CONVERTER: &str = include_str!("../../tf/saved_model_to_onnx.py");

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
        .args(["-c", "import tensorflow, tf2onnx"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_tf2onnx {
        return Err(ModelError::File {
            path: dir.join(SAVED_MODEL),
            reason: how_to(dir),
        });
    }
    let tmp = dir.join(format!(".{CONVERTED}.{}.tmp", std::process::id()));
    tracing::info!(dir = %dir.display(), "converting the SavedModel to ONNX (once)");
    let result = run_converter(python, dir, &tmp)
        .and_then(|()| std::fs::rename(&tmp, &out).map_err(|e| e.to_string()));
    if let Err(reason) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(ModelError::File {
            path: dir.join(SAVED_MODEL),
            reason,
        });
    }
    Ok(out)
}

/// Runs the embedded converter (`python - DIR OUT`, the script on standard input); on failure,
/// its reason (the converter's own line, or the end of what Python printed).
fn run_converter(python: &str, dir: &Path, out: &Path) -> Result<(), String> {
    let mut child = Command::new(python)
        .arg("-")
        .arg(dir)
        .arg(out)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {python}: {e}"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(CONVERTER.as_bytes())
        .map_err(|e| format!("writing the converter to {python}: {e}"))?;
    let run = child
        .wait_with_output()
        .map_err(|e| format!("running {python}: {e}"))?;
    if run.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&run.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    Err(
        match lines.iter().rev().find(|l| l.starts_with("cannot convert")) {
            Some(line) => line.to_string(),
            None => format!(
                "converting with tf2onnx failed: {}",
                lines[lines.len().saturating_sub(5)..].join(" | ")
            ),
        },
    )
}
