"""The candle engine's built-in torchvision classifiers (ResNet-18/50, MobileNetV2, Inception v3)
against torchvision itself, on fresh random inputs each run, through the real `siesta serve`.
Runs in the torch venv (torch==2.11.0 + torchvision, made by scripts/test.sh).

The models are made here by models/vision/make_vision.py: real torchvision architectures with
RANDOM seeded weights and randomised batch-norm statistics (trained weights cannot be downloaded
here), saved the ways users save them: safetensors, `torch.save(state_dict)`, with a minimal
config.json, with none at all, with DataParallel's `module.` prefix."""
import base64
import io
import json
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from conftest import ROOT, SIESTA_BIN, Siesta, assert_close, infer

sys.path.insert(0, str(ROOT / "models" / "vision"))
import make_vision  # noqa: E402

RNG = np.random.default_rng()  # fresh inputs every run

CASES = [
    # arch, classes, how it is saved, batch
    ("resnet18", 5, {"fmt": "pth", "labels": ["daisy", "dandelion", "roses", "sunflowers", "tulips"]}, 3),
    ("resnet50", 1000, {"fmt": "safetensors", "bare": True}, 2),
    ("mobilenet_v2", 10, {"fmt": "pth", "data_parallel": True}, 2),
    ("inception_v3", 5, {"fmt": "safetensors"}, 2),
]


def metadata(server, model):
    with urllib.request.urlopen(f"http://{server.http}/v2/models/{model}", timeout=30) as r:
        return json.loads(r.read())


def make(tmp_path, arch, classes, fmt="safetensors", bare=False, labels=None, data_parallel=False):
    net = make_vision.build(arch, classes, seed=hash(arch) % 1000)
    saved = torch.nn.DataParallel(net) if data_parallel else net
    dir = make_vision.write(saved, arch, tmp_path / arch, fmt=fmt, bare=bare, labels=labels)
    return dir, net


@pytest.mark.parametrize("arch,classes,saved,batch", CASES, ids=[c[0] for c in CASES])
def test_candle_classifier_matches_torchvision(tmp_path, arch, classes, saved, batch):
    dir, net = make(tmp_path, arch, classes, **saved)
    server = Siesta("--storage-uri", str(dir), "--model-name", arch)
    try:
        server.wait_ready()
        side = make_vision.side(arch)
        meta = metadata(server, arch)
        assert meta["inputs"][0]["shape"] == [-1, 3, side, side]
        assert meta["outputs"][0]["shape"] == [-1, classes]
        x = RNG.normal(size=(batch, 3, side, side)).astype(np.float32)
        with torch.no_grad():
            want = net(torch.from_numpy(x)).numpy()
        got = infer(server, arch, "input", x, ["logits"])["logits"]
        assert got.shape == (batch, classes)
        assert_close(got, want)
        if saved.get("labels"):
            assert meta["parameters"]["labels"] == saved["labels"]
    finally:
        server.stop()


def pixel_input(dir, height, width, max_batch=4):
    """Declares the model's input as raw UINT8 pixels [H, W, 3] (normalised by the replica)."""
    cfg = json.loads((dir / "config.json").read_text())
    cfg.update(max_batch_size=max_batch, inputs=[{"name": "image", "datatype": "UINT8", "shape": [height, width, 3]}])
    (dir / "config.json").write_text(json.dumps(cfg))


def v2(server, model, body):
    req = urllib.request.Request(f"http://{server.http}/v2/models/{model}/infer", data=json.dumps(body).encode())
    with urllib.request.urlopen(req, timeout=120) as r:
        return {o["name"]: o for o in json.loads(r.read())["outputs"]}


