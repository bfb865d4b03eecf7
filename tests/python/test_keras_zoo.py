"""Keras applications saved as TensorFlow SavedModels, served by the real `siesta serve` as TF
Serving serves them, and compared with TensorFlow on fresh random inputs (largest difference /
largest reference value <= 1e-4, f32). Runs in the TensorFlow venv (tensorflow-cpu + tf2onnx,
made by scripts/test.sh); Siesta converts each SavedModel once, with that venv's tf2onnx
(SIESTA_PYTHON), and serves the result with its ONNX engine.

Weights are random and seeded, with randomised batch-norm statistics; outputs are logits
(`classifier_activation=None`), which show every layer where softmax would flatten them. Inputs
are small (each application's minimum or near it) to keep CI's wall time modest."""
import json
import os
import subprocess
import sys
import urllib.request

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from conftest import SIESTA_BIN, Siesta, assert_close  # noqa: E402

RNG = np.random.default_rng()  # fresh inputs every run
CLASSES = 5

# keras.applications builder, input side
ZOO = [
    ("MobileNetV2", 64),
    ("MobileNetV3Small", 64),
    ("ResNet50", 64),
    ("EfficientNetB0", 64),
    ("DenseNet121", 64),
    ("InceptionV3", 75),
    ("Xception", 71),
]


def build(name, side, seed):
    keras.utils.set_random_seed(seed)
    model = getattr(keras.applications, name)(input_shape=(side, side, 3), weights=None, classes=CLASSES,
                                             classifier_activation=None)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape).astype(np.float32),
                               rng.uniform(-0.2, 0.2, beta.shape).astype(np.float32),
                               rng.uniform(-0.2, 0.2, mean.shape).astype(np.float32),
                               rng.uniform(0.5, 1.5, var.shape).astype(np.float32)])
    return model


def signature(dir):
    sig = tf.saved_model.load(str(dir)).signatures["serving_default"]
    (name, spec), = sig.structured_input_signature[1].items()
    (out, _), = sig.structured_outputs.items()
    return sig, name, out


def v1_predict(server, model, body):
    req = urllib.request.Request(f"http://{server.http}/v1/models/{model}:predict", data=json.dumps(body).encode())
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read())


@pytest.mark.parametrize("name,side", ZOO, ids=[z[0] for z in ZOO])
def test_keras_saved_model_matches_tensorflow(tmp_path, name, side):
    dir = tmp_path / name.lower()
    build(name, side, seed=len(name)).export(str(dir), verbose=False)
    assert not (dir / "model.onnx").exists()
    sig, input_name, output_name = signature(dir)
    env = {"SIESTA_PYTHON": sys.executable}

    server = Siesta("--storage-uri", str(dir), "--model-name", name, env=env)
    try:
        server.wait_ready()
        # The signature's own names and types, as TF Serving's metadata shows them.
        with urllib.request.urlopen(f"http://{server.http}/v2/models/{name}", timeout=30) as r:
            meta = json.loads(r.read())
        assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == \
            [(input_name, "FP32", [-1, side, side, 3])]
        assert [(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]] == \
            [(output_name, "FP32", [-1, CLASSES])]
        x = RNG.normal(size=(2, side, side, 3)).astype(np.float32)
        want = sig(**{input_name: tf.constant(x)})[output_name].numpy()
        # TF Serving's row format (`instances`) and column format (`inputs`, named); the answer
        # is KServe V1's `predictions` either way.
        rows = v1_predict(server, name, {"instances": x.tolist()})["predictions"]
        assert_close(np.array(rows, dtype=np.float32), want)
        cols = v1_predict(server, name, {"inputs": {input_name: x.tolist()}})["predictions"]
        assert_close(np.array(cols, dtype=np.float32), want)
    finally:
        server.stop()
    # Converted once: the ONNX file sits beside the SavedModel, and the next start takes it
    # without Python at all.
    converted = (dir / "model.onnx").stat().st_mtime_ns
    again = Siesta("--storage-uri", str(dir), "--model-name", name, env={"SIESTA_PYTHON": "/bin/false"})
    try:
        again.wait_ready()
    finally:
        again.stop()
    assert (dir / "model.onnx").stat().st_mtime_ns == converted
    assert not list(dir.glob(".model.onnx.*"))
