//! Protocol-independent requests and responses, and their validation against a model's config.
//! V1, V2 REST and gRPC all decode into [`InferRequest`] and encode from [`InferResponse`].

pub(crate) mod classification;
pub mod json_data;
pub mod v1;
pub mod v2;

use std::sync::Arc;

use siesta_models::{DataType, ModelConfig, Tensor, TensorSpec};

use crate::error::{Result, ServeError};

#[derive(Debug)]
pub struct InferRequest {
    pub id: Option<String>,
    pub inputs: Vec<Tensor>,
    /// Outputs the client asked for; empty means all of them.
    pub outputs: Vec<RequestedOutput>,
    /// The request-level `binary_data_output` parameter.
    pub binary_output_default: bool,
}

#[derive(Debug, Clone)]
pub struct RequestedOutput {
    pub name: String,
    pub binary: Option<bool>,
    /// Triton's classification extension: the top this-many classes instead of the scores.
    pub classification: Option<usize>,
}

#[derive(Debug)]
pub struct InferResponse {
    pub config: Arc<ModelConfig>,
    pub model_name: String,
    pub model_version: String,
    pub id: Option<String>,
    /// Each output with whether it goes in the binary section.
    pub outputs: Vec<(Tensor, bool)>,
}

fn invalid(msg: String) -> ServeError {
    ServeError::InvalidInput(msg)
}

/// An input's declared datatype and shape, as every protocol sends them (name, string, i64s).
pub fn parse_input_header(
    name: &str,
    datatype: &str,
    shape: &[i64],
) -> Result<(DataType, Vec<usize>)> {
    let dt: DataType = datatype
        .parse()
        .map_err(|_| invalid(format!("input '{name}': unknown datatype '{datatype}'")))?;
    let dims = shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<usize>, _>>()
        .map_err(|_| {
            invalid(format!(
                "input '{name}': shape {shape:?} has a negative dimension"
            ))
        })?;
    Ok((dt, dims))
}

/// Checks inputs against the model's metadata and returns them in the model's input order,
/// plus the number of batch rows.
pub fn validate_inputs(
    config: &ModelConfig,
    mut inputs: Vec<Tensor>,
) -> Result<(Vec<Tensor>, usize)> {
    for t in &inputs {
        if !config.inputs.iter().any(|s| s.name == t.name) {
            let known: Vec<&str> = config.inputs.iter().map(|s| s.name.as_str()).collect();
            return Err(invalid(format!(
                "unexpected input '{}' for model '{}' (inputs: {})",
                t.name,
                config.name,
                known.join(", ")
            )));
        }
    }
    let mut ordered = Vec::with_capacity(config.inputs.len());
    let mut rows = None;
    for spec in &config.inputs {
        let pos = inputs
            .iter()
            .position(|t| t.name == spec.name)
            .ok_or_else(|| {
                invalid(format!(
                    "missing input '{}' for model '{}'",
                    spec.name, config.name
                ))
            })?;
        let t = inputs.swap_remove(pos);
        if inputs.iter().any(|o| o.name == spec.name) {
            return Err(invalid(format!(
                "input '{}' appears more than once",
                spec.name
            )));
        }
        if t.datatype != spec.datatype {
            return Err(invalid(format!(
                "input '{}': datatype {} does not match the model's {}",
                t.name, t.datatype, spec.datatype
            )));
        }
        let n = check_shape(config, spec, &t.shape)?;
        match rows {
            Some(r) if r != n => {
                return Err(invalid(format!(
                    "input '{}': batch size {n} differs from the other inputs' {r}",
                    t.name
                )));
            }
            _ => rows = Some(n),
        }
        ordered.push(t);
    }
    Ok((ordered, rows.unwrap_or(1)))
}

fn check_shape(config: &ModelConfig, spec: &TensorSpec, shape: &[usize]) -> Result<usize> {
    let published = config.published_shape(spec);
    let mismatch = || {
        invalid(format!(
            "input '{}': shape {:?} does not match the model's {:?}",
            spec.name, shape, published
        ))
    };
    if shape.len() != published.len() {
        return Err(mismatch());
    }
    for (&got, &want) in shape.iter().zip(&published) {
        if want != -1 && usize::try_from(want).ok() != Some(got) {
            return Err(mismatch());
        }
    }
    if config.max_batch_size == 0 {
        return Ok(1);
    }
    let rows = shape[0];
    if rows == 0 {
        return Err(invalid(format!("input '{}': batch size 0", spec.name)));
    }
    if rows > config.max_batch_size {
        return Err(invalid(format!(
            "input '{}': batch size {rows} exceeds the model's max_batch_size {}",
            spec.name, config.max_batch_size
        )));
    }
    Ok(rows)
}

/// Picks the requested outputs (all when none were named) and whether each is binary, turning
/// those asked for as classifications into their top classes (`labels` name the classes).
pub fn select_outputs(
    requested: &[RequestedOutput],
    binary_default: bool,
    mut outputs: Vec<Tensor>,
    labels: &[String],
) -> Result<Vec<(Tensor, bool)>> {
    if requested.is_empty() {
        return Ok(outputs.into_iter().map(|t| (t, binary_default)).collect());
    }
    requested
        .iter()
        .map(|r| {
            let pos = outputs
                .iter()
                .position(|t| t.name == r.name)
                .ok_or_else(|| {
                    ServeError::Inference(format!("model did not produce output '{}'", r.name))
                })?;
            let t = outputs.swap_remove(pos);
            let t = match r.classification {
                Some(k) => classification::classify(&t, k, labels)?,
                None => t,
            };
            Ok((t, r.binary.unwrap_or(binary_default)))
        })
        .collect()
}

/// Validates requested output names before any compute is spent.
pub fn check_requested_outputs(config: &ModelConfig, requested: &[RequestedOutput]) -> Result<()> {
    for (i, r) in requested.iter().enumerate() {
        if !config.outputs.iter().any(|s| s.name == r.name) {
            let known: Vec<&str> = config.outputs.iter().map(|s| s.name.as_str()).collect();
            return Err(invalid(format!(
                "unknown output '{}' for model '{}' (outputs: {})",
                r.name,
                config.name,
                known.join(", ")
            )));
        }
        if requested[..i].iter().any(|o| o.name == r.name) {
            return Err(invalid(format!(
                "output '{}' requested more than once",
                r.name
            )));
        }
    }
    Ok(())
}
