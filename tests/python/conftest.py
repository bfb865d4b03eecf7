"""Starts the real `siesta serve` on free ports for the Python client tests and stops it by PID."""
import json
import os
import pathlib
import signal
import subprocess
import time
import urllib.request

import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import mnist_body as mnist_body_script  # noqa: E402

SIESTA_BIN = os.environ.get("SIESTA_BIN", str(ROOT / "target" / "debug" / "siesta"))

# Siesta's ONNX engine loads ONNX Runtime's library at run time: the one this venv's wheel
# ships, which is also the oracle the tests compare with; from the torch venv, the test venv's.
try:
    import onnxruntime as _ort

    os.environ.setdefault("ORT_DYLIB_PATH", str(pathlib.Path(_ort.__file__).parent / "capi"))
except ImportError:
    for _capi in sorted(ROOT.glob(".venv/lib/python3*/site-packages/onnxruntime/capi")):
        os.environ.setdefault("ORT_DYLIB_PATH", str(_capi))


class Siesta:
    def __init__(self, *args, env=None):
        self.proc = subprocess.Popen(
            [SIESTA_BIN, "serve", "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0", "--device", "cpu", *args],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "RUST_LOG": "warn", **(env or {})},
        )
        line = self.proc.stdout.readline()
        fields = dict(w.split("=", 1) for w in line.split() if "=" in w)
        self.http = fields["http"]
        self.grpc = fields["grpc"]

    def wait_ready(self, timeout=60):
        """Until /v2/health/ready answers 200; fails at once if the process exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"siesta exited with {self.proc.returncode} before it was ready")
            try:
                with urllib.request.urlopen(f"http://{self.http}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError("siesta never became ready")

    def stop(self):
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        assert code == 0, f"siesta exited with {code}"


@pytest.fixture
def siesta():
    server = Siesta().wait_ready()
    yield server
    server.stop()


def held_out_digits():
    """The held-out digits, upscaled exactly as the Rust side does (scripts/mnist_body.py)."""
    return [
        (np.array(mnist_body_script.upscale(px), dtype=np.float32).reshape(28, 28), label)
        for px, label in mnist_body_script.held_out_all()
    ]


def mnist_body(images):
    batch = np.stack(images).reshape(len(images), 1, 28, 28)
    return json.dumps({"inputs": [{"name": "input", "shape": list(batch.shape), "datatype": "FP32", "data": batch.flatten().tolist()}]})


REL_TOL = 1e-4


def assert_close(got, want):
    """fp32 relative error: the largest difference relative to the largest reference value (per
    element it would be dominated by values near zero, where two correct fp32 orders of
    summation already differ by more)."""
    err = np.max(np.abs(got - want)) / np.max(np.abs(want))
    assert err <= REL_TOL, f"relative error {err:.3g}"


def infer(server, model, name, x, outputs):
    """One V2 JSON inference of FP32 `x` as input `name`; the named outputs as arrays."""
    body = json.dumps({
        "inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.flatten().tolist()}],
        "outputs": [{"name": o} for o in outputs],
    }).encode()
    req = urllib.request.Request(f"http://{server.http}/v2/models/{model}/infer", data=body)
    with urllib.request.urlopen(req, timeout=120) as r:
        resp = json.loads(r.read())
    return {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in resp["outputs"]}


def infer_binary(server, model, name, x, output):
    """One V2 inference of FP32 `x` with the binary tensor extension both ways."""
    head = json.dumps({
        "inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes}}],
        "outputs": [{"name": output, "parameters": {"binary_data": True}}],
    }).encode()
    req = urllib.request.Request(
        f"http://{server.http}/v2/models/{model}/infer", data=head + x.astype("<f4").tobytes(),
        headers={"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(req, timeout=300) as r:
        body = r.read()
        n = int(r.headers["Inference-Header-Content-Length"])
    meta = json.loads(body[:n])
    out = meta["outputs"][0]
    return np.frombuffer(body[n:], dtype="<f4").reshape(out["shape"])
