#!/usr/bin/env bash
# The three tiers to zero, measured side by side on this machine (CPU; GPU memory is a stated
# budget, `--simulate-gpus`, filled by the replicas' own device-memory accounting):
#
#  1. Scale from zero, shipped model: one `siesta up` with two copies of the MNIST service,
#     `parked` (default tiers: the replica parks at zero) and `spawned`
#     (`siesta.dev/parked-replicas: "0"`: it exits, as under Knative). RUNS times: both at zero,
#     then one request each; client time and the gateway's held time.
#  2. Density: 20 InferenceServices of a torchvision ResNet-18 state dict (seeded random
#     weights, one seed each) on a device-memory budget that holds 4 hot, driven by a seeded
#     bursty Zipf trace (benches/traces/azure_like.py) for DURATION seconds, once per policy:
#     `exit-only` (Knative's defaults; parked-replicas "0": scale-down exits, a replica that
#     does not fit waits until another scales to zero) and `tiers` (Siesta's defaults).
#
#   bash benches/tiers.sh            # RUNS=15 DURATION=600 RATE=2 SEED=7; about 25 minutes
#   ONLY=zero bash benches/tiers.sh  # bullet 1 only (about 3 minutes)
# Needs .venv-torch (torch + torchvision, as scripts/test.sh installs) for the ResNet-18 files.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
RUNS=${RUNS:-15}
DURATION=${DURATION:-600}
RATE=${RATE:-2}
SEED=${SEED:-7}
ONLY=${ONLY:-all}
OUT=$(mktemp -d)
UP_PID=
cleanup() { [ -n "$UP_PID" ] && kill -TERM "$UP_PID" 2>/dev/null && wait "$UP_PID" 2>/dev/null; rm -rf "$OUT"; }
trap cleanup EXIT
cargo build --release --bin siesta -q
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"

# Starts `siesta up` on MANIFEST with extra flags; sets UP_PID and GW.
start_up() {
  local manifest=$1; shift
  target/release/siesta up "$manifest" --host 127.0.0.1 --port 0 --log-dir "$OUT/logs" \
    --cache-dir "$OUT/cache" "$@" >"$OUT/up.out" 2>"$OUT/up.err" &
  UP_PID=$!
  for _ in $(seq 200); do grep -q listening "$OUT/up.out" 2>/dev/null && break; sleep 0.1; done
  GW=$(grep -o 'http=[^ ]*' "$OUT/up.out" | cut -d= -f2)
  [ -n "$GW" ] || { tail -20 "$OUT/up.err"; exit 1; }
}
stop_up() { kill -TERM "$UP_PID"; wait "$UP_PID" 2>/dev/null || true; UP_PID=; }

if [ "$ONLY" = all ] || [ "$ONLY" = zero ]; then
  python3 scripts/mnist_body.py 3 >"$OUT/mnist.json" 2>/dev/null
  cat >"$OUT/zero.yaml" <<'YAML'
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: parked}
spec:
  predictor: {minReplicas: 0, model: {modelFormat: {name: siesta}, storageUri: "siesta://mnist"}}
---
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: spawned
  annotations: {siesta.dev/parked-replicas: "0"}
spec:
  predictor: {minReplicas: 0, model: {modelFormat: {name: siesta}, storageUri: "siesta://mnist"}}
