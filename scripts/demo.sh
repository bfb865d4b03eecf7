#!/usr/bin/env bash
# The main job: the reference scenario 1 (KServe's autoscaling walkthrough) on one host with the
# embedded defaults. `siesta up` runs deploy/examples/autoscale.yaml unchanged (KServe apiVersion,
# scaleTarget 1, scaleMetric concurrency), its gs:// storageUri mirrored to the shipped stand-in
# (models/flowers-standin: the MNIST digit CNN behind the flowers model's TF Serving signature,
# image_bytes + key in, prediction + scores + key out), local replicas on the CPU. Then
# `hey -z 30s -c 5` through the gateway with the walkthrough's input.json shape (a PNG of a
# held-out handwritten digit as image_bytes.b64, key "1"), as in the walkthrough, while
# the replica count is printed every 2 s; then SIGTERM stops the gateway and every replica.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
need=(); command -v protoc >/dev/null || need+=(protobuf-compiler); command -v hey >/dev/null || need+=(hey)
if [ ${#need[@]} -gt 0 ]; then $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${need[@]}" >/dev/null; fi

cargo build --release --bin siesta
OUT=$(mktemp -d)
trap 'kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$OUT"' EXIT
target/release/siesta up deploy/examples/autoscale.yaml --host 127.0.0.1 --port 0 --device auto \
  --storage-mirror "gs://kfserving-examples/models/tensorflow/flowers=file://$ROOT/models/flowers-standin" \
  --log-dir "$OUT/logs" >"$OUT/stdout" 2>"$OUT/log" &
PID=$!
for _ in $(seq 100); do grep -q listening "$OUT/stdout" 2>/dev/null && break; sleep 0.1; done
GW=$(grep -o 'http=[^ ]*' "$OUT/stdout" | cut -d= -f2)
echo "siesta up: gateway on $GW"
python3 scripts/mnist_body.py --image-bytes 3 >"$OUT/input.json" 2>/dev/null

PORT=${GW##*:}
status() { target/release/siesta status --port "$PORT" | sed 's/^/  /'; }
until curl -s "http://$GW/siesta/status" | grep -q '"ready":1'; do sleep 0.2; done
echo "--- initial scale"; status
echo "--- one request: $(head -c 90 "$OUT/input.json")..."
curl -s -H "Host: flowers-sample.default.example.com" -d @"$OUT/input.json" \
  "http://$GW/v1/models/flowers-sample:predict" | cut -c1-160; echo
echo "--- hey -z 30s -c 5 -m POST -host flowers-sample.default.example.com -D input.json http://$GW/v1/models/flowers-sample:predict"
SECONDS=0  # before the watcher starts: its subshell counts from here too
( for _ in $(seq 16); do sleep 2; echo "t+$((${SECONDS}))s"; status; done ) &
WATCH=$!
hey -z 30s -c 5 -m POST -host flowers-sample.default.example.com -D "$OUT/input.json" \
  "http://$GW/v1/models/flowers-sample:predict" | sed -n '/Summary/,/Requests\/sec/p;/Status code/,$p'
kill "$WATCH" 2>/dev/null || true
echo "--- after the run"; status
echo "--- replica processes"; pgrep -af 'siesta serve' | sed 's/--storage-mirror [^ ]*//' | cut -c1-120 || true
echo "--- autoscaler metrics"
curl -s "http://$GW/siesta/metrics" | grep -E '^siesta_(autoscaler|gateway)_' | head -20 || true
