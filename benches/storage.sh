#!/usr/bin/env bash
# Model download from an S3 emulator: Siesta's replica vs boto3 on the same prefix (220 objects'
# worth of MiB: 1 x 200 MiB + 20 x 5 MiB + the model), and replica start with an empty vs a warm
# cache. Needs the test venv (bash scripts/test.sh installs moto and boto3 into .venv).
#   bash benches/storage.sh            # REPS=3 BIG_MIB=200 SMALL=20
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
cargo build --release --bin siesta -q
exec .venv/bin/python benches/storage.py
