"""The TorchScript engine (libtorch through tch, `--features torch`) against PyTorch itself, on
fresh random inputs each run, through the real `siesta serve`. Runs in a venv with
torch==2.11.0 (scripts/test.sh makes .venv-torch) against a siesta built with the feature.

Fixtures are made here, seeded: a small CNN with BatchNorm (traced), a module returning a
tuple (scripted), and the shipped MNIST CNN as TorchScript with its real weights (the
`mnist` TorchScript predictor of scenario 5), which also goes through the image transformer."""
import base64
import io
import json
import sys
import urllib.request

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import ROOT, Siesta, assert_close, held_out_digits, infer

sys.path.insert(0, str(ROOT / "benches" / "kserve_peer"))
from net import Net  # noqa: E402  the shipped MNIST CNN in PyTorch

RNG = np.random.default_rng()  # fresh inputs every run


def save(dir, module, config):
    dir.mkdir(parents=True, exist_ok=True)
    torch.jit.save(module, str(dir / "model.pt"))
    (dir / "config.json").write_text(json.dumps(config))


class SmallCnn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = torch.nn.BatchNorm2d(8)
        self.c2 = torch.nn.Conv2d(8, 16, 3, stride=2)
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.adaptive_avg_pool2d(F.relu(self.c2(x)), 1)
        return self.fc(torch.flatten(x, 1))


class WithClass(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(6, 4)

    def forward(self, x):
        logits = self.fc(x)
        return logits, logits.argmax(dim=1)


def serving(dir, name, *extra):
    server = Siesta("--storage-uri", str(dir), "--model-name", name, *extra)
    server.wait_ready()
    return server


def test_traced_cnn_matches_pytorch(tmp_path):
    torch.manual_seed(0)
    net = SmallCnn().eval()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        net.b1.running_mean.uniform_(-0.5, 0.5)
        net.b1.running_var.uniform_(0.5, 2.0)
    module = torch.jit.trace(net, torch.zeros(1, 3, 16, 16))
    save(tmp_path / "cnn", module, {
        "name": "cnn", "architecture": "torchscript", "weights": "model.pt", "max_batch_size": 8,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 16, 16]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [10]}]})
    server = serving(tmp_path / "cnn", "cnn")
    try:
        x = RNG.normal(size=(5, 3, 16, 16)).astype(np.float32)
        with torch.no_grad():
            want = net(torch.from_numpy(x)).numpy()
        assert_close(infer(server, "cnn", "x", x, ["logits"])["logits"], want)
    finally:
        server.stop()


def test_tuple_outputs_map_to_the_configs_outputs(tmp_path):
    torch.manual_seed(1)
    net = WithClass().eval()
    save(tmp_path / "m", torch.jit.script(net), {
        "name": "m", "architecture": "torchscript", "weights": "model.pt", "max_batch_size": 8,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [6]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [4]},
                    {"name": "class", "datatype": "INT64", "shape": []}]})
    server = serving(tmp_path / "m", "m")
    try:
        x = RNG.normal(size=(7, 6)).astype(np.float32)
        with torch.no_grad():
            logits, cls = net(torch.from_numpy(x))
        got = infer(server, "m", "x", x, ["logits", "class"])
        assert_close(got["logits"], logits.numpy())
        assert got["class"].tolist() == cls.tolist()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def mnist_torchscript(tmp_path_factory):
    """The shipped MNIST CNN, real weights, as a TorchScript predictor (scenario 5)."""
    net = Net().eval()
    net.load_state_dict(load_file(str(ROOT / "models" / "mnist" / "model.safetensors")))
    dir = tmp_path_factory.mktemp("mnist-ts")
    config = json.loads((ROOT / "models" / "mnist" / "config.json").read_text())
    config.update({"architecture": "torchscript", "weights": "model.pt"})
    config["outputs"] = [o for o in config["outputs"] if o["name"] == "probabilities"]
    config["info"] = {"engine": "libtorch (TorchScript)", **config["info"]}
    save(dir, torch.jit.trace(net, torch.zeros(1, 1, 28, 28)), config)
    return dir, net


