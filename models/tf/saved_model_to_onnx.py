"""Converts a TensorFlow SavedModel's `serving_default` signature to ONNX for Siesta, once: run by
`siesta serve` with the Python in SIESTA_PYTHON (tensorflow + tf2onnx), its result kept beside
the SavedModel. Embedded in the siesta binary (models/src/onnx/saved_model.rs).

    python saved_model_to_onnx.py SAVED_MODEL_DIR OUT_ONNX

A signature of tensors converts as it is (tf2onnx), under the signature's names. A signature
that takes encoded pictures as strings (TF Serving's `image_bytes`, decoded inside the graph
with DecodeJpeg/DecodePng/DecodeImage, which ONNX has no operator for) is cut where the decoded,
resized and scaled batch enters the network: ONNX gets the network, and the ONNX file's metadata
(`siesta.config`, so that one file is the whole result) tells Siesta how to make that batch
(decode, bilinear resize with half-pixel centres, per-channel affine scale), which Siesta's
kernels do. Before anything is written the cut is checked against
TensorFlow itself on pictures made here: the batch Siesta would compute must equal TensorFlow's,
the signature's integer output must be the argmax of its scores, and its string output the key
it was sent; otherwise the conversion fails, saying which."""
import json
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2  # noqa: E402

DECODERS = {"DecodeJpeg", "DecodePng", "DecodeImage", "DecodeBmp", "DecodeAndCropJpeg"}
# Ops between the decoded pictures and the network that only move or rescale them.
PASSING = {"Cast", "ExpandDims", "Squeeze", "Mul", "RealDiv", "Div", "Sub", "AddV2", "Add", "Identity",
           "Reshape", "ResizeBilinear", "TensorListStack", "Maximum", "Minimum"}
OPSET = 17
CONFIG_KEY = "siesta.config"


class Refused(Exception):
    pass


def plain(src, out_onnx):
    run = subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--saved-model", src, "--output", out_onnx,
                          "--opset", str(OPSET)], capture_output=True, text=True)
    if run.returncode != 0:
        raise Refused("tf2onnx: " + " | ".join(run.stderr.strip().splitlines()[-5:]))


def node_input_name(name):
    return name.split(":")[0].lstrip("^")


def find_decoder(gd):
    """(decoder node, whether it sits inside a function, e.g. map_fn's loop body)."""
    for n in gd.node:
        if n.op in DECODERS:
            return n, False
    for f in gd.library.function:
        for n in f.node_def:
            if n.op in DECODERS:
                return n, True
    return None, False


def find_resize(gd):
    for n in list(gd.node) + [n for f in gd.library.function for n in f.node_def]:
        if n.op == "ResizeBilinear":
            return n
        if n.op in ("ResizeNearestNeighbor", "ResizeBicubic", "ResizeArea", "ScaleAndTranslate"):
            raise Refused(f"the pictures are resized with {n.op}; Siesta does bilinear resizing "
                          "(tf.image.resize's default, antialias off)")
    return None


def find_cut(gd, decoder, in_function):
    """The main-graph node whose output is the batch the network takes."""
    consumers = {}
    for n in gd.node:
        for i in n.input:
            consumers.setdefault(node_input_name(i), []).append(n)
    by_name = {n.name: n for n in gd.node}
    if in_function:
        stacks = [n for n in gd.node if n.op == "TensorListStack"]
        if len(stacks) != 1:
            raise Refused(f"the pictures are decoded in a loop whose result is not one stacked batch "
                          f"({len(stacks)} TensorListStack nodes)")
        node = stacks[0]
    else:
        node = by_name[decoder.name]
    while True:
        after = consumers.get(node.name, [])
        if len(after) != 1 or after[0].op not in PASSING:
            return node
        node = after[0]


def png(pixels):
    return tf.io.encode_png(tf.constant(pixels)).numpy()


