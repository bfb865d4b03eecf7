//! Class labels kept beside the model as TorchServe and KServe's PyTorch server keep them:
//! `index_to_name.json`, `{"0": "tench", ...}` or `{"0": ["n01440764", "tench"], ...}`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::ModelError;

pub const INDEX_TO_NAME: &str = "index_to_name.json";

/// The labels in class order; empty when the file is absent.
pub fn index_to_name(dir: &Path) -> Result<Vec<String>, ModelError> {
    let path = dir.join(INDEX_TO_NAME);
    let Ok(bytes) = std::fs::read(&path) else {
        return Ok(Vec::new());
    };
    let bad = |reason: String| ModelError::File {
        path: path.clone(),
        reason,
    };
    let map: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    let mut indexed = BTreeMap::new();
    for (key, value) in map {
        let index: usize = key
            .parse()
            .map_err(|_| bad(format!("key '{key}' is not a class index")))?;
        let label = match value {
            serde_json::Value::String(s) => s,
            // [wordnet id, name]: the name is what users read.
            serde_json::Value::Array(parts) => match parts.last() {
                Some(serde_json::Value::String(s)) => s.clone(),
                _ => return Err(bad(format!("class {index}: expected [id, name]"))),
            },
            _ => return Err(bad(format!("class {index}: expected a name"))),
        };
        indexed.insert(index, label);
    }
    if indexed.keys().copied().ne(0..indexed.len()) {
        return Err(bad(
            "class indices must run 0, 1, 2, ... without gaps".into()
        ));
    }
    Ok(indexed.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_torchserve_label_forms_are_read_in_index_order() {
        let dir = tempfile::tempdir().unwrap();
        assert!(index_to_name(dir.path()).unwrap().is_empty());
        let file = dir.path().join(INDEX_TO_NAME);
        std::fs::write(
            &file,
            r#"{"1": ["n2", "goldfish"], "0": "tench", "2": "shark"}"#,
        )
        .unwrap();
        assert_eq!(
            index_to_name(dir.path()).unwrap(),
            ["tench", "goldfish", "shark"]
        );
        std::fs::write(&file, r#"{"0": "a", "2": "c"}"#).unwrap();
        let err = index_to_name(dir.path()).unwrap_err().to_string();
        assert!(err.contains(INDEX_TO_NAME) && err.contains("gaps"), "{err}");
    }
}
