#!/usr/bin/env bash
# 10x overload through `siesta up`'s gateway, with requests held at zero carrying 8 MiB bodies.
#  1. capacity: `hey -z 10s -c 4` on a one-replica MNIST service (containerConcurrency 4), and
#     its unloaded p99 at that concurrency;
#  2. for LOAD (60 s): hey offering 10x that rate (200 clients, -q per client), while HELD
#     clients post 8 MiB bodies to a service at zero whose replica never becomes ready (its model
#     store accepts connections and never answers), more than the hold queue takes;
#  3. gateway and replica RSS sampled every 0.5 s throughout (max reported), the statuses and
#     latency of the refused requests, and after the load stops, p99 in five 1 s windows against
#     the unloaded p99 of five 1 s windows measured before.
#   bash benches/overload.sh          # LOAD=60s HELD=160 HOLD_QUEUE=128
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
LOAD=${LOAD:-60s}
HELD=${HELD:-160}
HOLD_QUEUE=${HOLD_QUEUE:-128}
OUT=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; sleep 1; rm -rf "$OUT"; }
trap cleanup EXIT
cargo build --release --bin siesta -q
BIN=target/release/siesta
python3 scripts/mnist_body.py 3 >"$OUT/mnist.json" 2>/dev/null

# A model store that accepts connections and never answers.
python3 -c "
import socket, sys, time
s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(64)
print(s.getsockname()[1], flush=True)
held = []
while True:
    held.append(s.accept())
" >"$OUT/store.port" &
PIDS+=($!)
for _ in $(seq 50); do [ -s "$OUT/store.port" ] && break; sleep 0.1; done
STORE_PORT=$(cat "$OUT/store.port")

cat >"$OUT/isvc.yaml" <<YAML
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: busy}
spec:
  predictor:
    minReplicas: 1
    maxReplicas: 1
    containerConcurrency: 4
    model: {modelFormat: {name: siesta}, storageUri: "siesta://mnist"}
---
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: stuck}
spec:
  predictor:
    minReplicas: 0
    maxReplicas: 1
    model: {modelFormat: {name: siesta}, storageUri: "http://127.0.0.1:$STORE_PORT/model/config.json"}
YAML
"$BIN" up "$OUT/isvc.yaml" --host 127.0.0.1 --port 0 --device cpu --log-dir "$OUT/logs" \
  --hold-queue "$HOLD_QUEUE" >"$OUT/up.out" 2>"$OUT/up.err" &
UP_PID=$!
PIDS+=($UP_PID)
for _ in $(seq 100); do grep -q listening "$OUT/up.out" 2>/dev/null && break; sleep 0.1; done
GW=$(grep -o 'http=[^ ]*' "$OUT/up.out" | cut -d= -f2)
replica_pid() {  # SERVICE -> pid of its first replica, once ready
  for _ in $(seq 300); do
    pid=$(curl -s "http://$GW/siesta/status" | python3 -c "import json,sys
for c in json.load(sys.stdin)['components']:
    if c['service'] == '$1' and c['endpoints']: print(c['endpoints'][0]['pid'])")
    [ -n "$pid" ] && { echo "$pid"; return; }
    sleep 0.1
  done
  return 1
}
REPLICA_PID=$(replica_pid busy)
rss_mib() { awk '/VmRSS/ {printf "%d", $2 / 1024}' "/proc/$1/status" 2>/dev/null || echo 0; }
URL="http://$GW/v2/models/busy/infer"
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); gateway pid $UP_PID, replica pid $REPLICA_PID"
echo "idle RSS: gateway $(rss_mib "$UP_PID") MiB, replica $(rss_mib "$REPLICA_PID") MiB"

hey -n 500 -c 4 -m POST -T application/json -D "$OUT/mnist.json" "$URL" >/dev/null
hey -z 10s -c 4 -m POST -T application/json -D "$OUT/mnist.json" -o csv "$URL" >"$OUT/unloaded.csv"
read -r _ _ _ CAPACITY P50 _ _ < <(python3 benches/hey_summary.py "$OUT/unloaded.csv" busy 4 json)
# The unloaded p99 in the same 1 s windows that are measured after the load: their median.
for i in 1 2 3 4 5; do
  hey -z 1s -c 4 -m POST -T application/json -D "$OUT/mnist.json" -o csv "$URL" >"$OUT/before-$i.csv"
  python3 benches/hey_summary.py "$OUT/before-$i.csv" "before-${i}s" 4 json
