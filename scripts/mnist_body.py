#!/usr/bin/env python3
"""Writes a V2 (default) or V1 JSON request for the shipped MNIST model from held-out digit N of
models/data/digits.csv.gz, upscaled exactly as siesta_models::mnist::digit_to_mnist does.
Standard library only.  Usage: mnist_body.py [--v1] [N] > body.json"""
import gzip
import json
import math
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def held_out_all():
    """Every held-out digit (every fifth row) as (64 pixel values, label)."""
    rows = gzip.decompress((ROOT / "models/data/digits.csv.gz").read_bytes()).decode().split()
    out = []
    for row in rows[4::5]:
        values = [float(v) for v in row.split(",")]
        out.append((values[:64], int(values[64])))
    return out


def held_out(n):
    return held_out_all()[n]


def upscale(px):
    img = [0.0] * 784
    scale = 8.0 / 20.0
    p = lambda y, x: px[y * 8 + x] / 16.0
    for y in range(20):
        for x in range(20):
            sy = min(max((y + 0.5) * scale - 0.5, 0.0), 7.0)
            sx = min(max((x + 0.5) * scale - 0.5, 0.0), 7.0)
            y0, x0 = int(math.floor(sy)), int(math.floor(sx))
            y1, x1 = min(y0 + 1, 7), min(x0 + 1, 7)
            fy, fx = sy - y0, sx - x0
            top = p(y0, x0) * (1 - fx) + p(y0, x1) * fx
            bottom = p(y1, x0) * (1 - fx) + p(y1, x1) * fx
            img[(y + 4) * 28 + x + 4] = top * (1 - fy) + bottom * fy
    return img


def main():
    args = [a for a in sys.argv[1:] if a != "--v1"]
    px, label = held_out(int(args[0]) if args else 0)
    img = upscale(px)
    if "--v1" in sys.argv:
        body = {"instances": [[[img[r * 28:(r + 1) * 28] for r in range(28)]]]}
    else:
        body = {"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": img}]}
    print(f"label {label}", file=sys.stderr)
    json.dump(body, sys.stdout)


if __name__ == "__main__":
    main()
