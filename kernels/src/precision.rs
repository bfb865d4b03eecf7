//! `--precision f32|f16`: the floating-point type a model computes in, and the element type the
//! preprocessing kernel writes. Clients still send and receive the types in the model's config;
//! the engine converts at its edges. f16 halves the weights' device memory and runs on the GPU's
//! tensor cores; on the CPU it is for tests. Defined here, the lowest crate, so that the kernels
//! and the engines (`siesta-models` re-exports it) share one type.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    F32,
    F16,
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "f16" | "fp16" | "float16" | "half" => Ok(Precision::F16),
            _ => Err(format!("'{s}' is not a precision: use f32 or f16")),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_others_are_refused() {
        for p in [Precision::F32, Precision::F16] {
            assert_eq!(p.to_string().parse::<Precision>(), Ok(p));
        }
        assert_eq!("half".parse::<Precision>(), Ok(Precision::F16));
        assert!(
            "bf16"
                .parse::<Precision>()
                .unwrap_err()
                .contains("f32 or f16")
        );
    }
}
