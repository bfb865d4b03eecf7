//! A `config.json` for an ONNX file that came without one (e.g. straight out of tf2onnx): the
//! graph's own inputs and outputs as ONNX Runtime reads them, with a symbolic first dimension
//! read as the batch.

use std::path::Path;

use ort::value::{Outlet, ValueType};

use crate::config::{ModelConfig, TensorSpec};

use super::values;

/// Rows per batch when the graph's first dimension is symbolic.
const DERIVED_MAX_BATCH: usize = 8;

/// An outlet as a tensor spec (its full shape, batch included), and whether its first dimension
/// is symbolic.
pub fn spec(outlet: &Outlet) -> Result<(TensorSpec, bool), String> {
    let ValueType::Tensor { ty, shape, .. } = outlet.dtype() else {
        return Err(format!(
            "'{}' is not a tensor (sequences and maps are not served)",
            outlet.name()
        ));
    };
    let datatype = values::datatype(*ty).ok_or_else(|| {
        format!(
            "'{}' has element type {ty:?}, which no protocol carries",
            outlet.name()
        )
    })?;
    let dims: Vec<i64> = shape.iter().map(|&d| if d > 0 { d } else { -1 }).collect();
    let first_symbolic = dims.first() == Some(&-1);
    Ok((
        TensorSpec {
            name: outlet.name().to_string(),
            datatype,
            shape: dims,
        },
        first_symbolic,
    ))
}

pub fn config_from_graph(
    name: &str,
    file: &Path,
    inputs: &[Outlet],
    outputs: &[Outlet],
) -> Result<ModelConfig, String> {
    let ins = inputs.iter().map(spec).collect::<Result<Vec<_>, _>>()?;
    let outs = outputs.iter().map(spec).collect::<Result<Vec<_>, _>>()?;
    let batched = !ins.is_empty() && ins.iter().all(|(_, b)| *b);
    let strip = |(mut s, _): (TensorSpec, bool)| {
        if batched && !s.shape.is_empty() {
            s.shape.remove(0);
        }
        s
    };
    Ok(ModelConfig {
        name: name.to_string(),
        architecture: crate::architecture::Architecture::Onnx,
        weights: file.file_name().map(|f| f.to_string_lossy().into_owned()),
        weights_sha256: None,
        max_batch_size: if batched { DERIVED_MAX_BATCH } else { 0 },
        max_queue_delay_us: 0,
        inputs: ins.into_iter().map(strip).collect(),
        outputs: outs.into_iter().map(strip).collect(),
        labels: Vec::new(),
        image: None,
        encoded_images: None,
        info: serde_json::Map::from_iter([(
            "config".to_string(),
            serde_json::Value::from("derived from the ONNX graph"),
        )]),
    })
}
