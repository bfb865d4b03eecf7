"""Real clients against the real server, unchanged: tritonclient (HTTP and gRPC) and hey.
KServe's SDK lives in test_kserve_sdk.py: its protobuf module and tritonclient's both register
`inference.*`, so they cannot share one Python process."""
import csv
import io
import subprocess

import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from conftest import Siesta, held_out_digits, mnist_body
from tritonclient.utils import InferenceServerException


def batch_of(n):
    digits = held_out_digits()[:n]
    x = np.stack([img for img, _ in digits]).reshape(n, 1, 28, 28).astype(np.float32)
    return x, np.array([label for _, label in digits])


def test_tritonclient_http_binary_and_json(siesta):
    client = th.InferenceServerClient(siesta.http)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mnist")
    meta = client.get_model_metadata("mnist")
    assert meta["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}
    config = client.get_model_config("mnist")
    assert config["max_batch_size"] == 64 and config["input"][0]["data_type"] == "TYPE_FP32"
    x, labels = batch_of(16)
    for binary in (True, False):
        inp = th.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        outs = [th.InferRequestedOutput("class", binary_data=binary), th.InferRequestedOutput("probabilities", binary_data=binary)]
        result = client.infer("mnist", [inp], outputs=outs, request_id="r1")
        assert result.get_response()["id"] == "r1"
        classes = result.as_numpy("class")
        probs = result.as_numpy("probabilities")
        assert probs.shape == (16, 10) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        assert (classes == probs.argmax(axis=1)).all()
        assert (classes == labels).mean() >= 0.9


def test_tritonclient_http_repository(siesta):
    # By default, as Triton's --model-control-mode none: the index answers, load/unload do not.
    client = th.InferenceServerClient(siesta.http)
    index = client.get_model_repository_index()
    assert {"name": "mnist", "version": "1", "state": "READY", "reason": ""} in index
    with pytest.raises(InferenceServerException, match="model-control-mode"):
        client.unload_model("mnist")
    assert client.is_model_ready("mnist")

    explicit = Siesta("--model-control-mode", "explicit").wait_ready()
    try:
        client = th.InferenceServerClient(explicit.http)
        client.unload_model("mnist")
        assert not client.is_model_ready("mnist")
        client.load_model("mnist")
        assert client.is_model_ready("mnist")
    finally:
        explicit.stop()


def test_tritonclient_grpc(siesta):
    client = tg.InferenceServerClient(siesta.grpc)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("mnist")
    assert client.get_model_metadata("mnist").inputs[0].shape == [-1, 1, 28, 28]
    assert client.get_model_config("mnist").config.max_batch_size == 64
    x, labels = batch_of(8)
    inp = tg.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("mnist", [inp], outputs=[tg.InferRequestedOutput("class")])
    assert (result.as_numpy("class") == labels).mean() >= 0.85
    assert result.as_numpy("probabilities") is None, "only the requested output comes back"
    try:
        client.infer("nope", [inp])
        raise AssertionError("unknown model must fail")
    except tg.InferenceServerException as e:
        assert "not found" in e.message()


def parse_classes(column):
    """Triton's classification strings ("value:index[:label]") -> (values, indices)."""
    parts = [(c.decode() if isinstance(c, bytes) else c).split(":") for c in column]
    return np.array([float(p[0]) for p in parts]), np.array([int(p[1]) for p in parts])


def test_tritonclient_class_count_returns_each_rows_top_classes(siesta):
    """Triton's classification extension (`class_count=k`), over HTTP (binary and JSON) and
    gRPC: only the top k classes of each row come back, best first, with the output's own
    values; they are the k largest of the full output."""
    x, _ = batch_of(6)
    http, grpc = th.InferenceServerClient(siesta.http), tg.InferenceServerClient(siesta.grpc)
    inp = th.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    full = http.infer("mnist", [inp], outputs=[th.InferRequestedOutput("probabilities")]).as_numpy("probabilities")
    answers = []
    for binary in (True, False):
        out = th.InferRequestedOutput("probabilities", binary_data=binary, class_count=3)
        answers.append(http.infer("mnist", [inp], outputs=[out]).as_numpy("probabilities"))
    ginp = tg.InferInput("input", list(x.shape), "FP32")
    ginp.set_data_from_numpy(x)
    answers.append(grpc.infer("mnist", [ginp], outputs=[tg.InferRequestedOutput("probabilities", class_count=3)])
                   .as_numpy("probabilities"))
    want_index = np.argsort(-full, axis=1, kind="stable")[:, :3]
    for top in answers:
        assert top.shape == (6, 3), top.shape
        for row, want_row, probs in zip(top, want_index, full):
            values, index = parse_classes(row)
            assert list(index) == list(want_row)
            assert np.allclose(values, probs[index], atol=1e-6)
    try:
        bad = th.InferRequestedOutput("probabilities")
        bad._parameters["classification"] = -1
        http.infer("mnist", [inp], outputs=[bad])
        raise AssertionError("a negative class count must be refused")
    except th.InferenceServerException as e:
        assert e.status() == "400" and "classification" in e.message(), (e.status(), e.message())


def test_hey_gets_only_200s(siesta, tmp_path):
    x, _ = batch_of(1)
    body = tmp_path / "body.json"
    body.write_text(mnist_body([x[0, 0]]))
    url = f"http://{siesta.http}/v2/models/mnist/infer"
    out = subprocess.run(
        ["hey", "-n", "300", "-c", "4", "-m", "POST", "-T", "application/json", "-D", str(body), "-o", "csv", url],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 300
    codes = {r["status-code"] for r in rows}
    assert codes == {"200"}, codes
