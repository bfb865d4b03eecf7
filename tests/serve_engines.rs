//! Engine selection at load: a model the build cannot run fails to load with a message that
//! names the file and says what to do, and the process exits non-zero (no panic, no hang).

use std::process::Command;

fn serve_fails_with(dir: &std::path::Path, want: &[&str]) {
    serve_fails_with_env(dir, &[], want);
}

fn serve_fails_with_env(dir: &std::path::Path, env: &[(&str, &str)], want: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_siesta"))
        .args([
            "serve",
            "--host",
            "127.0.0.1",
            "--http-port",
            "0",
            "--no-grpc",
        ])
        .args(["--device", "cpu", "--storage-uri", dir.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for w in want {
        assert!(err.contains(w), "missing {w:?} in: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

fn model_dir(architecture: &str, file: &str, bytes: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(file), bytes).unwrap();
    let config = serde_json::json!({
        "name": "m", "architecture": architecture, "weights": file, "max_batch_size": 4,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [4]}],
    });
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    dir
}

#[cfg(not(feature = "torch"))]
#[test]
fn torchscript_without_the_torch_feature_says_how_to_build_it() {
    let dir = model_dir("torchscript", "model.pt", b"not loaded");
    serve_fails_with(dir.path(), &["model.pt", "`torch` feature"]);
}

#[cfg(feature = "torch")]
#[test]
fn a_file_that_is_not_torchscript_is_a_load_error_naming_it() {
    let dir = model_dir("torchscript", "model.pt", b"not a zip archive");
    serve_fails_with(dir.path(), &["model.pt", "not a TorchScript module"]);
}

#[test]
fn a_file_that_is_not_onnx_is_a_load_error_naming_it() {
    let dir = model_dir("onnx", "model.onnx", b"\xff\xff not protobuf");
    serve_fails_with(dir.path(), &["model.onnx"]);
}

#[test]
fn a_tensorflow_saved_model_without_tf2onnx_says_how_to_convert_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("saved_model.pb"), b"\x08\x01").unwrap();
    std::fs::create_dir(dir.path().join("variables")).unwrap();
    // A Python without tf2onnx (the interpreter is given; none is installed with it here).
    serve_fails_with_env(
        dir.path(),
        &[("SIESTA_PYTHON", "/bin/false")],
        &[
            "TensorFlow SavedModel",
            "tf2onnx.convert --saved-model",
            "saved_model.pb",
        ],
    );
    assert!(
        !dir.path().join("model.onnx").exists(),
        "nothing half-written"
    );
}

/// Against PyPI's torch wheel (libtorch's CUDA build, as in CI) the parked tier can empty
/// libtorch's CUDA cache: the shim is built and linked, and with no GPU it is a no-op that
/// succeeds. With a CPU-only libtorch there is nothing to build against, and nothing to empty.
#[cfg(feature = "torch")]
#[test]
fn the_cuda_wheel_build_can_empty_libtorchs_cuda_cache() {
    let cuda_wheel = std::env::var_os("LIBTORCH")
        .map(|t| std::path::Path::new(&t).join("lib/libc10_cuda.so").exists())
        .unwrap_or(false);
    if !cuda_wheel {
        eprintln!("SKIPPED: LIBTORCH is not a CUDA build of libtorch");
        return;
    }
    assert!(
        siesta_models::torch_cuda_cache::available(),
        "built against a CUDA libtorch, but without torch/cuda_cache.cpp"
    );
    assert!(siesta_models::torch_cuda_cache::empty());
}

#[test]
fn f16_precision_for_a_model_that_computes_in_f32_only_is_a_load_error() {
    let mnist = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/mnist");
    serve_fails_with_env(
        &mnist,
        &[("SIESTA_PRECISION", "f16")],
        &["precision f16", "'mnist_cnn' computes in f32"],
    );
}
