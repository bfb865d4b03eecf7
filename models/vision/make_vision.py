"""Writes torchvision classifiers with RANDOM, seeded weights for the candle engine's oracle tests
and the speed benchmark: the real architectures, sizes and cost, not their accuracy (trained
weights would have to be downloaded, and nothing here can be). Batch-norm statistics and affine
parameters are randomised too, so the folded batch norm is really exercised.

    python models/vision/make_vision.py --arch resnet50 --out DIR [--classes 1000] [--seed 0]
        [--format safetensors|pth] [--bare] [--labels a,b,c] [--torchscript] [--onnx]

Writes DIR/model.safetensors (or model.pth, a `torch.save(state_dict)`), and unless --bare a
config.json naming only the architecture and the weights (Siesta fills in the rest); --labels
writes TorchServe's index_to_name.json; --torchscript also writes model.pt (traced) and
--onnx model.onnx (torch.onnx.export), for the benchmark's other engines. vit_b_16 (for the
benchmark) is served from its ONNX export: its config.json names that.

Needs torch and torchvision (and safetensors; onnx for --onnx)."""
import argparse
import json
import pathlib

import torch
import torchvision

SIDES = {"inception_v3": 299}
# What the candle engine builds from a state dict; others (vit_b_16, for the benchmark) get a
# config.json for their ONNX export.
CANDLE = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "mobilenet_v2", "inception_v3"]


def side(arch):
    return SIDES.get(arch, 224)


def build(arch, classes, seed):
    torch.manual_seed(seed)
    kwargs = {"weights": None, "num_classes": classes}
    if arch == "inception_v3":
        kwargs["init_weights"] = True  # keeps AuxLogits in the state dict: Siesta must skip it
    net = getattr(torchvision.models, arch)(**kwargs).eval()
    with torch.no_grad():
        for m in net.modules():
            if arch == "inception_v3" and isinstance(m, torch.nn.Conv2d):
                # torchvision's Inception init (truncated normal, std 0.1) makes random logits
                # of ~1e15; He init keeps them near 1 like the other architectures'.
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        for p in net.parameters():
            if p.abs().max() == 0:  # zero-initialised layers (ViT's head) would hide the rest
                p.normal_(0.0, 0.05)
    return net


def write(net, arch, out, fmt="safetensors", bare=False, labels=None, torchscript=False, onnx=False):
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    if fmt == "pth":
        weights = "model.pth"
        torch.save(state, out / weights)
    else:
        from safetensors.torch import save_file

        weights = "model.safetensors"
        save_file(state, str(out / weights))
    if not bare and arch in CANDLE:
        (out / "config.json").write_text(json.dumps({"name": out.name, "architecture": arch, "weights": weights}))
    elif not bare:
        # An architecture Siesta does not build from a state dict: its ONNX export is the model.
        classes = net.heads.head.bias.shape[0]
        (out / "config.json").write_text(json.dumps({
            "name": out.name, "architecture": "onnx", "weights": "model.onnx", "max_batch_size": 8,
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [3, side(arch), side(arch)]}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [classes]}]}))
    if labels:
        (out / "index_to_name.json").write_text(json.dumps({str(i): l for i, l in enumerate(labels)}))
    example = torch.zeros(1, 3, side(arch), side(arch))
    if torchscript:
        with torch.no_grad():
            torch.jit.save(torch.jit.trace(net, example), str(out / "model.pt"))
    if onnx:
        torch.onnx.export(net, example, str(out / "model.onnx"), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                          dynamo=False)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", required=True, choices=CANDLE + ["vit_b_16"])
    p.add_argument("--out", required=True)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=["safetensors", "pth"], default="safetensors")
    p.add_argument("--bare", action="store_true")
    p.add_argument("--labels")
    p.add_argument("--torchscript", action="store_true")
    p.add_argument("--onnx", action="store_true")
    a = p.parse_args()
    net = build(a.arch, a.classes, a.seed)
    labels = a.labels.split(",") if a.labels else None
    write(net, a.arch, a.out, a.format, a.bare, labels, a.torchscript, a.onnx)


if __name__ == "__main__":
    main()
