#!/usr/bin/env bash
# What the gateway costs, and how fast a request at zero replicas is answered.
#  (a) `hey` straight to a replica vs through `siesta up`'s gateway, same replica, same run:
#      added p50/p99 and proxied requests/s, on the identity model (a trivial model, so the
#      gateway is what is measured) and on the shipped MNIST model.
#  (b) scale from zero: minReplicas 0, wait until no replica is left, time one request (N times).
#   bash benches/gateway_overhead.sh          # DURATION=10s, COLD_RUNS=5
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
DURATION=${DURATION:-10s}
COLD_RUNS=${COLD_RUNS:-5}
OUT=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; sleep 1; rm -rf "$OUT"; }
trap cleanup EXIT
cargo build --release --bin siesta -q
BIN=target/release/siesta

mkdir -p "$OUT/identity"
cat >"$OUT/identity/config.json" <<'JSON'
{"name": "identity", "architecture": "identity", "max_batch_size": 8,
 "inputs": [{"name": "x", "datatype": "FP32", "shape": [4]}], "outputs": [{"name": "y", "datatype": "FP32", "shape": [4]}]}
JSON
echo '{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}' >"$OUT/identity.json"
python3 scripts/mnist_body.py 3 >"$OUT/mnist.json" 2>/dev/null
cat >"$OUT/warm.yaml" <<YAML
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: trivial}
spec:
  predictor: {minReplicas: 1, maxReplicas: 1, model: {modelFormat: {name: siesta}, storageUri: "file://$OUT/identity"}}
---
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: mnist}
spec:
  predictor: {minReplicas: 1, maxReplicas: 1, model: {modelFormat: {name: siesta}, storageUri: "siesta://mnist"}}
YAML
# Parking off: scale from zero here is a new process (benches/tiers.sh compares it with a resume).
cat >"$OUT/cold.yaml" <<'YAML'
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: cold, annotations: {siesta.dev/parked-replicas: "0"}}
spec:
  predictor: {minReplicas: 0, model: {modelFormat: {name: siesta}, storageUri: "siesta://mnist"}}
YAML

start_up() {  # NAME FILE EXTRA...: runs `siesta up` in the background, waits for its address
  local name=$1 file=$2; shift 2
  "$BIN" up "$file" --host 127.0.0.1 --port 0 --device cpu --log-dir "$OUT/logs" "$@" >"$OUT/$name.out" 2>"$OUT/$name.err" &
  PIDS+=($!)
  for _ in $(seq 100); do grep -q listening "$OUT/$name.out" 2>/dev/null && break; sleep 0.1; done
}
gateway_of() { grep -o 'http=[^ ]*' "$OUT/$1.out" | cut -d= -f2; }
endpoint() {  # GATEWAY SERVICE -> replica address once ready
  for _ in $(seq 300); do
    addr=$(curl -s "http://$1/siesta/status" | python3 -c "import json,sys
for c in json.load(sys.stdin)['components']:
    if c['service'] == '$2' and c['endpoints']: print(c['endpoints'][0]['addr'])")
    [ -n "$addr" ] && { echo "$addr"; return; }
    sleep 0.1
  done
  return 1
}

echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), hey -z $DURATION -c 5, V2 JSON"
start_up warm "$OUT/warm.yaml"
GW=$(gateway_of warm)
for svc in trivial mnist; do
  body="$OUT/identity.json"; [ "$svc" = mnist ] && body="$OUT/mnist.json"
  REPLICA=$(endpoint "$GW" "$svc")
  for target in direct gateway; do
    addr=$REPLICA; [ "$target" = gateway ] && addr=$GW
    url="http://$addr/v2/models/$svc/infer"
    hey -n 200 -c 5 -m POST -T application/json -D "$body" "$url" >/dev/null
    hey -z "$DURATION" -c 5 -m POST -T application/json -D "$body" -o csv "$url" >"$OUT/$svc-$target.csv"
    python3 benches/hey_summary.py "$OUT/$svc-$target.csv" "$svc" 5 "$target" >>"$OUT/results"
  done
done
python3 - "$OUT/results" <<'PY'
import sys
rows = {(r[0], r[2]): r for r in (l.split() for l in open(sys.argv[1]))}
print("| model | direct req/s | p50 ms | p99 ms | via gateway req/s | p50 ms | p99 ms | added p50 | added p99 |")
print("|---|---|---|---|---|---|---|---|---|")
for svc in ("trivial", "mnist"):
    d, g = rows[(svc, "direct")], rows[(svc, "gateway")]
    print(f"| {svc} | {float(d[3]):.0f} | {d[4]} | {d[5]} | {float(g[3]):.0f} | {g[4]} | {g[5]} | "
          f"{(float(g[4]) - float(d[4])) * 1000:.0f} us | {(float(g[5]) - float(d[5])) * 1000:.0f} us |")
PY

start_up cold "$OUT/cold.yaml" --stable-window 6s --scale-to-zero-grace 1s --tick 200ms
GW=$(gateway_of cold)
: >"$OUT/cold"
for i in $(seq "$COLD_RUNS"); do
  for _ in $(seq 300); do
    curl -s "http://$GW/siesta/status" | grep -q '"ready":0,' && curl -s "http://$GW/siesta/status" | grep -q '"starting":0' && break
    sleep 0.2
  done
  curl -s -o /dev/null -w '%{time_total}\n' -H 'content-type: application/json' -d @"$OUT/mnist.json" \
    "http://$GW/v2/models/cold/infer" >>"$OUT/cold"
done
python3 - "$OUT/cold" <<'PY'
import statistics, sys
t = sorted(float(x) * 1e3 for x in open(sys.argv[1]))
print(f"scale from zero (request at 0 replicas -> response), {len(t)} runs: p50 {statistics.median(t):.1f} ms, max {t[-1]:.1f} ms")
PY
