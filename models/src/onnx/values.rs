//! Siesta's host tensors to ONNX Runtime values and back. Numbers travel as their
//! little-endian bytes; `BYTES` elements are ONNX strings (UTF-8, as ONNX requires).

use half::{bf16, f16};
use ort::value::{DynValue, Tensor as OrtTensor, TensorElementType};

use crate::error::ModelError;
use crate::tensor::{DataType, Tensor, bytes_elements};

pub fn element_type(datatype: DataType) -> TensorElementType {
    match datatype {
        DataType::Bool => TensorElementType::Bool,
        DataType::U8 => TensorElementType::Uint8,
        DataType::U16 => TensorElementType::Uint16,
        DataType::U32 => TensorElementType::Uint32,
        DataType::U64 => TensorElementType::Uint64,
        DataType::I8 => TensorElementType::Int8,
        DataType::I16 => TensorElementType::Int16,
        DataType::I32 => TensorElementType::Int32,
        DataType::I64 => TensorElementType::Int64,
        DataType::F16 => TensorElementType::Float16,
        DataType::BF16 => TensorElementType::Bfloat16,
        DataType::F32 => TensorElementType::Float32,
        DataType::F64 => TensorElementType::Float64,
        DataType::Bytes => TensorElementType::String,
    }
}

/// The protocol datatype of an ONNX element type; `None` for those no protocol carries
/// (complex, 8-bit and 4-bit floats).
pub fn datatype(ty: TensorElementType) -> Option<DataType> {
    DataType::ALL.into_iter().find(|d| element_type(*d) == ty)
}

fn from_le<T, const N: usize>(data: &[u8], read: fn([u8; N]) -> T) -> Vec<T> {
    data.chunks_exact(N)
        .map(|c| read(c.try_into().expect("chunks_exact gives N bytes")))
        .collect()
}

fn to_le<T: Copy, const N: usize>(values: &[T], write: fn(T) -> [u8; N]) -> Vec<u8> {
    values.iter().flat_map(|v| write(*v)).collect()
}

pub fn to_ort(t: &Tensor) -> Result<DynValue, ModelError> {
    let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
    let fail = |e: ort::Error| ModelError::Input(format!("input '{}': {e}", t.name));
    macro_rules! numeric {
        ($read:expr) => {
            OrtTensor::from_array((shape, from_le(&t.data, $read)))
                .map_err(fail)?
                .into_dyn()
        };
    }
    Ok(match t.datatype {
        DataType::Bool => {
            OrtTensor::from_array((shape, t.data.iter().map(|b| *b != 0).collect::<Vec<bool>>()))
                .map_err(fail)?
                .into_dyn()
        }
        DataType::U8 => numeric!(|b: [u8; 1]| b[0]),
        DataType::I8 => numeric!(i8::from_le_bytes),
        DataType::U16 => numeric!(u16::from_le_bytes),
        DataType::I16 => numeric!(i16::from_le_bytes),
        DataType::U32 => numeric!(u32::from_le_bytes),
        DataType::I32 => numeric!(i32::from_le_bytes),
        DataType::U64 => numeric!(u64::from_le_bytes),
        DataType::I64 => numeric!(i64::from_le_bytes),
        DataType::F16 => numeric!(f16::from_le_bytes),
        DataType::BF16 => numeric!(bf16::from_le_bytes),
        DataType::F32 => numeric!(f32::from_le_bytes),
        DataType::F64 => numeric!(f64::from_le_bytes),
        DataType::Bytes => {
            let strings = bytes_elements(&t.data)?
                .into_iter()
                .map(|e| {
                    std::str::from_utf8(e).map(str::to_owned).map_err(|_| {
                        ModelError::Input(format!(
                            "input '{}': ONNX strings are UTF-8, and an element is not",
                            t.name
                        ))
                    })
                })
                .collect::<Result<Vec<String>, _>>()?;
            OrtTensor::from_string_array((shape, strings.as_slice()))
                .map_err(fail)?
                .into_dyn()
        }
    })
}

/// The output `name` as `want`, the datatype the config promises: the graph's own type must be
/// that one (checked at load), so this only copies.
pub fn from_ort(name: &str, want: DataType, value: &DynValue) -> Result<Tensor, ModelError> {
    let fail = |e: ort::Error| ModelError::Inference(format!("output '{name}': {e}"));
    macro_rules! numeric {
        ($t:ty, $write:expr) => {{
            let (shape, values) = value.try_extract_tensor::<$t>().map_err(fail)?;
            (shape.to_vec(), to_le(values, $write))
        }};
    }
    let (shape, data) = match want {
        DataType::Bool => {
            let (shape, values) = value.try_extract_tensor::<bool>().map_err(fail)?;
            (
                shape.to_vec(),
                values.iter().map(|b| u8::from(*b)).collect(),
            )
        }
        DataType::U8 => numeric!(u8, |v: u8| [v]),
        DataType::I8 => numeric!(i8, i8::to_le_bytes),
        DataType::U16 => numeric!(u16, u16::to_le_bytes),
        DataType::I16 => numeric!(i16, i16::to_le_bytes),
        DataType::U32 => numeric!(u32, u32::to_le_bytes),
        DataType::I32 => numeric!(i32, i32::to_le_bytes),
        DataType::U64 => numeric!(u64, u64::to_le_bytes),
        DataType::I64 => numeric!(i64, i64::to_le_bytes),
        DataType::F16 => numeric!(f16, f16::to_le_bytes),
        DataType::BF16 => numeric!(bf16, bf16::to_le_bytes),
        DataType::F32 => numeric!(f32, f32::to_le_bytes),
        DataType::F64 => numeric!(f64, f64::to_le_bytes),
        DataType::Bytes => {
            let (shape, strings) = value.try_extract_strings().map_err(fail)?;
            let mut data = Vec::new();
            for s in &strings {
                data.extend_from_slice(&(s.len() as u32).to_le_bytes());
                data.extend_from_slice(s.as_bytes());
            }
            (shape.to_vec(), data)
        }
    };
    let shape = shape
        .into_iter()
        .map(|d| {
            usize::try_from(d)
                .map_err(|_| ModelError::Inference(format!("output '{name}': dimension {d}")))
        })
        .collect::<Result<Vec<usize>, _>>()?;
    Ok(Tensor::new(name, want, shape, data)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_protocol_datatype_has_one_onnx_type() {
        for d in DataType::ALL {
            assert_eq!(datatype(element_type(d)), Some(d));
        }
        assert_eq!(datatype(TensorElementType::Complex64), None);
    }

    #[test]
    fn strings_that_are_not_utf8_or_are_cut_short_are_input_errors() {
        // 4-byte length prefix, then the element: 0xff is never UTF-8.
        let bad = Tensor::new("key", DataType::Bytes, vec![1], vec![1, 0, 0, 0, 0xff]).unwrap();
        let err = to_ort(&bad).unwrap_err();
        assert!(
            matches!(err, ModelError::Input(_)) && err.to_string().contains("not"),
            "{err}"
        );
        let cut = Tensor {
            name: "key".into(),
            datatype: DataType::Bytes,
            shape: vec![1],
            data: vec![9, 0, 0, 0, b'a'],
        };
        assert!(matches!(to_ort(&cut), Err(ModelError::Tensor(_))));
    }
}