YAML
  start_up "$OUT/zero.yaml" --device cpu --stable-window 6s --scale-to-zero-grace 1s --tick 200ms
  python3 benches/tiers.py zero --gateway "$GW" --services parked,spawned --runs "$RUNS" \
    --body "$OUT/mnist.json" >"$OUT/zero.jsonl"
  stop_up
  python3 - "$OUT/zero.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("\n1. Request at zero -> response, shipped MNIST model, CPU (client time; the gateway's held time)\n")
print("| service | replica at zero | became ready by | runs | p50 ms | p90 ms | max ms | held p50 ms |")
print("|---|---|---|---|---|---|---|---|")
p50 = {}
for s, what in (("parked", "parked process"), ("spawned", "none (exited)")):
    r = [x for x in rows if x["service"] == s and x["status"] == 200]
    ms = sorted(x["ms"] for x in r)
    held = sorted(x["held_ms"] for x in r)
    kinds = sorted({x["cold_start"] or "-" for x in r})
    p50[s] = statistics.median(ms)
    print(f"| {s} | {what} | {'/'.join(kinds)} | {len(r)} | {p50[s]:.2f} | {ms[int(len(ms)*0.9)]:.2f} | {ms[-1]:.2f} | {statistics.median(held):.2f} |")
print(f"\nresume / spawn (p50): {p50['parked'] / p50['spawned']:.3f}")
bad = [x for x in rows if x["status"] != 200]
assert not bad, bad
PY
fi

if [ "$ONLY" = all ] || [ "$ONLY" = density ]; then
  MODELS=target/bench-models/resnet18
  for i in $(seq -w 0 19); do
    [ -f "$MODELS/s$i/config.json" ] ||
      .venv-torch/bin/python models/vision/make_vision.py --arch resnet18 --seed "$((10#$i))" --out "$MODELS/s$i" >/dev/null
  done
  # One FP32 image in the V2 binary tensor extension (a JSON header, then the raw floats).
  python3 - "$OUT/resnet.bin" <<'PY'
import json, random, struct, sys
random.seed(1)
n = 3 * 224 * 224
header = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 224, 224],
                                 "parameters": {"binary_data_size": 4 * n}}]}).encode()
open(sys.argv[1], "wb").write(header + struct.pack(f"<{n}f", *(random.random() for _ in range(n))))
open(sys.argv[1] + ".len", "w").write(str(len(header)))
PY
  python3 benches/traces/azure_like.py --services 20 --seconds "$DURATION" --rate "$RATE" --seed "$SEED" \
    >"$OUT/trace.jsonl" 2>"$OUT/trace.txt"
  echo "trace: $(cat "$OUT/trace.txt")"
  for policy in exit-only tiers; do
    : >"$OUT/$policy.yaml"
    for i in $(seq -w 0 19); do
      annotations='autoscaling.knative.dev/initial-scale: "0"'
      [ "$policy" = exit-only ] && annotations="$annotations, siesta.dev/parked-replicas: \"0\""
      cat >>"$OUT/$policy.yaml" <<YAML
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: s$i
  annotations: {$annotations}
spec:
  predictor:
    minReplicas: 0
    maxReplicas: 2
    model: {modelFormat: {name: pytorch}, storageUri: "$ROOT/$MODELS/s$i"}
---
YAML
    done
    # ResNet-18's weights are 44.6 MiB: 200 MiB holds 4 hot replicas, not 5.
    start_up "$OUT/$policy.yaml" --device auto --simulate-gpus 200 --gpu-memory-overhead-mib 0 \
      --allow-zero-initial-scale
    python3 benches/tiers.py density --gateway "$GW" --trace "$OUT/trace.jsonl" --body "$OUT/resnet.bin" \
      --up-pid "$UP_PID" --policy "$policy" | tee "$OUT/$policy.json"
    stop_up
  done
  python3 - "$OUT/exit-only.json" "$OUT/tiers.json" <<'PY'
import json, sys
e, t = (json.load(open(p)) for p in sys.argv[1:])
print("\n2. Density: 20 ResNet-18 services, device-memory budget of 4 hot, bursty Zipf trace\n")
print("| policy | requests | failed | p50 ms | p99 ms | max ms | requests at zero: spawn / resume | processes spawned / replicas resumed | device memory GB x s | hot max | parked max | host memory peak MiB |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in (e, t):
    z, s = r["requests_at_zero"], r["replica_starts"]
    print(f"| {r['policy']} | {r['requests']} | {r['failed']} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['max_ms']:.0f} | "
          f"{z['spawn']} / {z['resume']} | {s['spawn']} / {s['resume']} | {r['device_memory_gb_s']:.1f} | "
          f"{r['hot_replicas_max']} | {r['parked_replicas_max']} | {r['host_memory_peak_mib']} |")
print(f"\ntiers / exit-only: p99 {t['p99_ms'] / e['p99_ms']:.3f}, device memory GB x s "
      f"{t['device_memory_gb_s'] / max(e['device_memory_gb_s'], 1e-9):.3f}")
PY
fi
