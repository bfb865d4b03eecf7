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

/// Appends leaf number `i` as `datatype` bytes; a value of the wrong kind or out of range is an
/// error naming the input, the element and the value.
fn encode_leaf(
    name: &str,
    datatype: DataType,
    i: usize,
    v: &Value,
    out: &mut Vec<u8>,
) -> Result<()> {
    let bad = || {
        invalid(format!(
            "input '{name}': element {i} ({}) is not a valid {datatype} value",
            truncate(v)
        ))
    };
    macro_rules! int {
        ($t:ty) => {{
            let x = match v {
                Value::Number(n) => n
                    .as_i64()
                    .and_then(|x| <$t>::try_from(x).ok())
                    .or_else(|| n.as_u64().and_then(|x| <$t>::try_from(x).ok())),
                _ => None,
            }
            .ok_or_else(bad)?;
            out.extend_from_slice(&x.to_le_bytes());
        }};
    }
    let float = || v.as_f64().or_else(|| non_finite(v)).ok_or_else(bad);
    match datatype {
        DataType::Bool => out.push(u8::from(v.as_bool().ok_or_else(bad)?)),
        DataType::U8 => int!(u8),
        DataType::U16 => int!(u16),
        DataType::U32 => int!(u32),
        DataType::U64 => int!(u64),
        DataType::I8 => int!(i8),
        DataType::I16 => int!(i16),
        DataType::I32 => int!(i32),
        DataType::I64 => int!(i64),
        DataType::F16 => out.extend_from_slice(&half::f16::from_f64(float()?).to_le_bytes()),
        DataType::BF16 => out.extend_from_slice(&half::bf16::from_f64(float()?).to_le_bytes()),
        DataType::F32 => out.extend_from_slice(&(float()? as f32).to_le_bytes()),
        DataType::F64 => out.extend_from_slice(&float()?.to_le_bytes()),
        DataType::Bytes => {
            let s = v.as_str().ok_or_else(bad)?;
            let len = u32::try_from(s.len()).map_err(|_| bad())?;
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
    Ok(())
}

/// Decodes a V2 input's `data` (nested or flat arrays, as raw JSON text) straight into
/// `datatype` bytes: one leaf at a time, never a `Value` tree of the whole tensor (about 20
/// times its size), and stopping at the first element beyond `count`, so a client's oversized
/// or ragged data costs no more than the tensor it claims.
pub fn decode_data(name: &str, datatype: DataType, count: usize, raw: &str) -> Result<Vec<u8>> {
    let leaves = walk(name, datatype, count, raw)?;
    if leaves.seen != count {
        return Err(invalid(format!(
            "input '{name}': the shape needs {count} elements, 'data' has {}",
            leaves.seen
        )));
    }
    Ok(leaves.out)
}

/// Decodes a rectangular nested array of values (a V1 row, raw JSON text) into `datatype`
/// bytes and its shape (`[]` for a scalar), one leaf at a time like [`decode_data`]; its size
/// is what the text holds, so the caller's body limit bounds it.
pub fn decode_nested(name: &str, datatype: DataType, raw: &str) -> Result<(Vec<u8>, Vec<usize>)> {
    let leaves = walk(name, datatype, usize::MAX, raw)?;
    let dims: Vec<usize> = leaves.dims.iter().map(|d| d.unwrap_or(0)).collect();
    let shape = match leaves.leaf_depth {
        Some(d) => dims[..d].to_vec(),
        None => dims,
    };
    Ok((leaves.out, shape))
}

fn walk<'a>(name: &'a str, datatype: DataType, count: usize, raw: &str) -> Result<Leaves<'a>> {
    let elem = datatype.element_size().unwrap_or(8);
    let mut leaves = Leaves {
        name,
        datatype,
        count,
        seen: 0,
        depth: 0,
        leaf_depth: None,
        dims: Vec::new(),
        out: Vec::with_capacity(count.saturating_mul(elem).min(raw.len() * 8)),
        error: None,
    };
    let mut de = serde_json::Deserializer::from_str(raw);
    let walked =
        serde::de::DeserializeSeed::deserialize(&mut leaves, &mut de).and_then(|()| de.end());
    if let Some(e) = leaves.error.take() {
        return Err(e);
    }
    walked.map_err(|e| invalid(format!("input '{name}': 'data' is not valid: {e}")))?;
    Ok(leaves)
}

/// The walk over one input's data; an error of Siesta's own (wrong value, too many elements,
/// ragged nesting) is kept in `error` and ends the walk.
struct Leaves<'a> {
    name: &'a str,
    datatype: DataType,
    count: usize,
    seen: usize,
    depth: usize,
    leaf_depth: Option<usize>,
    /// The length of the arrays at each depth: every array at one depth has the same.
    dims: Vec<Option<usize>>,
    out: Vec<u8>,
    error: Option<ServeError>,
}