def bilinear(pixels, h, w):
    """tf.image.resize(method='bilinear', antialias=False): half-pixel centres, edges clamped."""
    src_h, src_w = pixels.shape[:2]

    def taps(n_out, n_in):
        x = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        lo = np.floor(x)
        frac = x - lo
        lo = np.clip(lo, 0, n_in - 1).astype(int)
        hi = np.clip(np.floor(x) + 1, 0, n_in - 1).astype(int)
        return lo, hi, frac.astype(np.float32)

    y0, y1, fy = taps(h, src_h)
    x0, x1, fx = taps(w, src_w)
    p = pixels.astype(np.float32)
    top = p[y0][:, x0] * (1 - fx)[None, :, None] + p[y0][:, x1] * fx[None, :, None]
    bottom = p[y1][:, x0] * (1 - fx)[None, :, None] + p[y1][:, x1] * fx[None, :, None]
    return top * (1 - fy)[:, None, None] + bottom * fy[:, None, None]


def convert_images(src, sig, image_input, out_onnx):
    import onnx
    import tf2onnx

    frozen = convert_variables_to_constants_v2(sig, lower_control_flow=False)
    gd = frozen.graph.as_graph_def()
    decoder, in_function = find_decoder(gd)
    resize = find_resize(gd)
    if resize is None:
        raise Refused("the pictures are decoded but not resized in the graph; Siesta needs a fixed size")
    if resize.attr["align_corners"].b or not resize.attr["half_pixel_centers"].b:
        raise Refused("ResizeBilinear with align_corners or without half-pixel centres (TF1's legacy "
                      "resize); Siesta resizes as tf.image.resize does")
    cut = find_cut(gd, decoder, in_function)
    channels = decoder.attr["channels"].i or 3
    if channels not in (1, 3):
        raise Refused(f"pictures decoded to {channels} channels; Siesta decodes to 1 or 3")

    placeholders = {t.name.split(":")[0]: t for t in frozen.inputs}
    names = list(sig.structured_input_signature[1])
    # A signature's outputs are flattened in key order.
    outputs = {k: t.name for k, t in zip(sorted(sig.structured_outputs), frozen.outputs)}
    specs = sig.structured_outputs
    scores = [k for k, s in specs.items() if s.dtype.is_floating and len(s.shape) == 2]
    predictions = [k for k, s in specs.items() if s.dtype.is_integer and len(s.shape) == 1]
    keys_out = [k for k, s in specs.items() if s.dtype == tf.string]
    key_in = [n for n in names if n != image_input and sig.structured_input_signature[1][n].dtype == tf.string]
    if len(scores) != 1 or len(predictions) > 1 or len(keys_out) > 1 or len(key_in) > 1:
        raise Refused(f"outputs {sorted(specs)}: Siesta serves one float [batch, classes] output, at most one "
                      "integer prediction and at most one string key")
    others = [n for n in names if n not in (image_input, *key_in)]
    if others:
        raise Refused(f"inputs {others} besides the pictures and a key")

    def placeholder(n):
        return placeholders[n].name if n in placeholders else f"{n}:0"

    # The frozen graph, run from the pictures (and key) to the cut and the signature's outputs.
    wrapped = tf.compat.v1.wrap_function(lambda: tf.graph_util.import_graph_def(gd, name=""), [])
    feeds = [placeholder(image_input)] + [placeholder(k) for k in key_in]
    fetches = [f"{cut.name}:0", outputs[scores[0]]] + [outputs[k] for k in predictions + keys_out]
    pruned = wrapped.prune([wrapped.graph.get_tensor_by_name(t) for t in feeds],
                           [wrapped.graph.get_tensor_by_name(t) for t in fetches])

    def run(pictures, key=b"k"):
        args = [tf.constant(pictures)] + ([tf.constant([key] * len(pictures))] if key_in else [])
        return [t.numpy() for t in pruned(*args)]

    # The per-channel affine scale, from flat pictures at 0 and 255 (a flat picture resizes to
    # itself), then a random picture of another size checks resize + scale against TensorFlow.
    batch, _, *_ = run([png(np.zeros((8, 8, channels), np.uint8)), png(np.full((8, 8, channels), 255, np.uint8))])
    if batch.ndim != 4:
        raise Refused(f"the decoded batch has shape {batch.shape}, not [N, H, W, C]")
    _, height, width, c = batch.shape
    if c != channels:
        raise Refused(f"the decoded batch has {c} channels, the decoder gives {channels}")
    offset = batch[0].reshape(-1, c).mean(axis=0)
    scale = (batch[1].reshape(-1, c).mean(axis=0) - offset) / 255.0
    if np.any(scale == 0):
        raise Refused("the pictures are not scaled by a per-channel affine map after resizing")
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, size=(height + 37, width + 11, channels), dtype=np.uint8)
    got, probs, *rest = run([png(picture)], key=b"check-key")
    want = bilinear(picture, height, width) * scale + offset
    err = np.max(np.abs(got[0] - want)) / max(np.max(np.abs(want)), 1e-6)
    if err > 1e-4:  # float rounding of the interpolation (~1e-5); a wrong rule is off by > 1e-2
        raise Refused(f"the graph's decode + resize + scale differs from Siesta's by {err:.2g} (relative)")
    if predictions and not np.array_equal(rest[0], np.argmax(probs, axis=1)):
        raise Refused(f"'{predictions[0]}' is not the argmax of '{scores[0]}'")
    if keys_out and not (key_in and list(rest[-1]) == [b"check-key"]):
        raise Refused(f"'{keys_out[0]}' is not the key sent in")

    # The network alone: the cut becomes the graph's input.
    cut_gd = tf.compat.v1.GraphDef()
    cut_gd.CopyFrom(gd)
    for n in cut_gd.node:
        if n.name == cut.name:
            n.op = "Placeholder"
            del n.input[:]
            dtype = n.attr["T"].type if "T" in n.attr else n.attr["element_dtype"].type
            n.attr.clear()
            n.attr["dtype"].type = dtype or tf.float32.as_datatype_enum
            n.attr["shape"].shape.CopyFrom(tf.TensorShape([None, height, width, channels]).as_proto())
    score_node = outputs[scores[0]].split(":")[0]
    cut_gd = tf.compat.v1.graph_util.extract_sub_graph(cut_gd, [score_node])
    model, _ = tf2onnx.convert.from_graph_def(cut_gd, input_names=[f"{cut.name}:0"],
                                              output_names=[outputs[scores[0]]], opset=OPSET)
    rename = {f"{cut.name}:0": "images", outputs[scores[0]]: scores[0]}
    for n in model.graph.node:
        n.input[:] = [rename.get(i, i) for i in n.input]
        n.output[:] = [rename.get(o, o) for o in n.output]
    for v in list(model.graph.input) + list(model.graph.output):
        v.name = rename.get(v.name, v.name)
    std = 1.0 / (255.0 * scale)
    classes = int(probs.shape[1])
    config = {
        "name": os.path.basename(os.path.normpath(src)),
        "architecture": "onnx",
        "weights": "model.onnx",  # Siesta renames the result to this
        "max_batch_size": 8,
        "inputs": [{"name": "images", "datatype": "FP32", "shape": [height, width, channels]}],
        "outputs": [{"name": scores[0], "datatype": "FP32", "shape": [classes]}],
        # resize_shorter 0: straight to the network's size, as tf.image.resize([h, w]).
        "image": {"resize_shorter": 0, "mean": [float(v) for v in -offset * std], "std": [float(v) for v in std],
                  "scores_output": scores[0], "scores": "probabilities"},
        "encoded_images": {"input": image_input, "scores": scores[0],
                           "prediction": predictions[0] if predictions else "prediction",
                           **({"key": key_in[0]} if key_in and keys_out else {})},
        "info": {"converted_from": "TensorFlow SavedModel serving_default (encoded pictures, decoded by Siesta)"},
    }
    onnx.helper.set_model_props(model, {CONFIG_KEY: json.dumps(config)})
    onnx.save(model, out_onnx)


def main():
    src, out_onnx = sys.argv[1:3]
    loaded = tf.saved_model.load(src)  # kept: the signature refers to its variables
    sig = loaded.signatures["serving_default"]
    strings = [n for n, s in sig.structured_input_signature[1].items() if s.dtype == tf.string]
    gd = sig.graph.as_graph_def()
    decoder, _ = find_decoder(gd)
    try:
        if decoder is None:
            plain(src, out_onnx)
            return
        images = [n for n in strings if n in ("image_bytes", "images", "image", "bytes_inputs", "input_bytes")] \
            or strings[:1]
        convert_images(src, sig, images[0], out_onnx)
    except Refused as e:
        print(f"cannot convert {src}: {e}", file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    main()
