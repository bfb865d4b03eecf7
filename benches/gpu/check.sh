#!/usr/bin/env bash
# The one-run GPU check (issue 5). Built on a CPU machine with Rust, run on the GPU machine
# (no Rust, no network there) within a few minutes:
#
#   bash benches/gpu/check.sh --build      # here: benches/gpu/bin/{gpu-check,bench-engine}
#   bash benches/gpu/check.sh OUT_DIR      # there: OUT_DIR/summary.json and the raw files
#
# On a machine without an NVIDIA driver the second command is a dry run that checks what it can
# (the binaries start, the CPU references run, Siesta's engines run a small model on the CPU, the
# results are written) and says that no GPU was found. GPU_CHECK_BIN, BENCH_ENGINE_BIN and
# CHECK_PYTHON override the binaries and the Python (CI: debug builds and its torch venv).
#
# What it runs, all in this one script so the ratios compare runs on the same GPU:
#  1. gpu-check: every CUDA kernel against its CPU reference, and timed against it; NVML's GPUs.
#  2. PyTorch eager ResNet-50, fp16 and f32, batch 1/32/256 (the baseline), from python3's torch.
#  3. Siesta's ResNet-50 through its own loader (bench-engine): candle on the GPU, and libtorch
#     (tch) when the payload was built with LIBTORCH set; fp16 and f32, batch 1/32/256;
#     torchvision's architecture with random weights written by models/vision/make_vision.py.
#  4. Idle tiers of that model (fp16, each engine, and candle f32): device memory hot and parked
#     (engine count and NVML), parked -> first answer; process start -> first answer (split: load
#     incl. CUDA init, first forward); GPU 0's used memory before the process and after its exit.
#  5. The ONNX engine (ONNX Runtime) on the machine's onnxruntime: CUDA provider where it has one.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN_DIR="$ROOT/benches/gpu/bin"

if [ "${1:-}" = "--build" ]; then
  : "${CUDA_HOME:?set CUDA_HOME to a CUDA 13 toolkit (scripts/test.sh installs one in .venv-cuda)}"
  # candle's kernels: nvcc from PATH, for the H100/H200 (sm_90) without asking nvidia-smi.
  export PATH="$CUDA_HOME/bin:$PATH" CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
  features=cuda
  if [ -n "${LIBTORCH:-}" ]; then
    features=cuda,torch
  else
    echo "LIBTORCH is not set: bench-engine without the tch engine (set it to a torch 2.11.0 wheel's torch/)"
  fi
  cargo build --release -p siesta-kernels --features cuda --example gpu-check
  cargo build --release --features "$features" --bin bench-engine
  mkdir -p "$BIN_DIR"
  cp "$ROOT/target/release/examples/gpu-check" "$ROOT/target/release/bench-engine" "$BIN_DIR/"
  strip "$BIN_DIR/gpu-check" "$BIN_DIR/bench-engine"
  ls -l "$BIN_DIR"
  exit 0
fi

OUT=${1:?usage: check.sh --build | check.sh OUT_DIR}
mkdir -p "$OUT"
BIN=${GPU_CHECK_BIN:-$BIN_DIR/gpu-check}
ENGINE_BIN=${BENCH_ENGINE_BIN:-$BIN_DIR/bench-engine}
PY=${CHECK_PYTHON:-python3}
for b in "$BIN" "$ENGINE_BIN"; do
  [ -x "$b" ] || { echo "no $b: run 'bash benches/gpu/check.sh --build' on a machine with Rust first" >&2; exit 2; }
done
size=$(($(stat -c %s "$BIN") + $(stat -c %s "$ENGINE_BIN")))
echo "payload: $BIN + $ENGINE_BIN, $((size / 1024)) KiB (limit 60 MiB)"
[ "$size" -lt $((60 * 1024 * 1024)) ] || [ -n "${GPU_CHECK_BIN:-}" ] || { echo "payload over 60 MiB" >&2; exit 1; }

