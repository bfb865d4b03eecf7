//! Reads a PyTorch `state_dict()`, saved as safetensors or with `torch.save` (`.pt`, `.pth`,
//! `.bin`), into host tensors keyed by module name.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::error::ModelError;

/// Where checkpoints commonly nest the state dict, tried in order when the top level holds none.
const NESTED_KEYS: [&str; 2] = ["state_dict", "model"];

pub fn load(path: &Path) -> Result<HashMap<String, Tensor>, ModelError> {
    let file_err = |reason: String| ModelError::File {
        path: path.to_path_buf(),
        reason,
    };
    if !path.is_file() {
        return Err(file_err("no such file".into()));
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let tensors: Vec<(String, Tensor)> = match ext {
        "safetensors" => candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| file_err(e.to_string()))?
            .into_iter()
            .collect(),
        "pt" | "pth" | "bin" | "ckpt" => {
            let mut all = candle_core::pickle::read_all(path).map_err(|e| {
                file_err(format!("not a torch.save state dict ({e}); TorchScript files need `architecture: torchscript`"))
            })?;
            for key in NESTED_KEYS {
                if !all.is_empty() {
                    break;
                }
                all = candle_core::pickle::read_all_with_key(path, Some(key)).unwrap_or_default();
            }
            all
        }
        _ => {
            return Err(file_err(
                "unknown weights format: expected .safetensors, or .pt/.pth/.bin from torch.save"
                    .into(),
            ));
        }
    };
    if tensors.is_empty() {
        return Err(file_err("holds no tensors".into()));
    }
    // nn.DataParallel and DistributedDataParallel save every name under "module.".
    Ok(tensors
        .into_iter()
        .map(|(k, t)| match k.strip_prefix("module.") {
            Some(rest) => (rest.to_string(), t),
            None => (k, t),
        })
        .collect())
}
