"""Puts one GPU check's files together (benches/gpu/check.sh): Siesta's engines against PyTorch
eager at the same batch on the same GPU (ratio of images/s; > 1 = Siesta faster), the idle tiers
and the cold start, next to the kernel checks. Writes OUT/summary.json and prints a table.

    python3 benches/gpu/summarize.py OUT_DIR"""
import json
import pathlib
import statistics
import sys

out = pathlib.Path(sys.argv[1])
kernels = json.loads((out / "results.json").read_text())
torch_file = out / "pytorch-resnet50.json"
baseline = json.loads(torch_file.read_text()) if torch_file.exists() else {}
lines = [json.loads(l) for l in (out / "siesta.jsonl").read_text().splitlines() if l.strip()] \
    if (out / "siesta.jsonl").exists() else []


def per_batch(key):
    return {r["batch"]: r["images_per_s"] for r in baseline.get(key, [])}


f32, fp16 = per_batch("resnet50_f32_eager"), per_batch("resnet50_fp16_eager")
engines = []
pixels_cpu = next((r for r in lines if r.get("pixels_cpu_reference")), None)
for r in lines:
    if "engine" not in r or "idle_tiers" in r or r.get("pixels_cpu_reference"):
        continue
    if "skipped" in r:
        engines.append({"engine": r["engine"], "precision": r.get("precision"), "skipped": r["skipped"]})
        continue
    ips = r["images_per_s"]
    same = fp16 if r.get("precision") == "f16" else f32
    engines.append({
        "engine": r["engine"], "device": r["device"], "batch": r["batch"], "precision": r.get("precision", "f32"),
        "input": r.get("input", "FP32"), "images_per_s": ips, "median_ms": r["median_ms"],
        # Same precision, same batch, same GPU: > 1 means Siesta is faster. Siesta's time includes
        # the upload of the f32 input and the download of the logits; PyTorch's input is on the GPU.
        "vs_pytorch_same_precision": ips / same[r["batch"]] if r["batch"] in same and r["device"] != "cpu" else None,
    })
# The pixel path's logits on the GPU against the CPU reference kernel's, same pixels, batch 1, f32.
pixels_gpu = next((r for r in lines if r.get("input") == "UINT8" and r.get("batch") == 1
                   and r.get("precision") == "f32" and not r.get("pixels_cpu_reference")), None)
pixels_check = None
if pixels_cpu and pixels_gpu:
    # Against the logits' magnitude: their plain sum may cancel to near zero.
    diff = abs(pixels_gpu["checksum"] - pixels_cpu["checksum"]) / max(pixels_cpu["abs_checksum"], 1e-9)
    pixels_check = {"gpu_checksum": pixels_gpu["checksum"], "cpu_checksum": pixels_cpu["checksum"],
                    "difference_vs_abs_sum": diff, "same_top1": pixels_gpu["top1"] == pixels_cpu["top1"],
                    "ok": diff <= 1e-3 and pixels_gpu["top1"] == pixels_cpu["top1"]}
cold = [r for r in lines if "cold_start" in r]
idle = [{"engine": r["engine"], "precision": r.get("precision"), **r["idle_tiers"]}
        for r in lines if "idle_tiers" in r]
exited = next((r["exited"] for r in lines if "exited" in r), None)
onnxruntime = next(({k: r[k] for k in ("onnxruntime", "library", "device", "why_not_cuda")}
                    for r in lines if "onnxruntime" in r), None)
summary = {
    "date": kernels.get("date"),
    "dry_run": kernels.get("dry_run"),
    "platform": kernels.get("platform"),
    "cpu_reference": kernels.get("cpu_reference"),
    "gpu_kernels": kernels.get("gpu_kernels"),
    "gpu_kernels_ok": kernels.get("gpu_kernels_ok"),
    "pytorch": {k: baseline.get(k) for k in ("torch", "cuda", "gpu", "skipped") if k in baseline},
    "resnet": engines,
    "best_images_per_s": max((e["images_per_s"] for e in engines if "images_per_s" in e), default=None),
    "uint8_pixels_gpu_vs_cpu": pixels_check,
    "cold_start": {
        "runs": len(cold),
        "process_start_to_first_answer_ms_p50": statistics.median(r["process_wall_ms"] for r in cold) if cold else None,
        "load_ms_p50 (weights + CUDA init)": statistics.median(r["run"]["load_ms"] for r in cold) if cold else None,
        "first_forward_ms_p50": statistics.median(r["run"]["first_forward_ms"] for r in cold) if cold else None,
    },
    "idle_tiers": idle,
    "exited": exited,
    "onnxruntime": onnxruntime,
    "not_measured_yet": kernels.get("not_measured_yet"),
}
(out / "summary.json").write_text(json.dumps(summary, indent=2))

print(f"GPU: {[g.get('name') for g in (kernels.get('platform') or {}).get('gpus', [])] or 'none (dry run)'}"
      f"; kernels vs CPU references ok: {kernels.get('gpu_kernels_ok', 'not run')}")
print("| engine | precision | input | device | batch | images/s | x PyTorch eager (same precision) |")
print("|---|---|---|---|---|---|---|")
for e in engines:
    if "skipped" in e:
        print(f"| {e['engine']} | {e['precision']} | - | - | - | skipped: {e['skipped'][-120:]} | |")
        continue
    ratio = e["vs_pytorch_same_precision"]
    print(f"| {e['engine']} | {e['precision']} | {e['input']} | {e['device']} | {e['batch']} | "
          f"{e['images_per_s']:.1f} | {f'{ratio:.2f}' if ratio is not None else '-'} |")
if pixels_check:
    print("UINT8 pixels, GPU vs CPU reference:", json.dumps(pixels_check))
print("cold start:", json.dumps(summary["cold_start"]))
print("idle tiers:", json.dumps(idle))
if exited:
    print("exited:", json.dumps(exited))
if onnxruntime:
    print("onnxruntime:", json.dumps(onnxruntime))
