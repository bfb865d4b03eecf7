#!/usr/bin/env bash
# Siesta vs KServe's Python model server on the same model, same weights, same machine, same
# bodies: `hey` for DURATION (default 10s) at -c 1 and -c 5, V2 JSON and V2 binary tensors.
# Prints requests/s, p50 and p99 per run and the ratios Siesta/KServe. Run from anywhere:
#   bash benches/serve_vs_kserve.sh            # DURATION=10s by default
# Needs: hey, python3; installs KServe + torch 2.11.0 into .venv-bench on first use (~2.7 GB).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
DURATION=${DURATION:-10s}
OUT=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$OUT"; }
trap cleanup EXIT

[ -x .venv-bench/bin/python ] || python3 -m venv .venv-bench
.venv-bench/bin/python -c "import kserve, torch, safetensors" 2>/dev/null ||
  .venv-bench/bin/pip install -q "kserve==0.21.0" "torch==2.11.0" safetensors numpy
cargo build --release --bin siesta -q

# Bodies: one held-out digit, as V2 JSON and as V2 binary (JSON header + 3136 raw bytes).
python3 scripts/mnist_body.py 3 >"$OUT/v2.json" 2>/dev/null
python3 - "$OUT" <<'PY'
import json, struct, sys
out = sys.argv[1]
body = json.load(open(f"{out}/v2.json"))
data = body["inputs"][0].pop("data")
body["inputs"][0]["parameters"] = {"binary_data_size": 4 * len(data)}
body["parameters"] = {"binary_data_output": True}
head = json.dumps(body).encode()
open(f"{out}/v2.bin", "wb").write(head + struct.pack(f"<{len(data)}f", *data))
open(f"{out}/v2.bin.len", "w").write(str(len(head)))
PY

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() { for _ in $(seq 600); do curl -sf "http://127.0.0.1:$1/v2/models/mnist/ready" >/dev/null && return 0; sleep 0.1; done; echo "server on $1 never became ready" >&2; return 1; }

# run NAME PORT CONC FORMAT -> one result line
run() {
  local name=$1 port=$2 conc=$3 fmt=$4 body type=application/json hdr=()
  if [ "$fmt" = json ]; then body="$OUT/v2.json"; else
    body="$OUT/v2.bin"; type=application/octet-stream
    hdr=(-H "Inference-Header-Content-Length: $(cat "$OUT/v2.bin.len")")
  fi
  hey -n 20 -c 1 -m POST -T "$type" "${hdr[@]}" -D "$body" "http://127.0.0.1:$port/v2/models/mnist/infer" >/dev/null
  hey -z "$DURATION" -c "$conc" -m POST -T "$type" "${hdr[@]}" -D "$body" -o csv \
    "http://127.0.0.1:$port/v2/models/mnist/infer" >"$OUT/$name-$conc-$fmt.csv"
  python3 benches/hey_summary.py "$OUT/$name-$conc-$fmt.csv" "$name" "$conc" "$fmt"
}

SP=$(free_port)
target/release/siesta serve --host 127.0.0.1 --http-port "$SP" --no-grpc --device cpu >/dev/null 2>"$OUT/siesta.log" &
PIDS+=($!)
KP=$(free_port); KG=$(free_port)
.venv-bench/bin/python benches/kserve_peer/model.py --model_name mnist --http_port "$KP" --grpc_port "$KG" \
  --workers 1 >"$OUT/kserve.log" 2>&1 &
PIDS+=($!)
wait_ready "$SP"; wait_ready "$KP"

# Same answer from both before timing anything.
python3 - "$SP" "$KP" "$OUT/v2.json" <<'PY'
import json, sys, urllib.request
def infer(port):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/mnist/infer", data=open(sys.argv[3], "rb").read(),
                                 headers={"content-type": "application/json"})
    out = {o["name"]: o["data"] for o in json.load(urllib.request.urlopen(req))["outputs"]}
    return out["probabilities"], out["class"]
(ps, cs), (pk, ck) = infer(sys.argv[1]), infer(sys.argv[2])
diff = max(abs(a - b) for a, b in zip(ps, pk))
assert cs == ck, (cs, ck)
assert diff < 1e-4, diff
print(f"same answer from both servers: class {cs[0]}, max |dp| = {diff:.2e}")
PY

echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), duration $DURATION per run"
RESULTS="$OUT/results"
for conc in 1 5; do
  for fmt in json binary; do
    run siesta "$SP" "$conc" "$fmt" >>"$RESULTS"
    run kserve "$KP" "$conc" "$fmt" >>"$RESULTS"
  done
done
python3 - "$RESULTS" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1])]
by = {(r[0], r[1], r[2]): r for r in rows}
print("| -c | body | Siesta req/s | p50 ms | p99 ms | KServe req/s | p50 ms | p99 ms | req/s ratio | p99 ratio (KServe/Siesta) |")
print("|---|---|---|---|---|---|---|---|---|---|")
for (name, c, fmt), r in by.items():
    if name != "siesta":
        continue
    k = by[("kserve", c, fmt)]
    s_rps, s50, s99, k_rps, k50, k99 = map(float, (r[3], r[4], r[5], k[3], k[4], k[5]))
    errs = f" ({r[6]}/{k[6]} non-200)" if r[6] != "0" or k[6] != "0" else ""
    print(f"| {c} | V2 {fmt} | {s_rps:.0f} | {s50:.2f} | {s99:.2f} | {k_rps:.1f} | {k50:.2f} | {k99:.2f} | {s_rps/k_rps:.1f}x | {k99/s99:.1f}x |{errs}")
PY
