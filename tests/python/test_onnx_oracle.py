"""The ONNX engine (ONNX Runtime loaded from ORT_DYLIB_PATH) against onnxruntime's Python API
on fresh random inputs each run, through the real `siesta serve` (V2 binary tensors).

Small graphs cover the operators TensorFlow exports lean on ('same' average pooling, padded max
pooling, GlobalAveragePool, opset-18 ReduceMean, NHWC Transpose, BatchNormalization); the
flowers stand-in (Inception-v3-shaped, models/flowers/make_flowers.py)
covers the whole graph, and goes through the image transformer with a JPEG too."""
import base64
import io
import json
import os
import subprocess
import sys
import urllib.request

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import ROOT, SIESTA_BIN, Siesta, assert_close, infer_binary

RNG = np.random.default_rng()  # fresh inputs every run


def write_model(dir, model, config):
    dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, dir / "model.onnx")
    (dir / "config.json").write_text(json.dumps(config))


def small_graph(kind):
    """One op under test between an NHWC input and an NCHW output, with random weights."""
    rng = np.random.default_rng(7)
    c = 4
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 9, 11, c])
    inits = [numpy_helper.from_array(rng.normal(size=(c, c, 3, 3)).astype(np.float32), "w")]
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    opset = 13
    if kind == "avgpool_same_exclude_pad":
        nodes.append(helper.make_node("AveragePool", ["c"], ["y"], kernel_shape=[3, 3], strides=[1, 1],
                                      pads=[1, 1, 1, 1], count_include_pad=0))
    elif kind == "avgpool_include_pad_strided":
        nodes.append(helper.make_node("AveragePool", ["c"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                                      pads=[1, 1, 1, 1], count_include_pad=1))
    elif kind == "maxpool_padded":
        nodes.append(helper.make_node("MaxPool", ["c"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
    elif kind == "global_avgpool":
        nodes.append(helper.make_node("GlobalAveragePool", ["c"], ["y"]))
    elif kind == "reducemean_opset18":
        opset = 18
        inits.append(numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"))
        nodes.append(helper.make_node("ReduceMean", ["c", "axes"], ["y"], keepdims=1))
    elif kind == "batchnorm":
        for n, v in (("g", rng.uniform(0.5, 1.5, c)), ("b", rng.normal(size=c)), ("m", rng.normal(size=c)),
                     ("v", rng.uniform(0.5, 2.0, c))):
            inits.append(numpy_helper.from_array(v.astype(np.float32), n))
        nodes.append(helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"], epsilon=1e-3))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, kind, [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    config = {"name": kind, "architecture": "onnx", "weights": "model.onnx", "max_batch_size": 4,
              "inputs": [{"name": "x", "datatype": "FP32", "shape": [9, 11, c]}],
              "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, -1, -1]}]}
    return model, config


@pytest.mark.parametrize("kind", ["avgpool_same_exclude_pad", "avgpool_include_pad_strided", "maxpool_padded",
                                  "global_avgpool", "reducemean_opset18", "batchnorm"])
def test_rewritten_operators_match_onnxruntime(tmp_path, kind):
    model, config = small_graph(kind)
    write_model(tmp_path / kind, model, config)
    server = Siesta("--storage-uri", str(tmp_path / kind), "--model-name", kind)
    try:
        server.wait_ready()
        x = RNG.normal(size=(3, 9, 11, 4)).astype(np.float32)
        want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        got = infer_binary(server, kind, "x", x, "y")
        assert got.shape == want.shape
        assert_close(got, want)
    finally:
        server.stop()


def test_an_onnx_file_without_a_config_is_described_by_its_graph(tmp_path):
    model, _ = small_graph("batchnorm")
    (tmp_path / "bare").mkdir()
    onnx.save(model, tmp_path / "bare" / "model.onnx")
    server = Siesta("--storage-uri", str(tmp_path / "bare"), "--model-name", "bare")
    try:
        server.wait_ready()
        with urllib.request.urlopen(f"http://{server.http}/v2/models/bare", timeout=10) as r:
            meta = json.loads(r.read())
        assert meta["inputs"][0]["name"] == "x" and meta["inputs"][0]["shape"] == [-1, 9, 11, 4]
        x = RNG.normal(size=(2, 9, 11, 4)).astype(np.float32)
        want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        assert_close(infer_binary(server, "bare", "x", x, "y"), want)
    finally:
        server.stop()


def test_an_unknown_operator_is_a_load_error_naming_it(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"], domain="com.example")], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.example", 1)])
    model.ir_version = 9
    write_model(tmp_path / "m", model, {"name": "m", "architecture": "onnx", "weights": "model.onnx",
                                        "max_batch_size": 4,
                                        "inputs": [{"name": "x", "datatype": "FP32", "shape": [4]}],
                                        "outputs": [{"name": "y", "datatype": "FP32", "shape": [4]}]})
    proc = subprocess.run([SIESTA_BIN, "serve", "--storage-uri", str(tmp_path / "m"), "--http-port", "0",
                           "--no-grpc", "--host", "127.0.0.1"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "NoSuchOp" in proc.stderr and "model.onnx" in proc.stderr, proc.stderr


def test_a_config_that_does_not_fit_the_graph_is_a_load_error(tmp_path):
    model, config = small_graph("batchnorm")
    config["inputs"][0]["shape"] = [9, 12, 4]
    write_model(tmp_path / "m", model, config)
    proc = subprocess.run([SIESTA_BIN, "serve", "--storage-uri", str(tmp_path / "m"), "--http-port", "0",
                           "--no-grpc", "--host", "127.0.0.1"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "input 'x' has shape [-1, 9, 11, 4] in the graph" in proc.stderr, proc.stderr
    config["inputs"][0].update(shape=[9, 11, 4], datatype="FP64")
    write_model(tmp_path / "m", model, config)
    proc = subprocess.run([SIESTA_BIN, "serve", "--storage-uri", str(tmp_path / "m"), "--http-port", "0",
                           "--no-grpc", "--host", "127.0.0.1"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "input 'x' is FP32 in the graph, FP64 in the config" in proc.stderr, proc.stderr


def test_without_onnx_runtime_the_load_error_says_how_to_get_it(tmp_path):
    model, config = small_graph("batchnorm")
    write_model(tmp_path / "m", model, config)
    env = {k: v for k, v in os.environ.items() if k != "ORT_DYLIB_PATH"}
    proc = subprocess.run([SIESTA_BIN, "serve", "--storage-uri", str(tmp_path / "m"), "--http-port", "0",
                           "--no-grpc", "--host", "127.0.0.1"], capture_output=True, text=True, timeout=60,
                          env={**env, "ORT_DYLIB_PATH": str(tmp_path / "nowhere")})
    assert proc.returncode != 0
    assert "pip install onnxruntime" in proc.stderr and "ORT_DYLIB_PATH" in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def flowers(tmp_path_factory):
    out = tmp_path_factory.mktemp("flowers")
    subprocess.run([sys.executable, str(ROOT / "models" / "flowers" / "make_flowers.py"), "--out", str(out)],
                   check=True)
    return out


def test_flowers_stand_in_matches_onnxruntime(flowers):
    server = Siesta("--storage-uri", str(flowers), "--model-name", "flowers")
    try:
        server.wait_ready()
        # Blocky random pictures: i.i.d. pixel noise looks the same to every image model after
        # global pooling, and would hide errors in the early layers.
        small = RNG.uniform(-1, 1, size=(2, 6, 6, 3)).astype(np.float32)
        x = np.ascontiguousarray(np.repeat(np.repeat(small, 50, axis=1), 50, axis=2)[:, :299, :299, :])
        sess = ort.InferenceSession(str(flowers / "model.onnx"), providers=["CPUExecutionProvider"])
        want = sess.run(None, {"input_1": x})[0]
        got = infer_binary(server, "flowers", "input_1", x, "scores")
        assert got.shape == (2, 5)
        assert_close(got, want)
    finally:
        server.stop()


def test_a_jpeg_goes_through_the_transformer_to_flowers(flowers):
    from PIL import Image

    predictor = Siesta("--storage-uri", str(flowers), "--model-name", "flowers")
    transformer = Siesta("--transformer", "image", "--model-name", "flowers", "--predictor-url",
                         f"http://{predictor.http}")
    try:
        predictor.wait_ready()
        transformer.wait_ready()
        img = Image.fromarray(RNG.integers(0, 256, size=(400, 500, 3), dtype=np.uint8))
        buf = io.BytesIO()
        img.save(buf, format="JPEG")
        body = json.dumps({"instances": [{"image_bytes": {"b64": base64.b64encode(buf.getvalue()).decode()},
                                          "key": "1"}]}).encode()
        req = urllib.request.Request(f"http://{transformer.http}/v1/models/flowers:predict", data=body)
        with urllib.request.urlopen(req, timeout=300) as r:
            pred = json.loads(r.read())["predictions"][0]
        assert pred["key"] == "1"
        assert pred["label"] in ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
        assert len(pred["scores"]) == 5 and abs(sum(pred["scores"]) - 1) < 1e-4
    finally:
        transformer.stop()
        predictor.stop()


def test_a_parked_onnx_model_drops_its_session_and_answers_the_same_after(tmp_path):
    """The ONNX engine's idle tier: parking drops the ONNX Runtime session (the engine's device
    count goes to 0), a request meanwhile rebuilds it from the bytes kept in memory, and so does
    resume; the answers equal onnxruntime's throughout."""
    model, config = small_graph("batchnorm")
    write_model(tmp_path / "m", model, config)
    token = "parking-test-token"
    server = Siesta("--storage-uri", str(tmp_path / "m"), "--model-name", "m", env={"SIESTA_CONTROL_TOKEN": token})

    def control(method, path):
        req = urllib.request.Request(f"http://{server.http}{path}", method=method,
                                     headers={"x-siesta-control-token": token})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())

    try:
        server.wait_ready()
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        x = RNG.normal(size=(2, 9, 11, 4)).astype(np.float32)
        want = sess.run(None, {"x": x})[0]
        hot = control("GET", "/siesta/replica")
        assert hot["tier"] == "hot" and hot["device_memory_bytes"] > 0, hot
        parked = control("POST", "/siesta/replica/park")
        assert parked["tier"] == "parked" and parked["device_memory_bytes"] == 0, parked
        assert_close(infer_binary(server, "m", "x", x, "y"), want)  # rebuilt on demand
        control("POST", "/siesta/replica/park")
        resumed = control("POST", "/siesta/replica/resume")
        assert resumed["tier"] == "hot" and resumed["device_memory_bytes"] == hot["device_memory_bytes"], resumed
        assert_close(infer_binary(server, "m", "x", x, "y"), want)
    finally:
        server.stop()
