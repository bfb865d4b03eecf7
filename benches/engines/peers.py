"""PyTorch eager and onnxruntime on the same model directory and the same input batch as
`bench-engine` (the same SplitMix64 stream), for benches/engines_vs_pytorch.sh. Prints one JSON
line per peer.

    python benches/engines/peers.py DIR ARCH BATCH ITERS WARMUP THREADS"""
import json
import sys
import time

import numpy as np
import onnxruntime as ort
import torch
import torchvision
from safetensors.torch import load_file

SIDES = {"inception_v3": 299}


def same_batch_as_bench_engine(n):
    """bench-engine's input: SplitMix64 from seed 0x5EED, four uniforms summed per value."""
    golden = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = np.uint64(0x5EED) + np.arange(1, 4 * n + 1, dtype=np.uint64) * golden
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24)
    return ((u.reshape(n, 4).sum(axis=1, dtype=np.float32) - 2.0) * 1.732).astype(np.float32)


def timed(run, x, iters, warmup):
    for _ in range(warmup):
        run(x)
    ms, out = [], None
    for _ in range(iters):
        t = time.perf_counter()
        out = run(x)
        ms.append((time.perf_counter() - t) * 1e3)
    ms.sort()
    return ms, float(np.asarray(out, dtype=np.float64).sum())


def main():
    dir, arch, batch, iters, warmup, threads = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
    side = SIDES.get(arch, 224)
    shape = (batch, 3, side, side)
    x = same_batch_as_bench_engine(int(np.prod(shape))).reshape(shape)

    torch.set_num_threads(threads)
    state = load_file(f"{dir}/model.safetensors")
    classes = next(state[k].shape[0] for k in ("fc.bias", "heads.head.bias") if k in state)
    kwargs = {"aux_logits": False, "init_weights": False} if arch == "inception_v3" else {}
    net = getattr(torchvision.models, arch)(weights=None, num_classes=classes, **kwargs).eval()
    net.load_state_dict({k: v for k, v in state.items() if not k.startswith("AuxLogits.")})
    xt = torch.from_numpy(x)
    with torch.inference_mode():
        ms, checksum = timed(lambda t: net(t).numpy(), xt, iters, warmup)
    print(json.dumps({"engine": "pytorch", "batch": batch, "median_ms": ms[len(ms) // 2], "min_ms": ms[0],
                      "checksum": checksum}))

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(f"{dir}/model.onnx", opts, providers=["CPUExecutionProvider"])
    ms, checksum = timed(lambda a: sess.run(None, {"input": a})[0], x, iters, warmup)
    print(json.dumps({"engine": "onnxruntime", "batch": batch, "median_ms": ms[len(ms) // 2], "min_ms": ms[0],
                      "checksum": checksum}))


if __name__ == "__main__":
    main()
