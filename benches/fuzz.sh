#!/usr/bin/env bash
# The decoders' fuzzing in bench mode: every property of runtime/src/fuzz.rs (REST V1/V2, the
# binary extension, gRPC messages, tensor bytes, transformer instances and images) and
# lifecycle/src/fuzz.rs (manifests, gRPC model names, the gateway's forwarding verdict), with
# enough cases that they total at least TOTAL (default one million). Prints the count per
# property, the total and the rate. The test suite runs the same properties with 256 cases each.
#   bash benches/fuzz.sh            # TOTAL=1000000
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TOTAL=${TOTAL:-1000000}
# The same build as the test suite's (debug, default + kubernetes): no extra compile in CI.
cargo test --workspace --lib --features kubernetes --no-run -q 2>/dev/null
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
# Properties are the `proptest!` tests; the generator checks are plain tests.
PROPS=$(grep -h -A2 -E '^    #\[test\]' runtime/src/fuzz.rs lifecycle/src/fuzz.rs | grep -c '^    fn ')
CASES=$(( (TOTAL + PROPS - 1) / PROPS ))
echo "$PROPS properties x $CASES cases"
START=$(date +%s.%N)
PROPTEST_CASES=$CASES cargo test --workspace --lib --features kubernetes fuzz:: -- --test-threads 2 2>&1 | tee "$LOG" | grep -E "^test fuzz|FAILED|panicked|minimal" || true
END=$(date +%s.%N)
if grep -q "FAILED\|panicked" "$LOG"; then
  echo "a property failed (log above)" >&2
  exit 1
fi
# Every fuzz test that passed, less the generator checks (plain tests, counted in PROPS not at all).
RAN=$(( $(grep -cE "^test fuzz::.* ok$" "$LOG" || true) - $(grep -cE "^test fuzz::the_generators?_reach.* ok$" "$LOG" || true) ))
if [ "$RAN" -ne "$PROPS" ]; then
  echo "ran $RAN properties, expected $PROPS" >&2
  exit 1
fi
python3 - "$RAN" "$CASES" "$START" "$END" <<'PY'
import sys
ran, cases, start, end = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
total = ran * cases
secs = end - start
print(f"fuzzed: {ran} properties x {cases} cases = {total:,} cases, none panicked, every refusal a client error; "
      f"{secs:.0f} s, {total / secs:,.0f} cases/s (debug build, 2 test threads)")
PY
