//! With the `cuda` feature, candle's kernels crate asks for `-lcudart`. Linking the CUDA runtime
//! statically (PyPI's cuda-toolkit ships libcudart_static.a) keeps every CUDA library out of the
//! binary's NEEDED list: cudart itself opens libcuda only when first used, and candle's cudarc
//! opens the rest at run time (vendor/README.md), so a `cuda` build starts without a driver.

use std::path::PathBuf;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=CUDA_HOME");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let Some(home) = std::env::var_os("CUDA_HOME").map(PathBuf::from) else {
        panic!(
            "the `cuda` feature needs CUDA_HOME: a CUDA 13 toolkit, e.g. site-packages/nvidia/cu13 \
             after pip install \"cuda-toolkit[nvcc,crt,nvvm,cccl,cudart]==13.0.2\""
        );
    };
    let static_lib = ["lib/libcudart_static.a", "lib64/libcudart_static.a"]
        .iter()
        .map(|p| home.join(p))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no libcudart_static.a under {}", home.display()));
    // A directory where `-lcudart` can only mean the static archive.
    let dir =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("cudart");
    std::fs::create_dir_all(&dir).expect("create OUT_DIR/cudart");
    let link = dir.join("libcudart.a");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&static_lib, &link).expect("symlink libcudart.a");
    println!("cargo:rustc-link-search=native={}", dir.display());
}
