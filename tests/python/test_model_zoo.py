"""The model zoo: torchvision classifiers across families, saved the ways users save them, each
served by the real `siesta serve` and compared with PyTorch eager on fresh random inputs
(largest difference / largest reference value <= 1e-4, f32). Runs in the torch venv.

Every model is exported to ONNX (`torch.onnx.export`, opset 17, dynamic batch) into a directory
with no config.json, as a user would hand it over: Siesta's ONNX engine (ONNX Runtime) serves
it with the config read from the graph. Where Siesta builds the architecture itself (candle),
the state dict is served too; where it does not, serving the state dict is a load error that
names the family and the ONNX/TorchScript route.

Weights are random and seeded (trained ones cannot be downloaded here): the cost and the
arithmetic are the architecture's. Zero-initialised layers (ViT's head, ...) and batch-norm
statistics are randomised so that every layer shows in the output. Inputs are small (64x64;
80x80 and 96x96 where candle builds the network, which needs >= 75) to keep CI's wall time modest."""
import json
import subprocess

import numpy as np
import pytest
import torch
import torchvision

from conftest import SIESTA_BIN, Siesta, assert_close, infer_binary

RNG = np.random.default_rng()  # fresh inputs every run
# The tracer's notes on shape checks it bakes in: the export is for the one input size tested.
pytestmark = [pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]
BATCH = 2

# torchvision builder, its arguments, input side, the candle architecture serving its state
# dict (None: Siesta does not build it from a state dict; the family its error must name).
ZOO = [
    ("resnet18", {}, 80, "resnet18"),
    ("resnet34", {}, 80, "resnet34"),
    ("resnet50", {}, 80, "resnet50"),
    ("resnext50_32x4d", {}, 64, "ResNeXt"),
    ("wide_resnet50_2", {}, 64, "Wide ResNet"),
    ("mobilenet_v2", {}, 80, "mobilenet_v2"),
    ("mobilenet_v3_small", {}, 64, "MobileNetV3"),
    ("mobilenet_v3_large", {}, 64, "MobileNetV3"),
    ("efficientnet_b0", {}, 64, "EfficientNet"),
    ("efficientnet_v2_s", {}, 64, "EfficientNet"),
    ("regnet_x_400mf", {}, 64, "RegNet"),
    ("regnet_y_400mf", {}, 64, "RegNet"),
    ("densenet121", {}, 64, "DenseNet"),
    ("shufflenet_v2_x1_0", {}, 64, "ShuffleNetV2"),
    ("squeezenet1_1", {}, 64, "SqueezeNet"),
    ("convnext_tiny", {}, 64, "ConvNeXt"),
    ("vit_b_16", {"image_size": 64}, 64, "ViT"),
    ("swin_t", {}, 64, "Swin Transformer"),
    ("googlenet", {"aux_logits": False, "init_weights": True}, 64, "GoogLeNet"),
    ("mnasnet0_5", {}, 64, "MNASNet"),
    ("inception_v3", {"aux_logits": False, "init_weights": True}, 96, "inception_v3"),
]
BUILT_IN = {"resnet18", "resnet34", "resnet50", "mobilenet_v2", "inception_v3"}


def build(name, kwargs, seed):
    torch.manual_seed(seed)
    net = getattr(torchvision.models, name)(weights=None, num_classes=10, **kwargs).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
                m.running_mean.uniform_(-0.2, 0.2, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.2, 0.2, generator=g)
        for p in net.parameters():
            if p.abs().max() == 0:
                p.normal_(0.0, 0.05, generator=g)
    return net


def export_onnx(net, side, dir):
    dir.mkdir(parents=True)
    example = torch.zeros(1, 3, side, side)
    torch.onnx.export(net, example, str(dir / "model.onnx"), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)


def serve_and_compare(dir, model, net, side):
    server = Siesta("--storage-uri", str(dir), "--model-name", model)
    try:
        server.wait_ready()
        x = RNG.normal(size=(BATCH, 3, side, side)).astype(np.float32)
        with torch.no_grad():
            want = net(torch.from_numpy(x)).numpy()
        got = infer_binary(server, model, "input", x, "logits")
        assert got.shape == want.shape == (BATCH, 10)
        assert_close(got, want)
    finally:
        server.stop()


@pytest.mark.parametrize("name,kwargs,side,state_dict", ZOO, ids=[z[0] for z in ZOO])
def test_zoo_model_matches_pytorch(tmp_path, name, kwargs, side, state_dict):
    net = build(name, kwargs, seed=len(name))
    export_onnx(net, side, tmp_path / "onnx")
    serve_and_compare(tmp_path / "onnx", name, net, side)

    sd_dir = tmp_path / "state_dict"
    sd_dir.mkdir()
    torch.save(net.state_dict(), sd_dir / "model.pth")
    if name in BUILT_IN:
        # The candle engine takes torchvision's default input size unless the config says
        # another (H, W >= 75): the zoo's, to keep the debug build's convolutions quick.
        (sd_dir / "config.json").write_text(json.dumps({
            "name": name, "architecture": state_dict, "weights": "model.pth", "max_batch_size": 8,
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [3, side, side]}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [10]}]}))
        serve_and_compare(sd_dir, name, net, side)
    else:
        run = subprocess.run([SIESTA_BIN, "serve", "--host", "127.0.0.1", "--http-port", "0", "--no-grpc",
                              "--storage-uri", str(sd_dir)], capture_output=True, text=True, timeout=120)
        assert run.returncode != 0
        err = run.stderr
        assert state_dict in err and "ONNX" in err and "TorchScript" in err and "model.pth" in err, err[-2000:]
        assert "inference failed" not in err, err[-2000:]

