//! KServe V1: `{"instances": [...]}` (rows) or `{"inputs": ...}` (columns) in,
//! `{"predictions": [...]}` out. Binary values come as `{"b64": "..."}`.

use base64::Engine;
use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use siesta_models::{DataType, ModelConfig, Tensor, TensorSpec};

use super::InferRequest;
use super::json_data::{decode_nested, decode_values, nest, quote_non_finite};
use crate::error::{Result, ServeError};

fn invalid(msg: impl Into<String>) -> ServeError {
    ServeError::InvalidInput(msg.into())
}

/// The parts of a V1 body Siesta reads, left as raw JSON text: rows are decoded one leaf at a
/// time into their tensors, never into a `Value` tree of the whole body.
#[derive(Deserialize)]
struct PredictBody<'a> {
    #[serde(borrow, default)]
    instances: Option<&'a RawValue>,
    #[serde(borrow, default)]
    inputs: Option<&'a RawValue>,
}

/// What a raw JSON value starts with.
fn kind(raw: &RawValue) -> u8 {
    raw.get()
        .bytes()
        .find(|b| !b.is_ascii_whitespace())
        .unwrap_or(b'n')
}

/// Parses a V1 predict body against the model's inputs.
pub fn parse_predict(config: &ModelConfig, body: &[u8]) -> Result<InferRequest> {
    let text = quote_non_finite(body);
    let text =
        std::str::from_utf8(&text).map_err(|e| invalid(format!("invalid JSON request: {e}")))?;
    let trimmed = text.trim_start();
    if !trimmed.starts_with('{') {
        return Err(invalid(
            "the request body must be a JSON object with \"instances\" or \"inputs\"",
        ));
    }
    let body: PredictBody =
        serde_json::from_str(text).map_err(|e| invalid(format!("invalid JSON request: {e}")))?;
    // Per input: the list of row values.
    let mut columns: Vec<Vec<&RawValue>> = vec![Vec::new(); config.inputs.len()];
    match (body.instances, body.inputs) {
        (Some(_), Some(_)) => {
            return Err(invalid("send either \"instances\" or \"inputs\", not both"));
        }
        (Some(instances), None) => {
            for (i, inst) in list_of(instances, "\"instances\"")?.into_iter().enumerate() {
                for (col, spec) in columns.iter_mut().zip(&config.inputs) {
                    col.push(
                        instance_value(config, spec, inst)
                            .map_err(|e| invalid(format!("instance {i}: {e}")))?,
                    );
                }
            }
        }
        (None, Some(rows)) if kind(rows) == b'[' && config.inputs.len() == 1 => {
            columns[0] = list_of(rows, "\"inputs\"")?;
        }
        (None, Some(named)) if kind(named) == b'{' => {
            let named: BTreeMap<String, &RawValue> =
                serde_json::from_str(named.get()).map_err(|e| invalid(format!("inputs: {e}")))?;
            for (col, spec) in columns.iter_mut().zip(&config.inputs) {
                match named.get(&spec.name) {
                    Some(rows) if kind(rows) == b'[' => {
                        *col = list_of(rows, &format!("inputs.{}", spec.name))?;
                    }
                    Some(_) => return Err(invalid(format!("inputs.{} must be a list", spec.name))),
                    None => return Err(invalid(format!("inputs: missing input '{}'", spec.name))),
                }
            }
            if let Some(extra) = named
                .keys()
                .find(|k| !config.inputs.iter().any(|s| &s.name == *k))
            {
                return Err(invalid(format!("inputs: unexpected input '{extra}'")));
            }
        }
        (None, Some(_)) => {
            return Err(invalid(
                "\"inputs\" must be a list (one input) or an object of lists by input name",
            ));
        }
        (None, None) => return Err(invalid("the request needs \"instances\" or \"inputs\"")),
    }
    let rows = columns.first().map_or(0, Vec::len);
    if rows == 0 {
        return Err(invalid("no instances in the request"));
    }
    if config.max_batch_size == 0 && rows != 1 {
        return Err(invalid(format!(
            "model '{}' takes exactly one instance, got {rows}",
            config.name
        )));
    }
    let inputs = columns
        .iter()
        .zip(&config.inputs)
        .map(|(col, spec)| column_tensor(config, spec, col))
        .collect::<Result<_>>()?;
    Ok(InferRequest {
        id: None,
        inputs,
        outputs: Vec::new(),
        binary_output_default: false,
    })
}

/// The elements of a JSON list, left raw.
fn list_of<'a>(raw: &'a RawValue, what: &str) -> Result<Vec<&'a RawValue>> {
    serde_json::from_str(raw.get()).map_err(|_| invalid(format!("{what} must be a list")))
}

/// An object's members, if `raw` is an object.
fn members(raw: &RawValue) -> Result<Option<BTreeMap<String, &RawValue>>> {
    if kind(raw) != b'{' {
        return Ok(None);
    }
    serde_json::from_str(raw.get())
        .map(Some)
        .map_err(|e| invalid(format!("invalid object: {e}")))
}

