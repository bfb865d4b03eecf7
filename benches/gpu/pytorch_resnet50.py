"""PyTorch eager ResNet-50 on cuda:0, fp16 and f32, at batch 1, 32 and 256: the baselines Siesta's
GPU engines are measured against (issue 5; f32 is like for like with Siesta's f32 engines, fp16 is
the goal line). torchvision's architecture with random weights (no model
hub is reachable; speed does not depend on the values). Writes one JSON file.

    python3 benches/gpu/pytorch_resnet50.py OUT.json"""
import json
import sys
import time

import torch

out = {"torch": torch.__version__, "cuda": torch.version.cuda}
if not torch.cuda.is_available():
    out["skipped"] = "torch.cuda.is_available() is False"
else:
    try:
        import torchvision
        model = torchvision.models.resnet50(weights=None)
        out["torchvision"] = torchvision.__version__
    except ImportError:
        model = None
        out["skipped"] = "torchvision is not installed here"
    if model is not None:
        out["gpu"] = torch.cuda.get_device_name(0)
        model = model.cuda().eval()
        for name, dtype in (("resnet50_fp16_eager", torch.half), ("resnet50_f32_eager", torch.float)):
            model = model.to(dtype)
            rows = []
            with torch.inference_mode():
                for batch in (1, 32, 256):
                    x = torch.randn(batch, 3, 224, 224, device="cuda", dtype=dtype)
                    for _ in range(5):
                        model(x)
                    torch.cuda.synchronize()
                    iters = 50 if batch < 256 else 20
                    start = time.perf_counter()
                    for _ in range(iters):
                        model(x)
                    torch.cuda.synchronize()
                    secs = (time.perf_counter() - start) / iters
                    rows.append({"batch": batch, "ms": secs * 1e3, "images_per_s": batch / secs})
            out[name] = rows
json.dump(out, open(sys.argv[1], "w"), indent=2)
print(json.dumps(out, indent=2))
