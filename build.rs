//! With the `torch` feature: find libtorch at run time without LD_LIBRARY_PATH (an rpath to the
//! wheel's torch/lib), and keep libtorch_cuda linked when the CUDA libraries are installed
//! (the linker's --as-needed drops it otherwise, and CUDA then reads as unavailable: tch-rs
//! issue 980).
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_TORCH").is_none()
        || std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux")
    {
        return;
    }
    let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    let lib = Path::new(&lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    // The full torch wheel puts the CUDA libraries next to torch/ (site-packages/nvidia);
    // the CPU-only install (`--no-deps`) has libtorch_cuda.so but not what it needs.
    let cuda_libs = lib.join("../../nvidia/cu13/lib");
    if lib.join("libtorch_cuda.so").exists() && cuda_libs.exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