done | awk '{print $6}' | sort -n | sed -n 3p >"$OUT/p99"
P99=$(cat "$OUT/p99")
CLIENTS=200
PER_CLIENT=$(python3 -c "import math; print(max(1, math.ceil(10 * $CAPACITY / $CLIENTS)))")
echo "capacity: $CAPACITY req/s at -c 4 (p50 $P50 ms; p99 in 1 s windows, median of 5: $P99 ms); offering 10x: $CLIENTS clients x $PER_CLIENT req/s for $LOAD"

# RSS of the gateway and every live replica process of `siesta up`, every 0.5 s.
(
  while kill -0 "$UP_PID" 2>/dev/null; do
    replicas=0
    for p in $(pgrep -P "$UP_PID"); do replicas=$((replicas + $(rss_mib "$p"))); done
    echo "$(rss_mib "$UP_PID") $(rss_mib "$REPLICA_PID") $replicas"
    sleep 0.5
  done
) >"$OUT/rss" &
SAMPLER=$!
PIDS+=($SAMPLER)

LOAD_S=${LOAD%s}
python3 benches/held_clients.py "$GW" /v2/models/stuck/infer "$HELD" "$LOAD_S" >"$OUT/held" &
HELD_PID=$!
hey -z "$LOAD" -c "$CLIENTS" -q "$PER_CLIENT" -m POST -T application/json -D "$OUT/mnist.json" -o csv "$URL" >"$OUT/overload.csv"
# The load has stopped once the held clients have hung up too.
wait "$HELD_PID"
: >"$OUT/after"
for i in 1 2 3 4 5; do
  hey -z 1s -c 4 -m POST -T application/json -D "$OUT/mnist.json" -o csv "$URL" >"$OUT/after-$i.csv"
  python3 benches/hey_summary.py "$OUT/after-$i.csv" "after-${i}s" 4 json >>"$OUT/after"
done
kill "$SAMPLER" 2>/dev/null || true

python3 - "$OUT" "$CAPACITY" "$P99" "$HOLD_QUEUE" <<'PY'
import csv, sys
out, capacity, p99_unloaded, hold_queue = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
rows = list(csv.DictReader(open(f"{out}/overload.csv")))
span = max(float(r["offset"]) + float(r["response-time"]) for r in rows)
by = {}
for r in rows:
    by.setdefault(r["status-code"], []).append(float(r["response-time"]) * 1e3)
def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")
print(f"offered {len(rows) / span:.0f} req/s for {span:.0f} s ({len(rows) / span / capacity:.1f}x capacity):")
for code, lat in sorted(by.items()):
    print(f"  status {code}: {len(lat)} ({len(lat) / len(rows):.1%}), {len(lat) / span:.0f}/s, "
          f"latency p50 {pct(lat, .5):.1f} ms, p99 {pct(lat, .99):.1f} ms")
print(open(f"{out}/held").read().strip() + f" (hold queue {hold_queue})")
rss = [tuple(map(int, l.split())) for l in open(f"{out}/rss") if l.strip()]
print(f"max RSS during the run ({len(rss)} samples): gateway {max(r[0] for r in rss)} MiB, "
      f"busy replica {max(r[1] for r in rss)} MiB, all replicas {max(r[2] for r in rss)} MiB")
print(f"after the load (unloaded p99 in 1 s windows {p99_unloaded:.2f} ms):")
back = None
for i, line in enumerate(open(f"{out}/after"), 1):
    f = line.split()
    p99 = float(f[5])
    print(f"  second {i}: {float(f[3]):.0f} req/s, p99 {p99:.2f} ms, non-200 {f[6]}")
    if back is None and p99 <= 1.5 * p99_unloaded + 0.5:
        back = i
print(f"p99 back within 1.5x (+0.5 ms) of unloaded: {'in second ' + str(back) if back else 'not within 5 s'}")
PY
