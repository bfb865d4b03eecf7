"""Writes the `flowers` stand-in: an ONNX graph with Inception v3's shape (Keras InceptionV3 as
tf2onnx exports it: NHWC input, a layout Transpose, Conv + BatchNormalization + Relu units,
'same' AveragePool with count_include_pad=0, GlobalAveragePool, Gemm, Softmax) over the five
labels of KServe's flowers sample, 299x299 RGB in [-1, 1].

The weights are RANDOM (seeded): it has the real model's graph, sizes and cost, not its
accuracy. The real flowers model is a TensorFlow SavedModel on gs://, which nothing here can
reach. About 24M parameters (~95 MB), so it is generated at test/benchmark time, not committed.

    python models/flowers/make_flowers.py --out DIR [--seed 0]

Needs numpy and onnx."""
import argparse
import json
import pathlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

LABELS = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]


class Graph:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, kind):
        self.n += 1
        return f"{kind}_{self.n}"

    def const(self, kind, arr):
        n = self.name(kind)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), n))
        return n

    def node(self, op, inputs, **attrs):
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def conv_bn(self, x, cin, cout, kh, kw, stride=1, same=False):
        """Keras Conv2D(use_bias=False) + BatchNormalization(scale=False) + ReLU."""
        w = self.rng.normal(0.0, np.sqrt(2.0 / (cin * kh * kw)), (cout, cin, kh, kw)).astype(np.float32)
        pads = [kh // 2, kw // 2, kh // 2, kw // 2] if same else [0, 0, 0, 0]
        y = self.node("Conv", [x, self.const("w", w)], kernel_shape=[kh, kw], strides=[stride, stride], pads=pads)
        gamma = np.ones(cout, np.float32)
        beta = self.rng.normal(0.0, 0.05, cout).astype(np.float32)
        mean = self.rng.normal(0.0, 0.05, cout).astype(np.float32)
        var = self.rng.uniform(0.8, 1.2, cout).astype(np.float32)
        y = self.node("BatchNormalization", [y] + [self.const(k, v) for k, v in
                      (("gamma", gamma), ("beta", beta), ("mean", mean), ("var", var))], epsilon=1e-3)
        return self.node("Relu", [y])

    def max_pool(self, x):
        return self.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2])

    def avg_pool_same(self, x):
        return self.node("AveragePool", [x], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1],
                         count_include_pad=0)

    def concat(self, xs):
        return self.node("Concat", xs, axis=1)


def inception_a(g, x, cin, pool):
    b1 = g.conv_bn(x, cin, 64, 1, 1)
    b5 = g.conv_bn(g.conv_bn(x, cin, 48, 1, 1), 48, 64, 5, 5, same=True)
    b3 = g.conv_bn(g.conv_bn(g.conv_bn(x, cin, 64, 1, 1), 64, 96, 3, 3, same=True), 96, 96, 3, 3, same=True)
    bp = g.conv_bn(g.avg_pool_same(x), cin, pool, 1, 1)
    return g.concat([b1, b5, b3, bp]), 224 + pool


def inception_b(g, x, cin):
    b3 = g.conv_bn(x, cin, 384, 3, 3, stride=2)
    bd = g.conv_bn(g.conv_bn(g.conv_bn(x, cin, 64, 1, 1), 64, 96, 3, 3, same=True), 96, 96, 3, 3, stride=2)
    return g.concat([b3, bd, g.max_pool(x)]), 384 + 96 + cin


def inception_c(g, x, cin, c7):
    b1 = g.conv_bn(x, cin, 192, 1, 1)
    b7 = g.conv_bn(g.conv_bn(g.conv_bn(x, cin, c7, 1, 1), c7, c7, 1, 7, same=True), c7, 192, 7, 1, same=True)
    bd = g.conv_bn(x, cin, c7, 1, 1)
    for cout, (kh, kw) in ((c7, (7, 1)), (c7, (1, 7)), (c7, (7, 1)), (192, (1, 7))):
        bd = g.conv_bn(bd, c7, cout, kh, kw, same=True)
    bp = g.conv_bn(g.avg_pool_same(x), cin, 192, 1, 1)
    return g.concat([b1, b7, bd, bp]), 768


