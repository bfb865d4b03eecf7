#!/usr/bin/env bash
# Siesta's engines (candle, ONNX Runtime through ort, libtorch via tch) against PyTorch eager and
# onnxruntime's Python API on the same ONNX file: ResNet-50, ViT-B/16 and Inception v3
# (torchvision, random seeded weights: the cost is the architecture's; candle does not build ViT),
# batch 1 and 8, on the CPU with THREADS threads each (default 2), the same input batch for all,
# one engine at a time in the same run. Prints median ms per forward pass and the ratio to
# PyTorch eager; checksums (sum of the logits) show they all computed the same thing.
#   bash benches/engines_vs_pytorch.sh           # ITERS=10 WARMUP=2 THREADS=2
# Needs python3; installs torch 2.11.0, torchvision, onnx, onnxruntime into .venv-bench on first use.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
ITERS=${ITERS:-10}
WARMUP=${WARMUP:-2}
THREADS=${THREADS:-2}
MODELS=${MODELS:-"resnet50 vit_b_16 inception_v3"}
BATCHES=${BATCHES:-"1 8"}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

PY=.venv-bench/bin/python
[ -x "$PY" ] || python3 -m venv .venv-bench
"$PY" -c "import torch, torchvision, onnx, onnxruntime, safetensors" 2>/dev/null ||
  .venv-bench/bin/pip install -q "torch==2.11.0" "torchvision==0.26.0" "onnx==1.23.2" "onnxruntime==1.31.1" safetensors numpy
LIBTORCH=$("$PY" -c "import os, torch; print(os.path.dirname(torch.__file__))")
export LIBTORCH
cargo build --release -q --features torch --bin bench-engine
BENCH=target/release/bench-engine

# Siesta's ONNX engine loads the onnxruntime wheel's own library: the same build as the peer.
ORT_DYLIB_PATH="$("$PY" -c 'import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))')/capi"
export ORT_DYLIB_PATH SIESTA_ONNX_THREADS=$THREADS
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
for arch in $MODELS; do
  "$PY" models/vision/make_vision.py --arch "$arch" --out "$OUT/$arch" --torchscript --onnx 2>/dev/null
  for batch in $BATCHES; do
    "$PY" benches/engines/peers.py "$OUT/$arch" "$arch" "$batch" "$ITERS" "$WARMUP" "$THREADS" \
      | sed "s/^/$arch /" >>"$OUT/results"
    for engine in candle torch onnx; do
      [ "$engine" = candle ] && [ "$arch" = vit_b_16 ] && continue
      "$BENCH" "$OUT/$arch" "$engine" "$batch" "$ITERS" "$WARMUP" | sed "s/^/$arch /" >>"$OUT/results"
    done
  done
done

"$PY" - "$OUT/results" "$THREADS" <<'PY'
import json, sys
rows = [(l.split(" ", 1)[0], json.loads(l.split(" ", 1)[1])) for l in open(sys.argv[1])]
names = {"pytorch": "PyTorch eager", "onnxruntime": "onnxruntime", "candle": "Siesta candle",
         "torch": "Siesta tch (TorchScript)", "onnx": "Siesta ORT"}
print(f"CPU, {sys.argv[2]} threads; median ms per forward pass; ratio = engine / PyTorch eager (lower is faster)")
print("| model | batch | engine | median ms | min ms | x PyTorch | checksum |")
print("|---|---|---|---|---|---|---|")
for arch in dict.fromkeys(a for a, _ in rows):
    for batch in dict.fromkeys(r["batch"] for a, r in rows if a == arch):
        group = [r for a, r in rows if a == arch and r["batch"] == batch]
        base = next(r["median_ms"] for r in group if r["engine"] == "pytorch")
        for r in group:
            print(f"| {arch} | {batch} | {names[r['engine']]} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | "
                  f"{r['median_ms'] / base:.2f} | {r['checksum']:.7g} |")
PY