# The machine's own CUDA libraries (torch 2.11.0+cu130's wheels): cuBLAS & co. for candle,
# libtorch for tch.
if py_libs=$("$PY" -c 'import os, torch; d=os.path.dirname(torch.__file__); print(d + "/lib:" + os.path.dirname(d) + "/nvidia/cu13/lib")' 2>/dev/null); then
  export LD_LIBRARY_PATH="$py_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "torch found: libraries from $py_libs"
else
  echo "$PY has no torch: the PyTorch baseline and Siesta's ResNet-50 are skipped"
fi

# 1. Kernels.
CHECK_DATE=$(date -u +%F) timeout 300 "$BIN" "$OUT/results.json"
DRY=0
grep -q '"dry_run": true' "$OUT/results.json" && DRY=1

# 2. PyTorch baseline.
if "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  timeout 240 "$PY" "$ROOT/benches/gpu/pytorch_resnet50.py" "$OUT/pytorch-resnet50.json"
else
  echo "no CUDA-capable PyTorch here: PyTorch baseline skipped"
fi

# 3 and 4. Siesta's engines. A dry run takes a small model at batch 1 on the CPU: it checks the
# path, not the speed.
if [ "$DRY" = 1 ]; then
  ARCH=resnet18 DEVICE=cpu BATCHES=1 ITERS=1 WARMUP=0
else
  ARCH=resnet50 DEVICE=cuda:0 BATCHES="1 32 256" ITERS=20 WARMUP=3
fi
: >"$OUT/siesta.jsonl"
if "$PY" -c 'import torch, torchvision' 2>/dev/null; then
  "$PY" "$ROOT/models/vision/make_vision.py" --arch "$ARCH" --out "$OUT/$ARCH" --format pth --torchscript --onnx \
    >/dev/null 2>&1
  # One model, engine and precision at every batch size; a failure is recorded (with its error's
  # tail) as skipped and ends that series.
  series() { # DIR ENGINE PRECISION
    for batch in $BATCHES; do
      if ! RUST_BACKTRACE=0 timeout 120 "$ENGINE_BIN" "$1" "$2" "$batch" "$ITERS" "$WARMUP" \
        --device "$DEVICE" --precision "$3" >>"$OUT/siesta.jsonl" 2>"$OUT/bench-engine.err"; then
        echo "{\"engine\": \"$2\", \"precision\": \"$3\", \"batch\": $batch, \"skipped\": $("$PY" -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()[-300:]))' <"$OUT/bench-engine.err")}" >>"$OUT/siesta.jsonl"
        return
      fi
    done
  }
  for precision in f16 f32; do
    for engine in candle torch; do
      series "$OUT/$ARCH" "$engine" "$precision"
    done
  done
  # The same network taking UINT8 pixels [224, 224, 3]: a quarter of the upload, normalised into
  # the network's input by the fused kernel on the GPU. Batch 1 once more on the CPU (its kernel's
  # CPU reference), whose logits' checksum the GPU's must match.
  cp -r "$OUT/$ARCH" "$OUT/$ARCH-pixels"
  "$PY" - "$OUT/$ARCH-pixels/config.json" <<'PYCFG'