def test_mnist_torchscript_matches_pytorch_and_classifies(mnist_torchscript):
    dir, net = mnist_torchscript
    server = serving(dir, "mnist")
    try:
        x = RNG.uniform(0, 1, size=(4, 1, 28, 28)).astype(np.float32)
        with torch.no_grad():
            want = net(torch.from_numpy(x)).numpy()
        assert_close(infer(server, "mnist", "input", x, ["probabilities"])["probabilities"], want)
        digits = held_out_digits()
        images = np.stack([img for img, _ in digits]).reshape(-1, 1, 28, 28).astype(np.float32)
        correct = 0
        for i in range(0, len(digits), 64):
            probs = infer(server, "mnist", "input", images[i:i + 64], ["probabilities"])["probabilities"]
            correct += int((probs.argmax(axis=1) == [label for _, label in digits[i:i + 64]]).sum())
        assert correct / len(digits) >= 0.99, f"{correct}/{len(digits)}"
    finally:
        server.stop()


def test_a_png_goes_through_the_transformer_to_the_torchscript_predictor(mnist_torchscript):
    from PIL import Image

    dir, _ = mnist_torchscript
    predictor = serving(dir, "mnist")
    transformer = Siesta("--transformer", "image", "--model-name", "mnist", "--predictor-url",
                         f"http://{predictor.http}")
    try:
        transformer.wait_ready()
        img, label = held_out_digits()[3]
        buf = io.BytesIO()
        Image.fromarray((img * 255).round().astype(np.uint8)).save(buf, format="PNG")
        body = json.dumps({"instances": [{"image_bytes": {"b64": base64.b64encode(buf.getvalue()).decode()}}]})
        req = urllib.request.Request(f"http://{transformer.http}/v1/models/mnist:predict", data=body.encode())
        with urllib.request.urlopen(req, timeout=60) as r:
            pred = json.loads(r.read())["predictions"][0]
        assert pred["prediction"] == label and pred["label"] == str(label)
    finally:
        transformer.stop()
        predictor.stop()


def test_candle_mnist_matches_pytorch():
    """The candle engine's built-in MNIST CNN (the embedded default) against the same network and
    weights in PyTorch."""
    net = Net().eval()
    net.load_state_dict(load_file(str(ROOT / "models" / "mnist" / "model.safetensors")))
    server = Siesta()  # no --storage-uri: the embedded model, run by candle
    try:
        server.wait_ready()
        x = RNG.uniform(0, 1, size=(6, 1, 28, 28)).astype(np.float32)
        with torch.no_grad():
            want = net(torch.from_numpy(x)).numpy()
        assert_close(infer(server, "mnist", "input", x, ["probabilities"])["probabilities"], want)
    finally:
        server.stop()


def test_f16_precision_runs_the_module_in_half(tmp_path):
    """`--precision f16`: libtorch converts the module's parameters and the FP32 inputs to half,
    the outputs come back as the config's FP32. Against PyTorch's own half run of the same module
    (the numbers are libtorch's: they should match closely) and its f32 run (half's tolerance)."""
    torch.manual_seed(2)
    net = SmallCnn().eval()
    module = torch.jit.trace(net, torch.zeros(1, 3, 16, 16))
    save(tmp_path / "cnn16", module, {
        "name": "cnn16", "architecture": "torchscript", "weights": "model.pt", "max_batch_size": 8,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 16, 16]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [10]}]})
    server = serving(tmp_path / "cnn16", "cnn16", "--precision", "f16")
    try:
        x = RNG.normal(size=(4, 3, 16, 16)).astype(np.float32)
        with torch.no_grad():
            want32 = net(torch.from_numpy(x)).numpy()
            want16 = net.half()(torch.from_numpy(x).half()).float().numpy()
        got = infer(server, "cnn16", "x", x, ["logits"])["logits"]
        assert np.max(np.abs(got - want16)) <= 1e-2 * np.max(np.abs(want16))
        err32 = np.max(np.abs(got - want32)) / np.max(np.abs(want32))
        assert 0 < err32 <= 2e-2, f"relative error to f32 {err32:.3g}"
    finally:
        server.stop()
