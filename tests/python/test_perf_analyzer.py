"""Triton's perf_analyzer, unchanged, against the real server: HTTP with JSON and binary tensors,
and gRPC. It reads /v2/models/NAME/config first and sends random data (NaN included)."""
import os
import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PERF_ANALYZER = os.environ.get("PERF_ANALYZER", str(ROOT / ".tools" / "perf_analyzer" / "perf_analyzer"))


def run(args):
    out = subprocess.run(
        [PERF_ANALYZER, "-m", "mnist", "--concurrency-range", "2", "--measurement-interval", "1000", "--max-trials", "10", "--stability-percentage", "100", *args],
        capture_output=True, text=True, timeout=120,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "error" not in text.lower(), text
    m = re.search(r"Concurrency: 2, throughput: ([0-9.]+) infer/sec", text)
    assert m and float(m.group(1)) > 0, text
    return float(m.group(1))


@pytest.mark.parametrize("fmt", ["binary", "json"])
def test_perf_analyzer_http(siesta, fmt):
    run(["-u", siesta.http, "-i", "http", "--shape", "input:1,28,28", "--input-tensor-format", fmt, "--output-tensor-format", fmt])


def test_perf_analyzer_grpc(siesta):
    run(["-u", siesta.grpc, "-i", "grpc", "--shape", "input:1,28,28"])
