//! A `config.json` for an ONNX file that came without one (e.g. straight out of tf2onnx): the
//! graph's own inputs and outputs, with a symbolic first dimension read as the batch.

use std::path::Path;

use candle_onnx::onnx::tensor_proto::DataType as OnnxType;
use candle_onnx::onnx::tensor_shape_proto::dimension::Value as Dim;
use candle_onnx::onnx::type_proto::Value as TypeValue;
use candle_onnx::onnx::{ModelProto, ValueInfoProto};

use crate::config::{ModelConfig, TensorSpec};
use crate::tensor::DataType;

/// Rows per batch when the graph's first dimension is symbolic.
const DERIVED_MAX_BATCH: usize = 8;

pub fn config_from_graph(
    name: &str,
    file: &Path,
    proto: &ModelProto,
) -> Result<ModelConfig, String> {
    let graph = proto.graph.as_ref().ok_or("no graph in the model")?;
    let initializers: Vec<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<&ValueInfoProto> = graph
        .input
        .iter()
        .filter(|i| !initializers.contains(&i.name.as_str()))
        .collect();
    let mut batched = true;
    let spec = |v: &ValueInfoProto| -> Result<(TensorSpec, bool), String> {
        let Some(TypeValue::TensorType(t)) = v.r#type.as_ref().and_then(|t| t.value.as_ref())
        else {
            return Err(format!("'{}' is not a tensor", v.name));
        };
        let datatype = match OnnxType::try_from(t.elem_type) {
            Ok(OnnxType::Float) => DataType::F32,
            Ok(OnnxType::Double) => DataType::F64,
            Ok(OnnxType::Float16) => DataType::F16,
            Ok(OnnxType::Int64) => DataType::I64,
            Ok(OnnxType::Uint8) => DataType::U8,
            other => return Err(format!("'{}' has element type {other:?}", v.name)),
        };
        let dims: Vec<i64> = t
            .shape
            .as_ref()
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| match d.value {
                        Some(Dim::DimValue(n)) if n > 0 => n,
                        _ => -1,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let first_symbolic = dims.first() == Some(&-1);
        Ok((
            TensorSpec {
                name: v.name.clone(),
                datatype,
                shape: dims,
            },
            first_symbolic,
        ))
    };
    let mut ins = Vec::new();
    for v in &inputs {
        let (s, b) = spec(v)?;
        batched &= b;
        ins.push(s);
    }
    let mut outs = Vec::new();
    for v in &graph.output {
        outs.push(spec(v)?.0);
    }
    let strip = |mut s: TensorSpec| {
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
        info: serde_json::Map::from_iter([(
            "config".to_string(),
            serde_json::Value::from("derived from the ONNX graph"),
        )]),
    })
}
