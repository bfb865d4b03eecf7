//! Host tensors as the protocols carry them: a datatype, a shape and little-endian row-major bytes.
//!
//! Every protocol (V1 JSON, V2 JSON, V2 binary, gRPC) decodes into this one form, so batching and the
//! engines never see protocol details. `BYTES` elements are stored the way the V2 binary extension
//! sends them: a 4-byte little-endian length, then the bytes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::TensorError;

/// The Open Inference Protocol datatypes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DataType {
    #[serde(rename = "BOOL")]
    Bool,
    #[serde(rename = "UINT8")]
    U8,
    #[serde(rename = "UINT16")]
    U16,
    #[serde(rename = "UINT32")]
    U32,
    #[serde(rename = "UINT64")]
    U64,
    #[serde(rename = "INT8")]
    I8,
    #[serde(rename = "INT16")]
    I16,
    #[serde(rename = "INT32")]
    I32,
    #[serde(rename = "INT64")]
    I64,
    #[serde(rename = "FP16")]
    F16,
    #[serde(rename = "BF16")]
    BF16,
    #[serde(rename = "FP32")]
    F32,
    #[serde(rename = "FP64")]
    F64,
    #[serde(rename = "BYTES")]
    Bytes,
}

impl DataType {
    pub const ALL: [DataType; 14] = [
        DataType::Bool,
        DataType::U8,
        DataType::U16,
        DataType::U32,
        DataType::U64,
        DataType::I8,
        DataType::I16,
        DataType::I32,
        DataType::I64,
        DataType::F16,
        DataType::BF16,
        DataType::F32,
        DataType::F64,
        DataType::Bytes,
    ];

    /// Bytes per element; `None` for the variable-size `BYTES`.
    pub fn element_size(self) -> Option<usize> {
        Some(match self {
            DataType::Bool | DataType::U8 | DataType::I8 => 1,
            DataType::U16 | DataType::I16 | DataType::F16 | DataType::BF16 => 2,
            DataType::U32 | DataType::I32 | DataType::F32 => 4,
            DataType::U64 | DataType::I64 | DataType::F64 => 8,
            DataType::Bytes => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::U8 => "UINT8",
            DataType::U16 => "UINT16",
            DataType::U32 => "UINT32",
            DataType::U64 => "UINT64",
            DataType::I8 => "INT8",
            DataType::I16 => "INT16",
            DataType::I32 => "INT32",
            DataType::I64 => "INT64",
            DataType::F16 => "FP16",
            DataType::BF16 => "BF16",
            DataType::F32 => "FP32",
            DataType::F64 => "FP64",
            DataType::Bytes => "BYTES",
        }
    }

    /// Triton's model-configuration name (`TYPE_FP32`, `TYPE_STRING` for BYTES).
    pub fn triton_config_name(self) -> &'static str {
        match self {
            DataType::Bytes => "TYPE_STRING",
            DataType::Bool => "TYPE_BOOL",
            DataType::U8 => "TYPE_UINT8",
            DataType::U16 => "TYPE_UINT16",
            DataType::U32 => "TYPE_UINT32",
            DataType::U64 => "TYPE_UINT64",
            DataType::I8 => "TYPE_INT8",
            DataType::I16 => "TYPE_INT16",
            DataType::I32 => "TYPE_INT32",
            DataType::I64 => "TYPE_INT64",
            DataType::F16 => "TYPE_FP16",
            DataType::BF16 => "TYPE_BF16",
            DataType::F32 => "TYPE_FP32",
            DataType::F64 => "TYPE_FP64",
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DataType {
    type Err = TensorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DataType::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| TensorError::UnknownDatatype(s.to_string()))
    }
}

/// A named host tensor.
#[derive(Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<usize>,
    /// Little-endian, row-major; `BYTES` as length-prefixed elements.
    pub data: Vec<u8>,
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tensor")
            .field("name", &self.name)
            .field("datatype", &self.datatype)
            .field("shape", &self.shape)
            .field("bytes", &self.data.len())
            .finish()
    }
}

