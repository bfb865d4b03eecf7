#!/usr/bin/env python3
"""Writes a V2 (default) or V1 JSON request for the shipped MNIST model from held-out digit N of
models/data/digits.csv.gz, upscaled exactly as siesta_models::mnist::digit_to_mnist does; with
--image-bytes, the KServe walkthrough's input.json shape for the flowers stand-in
(models/flowers-standin): {"instances": [{"image_bytes": {"b64": PNG}, "key": "1"}]}.
Standard library only.  Usage: mnist_body.py [--v1 | --image-bytes] [N] > body.json"""
import base64
import gzip
import json
import math
import pathlib
import struct
import sys
import zlib

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


def png_grey(pixels, width, height):
    """An 8-bit greyscale PNG of `pixels` (values in [0, 1], rounded to 0..255)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\0" + bytes(round(v * 255) for v in pixels[r * width:(r + 1) * width])
                    for r in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    px, label = held_out(int(args[0]) if args else 0)
    img = upscale(px)
    if "--image-bytes" in sys.argv:
        b64 = base64.b64encode(png_grey(img, 28, 28)).decode()
        body = {"instances": [{"image_bytes": {"b64": b64}, "key": "1"}]}
    elif "--v1" in sys.argv:
        body = {"instances": [[[img[r * 28:(r + 1) * 28] for r in range(28)]]]}
    else:
        body = {"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": img}]}
    print(f"label {label}", file=sys.stderr)
    json.dump(body, sys.stdout)


if __name__ == "__main__":
    main()
