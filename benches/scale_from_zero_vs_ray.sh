#!/usr/bin/env bash
# Scale from zero, Siesta vs Ray Serve, same model (the shipped MNIST CNN), same machine, same run:
# wait until the service has no replica, then time one request from the client's side.
#  - Siesta: `siesta up`, minReplicas 0 (stable window 6 s, grace 1 s), curl to the gateway.
#  - Ray Serve 2.60: min_replicas 0, target_ongoing_requests 1, in its default and its fastest
#    (build-notes) autoscaling configuration; python urllib to Ray's HTTP proxy.
#   bash benches/scale_from_zero_vs_ray.sh     # RUNS=3; installs ray[serve] into .venv-bench
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
RUNS=${RUNS:-3}
OUT=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; sleep 1; rm -rf "$OUT"; }
trap cleanup EXIT

[ -x .venv-bench/bin/python ] || python3 -m venv .venv-bench
.venv-bench/bin/python -c "import ray.serve, torch, safetensors" 2>/dev/null ||
  .venv-bench/bin/pip install -q "ray[serve]==2.60.0" "torch==2.11.0" safetensors numpy
cargo build --release --bin siesta -q
python3 scripts/mnist_body.py 3 >"$OUT/body.json" 2>/dev/null
# Parking off: this compares a new process with Ray's new replica (benches/tiers.sh measures a
# request at zero served by a parked replica).
cat >"$OUT/cold.yaml" <<'YAML'
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: cold, annotations: {siesta.dev/parked-replicas: "0"}}
spec:
  predictor: {minReplicas: 0, model: {modelFormat: {name: siesta}, storageUri: "siesta://mnist"}}
YAML
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"

target/release/siesta up "$OUT/cold.yaml" --host 127.0.0.1 --port 0 --device cpu --log-dir "$OUT/logs" \
  --stable-window 6s --scale-to-zero-grace 1s --tick 200ms >"$OUT/up.out" 2>"$OUT/up.err" &
PIDS+=($!)
for _ in $(seq 100); do grep -q listening "$OUT/up.out" 2>/dev/null && break; sleep 0.1; done
GW=$(grep -o 'http=[^ ]*' "$OUT/up.out" | cut -d= -f2)
replicas() { curl -s "http://$GW/siesta/status" | python3 -c "import json,sys
c=json.load(sys.stdin)['components'][0]; print(c['ready'] + c['starting'])"; }
for run in $(seq 0 $((RUNS - 1))); do
  for _ in $(seq 600); do [ "$(replicas)" = 0 ] && break; sleep 0.1; done
  ms=$(curl -s -o /dev/null -w '%{time_total}' -H 'content-type: application/json' \
    --data-binary @"$OUT/body.json" "http://$GW/v2/models/cold/infer" | python3 -c "import sys; print(round(float(sys.stdin.read())*1e3, 1))")
  echo "{\"server\": \"siesta\", \"config\": \"defaults\", \"run\": $run, \"ms\": $ms}" | tee -a "$OUT/results"
done
kill -TERM "${PIDS[0]}"; wait "${PIDS[0]}" 2>/dev/null || true; PIDS=()

RAY_PORT=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
timeout 900 .venv-bench/bin/python benches/ray_peer/app.py --body "$OUT/body.json" --runs "$RUNS" --port "$RAY_PORT" \
  2>"$OUT/ray.err" | tee -a "$OUT/results" || { tail -20 "$OUT/ray.err"; exit 1; }

python3 - "$OUT/results" <<'PY'
import json, statistics, sys
# Ray's own messages can reach stdout too: only the result lines count.
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith('{"server"')]
groups = {}
for r in rows:
    groups.setdefault((r["server"], r["config"]), []).append(r["ms"])
print("\n| server | config | runs | request at zero -> response, ms (each) | median ms |")
print("|---|---|---|---|---|")
for (server, config), ms in groups.items():
    print(f"| {server} | {config} | {len(ms)} | {', '.join(f'{m:.0f}' if m >= 100 else f'{m:.1f}' for m in ms)} | {statistics.median(ms):.1f} |")
siesta = statistics.median(groups[("siesta", "defaults")])
for (server, config), ms in groups.items():
    if server == "ray":
        print(f"Ray Serve ({config}) / Siesta, median: {statistics.median(ms) / siesta:.0f}x")
PY