impl Leaves<'_> {
    /// An array at `depth` ended with `len` elements.
    fn array_len<E: serde::de::Error>(
        &mut self,
        depth: usize,
        len: usize,
    ) -> std::result::Result<(), E> {
        if self.dims.len() <= depth {
            self.dims.resize(depth + 1, None);
        }
        match self.dims[depth] {
            Some(n) if n != len => {
                let e = invalid(format!(
                    "input '{}': 'data' is ragged: arrays at depth {depth} have {n} and {len} elements",
                    self.name
                ));
                let msg = e.to_string();
                self.error = Some(e);
                Err(E::custom(msg))
            }
            _ => {
                self.dims[depth] = Some(len);
                Ok(())
            }
        }
    }

    fn leaf<E: serde::de::Error>(&mut self, v: Value) -> std::result::Result<(), E> {
        let fail = |this: &mut Self, e: ServeError| {
            let msg = e.to_string();
            this.error = Some(e);
            Err(E::custom(msg))
        };
        match self.leaf_depth {
            Some(d) if d != self.depth => {
                return fail(
                    self,
                    invalid("'data' is ragged: nested arrays have different depths".into()),
                );
            }
            _ => self.leaf_depth = Some(self.depth),
        }
        if self.seen == self.count {
            let e = invalid(format!(
                "input '{}': 'data' has more than the {} elements its shape needs",
                self.name, self.count
            ));
            return fail(self, e);
        }
        if let Err(e) = encode_leaf(self.name, self.datatype, self.seen, &v, &mut self.out) {
            return fail(self, e);
        }
        self.seen += 1;
        Ok(())
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for &mut Leaves<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for &mut Leaves<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("tensor data: values or nested arrays of values")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<(), A::Error> {
        let depth = self.depth;
        self.depth += 1;
        let mut len = 0;
        while seq.next_element_seed(&mut *self)?.is_some() {
            len += 1;
        }
        self.depth -= 1;
        self.array_len(depth, len)
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> std::result::Result<(), E> {
        self.leaf(Value::Bool(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<(), E> {
        self.leaf(Value::from(v))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<(), E> {
        self.leaf(Value::from(v))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<(), E> {
        self.leaf(Value::from(v))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<(), E> {
        self.leaf(Value::from(v))
    }

    fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<(), E> {
        self.leaf(Value::Null)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> std::result::Result<(), A::Error> {
        let e = invalid(format!(
            "input '{}': element {} is an object, not a {} value",
            self.name, self.seen, self.datatype
        ));
        let msg = e.to_string();
        self.error = Some(e);
        Err(serde::de::Error::custom(msg))
    }
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
            let (bytes, shape) = decode_nested("x", dt, &v.to_string()).unwrap();
            assert_eq!(shape, [2]);
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
            assert!(decode_nested("x", dt, &v.to_string()).is_err(), "{dt} {v}");
        }
    }

    #[test]
    fn non_finite_tokens_outside_strings_become_floats() {
        let body = br#"{"s": "NaN Infinity \" NaN", "d": [NaN, -Infinity, Infinity, 1.5]}"#;
        let v: Value = serde_json::from_slice(&quote_non_finite(body)).unwrap();
        assert_eq!(v["s"], "NaN Infinity \" NaN");
        let (bytes, _) = decode_nested("x", DataType::F32, &v["d"].to_string()).unwrap();
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
        for ragged in [
            "[[1, 2], 3]",
            "[[1, 2], [3]]",
            "[[[1], [2]], [[3, 4], [5, 6]]]",
        ] {
            let e = decode_nested("x", DataType::I32, ragged)
                .unwrap_err()
                .to_string();
            assert!(e.contains("ragged"), "{ragged}: {e}");
        }
        let shape = |raw: &str| decode_nested("x", DataType::I32, raw).unwrap().1;
        assert_eq!(shape("[[1, 2], [3, 4], [5, 6]]"), [3, 2]);
        assert_eq!(shape("7"), [] as [usize; 0]);
        assert_eq!(shape("[]"), [0]);
        assert_eq!(shape("[[], []]"), [2, 0]);
        assert_eq!(
            nest(vec![json!(1), json!(2), json!(3), json!(4)], &[2, 2]),
            json!([[1, 2], [3, 4]])
        );
    }

    #[test]
    fn data_decodes_leaf_by_leaf_and_stops_at_what_the_shape_allows() {
        let f32s = |b: Vec<u8>| -> Vec<f32> {
            b.chunks(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        let ok = decode_data("x", DataType::F32, 4, "[[1, 2.5], [\"NaN\", -3]]").unwrap();
        let v = f32s(ok);
        assert_eq!((v[0], v[1], v[3]), (1.0, 2.5, -3.0));
        assert!(v[2].is_nan());
        assert_eq!(
            decode_data("x", DataType::Bytes, 2, "[\"é\", \"\"]").unwrap(),
            [2, 0, 0, 0, 0xc3, 0xa9, 0, 0, 0, 0]
        );
        for (raw, want) in [
            ("[1, 2, 3]", "needs 4 elements, 'data' has 3"),
            ("[1, 2, 3, 4, 5]", "more than the 4 elements"),
            ("[[1, 2], 3, 4]", "ragged"),
            ("[1, {\"a\": 1}, 3, 4]", "element 1 is an object"),
            (
                "[1, 2, 3, \"éééééééééééééééééééééééééééééééééééééééééé\"]",
                "element 3",
            ),
            ("[1, 2, 3, 4", "not valid"),
            ("[1, 2, 3, 4] trailing", "not valid"),
        ] {
            let e = decode_data("x", DataType::F32, 4, raw)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{raw}: {e}");
        }
        // A huge array is refused at the first element beyond the shape, not read to its end.
        let huge = format!("[{}]", vec!["1"; 100_000].join(","));
        assert!(decode_data("x", DataType::F32, 4, &huge).is_err());
    }
}
