//! The precision a model computes in is `siesta_kernels::Precision` (one type for the engines
//! and the kernels); here, its candle element type.

pub use siesta_kernels::Precision;

pub fn dtype(precision: Precision) -> candle_core::DType {
    match precision {
        Precision::F32 => candle_core::DType::F32,
        Precision::F16 => candle_core::DType::F16,
    }
}