fn is_b64(m: &BTreeMap<String, &RawValue>) -> bool {
    m.len() == 1 && m.contains_key("b64")
}

fn instance_value<'a>(
    config: &ModelConfig,
    spec: &TensorSpec,
    inst: &'a RawValue,
) -> Result<&'a RawValue> {
    match members(inst)? {
        Some(m) if !is_b64(&m) => m
            .get(&spec.name)
            .copied()
            .ok_or_else(|| invalid(format!("missing input '{}'", spec.name))),
        _ if config.inputs.len() == 1 => Ok(inst),
        _ => Err(invalid(format!(
            "model '{}' has several inputs: each instance must be an object keyed by input name",
            config.name
        ))),
    }
}

/// Builds one input's batch tensor from its row values.
fn column_tensor(config: &ModelConfig, spec: &TensorSpec, rows: &[&RawValue]) -> Result<Tensor> {
    let mut data = Vec::new();
    let mut row_shape: Option<Vec<usize>> = None;
    for (i, row) in rows.iter().enumerate() {
        let (bytes, shape) =
            row_bytes(spec, row).map_err(|e| invalid(format!("instance {i}: {e}")))?;
        match &row_shape {
            Some(s) if *s != shape => {
                return Err(invalid(format!(
                    "instance {i}: input '{}' has shape {shape:?}, earlier instances {s:?}",
                    spec.name
                )));
            }
            _ => row_shape = Some(shape),
        }
        data.extend_from_slice(&bytes);
    }
    let row_shape = row_shape.unwrap_or_default();
    let shape = if config.max_batch_size > 0 {
        std::iter::once(rows.len()).chain(row_shape).collect()
    } else {
        row_shape
    };
    Ok(Tensor::new(&spec.name, spec.datatype, shape, data)?)
}

/// One row's bytes and shape. `{"b64": ...}` is a BYTES element, or for a numeric input the
/// row's raw little-endian values.
fn row_bytes(spec: &TensorSpec, row: &RawValue) -> Result<(Vec<u8>, Vec<usize>)> {
    if let Some(m) = members(row)? {
        let b64 = m
            .get("b64")
            .filter(|_| is_b64(&m))
            .and_then(|v| serde_json::from_str::<String>(v.get()).ok())
            .ok_or_else(|| {
                invalid(format!(
                    "input '{}': objects must be {{\"b64\": \"...\"}}",
                    spec.name
                ))
            })?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|e| invalid(format!("input '{}': invalid base64: {e}", spec.name)))?;
        if spec.datatype == DataType::Bytes {
            let mut out = (raw.len() as u32).to_le_bytes().to_vec();
            out.extend_from_slice(&raw);
            return Ok((out, row_shape_for(spec, 1)?));
        }
        let elem = spec.datatype.element_size().unwrap_or(1);
        if raw.len() % elem != 0 {
            return Err(invalid(format!(
                "input '{}': {} decoded bytes are not a whole number of {} values",
                spec.name,
                raw.len(),
                spec.datatype
            )));
        }
        let shape = row_shape_for(spec, raw.len() / elem)?;
        return Ok((raw, shape));
    }
    decode_nested(&spec.name, spec.datatype, row.get())
}

/// The row shape for a flat element count: the model's row shape when it is fixed.
fn row_shape_for(spec: &TensorSpec, elements: usize) -> Result<Vec<usize>> {
    if spec.shape.iter().all(|&d| d > 0) {
        let shape: Vec<usize> = spec.shape.iter().map(|&d| d as usize).collect();
        if shape.iter().product::<usize>() != elements {
            return Err(invalid(format!(
                "input '{}': {elements} values do not fill the shape {shape:?}",
                spec.name
            )));
        }
        Ok(shape)
    } else {
        Ok(vec![elements])
    }
}

/// `{"predictions": [...]}`: one entry per row; the row's value for a single-output model,
/// an object by output name otherwise.
pub fn build_predictions(config: &ModelConfig, outputs: &[Tensor]) -> Result<Value> {
    let per_output: Vec<Vec<Value>> = outputs
        .iter()
        .map(|t| {
            if config.max_batch_size == 0 {
                return Ok(vec![nest(decode_values(t.datatype, &t.data)?, &t.shape)]);
            }
            let rows = t.shape.first().copied().unwrap_or(0);
            t.split_rows(&vec![1; rows])?
                .into_iter()
                .map(|r| Ok(nest(decode_values(r.datatype, &r.data)?, &r.shape[1..])))
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<_>>()?;
    let rows = per_output.first().map_or(0, Vec::len);
    let predictions: Vec<Value> = (0..rows)
        .map(|i| {
            if per_output.len() == 1 {
                per_output[0][i].clone()
            } else {
                Value::Object(
                    outputs
                        .iter()
                        .zip(&per_output)
                        .map(|(t, vals)| (t.name.clone(), vals[i].clone()))
                        .collect(),
                )
            }
        })
        .collect();
    Ok(serde_json::json!({ "predictions": predictions }))
}
