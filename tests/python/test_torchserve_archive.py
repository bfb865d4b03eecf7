"""TorchServe model archives (.mar, made by the real torch-model-archiver) served by `siesta serve`,
checked against PyTorch on fresh random inputs. KServe's TorchServe layout (`model-store/*.mar`)
as the storage URI. Runs in the torch venv against a siesta built with `--features torch`.

- a TorchScript ResNet-18 with TorchServe's image_classifier handler -> libtorch engine;
- an eager-mode archive (modelFile + state dict of a torchvision ResNet-18) -> candle engine;
- a custom handler -> a load error that says what to do."""
import json
import subprocess
import sys

import numpy as np
import torch

from conftest import ROOT, SIESTA_BIN, Siesta, assert_close, infer

sys.path.insert(0, str(ROOT / "models" / "vision"))
import make_vision  # noqa: E402

RNG = np.random.default_rng()
LABELS = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]


def archive(tmp_path, name, serialized, handler, *extra):
    store = tmp_path / "model-store"
    store.mkdir(exist_ok=True)
    (tmp_path / "index_to_name.json").write_text(json.dumps({str(i): l for i, l in enumerate(LABELS)}))
    subprocess.run([sys.executable, "-m", "model_archiver.model_packaging", "--model-name", name, "--version", "1.0",
                    "--serialized-file", str(serialized), "--handler", handler,
                    "--extra-files", str(tmp_path / "index_to_name.json"), "--export-path", str(store), *extra],
                   check=True)
    return tmp_path


def check_serves(dir, model, net):
    server = Siesta("--storage-uri", str(dir), "--model-name", model)
    try:
        server.wait_ready()
        x = RNG.normal(size=(2, 3, 224, 224)).astype(np.float32)
        with torch.no_grad():
            want = net(torch.from_numpy(x)).numpy()
        assert_close(infer(server, model, "input", x, ["logits"])["logits"], want)
    finally:
        server.stop()


def test_torchscript_image_classifier_archive_runs_on_libtorch(tmp_path):
    net = make_vision.build("resnet18", len(LABELS), seed=5)
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(net, torch.zeros(1, 3, 224, 224)), str(tmp_path / "resnet.pt"))
    dir = archive(tmp_path, "flowers18", tmp_path / "resnet.pt", "image_classifier")
    check_serves(dir, "flowers18", net)
    assert list((dir / "model-store" / ".siesta-mar").iterdir()), "unpacked beside the archive"


def test_eager_archive_of_a_torchvision_classifier_runs_on_candle(tmp_path):
    net = make_vision.build("resnet18", len(LABELS), seed=6)
    torch.save(net.state_dict(), tmp_path / "resnet.pth")
    (tmp_path / "model.py").write_text("from torchvision.models.resnet import ResNet, BasicBlock\n")
    dir = archive(tmp_path, "eager18", tmp_path / "resnet.pth", "image_classifier",
                  "--model-file", str(tmp_path / "model.py"))
    check_serves(dir, "eager18", net)


def test_custom_handler_archive_is_a_load_error_that_says_what_to_do(tmp_path):
    net = make_vision.build("resnet18", len(LABELS), seed=7)
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(net, torch.zeros(1, 3, 224, 224)), str(tmp_path / "resnet.pt"))
    (tmp_path / "handler.py").write_text("def handle(data, context):\n    return data\n")
    dir = archive(tmp_path, "custom", tmp_path / "resnet.pt", str(tmp_path / "handler.py"))
    run = subprocess.run([SIESTA_BIN, "serve", "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0",
                          "--storage-uri", str(dir)], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "custom.mar" in run.stderr and "config.json" in run.stderr, run.stderr[-2000:]