import json, sys
cfg = json.load(open(sys.argv[1]))
cfg.update(max_batch_size=256, inputs=[{"name": "image", "datatype": "UINT8", "shape": [224, 224, 3]}])
json.dump(cfg, open(sys.argv[1], "w"))
PYCFG
  for precision in f16 f32; do
    series "$OUT/$ARCH-pixels" candle "$precision"
  done
  if [ "$DRY" = 0 ]; then
    timeout 120 "$ENGINE_BIN" "$OUT/$ARCH-pixels" candle 1 1 0 --device cpu | sed 's/^{/{"pixels_cpu_reference": true, /' \
      >>"$OUT/siesta.jsonl" 2>>"$OUT/bench-engine.err" || true
  fi
  # Process start -> first answer (one batch-1 pass, no warm-up), then the idle tiers.
  for run in 1 2 3; do
    start=$(date +%s%N)
    line=$(timeout 120 "$ENGINE_BIN" "$OUT/$ARCH" candle 1 0 0 --device "$DEVICE")
    end=$(date +%s%N)
    echo "{\"cold_start\": $run, \"process_wall_ms\": $(((end - start) / 1000000)), \"run\": $line}" >>"$OUT/siesta.jsonl"
  done
  for engine in candle torch; do
    RUST_BACKTRACE=0 timeout 120 "$ENGINE_BIN" "$OUT/$ARCH" "$engine" 1 3 1 --device "$DEVICE" --precision f16 \
      --idle-tiers >>"$OUT/siesta.jsonl" 2>>"$OUT/bench-engine.err" || true
  done
  # Exited: GPU 0's used memory before the process and after it is gone (a process cannot be
  # asked about itself once it has exited; what it leaves behind shows in the difference).
  gpu_used() { nvidia-smi --id=0 --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null || echo null; }
  before=$(gpu_used)
  timeout 120 "$ENGINE_BIN" "$OUT/$ARCH" candle 1 3 1 --device "$DEVICE" --idle-tiers >>"$OUT/siesta.jsonl"
  after=$(gpu_used)
  echo "{\"exited\": {\"gpu0_used_mib_before\": $before, \"gpu0_used_mib_after_exit\": $after}}" >>"$OUT/siesta.jsonl"
  # 5. Siesta's ONNX engine (ONNX Runtime, loaded at run time) with this machine's onnxruntime:
  # on the GPU through the CUDA provider where that build has one (idle tiers measured by NVML
  # too), else on the CPU, which still shows that the engine loads this version, with the
  # reason recorded. onnxruntime-gpu's wheel (~280 MB) cannot travel in a 64 MiB payload.
  ort_info=$("$PY" -c 'import json, os, onnxruntime as o; print(json.dumps({"version": o.__version__,
"providers": o.get_available_providers(), "capi": os.path.join(os.path.dirname(o.__file__), "capi")}))' 2>/dev/null ||
    echo '{"version": null, "providers": [], "capi": null}')
  ort_capi=$(echo "$ort_info" | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["capi"] or "")')
  export ORT_DYLIB_PATH=${ort_capi:-${ORT_DYLIB_PATH:-}}
  if [ "$DRY" = 0 ] && echo "$ort_info" | grep -q CUDAExecutionProvider; then
    ort_device=$DEVICE ort_batches=$BATCHES why=null
  elif [ "$DRY" = 1 ]; then
    ort_device=cpu ort_batches=1 why='"no GPU (dry run)"'
  else
    ort_device=cpu ort_batches=1
    why='"this onnxruntime has no CUDA provider (the CPU build); onnxruntime-gpu is needed, and its wheel is over the payload limit"'
  fi
  echo "{\"onnxruntime\": $ort_info, \"library\": \"${ORT_DYLIB_PATH:-}\", \"device\": \"$ort_device\", \"why_not_cuda\": $why}" \
    >>"$OUT/siesta.jsonl"
  DEVICE=$ort_device BATCHES=$ort_batches series "$OUT/$ARCH" onnx f32
  if [ "$ort_device" != cpu ]; then
    RUST_BACKTRACE=0 timeout 120 "$ENGINE_BIN" "$OUT/$ARCH" onnx 1 3 1 --device "$ort_device" --idle-tiers \
      >>"$OUT/siesta.jsonl" 2>>"$OUT/bench-engine.err" || true
  fi
else
  echo "$PY has no torch + torchvision: Siesta's ResNet-50 skipped" | tee "$OUT/siesta-skipped.txt"
fi

"$PY" "$ROOT/benches/gpu/summarize.py" "$OUT" | tee "$OUT/summary.txt"
if [ "$DRY" = 1 ]; then
  echo "DRY RUN: no GPU found; $OUT holds the CPU references and a CPU pass of Siesta's engines only"
else
  echo "GPU check done: $OUT/summary.json (commit it under benches/results/ with the date and GPU name)"
fi