def inception_d(g, x, cin):
    b3 = g.conv_bn(g.conv_bn(x, cin, 192, 1, 1), 192, 320, 3, 3, stride=2)
    b7 = g.conv_bn(x, cin, 192, 1, 1)
    b7 = g.conv_bn(g.conv_bn(b7, 192, 192, 1, 7, same=True), 192, 192, 7, 1, same=True)
    b7 = g.conv_bn(b7, 192, 192, 3, 3, stride=2)
    return g.concat([b3, b7, g.max_pool(x)]), 320 + 192 + cin


def inception_e(g, x, cin):
    b1 = g.conv_bn(x, cin, 320, 1, 1)
    b3 = g.conv_bn(x, cin, 384, 1, 1)
    b3 = g.concat([g.conv_bn(b3, 384, 384, 1, 3, same=True), g.conv_bn(b3, 384, 384, 3, 1, same=True)])
    bd = g.conv_bn(g.conv_bn(x, cin, 448, 1, 1), 448, 384, 3, 3, same=True)
    bd = g.concat([g.conv_bn(bd, 384, 384, 1, 3, same=True), g.conv_bn(bd, 384, 384, 3, 1, same=True)])
    bp = g.conv_bn(g.avg_pool_same(x), cin, 192, 1, 1)
    return g.concat([b1, b3, bd, bp]), 2048


def build(seed):
    g = Graph(seed)
    x = g.node("Transpose", ["input_1"], perm=[0, 3, 1, 2])  # NHWC -> NCHW, as tf2onnx writes it
    x = g.conv_bn(x, 3, 32, 3, 3, stride=2)
    x = g.conv_bn(x, 32, 32, 3, 3)
    x = g.max_pool(g.conv_bn(x, 32, 64, 3, 3, same=True))
    x = g.max_pool(g.conv_bn(g.conv_bn(x, 64, 80, 1, 1), 80, 192, 3, 3))
    c = 192
    for pool in (32, 64, 64):
        x, c = inception_a(g, x, c, pool)
    x, c = inception_b(g, x, c)
    for c7 in (128, 160, 160, 192):
        x, c = inception_c(g, x, c, c7)
    x, c = inception_d(g, x, c)
    for _ in range(2):
        x, c = inception_e(g, x, c)
    x = g.node("Flatten", [g.node("GlobalAveragePool", [x])])
    w = g.rng.normal(0.0, np.sqrt(1.0 / c), (c, len(LABELS))).astype(np.float32)
    b = np.zeros(len(LABELS), np.float32)
    logits = g.node("Gemm", [x, g.const("fc_w", w), g.const("fc_b", b)])
    g.nodes.append(helper.make_node("Softmax", [logits], ["scores"], axis=1, name="scores"))
    graph = helper.make_graph(
        g.nodes, "flowers",
        [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, ["N", 299, 299, 3])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", len(LABELS)])],
        g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="siesta-make-flowers")
    model.ir_version = 9  # what onnxruntime and tf2onnx's exports use; onnx 1.23 would write 14
    return model


def config():
    return {
        "name": "flowers",
        "architecture": "onnx",
        "weights": "model.onnx",
        "max_batch_size": 8,
        "inputs": [{"name": "input_1", "datatype": "FP32", "shape": [299, 299, 3]}],
        "outputs": [{"name": "scores", "datatype": "FP32", "shape": [len(LABELS)]}],
        "labels": LABELS,
        "image": {"resize_shorter": 342, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                  "scores_output": "scores", "scores": "probabilities"},
        "info": {"stand_in": "Inception-v3-shaped graph with random weights (models/flowers/make_flowers.py)"},
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model = build(a.seed)
    onnx.checker.check_model(model)
    # Written under a temporary name and renamed: never a half-written model.
    tmp = out / ".model.onnx.tmp"
    onnx.save(model, tmp)
    tmp.rename(out / "model.onnx")
    (out / "config.json").write_text(json.dumps(config(), indent=2) + "\n")
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    print(f"wrote {out}/model.onnx: {len(model.graph.node)} nodes, {params / 1e6:.1f}M parameters")


if __name__ == "__main__":
    main()
