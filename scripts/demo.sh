#!/usr/bin/env bash
# The main job on the embedded defaults: builds `siesta` (release), serves the shipped MNIST
# model on the CPU, shows its metadata and one V1 and one V2 answer, drives it with `hey`
# (10 s, 5 workers, V2 JSON), prints the server's own metrics, then stops it with SIGTERM.
# (The lifecycle issue turns this into the reference scenario with `siesta up`.)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
need=(); command -v protoc >/dev/null || need+=(protobuf-compiler); command -v hey >/dev/null || need+=(hey)
if [ ${#need[@]} -gt 0 ]; then $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${need[@]}" >/dev/null; fi

cargo build --release --bin siesta
OUT=$(mktemp -d)
trap 'kill "$PID" 2>/dev/null || true; rm -rf "$OUT"' EXIT
target/release/siesta serve --host 127.0.0.1 --http-port 0 --grpc-port 0 --device auto >"$OUT/stdout" 2>"$OUT/log" &
PID=$!
for _ in $(seq 100); do grep -q listening "$OUT/stdout" 2>/dev/null && break; sleep 0.1; done
HTTP=$(grep -o 'http=[^ ]*' "$OUT/stdout" | cut -d= -f2)
GRPC=$(grep -o 'grpc=[^ ]*' "$OUT/stdout" | cut -d= -f2)
until curl -sf "http://$HTTP/v2/health/ready" >/dev/null; do sleep 0.1; done
echo "siesta serving mnist: HTTP $HTTP, gRPC $GRPC"
echo "--- model metadata"; curl -s "http://$HTTP/v2/models/mnist"; echo
python3 scripts/mnist_body.py 3 >"$OUT/v2.json"
python3 scripts/mnist_body.py --v1 3 >"$OUT/v1.json"
echo "--- V1 predict (held-out digit 3)"; curl -s "http://$HTTP/v1/models/mnist:predict" -d @"$OUT/v1.json" | head -c 400; echo
echo "--- V2 infer, class only"; curl -s "http://$HTTP/v2/models/mnist/infer" -d "$(python3 -c "import json,sys; b=json.load(open('$OUT/v2.json')); b['outputs']=[{'name':'class'}]; print(json.dumps(b))")"; echo
echo "--- hey -z 10s -c 5 (V2 JSON)"
hey -z 10s -c 5 -m POST -T application/json -D "$OUT/v2.json" "http://$HTTP/v2/models/mnist/infer" | sed -n '1,12p;/Status code/,$p'
echo "--- server metrics"
curl -s "http://$HTTP/metrics" | grep -E '^siesta_(requests_total|batch_size_(sum|count)|device_memory_bytes|model_state.*ready)' || true
kill -TERM "$PID"; wait "$PID"; echo "siesta exited with $?"
