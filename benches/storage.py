"""Model download from an S3 emulator (moto, started here): Siesta's replica against boto3 (what
`aws s3 cp --recursive` does: 10 objects at once) on the same prefix in the same run, and a
replica's start with an empty cache against one with the model cached. Median of REPS runs each.
moto is a Python server sharing the 2 cores with the clients: the absolute MiB/s are moto's; the
ratio is the comparison."""
import concurrent.futures
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import boto3
from boto3.s3.transfer import TransferConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = os.environ.get("SIESTA_BIN", str(ROOT / "target" / "release" / "siesta"))
REPS = int(os.environ.get("REPS", "3"))
BIG_MIB = int(os.environ.get("BIG_MIB", "200"))
SMALL = int(os.environ.get("SMALL", "20"))
MNIST = {p.name: p.read_bytes() for p in (ROOT / "models" / "mnist").iterdir()}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    port = free_port()
    moto = subprocess.Popen([str(ROOT / ".venv" / "bin" / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = pathlib.Path(tempfile.mkdtemp())
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s")
        s3.create_bucket(Bucket="bench")
        files = {**MNIST, "assets/big.bin": os.urandom(1 << 20) * BIG_MIB}
        files.update({f"assets/shard-{i:02d}.bin": os.urandom(5 << 20) for i in range(SMALL)})
        for name, body in files.items():
            s3.put_object(Bucket="bench", Key=f"model/{name}", Body=body)
        total = sum(len(b) for b in files.values())
        mib = total / (1 << 20)
        print(f"prefix s3://bench/model: {len(files)} objects, {mib:.0f} MiB; moto on 127.0.0.1")

        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update({"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "RUST_LOG": "info", "NO_COLOR": "1"})

        def boto3_download():
            dest = work / "boto3"
            shutil.rmtree(dest, ignore_errors=True)
            started = time.perf_counter()
            keys = [o["Key"] for o in s3.list_objects_v2(Bucket="bench", Prefix="model/")["Contents"]]
            cfg = TransferConfig(max_concurrency=10)

            def one(key):
                path = dest / key
                path.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file("bench", key, str(path), Config=cfg)

            with concurrent.futures.ThreadPoolExecutor(10) as pool:
                list(pool.map(one, keys))
            return time.perf_counter() - started

        def replica(cache):
            """Seconds from spawn to ready, and the download's own seconds from the log (None if cached)."""
            log = tempfile.NamedTemporaryFile("w+", delete=False)
            started = time.perf_counter()
            p = subprocess.Popen([BIN, "serve", "--host", "127.0.0.1", "--http-port", "0", "--no-grpc", "--device", "cpu",
                                  "--model-name", "m", "--storage-uri", "s3://bench/model", "--cache-dir", str(cache)],
                                 stdout=subprocess.PIPE, stderr=log, text=True, env=env)
            try:
                http = dict(w.split("=", 1) for w in p.stdout.readline().split() if "=" in w)["http"]
                while True:
                    if p.poll() is not None:
                        raise SystemExit(f"replica exited: {pathlib.Path(log.name).read_text()[-2000:]}")
                    try:
                        with urllib.request.urlopen(f"http://{http}/v2/health/ready", timeout=2) as r:
                            if r.status == 200:
                                break
                    except OSError:
                        time.sleep(0.01)
                ready = time.perf_counter() - started
            finally:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=30)
            text = pathlib.Path(log.name).read_text()
            os.unlink(log.name)
            m = re.search(r'model downloaded.*?seconds="?([0-9.]+)', text)
            return ready, (float(m.group(1)) if m else None)

        rows = {"boto3": [], "siesta_download": [], "uncached_start": [], "cached_start": []}
        for _ in range(REPS):
            rows["boto3"].append(boto3_download())
            cache = work / "cache"
            shutil.rmtree(cache, ignore_errors=True)
            ready, download = replica(cache)
            rows["uncached_start"].append(ready)
            rows["siesta_download"].append(download)
            ready, download = replica(cache)
            assert download is None, "the second start found the model cached"
            rows["cached_start"].append(ready)
        med = {k: statistics.median(v) for k, v in rows.items()}
        print(f"{'':36} {'median s':>9} {'MiB/s':>8}   runs")
        for k, label in [("boto3", "boto3, 10 objects at once"), ("siesta_download", "Siesta replica download (8 at once)"),
                         ("uncached_start", "replica start, empty cache"), ("cached_start", "replica start, cached")]:
            rate = f"{mib / med[k]:8.0f}" if k in ("boto3", "siesta_download") else " " * 8
            print(f"{label:36} {med[k]:9.2f} {rate}   {', '.join(f'{x:.2f}' for x in rows[k])}")
        print(f"Siesta/boto3 throughput: {med['boto3'] / med['siesta_download']:.2f}x; "
              f"cached start {med['uncached_start'] / med['cached_start']:.1f}x faster than uncached")
        json.dump(med, sys.stderr)
        print(file=sys.stderr)
    finally:
        moto.send_signal(signal.SIGTERM)
        moto.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
