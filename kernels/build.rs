//! With the `cuda` feature, compiles kernels/cuda/kernels.cu ahead of time into one fatbin:
//! sm_90 machine code (H100) and compute_75 PTX that the driver JIT-compiles once for any other
//! GPU CUDA 13 supports. nvcc comes from CUDA_HOME (e.g. PyPI's `cuda-toolkit` 13.0.2, see
//! scripts/test.sh) or PATH.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=cuda/kernels.cu");
    println!("cargo::rerun-if-env-changed=CUDA_HOME");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let nvcc = std::env::var_os("CUDA_HOME")
        .map(|h| PathBuf::from(h).join("bin/nvcc"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("siesta_kernels.fatbin");
    let status = Command::new(&nvcc)
        .args([
            "--fatbin",
            "-std=c++17",
            "-O3",
            // Same rounding as the CPU references: no fused multiply-add contraction.
            "-fmad=false",
            "-gencode",
            "arch=compute_90,code=sm_90",
            "-gencode",
            "arch=compute_75,code=compute_75",
            "-o",
        ])
        .arg(&out)
        .arg("cuda/kernels.cu")
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("nvcc failed ({s}) compiling kernels/cuda/kernels.cu"),
        Err(e) => panic!(
            "the `cuda` feature compiles kernels/cuda/kernels.cu with nvcc, which was not found \
             ({}: {e}); set CUDA_HOME to a CUDA 13 toolkit (pip install \
             \"cuda-toolkit[nvcc,crt,nvvm,cccl,cudart]==13.0.2\" puts one under \
             site-packages/nvidia/cu13)",
            nvcc.display()
        ),
    }
}
