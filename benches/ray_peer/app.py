"""Ray Serve's scale from zero, measured on the same model as Siesta's: the shipped MNIST CNN in
PyTorch (benches/kserve_peer/net.py, same weights), one deployment with
min_replicas=0, target_ongoing_requests=1, 0.5 CPU and one torch thread per replica.

For each configuration: deploy with 0 replicas, then RUNS times: wait until Serve reports no
running replica, time one request (client -> Ray's HTTP proxy -> a new replica -> answer).
Prints one JSON line per timed request. Network and telemetry settings follow
shared/reference/build-notes.md (Ray's single-node mode keeps everything on 127.0.0.1)."""
import argparse
import json
import os
import pathlib
import sys
import time
import urllib.request

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray's own metric push cadence: 1 s in the tuned configuration (see build-notes).
os.environ.setdefault("RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S", "1")
os.environ.setdefault("RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S", "1")

import ray  # noqa: E402
from ray import serve  # noqa: E402
from starlette.requests import Request  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Replicas run in Ray's worker processes: they find net.py through PYTHONPATH, not sys.path.
NET_DIR = str(ROOT / "benches" / "kserve_peer")
sys.path.insert(0, NET_DIR)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [NET_DIR, os.environ.get("PYTHONPATH")]))

CONFIGS = {
    # Ray's defaults, except what scale to zero needs to happen within a benchmark.
    "defaults": dict(upscale_delay_s=30.0, downscale_delay_s=600.0),
    # The fastest configuration build-notes found.
    "tuned": dict(
        upscale_delay_s=1.0,
        downscale_delay_s=5.0,
        downscale_to_zero_delay_s=5.0,
        metrics_interval_s=1.0,
        look_back_period_s=5.0,
    ),
}


@serve.deployment(ray_actor_options={"num_cpus": 0.5})
class Mnist:
    def __init__(self, weights: str):
        import torch
        from net import Net  # benches/kserve_peer/net.py
        from safetensors.torch import load_file

        torch.set_num_threads(1)
        self.torch = torch
        self.net = Net()
        self.net.load_state_dict(load_file(weights))
        self.net.eval()
        with torch.inference_mode():
            self.net(torch.zeros(1, 1, 28, 28))

    async def __call__(self, request: Request):
        body = await request.json()
        x = self.torch.tensor(body["inputs"][0]["data"], dtype=self.torch.float32).reshape(-1, 1, 28, 28)
        with self.torch.inference_mode():
            probs = self.net(x)
        return {"outputs": [{"name": "class", "datatype": "INT64", "shape": [x.shape[0]],
                             "data": probs.argmax(dim=1).tolist()}]}


def running_replicas(app: str) -> int:
    status = serve.status().applications.get(app)
    if status is None:
        return 0
    return sum(
        d.replica_states.get("RUNNING", 0) + d.replica_states.get("STARTING", 0)
        for d in status.deployments.values()
    )


def timed_request(url: str, body: bytes) -> float:
    started = time.perf_counter()
    req = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as resp:
        answer = json.loads(resp.read())
    assert answer["outputs"][0]["data"], answer
    return (time.perf_counter() - started) * 1e3


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--body", required=True)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--configs", default="defaults,tuned")
    a = p.parse_args()
    body = pathlib.Path(a.body).read_bytes()
    weights = str(ROOT / "models" / "mnist" / "model.safetensors")
    ray.init(
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        num_cpus=2,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}},
    )
    serve.start(http_options={"host": "127.0.0.1", "port": a.port})
    for name in a.configs.split(","):
        auto = dict(min_replicas=0, initial_replicas=0, max_replicas=4, target_ongoing_requests=1, **CONFIGS[name])
        app = Mnist.options(autoscaling_config=auto).bind(weights)
        serve.run(app, name=f"mnist-{name}", route_prefix=f"/{name}")
        url = f"http://127.0.0.1:{a.port}/{name}"
        # The defaults keep a replica for 600 s after traffic: only the first request (at deploy,
        # 0 replicas) is at zero.
        runs = a.runs if "downscale_to_zero_delay_s" in CONFIGS[name] else 1
        for run in range(runs):
            deadline = time.time() + 180
            while running_replicas(f"mnist-{name}") > 0:
                if time.time() > deadline:
                    raise SystemExit(f"{name}: still not at zero replicas after 180 s")
                time.sleep(0.5)
            ms = timed_request(url, body)
            print(json.dumps({"server": "ray", "config": name, "run": run, "ms": round(ms, 1)}), flush=True)
        serve.delete(f"mnist-{name}")
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
