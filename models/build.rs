//! `cuda`: candle's kernels crate asks for `-lcudart`. Linking the CUDA runtime statically
//! (PyPI's cuda-toolkit ships libcudart_static.a) keeps every CUDA library out of the binary's
//! NEEDED list: cudart itself opens libcuda only when first used, and candle's cudarc opens the
//! rest at run time (vendor/README.md), so a `cuda` build starts without a driver.
//!
//! `torch`: where libtorch is the CUDA build (the PyPI wheel with its nvidia/ libraries), compiles
//! torch/cuda_cache.cpp so that a parked TorchScript model can empty libtorch's CUDA cache.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=torch/cuda_cache.cpp");
    println!("cargo::rerun-if-env-changed=CUDA_HOME");
    println!("cargo::rustc-check-cfg=cfg(siesta_torch_cuda_cache)");
    if std::env::var_os("CARGO_FEATURE_TORCH").is_some()
        && let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB")
    {
        torch_cuda_cache(Path::new(&lib));
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        link_cudart_statically();
    }
}

fn torch_cuda_cache(lib: &Path) {
    let include = lib.join("../include");
    let cuda_include = lib.join("../../nvidia/cu13/include");
    if !lib.join("libc10_cuda.so").exists() || !cuda_include.join("cuda_runtime_api.h").exists() {
        // The CPU-only install (`--no-deps`): nothing to empty, and nothing to build against.
        return;
    }
    if !cuda_include.join("crt/host_config.h").exists() {
        // torch's wheels bring the CUDA runtime headers but not the compiler's, which they include.
        println!(
            "cargo:warning=libtorch's CUDA cache cannot be emptied by this build: \
             pip install nvidia-cuda-crt==13.0.88 next to torch (scripts/test.sh does)"
        );
        return;
    }
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .file("torch/cuda_cache.cpp")
        .include(&include)
        .include(&cuda_include)
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false)
        .compile("siesta_torch_cuda_cache");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=c10_cuda");
    println!("cargo:rustc-cfg=siesta_torch_cuda_cache");
}

fn link_cudart_statically() {
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
