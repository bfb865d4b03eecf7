//! Tensor values in JSON: nested or flat arrays to little-endian bytes and back, for every datatype.

use serde_json::Value;
use siesta_models::DataType;
use siesta_models::tensor::bytes_elements;

use crate::error::{Result, ServeError};

fn invalid(msg: String) -> ServeError {
    ServeError::InvalidInput(msg)
}

/// Quotes bare `NaN`, `Infinity` and `-Infinity` tokens (outside strings) so serde_json can read
/// them: Triton's clients (perf_analyzer's random data, for one) send them, and Triton accepts them.
/// Float decoding then takes the quoted names back as non-finite values.
pub fn quote_non_finite(json: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let has = |needle: &[u8]| json.windows(needle.len()).any(|w| w == needle);
    if !has(b"NaN") && !has(b"Infinity") {
        return std::borrow::Cow::Borrowed(json);
    }
    let mut out = Vec::with_capacity(json.len() + 64);
    let (mut in_string, mut escaped) = (false, false);
    let mut i = 0;
    while i < json.len() {
        let b = json[i];
        if in_string {
            out.push(b);
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        let token = [&b"-Infinity"[..], b"Infinity", b"NaN"]
            .into_iter()
            .find(|t| json[i..].starts_with(t));
        match (b, token) {
            (b'"', _) => {
                in_string = true;
                out.push(b);
                i += 1;
            }
            (_, Some(t)) => {
                out.push(b'"');
                out.extend_from_slice(t);
                out.push(b'"');
                i += t.len();
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    std::borrow::Cow::Owned(out)
}

fn non_finite(v: &Value) -> Option<f64> {
    match v.as_str()? {
        "NaN" | "nan" => Some(f64::NAN),
        "Infinity" | "inf" => Some(f64::INFINITY),
        "-Infinity" | "-inf" => Some(f64::NEG_INFINITY),
        _ => None,
    }
}

/// Shape of a rectangular nested array (`[]` for a scalar).
pub fn infer_shape(v: &Value) -> Result<Vec<usize>> {
    let mut shape = Vec::new();
    let mut cur = v;
    while let Value::Array(items) = cur {
        shape.push(items.len());
        match items.first() {
            Some(first) => cur = first,
            None => break,
        }
    }
    Ok(shape)
}

/// Appends every leaf of a nested array, depth first; errors on ragged nesting.
pub fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) -> Result<()> {
    fn walk<'a>(
        v: &'a Value,
        depth: usize,
        leaf_depth: &mut Option<usize>,
        out: &mut Vec<&'a Value>,
    ) -> Result<()> {
        match v {
            Value::Array(items) => {
                for item in items {
                    walk(item, depth + 1, leaf_depth, out)?;
                }
                Ok(())
            }
            leaf => {
                match leaf_depth {
                    Some(d) if *d != depth => {
                        return Err(invalid(
                            "'data' is ragged: nested arrays have different depths".into(),
                        ));
                    }
                    _ => *leaf_depth = Some(depth),
                }
                out.push(leaf);
                Ok(())
            }
        }
    }
    walk(v, 0, &mut None, out)
}

/// Encodes JSON leaves as `datatype` bytes.
pub fn encode_values(name: &str, datatype: DataType, values: &[&Value]) -> Result<Vec<u8>> {
    let elem = datatype.element_size().unwrap_or(8);
    let mut out = Vec::with_capacity(values.len() * elem);
    let bad = |i: usize, v: &Value| {
        invalid(format!(
            "input '{name}': element {i} ({}) is not a valid {datatype} value",
            truncate(v)
        ))
    };
    macro_rules! ints {
        ($t:ty) => {
            for (i, v) in values.iter().enumerate() {
                let x = match v {
                    Value::Number(n) => n
                        .as_i64()
                        .and_then(|x| <$t>::try_from(x).ok())
                        .or_else(|| n.as_u64().and_then(|x| <$t>::try_from(x).ok())),
                    _ => None,
                }
                .ok_or_else(|| bad(i, v))?;
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    macro_rules! floats {
        ($conv:expr) => {
            for (i, v) in values.iter().enumerate() {
                let x = v
                    .as_f64()
                    .or_else(|| non_finite(v))
                    .ok_or_else(|| bad(i, v))?;
                out.extend_from_slice(&$conv(x));
            }
        };
    }
    match datatype {
        DataType::Bool => {
            for (i, v) in values.iter().enumerate() {
                out.push(u8::from(v.as_bool().ok_or_else(|| bad(i, v))?));
            }
        }
        DataType::U8 => ints!(u8),
        DataType::U16 => ints!(u16),
        DataType::U32 => ints!(u32),
        DataType::U64 => ints!(u64),
        DataType::I8 => ints!(i8),
        DataType::I16 => ints!(i16),
        DataType::I32 => ints!(i32),
        DataType::I64 => ints!(i64),
        DataType::F16 => floats!(|x: f64| half::f16::from_f64(x).to_le_bytes()),
        DataType::BF16 => floats!(|x: f64| half::bf16::from_f64(x).to_le_bytes()),
        DataType::F32 => floats!(|x: f64| (x as f32).to_le_bytes()),
        DataType::F64 => floats!(|x: f64| x.to_le_bytes()),
        DataType::Bytes => {
            for (i, v) in values.iter().enumerate() {
                let s = v.as_str().ok_or_else(|| bad(i, v))?;
                let len = u32::try_from(s.len()).map_err(|_| bad(i, v))?;
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
        }
    }
    Ok(out)
}

/// The first 40 characters of a value for an error message (characters, not bytes: a client's
/// string may hold any UTF-8).
fn truncate(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(40) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s,
    }
}

/// Decodes little-endian bytes into a flat list of JSON values.
pub fn decode_values(datatype: DataType, data: &[u8]) -> Result<Vec<Value>> {
    macro_rules! conv {
        ($t:ty, $n:expr, $f:expr) => {
            data.chunks_exact($n)
                .map(|c| $f(<$t>::from_le_bytes(c.try_into().expect("chunk"))))
                .collect()
        };
    }
    let num = |x: f64| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number);
    Ok(match datatype {
        DataType::Bool => data.iter().map(|&b| Value::Bool(b != 0)).collect(),
        DataType::U8 => data.iter().map(|&b| Value::from(b)).collect(),
        DataType::I8 => data.iter().map(|&b| Value::from(b as i8)).collect(),
        DataType::U16 => conv!(u16, 2, Value::from),
        DataType::I16 => conv!(i16, 2, Value::from),
        DataType::U32 => conv!(u32, 4, Value::from),
        DataType::I32 => conv!(i32, 4, Value::from),
        DataType::U64 => conv!(u64, 8, Value::from),
        DataType::I64 => conv!(i64, 8, Value::from),
        DataType::F16 => conv!(half::f16, 2, |x: half::f16| num(x.to_f64())),
        DataType::BF16 => conv!(half::bf16, 2, |x: half::bf16| num(x.to_f64())),
        DataType::F32 => conv!(f32, 4, |x: f32| num(f64::from(x))),
        DataType::F64 => conv!(f64, 8, num),
        DataType::Bytes => bytes_elements(data)?
            .into_iter()
            .map(|b| Value::String(String::from_utf8_lossy(b).into_owned()))
            .collect(),
    })
}

/// Rebuilds nesting from a flat list (row-major).
pub fn nest(flat: Vec<Value>, shape: &[usize]) -> Value {
    fn go(it: &mut std::vec::IntoIter<Value>, shape: &[usize]) -> Value {
        match shape.split_first() {
            None => it.next().unwrap_or(Value::Null),
            Some((&n, rest)) => Value::Array((0..n).map(|_| go(it, rest)).collect()),
        }
    }
    go(&mut flat.into_iter(), shape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_datatype_round_trips_through_json() {
        let cases = [
            (DataType::Bool, json!([true, false])),
            (DataType::U8, json!([0, 255])),
            (DataType::U16, json!([0, 65535])),
            (DataType::U32, json!([0, 4294967295u64])),
            (DataType::U64, json!([0, u64::MAX])),
            (DataType::I8, json!([-128, 127])),
            (DataType::I16, json!([-32768, 32767])),
            (DataType::I32, json!([i32::MIN, i32::MAX])),
            (DataType::I64, json!([i64::MIN, i64::MAX])),
            (DataType::F16, json!([1.5, -2.0])),
            (DataType::BF16, json!([1.5, -2.0])),
            (DataType::F32, json!([1.5, -2.25])),
            (DataType::F64, json!([1.5, -2.125])),
            (DataType::Bytes, json!(["abc", ""])),
        ];
        for (dt, v) in cases {
            let mut leaves = Vec::new();
            flatten(&v, &mut leaves).unwrap();
            let bytes = encode_values("x", dt, &leaves).unwrap();
            assert_eq!(Value::Array(decode_values(dt, &bytes).unwrap()), v, "{dt}");
        }
    }

    #[test]
    fn out_of_range_and_wrong_kind_values_are_rejected() {
        for (dt, v) in [
            (DataType::U8, json!(256)),
            (DataType::I8, json!(-129)),
            (DataType::U32, json!(-1)),
            (DataType::I32, json!(1.5)),
            (DataType::Bool, json!(1)),
            (DataType::F32, json!("1.0")),
            (DataType::Bytes, json!(3)),
        ] {
            assert!(encode_values("x", dt, &[&v]).is_err(), "{dt} {v}");
        }
    }

    #[test]
    fn non_finite_tokens_outside_strings_become_floats() {
        let body = br#"{"s": "NaN Infinity \" NaN", "d": [NaN, -Infinity, Infinity, 1.5]}"#;
        let v: Value = serde_json::from_slice(&quote_non_finite(body)).unwrap();
        assert_eq!(v["s"], "NaN Infinity \" NaN");
        let leaves: Vec<&Value> = v["d"].as_array().unwrap().iter().collect();
        let bytes = encode_values("x", DataType::F32, &leaves).unwrap();
        let f: Vec<f32> = bytes
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert!(f[0].is_nan() && f[1] == f32::NEG_INFINITY && f[2] == f32::INFINITY && f[3] == 1.5);
        assert!(matches!(
            quote_non_finite(b"[1, 2]"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn ragged_nesting_is_rejected_and_shapes_are_inferred() {
        let mut out = Vec::new();
        assert!(flatten(&json!([[1, 2], 3]), &mut out).is_err());
        assert_eq!(
            infer_shape(&json!([[1, 2], [3, 4], [5, 6]])).unwrap(),
            vec![3, 2]
        );
        assert_eq!(
            nest(vec![json!(1), json!(2), json!(3), json!(4)], &[2, 2]),
            json!([[1, 2], [3, 4]])
        );
    }
}