impl Tensor {
    /// Builds a tensor and checks that `data` holds exactly `shape`'s elements.
    pub fn new(
        name: impl Into<String>,
        datatype: DataType,
        shape: Vec<usize>,
        data: Vec<u8>,
    ) -> Result<Self, TensorError> {
        let t = Tensor {
            name: name.into(),
            datatype,
            shape,
            data,
        };
        t.check_size()?;
        Ok(t)
    }

    pub fn from_f32(name: impl Into<String>, shape: Vec<usize>, values: &[f32]) -> Self {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Tensor {
            name: name.into(),
            datatype: DataType::F32,
            shape,
            data,
        }
    }

    /// Elements the shape holds; a shape whose product overflows is too large for any tensor.
    pub fn element_count(&self) -> Result<usize, TensorError> {
        self.shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or(TensorError::TooLarge)
    }

    /// Checks the byte length against the shape; for `BYTES`, walks the length prefixes.
    pub fn check_size(&self) -> Result<(), TensorError> {
        let n = self.element_count()?;
        match self.datatype.element_size() {
            Some(size) => {
                let expected = n.checked_mul(size).ok_or(TensorError::TooLarge)?;
                if self.data.len() != expected {
                    return Err(TensorError::SizeMismatch {
                        name: self.name.clone(),
                        expected,
                        got: self.data.len(),
                    });
                }
            }
            None => {
                let offsets = bytes_element_offsets(&self.data)?;
                if offsets.len() != n {
                    return Err(TensorError::ElementCountMismatch {
                        name: self.name.clone(),
                        expected: n,
                        got: offsets.len(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Values as f32, converting from any numeric datatype.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>, TensorError> {
        let d = &self.data;
        macro_rules! conv {
            ($t:ty, $n:expr) => {
                d.chunks_exact($n)
                    .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunk size")) as f32)
                    .collect()
            };
        }
        Ok(match self.datatype {
            DataType::F32 => conv!(f32, 4),
            DataType::F64 => conv!(f64, 8),
            DataType::U8 => d.iter().map(|&b| f32::from(b)).collect(),
            DataType::I8 => d.iter().map(|&b| f32::from(b as i8)).collect(),
            DataType::Bool => d.iter().map(|&b| if b != 0 { 1.0 } else { 0.0 }).collect(),
            DataType::U16 => conv!(u16, 2),
            DataType::I16 => conv!(i16, 2),
            DataType::U32 => conv!(u32, 4),
            DataType::I32 => conv!(i32, 4),
            DataType::U64 => conv!(u64, 8),
            DataType::I64 => conv!(i64, 8),
            DataType::F16 => d
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DataType::BF16 => d
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DataType::Bytes => return Err(TensorError::NotNumeric(self.name.clone())),
        })
    }

    /// Concatenates tensors along the first (batch) dimension.
    pub fn concat_rows(parts: &[&Tensor]) -> Result<Tensor, TensorError> {
        let first = parts.first().ok_or(TensorError::Empty)?;
        let mut shape = first.shape.clone();
        let mut rows = 0;
        let mut data = Vec::with_capacity(parts.iter().map(|p| p.data.len()).sum());
        for p in parts {
            if p.datatype != first.datatype
                || p.shape.len() != first.shape.len()
                || p.shape.get(1..) != first.shape.get(1..)
            {
                return Err(TensorError::NotBatchable(first.name.clone()));
            }
            rows += p.shape.first().copied().unwrap_or(1);
            data.extend_from_slice(&p.data);
        }
        if let Some(d0) = shape.first_mut() {
            *d0 = rows;
        }
        Ok(Tensor {
            name: first.name.clone(),
            datatype: first.datatype,
            shape,
            data,
        })
    }

    /// Splits along the first dimension into pieces of `rows[i]` rows each.
    pub fn split_rows(&self, rows: &[usize]) -> Result<Vec<Tensor>, TensorError> {
        let total: usize = rows.iter().sum();
        if self.shape.first().copied() != Some(total) {
            return Err(TensorError::NotBatchable(self.name.clone()));
        }
        let per_row: usize = self.shape[1..].iter().product();
        let byte_bounds: Vec<usize> = match self.datatype.element_size() {
            Some(size) => (0..=total).map(|r| r * per_row * size).collect(),
            None => {
                let mut offsets = bytes_element_offsets(&self.data)?;
                offsets.push(self.data.len());
                (0..=total).map(|r| offsets[r * per_row]).collect()
            }
        };
        let mut out = Vec::with_capacity(rows.len());
        let mut row = 0;
        for &n in rows {
            let mut shape = self.shape.clone();
            shape[0] = n;
            out.push(Tensor {
                name: self.name.clone(),
                datatype: self.datatype,
                shape,
                data: self.data[byte_bounds[row]..byte_bounds[row + n]].to_vec(),
            });
            row += n;
        }
        Ok(out)
    }
}

/// Start offsets of each length-prefixed `BYTES` element.
pub fn bytes_element_offsets(data: &[u8]) -> Result<Vec<usize>, TensorError> {
    let mut offsets = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let len_bytes: [u8; 4] = data
            .get(pos..pos + 4)
            .ok_or(TensorError::TruncatedBytes)?
            .try_into()
            .expect("slice of 4");
        let len = u32::from_le_bytes(len_bytes) as usize;
        offsets.push(pos);
        pos = pos
            .checked_add(4 + len)
            .filter(|&end| end <= data.len())
            .ok_or(TensorError::TruncatedBytes)?;
    }
    Ok(offsets)
}

/// Iterates over the payloads of length-prefixed `BYTES` elements.
pub fn bytes_elements(data: &[u8]) -> Result<Vec<&[u8]>, TensorError> {
    Ok(bytes_element_offsets(data)?
        .into_iter()
        .map(|o| {
            let len = u32::from_le_bytes(data[o..o + 4].try_into().expect("4 bytes")) as usize;
            &data[o + 4..o + 4 + len]
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concat_and_split_round_trip_for_fixed_and_bytes() {
        let a = Tensor::from_f32("x", vec![1, 2], &[1.0, 2.0]);
        let b = Tensor::from_f32("x", vec![2, 2], &[3.0, 4.0, 5.0, 6.0]);
        let cat = Tensor::concat_rows(&[&a, &b]).unwrap();
        assert_eq!(cat.shape, vec![3, 2]);
        assert_eq!(cat.split_rows(&[1, 2]).unwrap(), vec![a, b]);

        let mut data = Vec::new();
        for s in ["a", "bcd", "", "ef"] {
            data.extend_from_slice(&(s.len() as u32).to_le_bytes());
            data.extend_from_slice(s.as_bytes());
        }
        let t = Tensor::new("s", DataType::Bytes, vec![4, 1], data).unwrap();
        let parts = t.split_rows(&[3, 1]).unwrap();
        assert_eq!(
            bytes_elements(&parts[0].data).unwrap(),
            vec![&b"a"[..], b"bcd", b""]
        );
        assert_eq!(bytes_elements(&parts[1].data).unwrap(), vec![&b"ef"[..]]);
    }

    #[test]
    fn size_checks_reject_short_data_and_truncated_bytes() {
        assert!(Tensor::new("x", DataType::F32, vec![2], vec![0; 7]).is_err());
        assert!(Tensor::new("x", DataType::Bytes, vec![1], vec![5, 0, 0, 0, b'a']).is_err());
        assert!(Tensor::new("x", DataType::Bytes, vec![2], vec![0, 0, 0, 0]).is_err());
    }

    #[test]
    fn datatype_names_round_trip() {
        for d in DataType::ALL {
            assert_eq!(d.as_str().parse::<DataType>().unwrap(), d);
        }
        assert!("FLOAT".parse::<DataType>().is_err());
    }
}
