#!/usr/bin/env bash
# The one-run GPU check (issue 5). Built on a CPU machine with Rust, run on the GPU machine
# (no Rust, no network there) within a few minutes:
#
#   bash benches/gpu/check.sh --build      # here: benches/gpu/bin/gpu-check (release, stripped)
#   bash benches/gpu/check.sh OUT_DIR      # there: OUT_DIR/results.json (+ pytorch-resnet50.json)
#
# On a machine without an NVIDIA driver the second command is a dry run that checks what it can
# (the binary starts, the CPU references run, the results file is written) and says that no GPU
# was found. GPU_CHECK_BIN overrides the binary (CI uses a debug build).
#
# What it runs: every CUDA kernel against its CPU reference and timed against it (ratio, same
# process); NVML's GPUs; PyTorch eager ResNet-50 fp16 at batch 1/32/256 from the machine's own
# python3 torch (the baseline). Not yet: Siesta's ResNet-50 on the GPU and the idle tiers; the
# results file lists them under not_measured_yet.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN_DIR="$ROOT/benches/gpu/bin"

if [ "${1:-}" = "--build" ]; then
  : "${CUDA_HOME:?set CUDA_HOME to a CUDA 13 toolkit (scripts/test.sh installs one in .venv-cuda)}"
  cargo build --release -p siesta-kernels --features cuda --example gpu-check
  mkdir -p "$BIN_DIR"
  cp "$ROOT/target/release/examples/gpu-check" "$BIN_DIR/gpu-check"
  strip "$BIN_DIR/gpu-check"
  ls -l "$BIN_DIR/gpu-check"
  exit 0
fi

OUT=${1:?usage: check.sh --build | check.sh OUT_DIR}
mkdir -p "$OUT"
BIN=${GPU_CHECK_BIN:-$BIN_DIR/gpu-check}
[ -x "$BIN" ] || { echo "no $BIN: run 'bash benches/gpu/check.sh --build' on a machine with Rust first" >&2; exit 2; }
size=$(stat -c %s "$BIN")
echo "payload: $BIN, $((size / 1024)) KiB (limit 60 MiB)"
[ "$size" -lt $((60 * 1024 * 1024)) ] || { echo "payload over 60 MiB" >&2; exit 1; }

# The machine's own CUDA libraries (torch 2.11.0+cu130's wheels), for anything beyond the driver.
if py_libs=$(python3 -c 'import os, torch; d=os.path.dirname(torch.__file__); print(d + "/lib:" + os.path.dirname(d) + "/nvidia/cu13/lib")' 2>/dev/null); then
  export LD_LIBRARY_PATH="$py_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "python3 torch found: libraries from $py_libs"
else
  echo "python3 has no torch: the PyTorch baseline is skipped"
fi

CHECK_DATE=$(date -u +%F) timeout 300 "$BIN" "$OUT/results.json"

if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  timeout 240 python3 "$ROOT/benches/gpu/pytorch_resnet50.py" "$OUT/pytorch-resnet50.json"
else
  echo "no CUDA-capable PyTorch here: PyTorch baseline skipped"
fi
if grep -q '"dry_run": true' "$OUT/results.json"; then
  echo "DRY RUN: no GPU found; $OUT/results.json holds the CPU references only"
else
  echo "GPU check done: $OUT/results.json (commit it under benches/results/ with the date and GPU name)"
fi
