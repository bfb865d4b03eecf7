"""Client side of benches/tiers.sh (standard library only).

  tiers.py zero --gateway HOST:PORT --services parked,spawned --runs N --body FILE
      Per run: waits until every service is at zero (the parked one with its replica parked),
      then sends one request to each, in alternating order, and prints one JSON line per
      request: client time, the gateway's held time and x-siesta-cold-start.

  tiers.py density --gateway HOST:PORT --trace FILE --body FILE --up-pid PID --policy NAME
      Replays the trace open loop (each request at its t_ms, on its own thread), samples the
      gateway's status and the processes' memory every second, and prints one JSON summary:
      latency p50/p99, failures, spawns and resumes, device-memory GB x s, host-memory peak."""
import argparse
import concurrent.futures
import json
import os
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request


def status(gw):
    with urllib.request.urlopen(f"http://{gw}/siesta/status", timeout=10) as r:
        return json.load(r)


def post(gw, service, body, headers):
    req = urllib.request.Request(
        f"http://{gw}/v2/models/{service}/infer", data=body, headers=headers, method="POST"
    )
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            r.read()
            code, h = r.status, r.headers
    except urllib.error.HTTPError as e:
        e.read()
        code, h = e.code, e.headers
    except Exception as e:  # connection reset, timeout: a failed request, counted
        return {"service": service, "status": 0, "ms": (time.perf_counter() - start) * 1e3, "error": str(e)}
    return {
        "service": service,
        "status": code,
        "ms": (time.perf_counter() - start) * 1e3,
        "held_ms": float(h.get("x-siesta-held-ms") or 0),
        "cold_start": h.get("x-siesta-cold-start"),
        "phases": h.get("x-siesta-cold-start-ms"),
    }


def body_and_headers(path):
    raw = open(path, "rb").read()
    if path.endswith(".bin"):
        # V2 binary tensor extension: JSON header, then the raw tensor.
        header_len = int(open(path + ".len").read())
        return raw, {
            "content-type": "application/octet-stream",
            "inference-header-content-length": str(header_len),
        }
    return raw, {"content-type": "application/json"}


def zero(a):
    services = a.services.split(",")
    body, headers = body_and_headers(a.body)
    for run in range(a.runs):
        deadline = time.time() + 120
        while True:
            comps = {c["service"]: c for c in status(a.gateway)["components"]}
            at_zero = all(comps[s]["ready"] + comps[s]["starting"] == 0 for s in services)
            parked_ready = all(comps[s]["parked"] >= 1 for s in services if s == "parked")
            if at_zero and parked_ready:
                break
            if time.time() > deadline:
                sys.exit(f"services not at zero after 120 s: {comps}")
            time.sleep(0.1)
        order = services if run % 2 == 0 else services[::-1]
        for s in order:
            r = post(a.gateway, s, body, headers)
            r["run"] = run
            print(json.dumps(r), flush=True)


def process_tree_rss(root):
    """Resident bytes of `root` and all its descendants (Linux /proc)."""
    children = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = open(f"/proc/{pid}/stat").read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(pid))
        except (OSError, ValueError, IndexError):
            pass
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            pages = int(open(f"/proc/{pid}/statm").read().split()[1])
            total += pages * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            pass
        todo.extend(children.get(pid, []))
    return total


def density(a):
    body, headers = body_and_headers(a.body)
    trace = [json.loads(l) for l in open(a.trace) if l.strip()]
    results, samples = [], []
    stop = threading.Event()

    def sampler():
        while not stop.is_set():
            try:
                doc = status(a.gateway)
                dev = sum(c.get("device_memory_bytes", 0) for c in doc["components"])
                hot = sum(c["ready"] for c in doc["components"])
                parked = sum(c.get("parked", 0) for c in doc["components"])
            except Exception:
                dev = hot = parked = None
            samples.append((time.time(), dev, hot, parked, process_tree_rss(a.up_pid)))
            stop.wait(1.0)

    t = threading.Thread(target=sampler, daemon=True)
    t.start()
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=256) as pool:
        futures = []
        for r in trace:
            delay = r["t_ms"] / 1000 - (time.perf_counter() - start)
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(post, a.gateway, r["service"], body, headers))
        for f in futures:
            results.append(f.result())
    stop.set()
    t.join()
    ok = [r for r in results if r["status"] == 200]
    ms = sorted(r["ms"] for r in ok)
    pct = lambda q: ms[min(len(ms) - 1, int(len(ms) * q))] if ms else None
    dev_gbs = sum(s[1] for s in samples if s[1] is not None) / 1e9  # 1 s per sample
    metrics = urllib.request.urlopen(f"http://{a.gateway}/siesta/metrics", timeout=10).read().decode()
    starts = {"spawn": 0, "resume": 0}
    for line in metrics.splitlines():
        if line.startswith("siesta_replica_starts_total{"):
            for k in starts:
                if f'kind="{k}"' in line:
                    starts[k] += int(float(line.rsplit(" ", 1)[1]))
    summary = {
        "policy": a.policy,
        "requests": len(results),
        "failed": len(results) - len(ok),
        "failures": sorted({f"{r['status']} {r.get('error', '')}".strip() for r in results if r["status"] != 200}),
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "max_ms": ms[-1] if ms else None,
        "mean_ms": statistics.mean(ms) if ms else None,
        "requests_at_zero": {
            k: sum(1 for r in ok if r.get("cold_start") == k) for k in ("spawn", "resume")
        },
        "replica_starts": starts,
        "device_memory_gb_s": round(dev_gbs, 2),
        "hot_replicas_max": max((s[2] for s in samples if s[2] is not None), default=0),
        "parked_replicas_max": max((s[3] for s in samples if s[3] is not None), default=0),
        "host_memory_peak_mib": round(max((s[4] for s in samples), default=0) / 2**20),
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(summary), flush=True)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    z = sub.add_parser("zero")
    z.add_argument("--gateway", required=True)
    z.add_argument("--services", required=True)
    z.add_argument("--runs", type=int, default=15)
    z.add_argument("--body", required=True)
    d = sub.add_parser("density")
    d.add_argument("--gateway", required=True)
    d.add_argument("--trace", required=True)
    d.add_argument("--body", required=True)
    d.add_argument("--up-pid", type=int, required=True)
    d.add_argument("--policy", required=True)
    a = p.parse_args()
    {"zero": zero, "density": density}[a.cmd](a)


if __name__ == "__main__":
    main()