@pytest.mark.parametrize("height,width", [(224, 224), (240, 320)])
def test_uint8_pixels_are_normalised_by_the_replica_like_torch(tmp_path, height, width):
    """A classifier whose input is UINT8 [H, W, 3]: clients send a quarter of FP32's bytes and
    the replica's fused preprocessing kernel (its CPU reference here) resizes them straight to
    224x224 (bilinear, when they are another size) and normalises them; the logits equal
    torchvision's network on torch's own interpolate + normalise of the same pixels. Triton's
    classification extension on the same request returns torch's top classes, labelled."""
    labels = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    dir, net = make(tmp_path, "resnet18", 5, fmt="safetensors", labels=labels)
    pixel_input(dir, height, width)
    server = Siesta("--storage-uri", str(dir), "--model-name", "px")
    try:
        server.wait_ready()
        assert metadata(server, "px")["inputs"][0] == {"name": "image", "datatype": "UINT8",
                                                       "shape": [-1, height, width, 3]}
        pixels = RNG.integers(0, 256, size=(3, height, width, 3), dtype=np.uint8)
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float()
        if (height, width) != (224, 224):
            x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False,
                                                antialias=False)
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        with torch.no_grad():
            want = net((x / 255 - mean) / std).numpy()
        out = v2(server, "px", {
            "inputs": [{"name": "image", "shape": list(pixels.shape), "datatype": "UINT8",
                        "data": pixels.flatten().tolist()}],
            "outputs": [{"name": "logits"}]})["logits"]
        got = np.array(out["data"], dtype=np.float32).reshape(out["shape"])
        assert got.shape == (3, 5)
        assert_close(got, want)

        top = v2(server, "px", {
            "inputs": [{"name": "image", "shape": list(pixels.shape), "datatype": "UINT8",
                        "data": pixels.flatten().tolist()}],
            "outputs": [{"name": "logits", "parameters": {"classification": 2}}]})["logits"]
        assert top["datatype"] == "BYTES" and top["shape"] == [3, 2]
        for row, logits in zip(np.array(top["data"]).reshape(3, 2), want):
            index = [int(c.split(":")[1]) for c in row]
            assert index == list(np.argsort(-logits)[:2])
            assert [c.split(":")[2] for c in row] == [labels[i] for i in index]

        # FP32 where the model takes pixels: the protocol's 400, naming both types.
        req = urllib.request.Request(f"http://{server.http}/v2/models/px/infer", data=json.dumps({
            "inputs": [{"name": "image", "shape": [1, height, width, 3], "datatype": "FP32",
                        "data": [0.0] * (height * width * 3)}]}).encode())
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=60)
        assert e.value.code == 400 and "UINT8" in json.loads(e.value.read())["error"]
    finally:
        server.stop()


@pytest.mark.parametrize("input_kind", ["FP32", "UINT8"])
def test_images_go_through_the_transformer_to_a_candle_resnet(tmp_path, input_kind):
    """KServe's image-classifier path: base64 PNG and JPEG in, torchvision preprocessing (resize 256, crop
    224, ImageNet normalisation) by the transformer, labels from index_to_name.json out; the
    probabilities equal torchvision's on the same image. The image's shorter side is already 256,
    so the resize is the identity and both sides see the very same 224x224 crop. With a UINT8
    predictor the transformer sends the crop's bytes (a quarter of FP32's) and the predictor
    normalises them: the same answer."""
    from PIL import Image

    labels = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    dir, net = make(tmp_path, "resnet18", 5, fmt="pth", labels=labels)
    if input_kind == "UINT8":
        pixel_input(dir, 224, 224)
    predictor = Siesta("--storage-uri", str(dir), "--model-name", "flowers18")
    transformer = Siesta("--transformer", "image", "--model-name", "flowers18", "--predictor-url",
                         f"http://{predictor.http}", "--top-k", "5")
    try:
        predictor.wait_ready()
        transformer.wait_ready()
        pixels = RNG.integers(0, 256, size=(256, 320, 3), dtype=np.uint8)
        encoded = {}
        for fmt in ("PNG", "JPEG"):
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format=fmt)
            encoded[fmt] = base64.b64encode(buf.getvalue()).decode()
        body = json.dumps({"instances": [{"image_bytes": {"b64": encoded[f]}, "key": f} for f in encoded]}).encode()
        req = urllib.request.Request(f"http://{transformer.http}/v1/models/flowers18:predict", data=body)
        with urllib.request.urlopen(req, timeout=120) as r:
            pred, from_jpeg = json.loads(r.read())["predictions"]
        assert pred["key"] == "PNG" and pred["label"] in labels
        assert from_jpeg["key"] == "JPEG" and from_jpeg["label"] in labels and len(from_jpeg["scores"]) == 5
        assert [t["label"] for t in pred["top_k"]][0] == pred["label"]

        # torchvision's own preprocessing of the same image -> the same class.
        from torchvision import transforms

        tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                 transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
        with torch.no_grad():
            probs = torch.softmax(net(tf(Image.fromarray(pixels)).unsqueeze(0)), 1)[0].numpy()
        assert_close(np.array(pred["scores"], dtype=np.float32), probs)
        assert pred["label"] == labels[int(probs.argmax())] and pred["prediction"] == int(probs.argmax())
    finally:
        transformer.stop()
        predictor.stop()


