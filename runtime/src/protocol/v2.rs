//! Open Inference Protocol (V2) REST bodies, including the binary tensor data extension
//! (`Inference-Header-Content-Length`, `binary_data_size`, `binary_data`, `binary_data_output`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use siesta_models::Tensor;

use super::json_data::{decode_data, decode_values, quote_non_finite};
use super::{InferRequest, InferResponse, RequestedOutput, classification, parse_input_header};
use crate::error::{Result, ServeError};

pub const HEADER_CONTENT_LENGTH: &str = "inference-header-content-length";

#[derive(Debug, Deserialize)]
pub struct InferRequestBody {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
    pub inputs: Vec<InputBody>,
    #[serde(default)]
    pub outputs: Option<Vec<OutputRequestBody>>,
}

#[derive(Debug, Deserialize)]
pub struct InputBody {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
    /// Kept as text until the datatype and shape are known, then decoded leaf by leaf.
    #[serde(default)]
    pub data: Option<Box<serde_json::value::RawValue>>,
}

#[derive(Debug, Deserialize)]
pub struct OutputRequestBody {
    pub name: String,
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
}

#[derive(Debug, Serialize)]
pub struct InferResponseBody {
    pub model_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, Value>>,
    pub outputs: Vec<OutputBody>,
}

#[derive(Debug, Serialize)]
pub struct OutputBody {
    pub name: String,
    pub datatype: &'static str,
    pub shape: Vec<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Vec<Value>>,
}

fn invalid(msg: impl Into<String>) -> ServeError {
    ServeError::InvalidInput(msg.into())
}

fn param_bool(params: Option<&Map<String, Value>>, key: &str) -> Result<Option<bool>> {
    match params.and_then(|p| p.get(key)) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(invalid(format!(
            "parameter '{key}' must be a boolean, got {other}"
        ))),
    }
}

/// Splits a request body into its JSON header and binary section.
pub fn split_body<'a>(body: &'a [u8], header_len: Option<&str>) -> Result<(&'a [u8], &'a [u8])> {
    let Some(h) = header_len else {
        return Ok((body, &[]));
    };
    let n: usize = h.trim().parse().map_err(|_| {
        invalid(format!(
            "Inference-Header-Content-Length '{h}' is not a number"
        ))
    })?;
    if n > body.len() {
        return Err(invalid(format!(
            "Inference-Header-Content-Length {n} exceeds the body length {}",
            body.len()
        )));
    }
    Ok(body.split_at(n))
}

/// Parses a V2 infer request (JSON header plus optional binary section).
pub fn parse_infer_request(json: &[u8], mut binary: &[u8]) -> Result<InferRequest> {
    let body: InferRequestBody = serde_json::from_slice(&quote_non_finite(json))
        .map_err(|e| invalid(format!("invalid JSON request: {e}")))?;
    let binary_output_default =
        param_bool(body.parameters.as_ref(), "binary_data_output")?.unwrap_or(false);
    let mut inputs = Vec::with_capacity(body.inputs.len());
    for input in &body.inputs {
        let (datatype, shape) = parse_input_header(&input.name, &input.datatype, &input.shape)?;
        let count = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| {
                invalid(format!(
                    "input '{}': shape {:?} is too large",
                    input.name, shape
                ))
            })?;
        let binary_size = match input
            .parameters
            .as_ref()
            .and_then(|p| p.get("binary_data_size"))
        {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| {
                        invalid(format!(
                            "input '{}': binary_data_size must be a non-negative integer",
                            input.name
                        ))
                    })?,
            ),
        };
        let data = match (binary_size, &input.data) {
            (Some(_), Some(_)) => {
                return Err(invalid(format!(
                    "input '{}': has both 'data' and binary_data_size",
                    input.name
                )));
            }
            (Some(n), None) => {
                if n > binary.len() {
                    return Err(invalid(format!(
                        "input '{}': binary_data_size {n} exceeds the {} bytes left in the binary section",
                        input.name,
                        binary.len()
                    )));
                }
                let (mine, rest) = binary.split_at(n);
                binary = rest;
                mine.to_vec()
            }
            (None, Some(data)) => decode_data(&input.name, datatype, count, data.get())?,
            (None, None) => {
                return Err(invalid(format!(
                    "input '{}': no 'data' and no binary_data_size",
                    input.name
                )));
            }
        };
        inputs.push(Tensor::new(&input.name, datatype, shape, data)?);
    }
    if !binary.is_empty() {
        return Err(invalid(format!(
            "{} bytes of binary data are not claimed by any input's binary_data_size",
            binary.len()
        )));
    }
    let outputs = match &body.outputs {
        None => Vec::new(),
        Some(outs) => outs
            .iter()
            .map(|o| {
                Ok(RequestedOutput {
                    name: o.name.clone(),
                    binary: param_bool(o.parameters.as_ref(), "binary_data")?,
                    classification: classification::parse_count(
                        &o.name,
                        o.parameters
                            .as_ref()
                            .and_then(|p| p.get(classification::PARAMETER)),
                    )?,
                })
            })
            .collect::<Result<_>>()?,
    };
    Ok(InferRequest {
        id: body.id,
        inputs,
        outputs,
        binary_output_default,
    })
}

/// Builds the response: a JSON body, or JSON plus binary section when any output is binary.
/// Returns `(body, json_header_length_if_binary)`.
pub fn build_infer_response(resp: &InferResponse) -> Result<(Vec<u8>, Option<usize>)> {
    let mut binary = Vec::new();
    let mut outputs = Vec::with_capacity(resp.outputs.len());
    for (t, as_binary) in &resp.outputs {
        let (parameters, data) = if *as_binary {
            let mut p = Map::new();
            p.insert("binary_data_size".into(), Value::from(t.data.len()));
            binary.extend_from_slice(&t.data);
            (Some(p), None)
        } else {
            (None, Some(decode_values(t.datatype, &t.data)?))
        };
        outputs.push(OutputBody {
            name: t.name.clone(),
            datatype: t.datatype.as_str(),
            shape: t.shape.clone(),
            parameters,
            data,
        });
    }
    let body = InferResponseBody {
        model_name: resp.model_name.clone(),
        model_version: Some(resp.model_version.clone()),
        id: resp.id.clone(),
        parameters: None,
        outputs,
    };
    let mut json = serde_json::to_vec(&body).map_err(|e| ServeError::Inference(e.to_string()))?;
    if binary.is_empty() && !resp.outputs.iter().any(|(_, b)| *b) {
        return Ok((json, None));
    }
    let header_len = json.len();
    json.extend_from_slice(&binary);
    Ok((json, Some(header_len)))
}
