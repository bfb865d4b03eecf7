//! Triton's classification extension: a requested output with `parameters.classification = k`
//! comes back as the top `k` classes of each row instead of every score, as `BYTES` elements
//! `"<value>:<index>[:<label>]"` (what tritonclient's `InferRequestedOutput(..., class_count=k)`
//! asks for). The value is the output's own (a logit stays a logit), as Triton answers; the
//! ranking is the top-k kernel's CPU reference.

use serde_json::Value;
use siesta_kernels::top_k;
use siesta_models::{DataType, Tensor};

use crate::error::{Result, ServeError};

pub const PARAMETER: &str = "classification";

fn invalid(msg: String) -> ServeError {
    ServeError::InvalidInput(msg)
}

/// The class count a requested output's parameter asks for; 0 (Triton's "no classification")
/// and an absent parameter are `None`.
pub fn parse_count(output: &str, value: Option<&Value>) -> Result<Option<usize>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(0) => Ok(None),
            Some(k) => Ok(Some(k as usize)),
            None => Err(invalid(format!(
                "output '{output}': parameter '{PARAMETER}' must be a non-negative integer, got {v}"
            ))),
        },
    }
}

/// As [`parse_count`], for gRPC's int64/uint64 parameter.
pub fn count_from_i64(output: &str, value: i64) -> Result<Option<usize>> {
    match usize::try_from(value) {
        Ok(0) => Ok(None),
        Ok(k) => Ok(Some(k)),
        Err(_) => Err(invalid(format!(
            "output '{output}': parameter '{PARAMETER}' must be a non-negative integer, got {value}"
        ))),
    }
}

/// The top `k` of every row (the last dimension holds the classes), as Triton formats them.
pub fn classify(tensor: &Tensor, k: usize, labels: &[String]) -> Result<Tensor> {
    let classes = match tensor.shape.last() {
        Some(&c) if c > 0 && tensor.datatype != DataType::Bytes => c,
        _ => {
            return Err(invalid(format!(
                "output '{}' ({} {:?}) has no numeric class dimension to classify",
                tensor.name, tensor.datatype, tensor.shape
            )));
        }
    };
    let values = tensor
        .to_f32_vec()
        .map_err(|e| invalid(format!("output '{}': {e}", tensor.name)))?;
    let k = k.min(classes);
    let mut data = Vec::with_capacity(values.len() / classes * k * 16);
    for row in values.chunks_exact(classes) {
        for s in top_k(row, k) {
            // Triton prints the value with C++'s std::to_string, which is "%f".
            let text = match labels.get(s.index) {
                Some(label) => format!("{:.6}:{}:{label}", s.score, s.index),
                None => format!("{:.6}:{}", s.score, s.index),
            };
            data.extend_from_slice(&(text.len() as u32).to_le_bytes());
            data.extend_from_slice(text.as_bytes());
        }
    }
    let mut shape = tensor.shape.clone();
    *shape.last_mut().expect("checked above") = k;
    Tensor::new(&tensor.name, DataType::Bytes, shape, data)
        .map_err(|e| ServeError::Inference(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use siesta_models::tensor::bytes_elements;

    fn texts(t: &Tensor) -> Vec<String> {
        bytes_elements(&t.data)
            .unwrap()
            .into_iter()
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn each_row_keeps_its_top_classes_with_labels_where_known() {
        let t = Tensor::from_f32("logits", vec![2, 3], &[0.5, 2.0, -1.0, 3.0, 1.0, 4.0]);
        let labels = vec!["cat".to_string(), "dog".to_string()];
        let c = classify(&t, 2, &labels).unwrap();
        assert_eq!((c.datatype, c.shape.clone()), (DataType::Bytes, vec![2, 2]));
        assert_eq!(
            texts(&c),
            [
                "2.000000:1:dog",
                "0.500000:0:cat",
                "4.000000:2",
                "3.000000:0:cat"
            ]
        );
        // More classes than there are: all of them, as Triton does.
        assert_eq!(classify(&t, 9, &[]).unwrap().shape, vec![2, 3]);
    }

    #[test]
    fn integer_outputs_classify_and_bytes_outputs_are_refused() {
        let t = Tensor::new(
            "c",
            DataType::I64,
            vec![3],
            [1i64, 9, 4].iter().flat_map(|v| v.to_le_bytes()).collect(),
        )
        .unwrap();
        assert_eq!(texts(&classify(&t, 1, &[]).unwrap()), ["9.000000:1"]);
        let s = Tensor::new("s", DataType::Bytes, vec![1], vec![1, 0, 0, 0, b'x']).unwrap();
        let err = classify(&s, 1, &[]).unwrap_err().to_string();
        assert!(err.contains("'s'"), "{err}");
    }

    #[test]
    fn the_count_must_be_a_non_negative_integer() {
        assert_eq!(
            parse_count("o", Some(&serde_json::json!(3))).unwrap(),
            Some(3)
        );
        assert_eq!(parse_count("o", Some(&serde_json::json!(0))).unwrap(), None);
        assert_eq!(parse_count("o", None).unwrap(), None);
        for bad in [
            serde_json::json!(-1),
            serde_json::json!("3"),
            serde_json::json!(1.5),
        ] {
            let err = parse_count("o", Some(&bad)).unwrap_err();
            assert!(err.to_string().contains("classification"), "{err}");
        }
        assert!(count_from_i64("o", -2).is_err());
        assert_eq!(count_from_i64("o", 5).unwrap(), Some(5));
    }
}
