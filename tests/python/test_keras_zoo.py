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
import urllib.error
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
            for w in layer.weights:  # gamma is absent where scale=False (InceptionV3)
                low, high = (0.5, 1.5) if w.name in ("gamma", "moving_variance") else (-0.2, 0.2)
                w.assign(rng.uniform(low, high, w.shape).astype(np.float32))
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


def image_signature_model(dir, side, resize="bilinear"):
    """The walkthrough's flowers model in miniature: a Keras InceptionV3 (5 classes, seeded
    weights, softmax scores) behind TF Serving's encoded-image signature, decoding, resizing and
    scaling inside the graph as the flowers SavedModel does."""
    net = build("InceptionV3", side, seed=5)
    probs = keras.layers.Softmax()(net.output)
    model = keras.Model(net.input, probs)

    class Serving(tf.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes"),
                                      tf.TensorSpec([None], tf.string, name="key")])
        def serve(self, image_bytes, key):
            def decode(b):
                img = tf.io.decode_image(b, channels=3, expand_animations=False)
                img = tf.cast(tf.image.resize(img, [side, side], method=resize), tf.float32)
                return img / 127.5 - 1.0

            images = tf.map_fn(decode, image_bytes, fn_output_signature=tf.float32)
            scores = self.model(images)
            return {"prediction": tf.argmax(scores, axis=1), "scores": scores, "key": key}

    serving = Serving(model)
    tf.saved_model.save(serving, str(dir), signatures={"serving_default": serving.serve})
    return tf.saved_model.load(str(dir)).signatures["serving_default"]


def blocky_picture(height, width, fmt):
    """Random flat blocks: what a JPEG keeps, unlike pixel noise."""
    from PIL import Image
    import io

    small = RNG.integers(0, 256, size=(6, 7, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((width, height), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def test_the_walkthrough_request_answers_as_tensorflow_does(tmp_path):
    import base64

    side = 96
    sig = image_signature_model(tmp_path / "flowers", side)
    server = Siesta("--storage-uri", str(tmp_path / "flowers"), "--model-name", "flowers",
                    env={"SIESTA_PYTHON": sys.executable})
    try:
        server.wait_ready(timeout=300)
        with urllib.request.urlopen(f"http://{server.http}/v2/models/flowers", timeout=30) as r:
            meta = json.loads(r.read())
        assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [("image_bytes", "BYTES"), ("key", "BYTES")]
        assert [(o["name"], o["datatype"]) for o in meta["outputs"]] == \
            [("prediction", "INT64"), ("scores", "FP32"), ("key", "BYTES")]
        pictures = [("PNG", blocky_picture(140, 120, "PNG")), ("PNG", blocky_picture(60, 80, "PNG")),
                    ("JPEG", blocky_picture(130, 170, "JPEG"))]
        body = {"instances": [{"image_bytes": {"b64": base64.b64encode(p).decode()}, "key": str(i)}
                              for i, (_, p) in enumerate(pictures)]}
        got = v1_predict(server, "flowers", body)["predictions"]
        want = sig(image_bytes=tf.constant([p for _, p in pictures]),
                   key=tf.constant([str(i).encode() for i in range(len(pictures))]))
        for i, (fmt, _) in enumerate(pictures):
            scores = np.array(got[i]["scores"], dtype=np.float32)
            assert got[i]["key"] == str(i)
            assert got[i]["prediction"] == int(np.argmax(scores))
            if fmt == "PNG":
                assert_close(scores, want["scores"].numpy()[i])
                assert got[i]["prediction"] == int(want["prediction"].numpy()[i])
            else:
                # TensorFlow's libjpeg and Siesta's decoder round the inverse DCT differently.
                assert got[i]["prediction"] == int(want["prediction"].numpy()[i])
                assert np.max(np.abs(scores - want["scores"].numpy()[i])) <= 1e-2
        # Hostile pictures: the client's error, with the instance named; the server stays up.
        for bad in (b"not a picture", blocky_picture(20, 20, "PNG")[:60]):
            req = urllib.request.Request(
                f"http://{server.http}/v1/models/flowers:predict",
                data=json.dumps({"instances": [{"image_bytes": {"b64": base64.b64encode(bad).decode()},
                                                "key": "x"}]}).encode())
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(req, timeout=30)
            assert e.value.code == 400
            assert "image_bytes 0" in json.loads(e.value.read())["error"]
    finally:
        server.stop()
    # The conversion is kept: one ONNX file, its config inside; no Python on the next start.
    assert (tmp_path / "flowers" / "model.onnx").is_file() and not (tmp_path / "flowers" / "config.json").exists()
    again = Siesta("--storage-uri", str(tmp_path / "flowers"), "--model-name", "flowers",
                   env={"SIESTA_PYTHON": "/bin/false"})
    try:
        again.wait_ready()
    finally:
        again.stop()


def test_a_signature_siesta_cannot_reproduce_is_refused_saying_why(tmp_path):
    image_signature_model(tmp_path / "nearest", 80, resize="nearest")
    run = subprocess.run([SIESTA_BIN, "serve", "--host", "127.0.0.1", "--http-port", "0", "--no-grpc",
                          "--storage-uri", str(tmp_path / "nearest")], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "SIESTA_PYTHON": sys.executable})
    assert run.returncode != 0
    assert "ResizeNearestNeighbor" in run.stderr and "bilinear" in run.stderr, run.stderr[-2000:]
    assert not (tmp_path / "nearest" / "model.onnx").exists()
    assert not list((tmp_path / "nearest").glob(".model.onnx.*"))