def test_weights_that_do_not_fit_the_architecture_are_a_load_error_naming_the_file(tmp_path):
    dir, _ = make(tmp_path, "resnet18", 5)
    (dir / "config.json").write_text(json.dumps({"name": "m", "architecture": "resnet50",
                                                 "weights": "model.safetensors"}))
    run = subprocess.run([SIESTA_BIN, "serve", "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0",
                          "--storage-uri", str(dir)], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "model.safetensors" in run.stderr and "resnet50" in run.stderr, run.stderr[-2000:]


@pytest.mark.parametrize("arch,family", [("resnext50_32x4d", "ResNeXt"), ("wide_resnet50_2", "Wide ResNet")])
def test_a_resnet_family_siesta_does_not_build_is_a_load_error_saying_what_it_is(tmp_path, arch, family):
    # Same module names as ResNet-50 (so recognised as one), other shapes: found at load, named,
    # and the ONNX/TorchScript route suggested; not an inference-time shape mismatch.
    dir, _ = make(tmp_path, arch, 5, bare=True)
    run = subprocess.run([SIESTA_BIN, "serve", "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0",
                          "--storage-uri", str(dir)], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    err = run.stderr
    assert family in err and "ONNX" in err and "TorchScript" in err and "model.safetensors" in err, err
    assert "inference failed" not in err, err


@pytest.mark.parametrize("arch", ["resnet18", "inception_v3"])
def test_the_runtime_picks_the_engine_for_one_model_saved_three_ways(tmp_path, arch):
    """One directory holding the state dict, its TorchScript trace and its ONNX export (with a
    config naming the architecture); `--runtime candle|torch|onnx` (the manifest's `runtime`)
    serves each, with the same input/output contract, all equal to PyTorch."""
    net = make_vision.build(arch, 7, seed=11)
    dir = make_vision.write(net, arch, tmp_path / arch, torchscript=True, onnx=True)
    side = make_vision.side(arch)
    x = RNG.normal(size=(2, 3, side, side)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    for runtime in ("candle", "torch", "onnx"):
        server = Siesta("--storage-uri", str(dir), "--model-name", arch, "--runtime", runtime,
                        "--model-format", "pytorch")
        try:
            server.wait_ready()
            meta = metadata(server, arch)
            assert meta["inputs"][0]["name"] == "input" and meta["outputs"][0]["name"] == "logits"
            got = infer(server, arch, "input", x, ["logits"])["logits"]
            assert_close(got, want)
        finally:
            server.stop()


def test_f16_precision_halves_the_weights_and_stays_close_to_torchvision(tmp_path):
    """`--precision f16`: the network is built and runs in half precision (batch norm folded in
    f32 first), clients still send and receive FP32. On the CPU this checks the numbers, not the
    speed (f16 is for GPUs); the tolerance is half precision's, not f32's."""
    dir, net = make(tmp_path, "resnet18", 5, fmt="pth")
    servers = {p: Siesta("--storage-uri", str(dir), "--model-name", "r18", "--precision", p)
               for p in ("f32", "f16")}
    try:
        for s in servers.values():
            s.wait_ready()
        x = RNG.normal(size=(2, 3, 224, 224)).astype(np.float32)
        with torch.no_grad():
            want = net(torch.from_numpy(x)).numpy()
        got = infer(servers["f16"], "r18", "input", x, ["logits"])["logits"]
        err = np.max(np.abs(got - want)) / np.max(np.abs(want))
        assert err <= 2e-2, f"f16 relative error {err:.3g}"
        assert np.array_equal(np.argmax(got, 1), np.argmax(want, 1))
        assert err > 0, "f16 answered exactly like f32: the precision flag did nothing"

        def weight_bytes(s):
            with urllib.request.urlopen(f"http://{s.http}/metrics", timeout=30) as r:
                text = r.read().decode()
            lines = [l for l in text.splitlines() if l.startswith("siesta_device_memory_bytes{")]
            assert lines, text[:2000]
            return float(lines[0].rsplit(" ", 1)[1])

        assert weight_bytes(servers["f16"]) == pytest.approx(weight_bytes(servers["f32"]) / 2, rel=0.01)
    finally:
        for s in servers.values():
            s.stop()
