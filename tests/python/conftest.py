"""Starts the real `siesta serve` on free ports for the Python client tests and stops it by PID."""
import json
import os
import pathlib
import signal
import subprocess
import time
import urllib.request

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SIESTA_BIN = os.environ.get("SIESTA_BIN", str(ROOT / "target" / "debug" / "siesta"))


class Siesta:
    def __init__(self, *args):
        self.proc = subprocess.Popen(
            [SIESTA_BIN, "serve", "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0", "--device", "cpu", *args],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "RUST_LOG": "warn"},
        )
        line = self.proc.stdout.readline()
        fields = dict(w.split("=", 1) for w in line.split() if "=" in w)
        self.http = fields["http"]
        self.grpc = fields["grpc"]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        assert code == 0, f"siesta exited with {code}"


@pytest.fixture
def siesta():
    server = Siesta()
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"http://{server.http}/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        time.sleep(0.05)
    yield server
    server.stop()


def held_out_digits():
    """The held-out digits, upscaled exactly as the Rust side does (same data, same split)."""
    import gzip

    rows = gzip.decompress((ROOT / "models" / "data" / "digits.csv.gz").read_bytes()).decode().strip().splitlines()
    out = []
    for i, row in enumerate(rows):
        if i % 5 != 4:
            continue
        values = [float(v) for v in row.split(",")]
        out.append((upscale(np.array(values[:64], dtype=np.float32).reshape(8, 8) / 16.0), int(values[64])))
    return out


def upscale(px):
    """Bilinear 8x8 -> 20x20 (align_corners=False), centred in 28x28; mirrors mnist::digit_to_mnist."""
    img = np.zeros((28, 28), dtype=np.float32)
    scale = 8.0 / 20.0
    for y in range(20):
        for x in range(20):
            sy = min(max((y + 0.5) * scale - 0.5, 0.0), 7.0)
            sx = min(max((x + 0.5) * scale - 0.5, 0.0), 7.0)
            y0, x0 = int(np.floor(sy)), int(np.floor(sx))
            y1, x1 = min(y0 + 1, 7), min(x0 + 1, 7)
            fy, fx = sy - y0, sx - x0
            top = px[y0, x0] * (1 - fx) + px[y0, x1] * fx
            bottom = px[y1, x0] * (1 - fx) + px[y1, x1] * fx
            img[y + 4, x + 4] = top * (1 - fy) + bottom * fy
    return img


def mnist_body(images):
    batch = np.stack(images).reshape(len(images), 1, 28, 28)
    return json.dumps({"inputs": [{"name": "input", "shape": list(batch.shape), "datatype": "FP32", "data": batch.flatten().tolist()}]})
