"""What the tests share besides fixtures: the checkout's paths, the launcher, ../shared data, test servers
(moto's S3, any HTTP server), a standalone cluster, and a Delta-enabled local session."""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from typing import Optional

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATASETS = os.path.join(os.path.dirname(ROOT), "shared", "datasets")
LAUNCHER = os.path.join(ROOT, "spark-submit.sh")
# What the tests sign S3 requests with: they only ever talk to the S3 server they start on 127.0.0.1.
TEST_AWS_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "imgshards-test-key", "AWS_SECRET_ACCESS_KEY": "imgshards-test-secret",
                        "AWS_REGION": "us-east-1"}


def local_session(master: str, app_name: str, conf: dict = None):
    """A Delta-enabled session from this checkout's jars (scripts/setup.sh); the caller stops it."""
    from imgshards.session import build_session, checkout_jars

    return build_session(master, app_name, conf, jars_dir=checkout_jars(ROOT))


# Petastorm imports only on the spark35 stack (pyarrow < 15, numpy 1): tests of the loader's petastorm backend
# run there (scripts/test.sh --stack spark35); on the default stack, tests/test_petastorm_compat.py reads
# exports with Petastorm in that environment instead.
needs_petastorm = pytest.mark.skipif(importlib.util.find_spec("petastorm") is None,
                                     reason="Petastorm is on the spark35 stack only (scripts/test.sh --stack spark35)")


@dataclass(frozen=True)
class OldStack:
    """The spark35 environment (scripts/setup.sh --stack spark35): its Python, and the Petastorm readers it
    runs (0.12.1 installed, 0.13.1 first on PYTHONPATH)."""

    venv: str
    petastorm_versions: tuple = ("0.12.1", "0.13.1")

    @property
    def python(self) -> str:
        return os.path.join(self.venv, "bin", "python")

    def env(self, petastorm_version: str) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        if petastorm_version != "0.12.1":
            env["PYTHONPATH"] = os.path.join(self.venv, f"petastorm-{petastorm_version}")
        return env


def read_with_petastorm(old_stack: OldStack, version: str, root: str, s3_endpoint: str = None) -> dict:
    """tests/petastorm_reader.py's JSON for the export at ``root``, read by Petastorm ``version``."""
    command = [old_stack.python, os.path.join(ROOT, "tests", "petastorm_reader.py"), root]
    result = subprocess.run(command + ([s3_endpoint] if s3_endpoint else []), capture_output=True, text=True,
                            timeout=600, env=old_stack.env(version))
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.startswith("{"), (result.stdout[:2000], result.stderr[-2000:])
    return json.loads(result.stdout)


def loader_samples(root: str, s3_endpoint: str = None) -> dict:
    """What the project's loader reads of every split of the export at ``root``, in the shape of
    tests/petastorm_reader.py's: {split: {sample_id: {label, label_name, sha256, pixels, shape}}}."""
    from imgshards.train.loader import make_dataloader, read_manifest

    found = {}
    for split in read_manifest(root, s3_endpoint)["splits"]:
        samples = found[split] = {}
        loader = make_dataloader(root, split, 1, shuffle=False, collate=False, workers=1, transform=lambda a: a,
                                 s3_endpoint=s3_endpoint)
        for batch in loader:
            image = batch["image"][0]
            samples[batch["sample_id"][0]] = {
                "label": int(batch["label"][0]), "label_name": batch["label_name"][0], "sha256": batch["sha256"][0],
                "pixels": hashlib.sha256(image.astype("uint8").tobytes()).hexdigest(), "shape": list(image.shape)}
    return found


def launch(*args: str, timeout: int = 600, env: dict = None) -> subprocess.CompletedProcess:
    """``./spark-submit.sh <args>`` run to its end, output captured; ``env`` adds to this environment."""
    return subprocess.run([LAUNCHER, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def shared_dataset(name: str) -> str:
    """Path of a ../shared dataset, or skip the test with the reason."""
    path = os.path.join(SHARED_DATASETS, name)
    if not os.path.isdir(path):
        pytest.skip(f"../shared/datasets/{name} is not present (it is beside the project in CI)")
    return path


@contextlib.contextmanager
def server_process(command: list, ready_url: str, env: dict = None):
    """Start a test server (``command``), wait until ``ready_url`` answers, yield, then stop it."""
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(ready_url, timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise RuntimeError(f"{command[0]} did not start") from None
            time.sleep(0.1)
    try:
        yield
    finally:
        server.terminate()
        server.wait(timeout=30)


@contextlib.contextmanager
def moto_server(**env: str):
    """A real S3 API on 127.0.0.1: moto's server in its own process (``env``: its settings); yields the
    endpoint URL and stops the server."""
    pytest.importorskip("moto", reason="moto[server] is in the dev extra")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with server_process([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                        endpoint + "/moto-api/", env={**os.environ, **env}):
        yield endpoint


@contextlib.contextmanager
def connect_server(log_path: str, metastore: Optional[str] = None):
    """A real Spark Connect server on 127.0.0.1 (scripts/connect_server.sh, local[2]), with a Hive metastore
    on embedded Derby in ``metastore`` when given; yields its sc:// URL and stops it. Its console goes to
    ``log_path``."""
    port = free_port()
    command = [os.path.join(ROOT, "scripts", "connect_server.sh"), "--port", str(port)]
    if metastore:
        command += ["--metastore", metastore]
    with open(log_path, "w") as log:
        server = subprocess.Popen(command,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Spark Connect server did not start (see {log_path})")
            time.sleep(0.5)
        yield f"sc://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def standalone_cluster(cluster_dir, workers: int = 2, fake_gpus: int = 0):
    """A real standalone master and ``workers`` workers on 127.0.0.1 (scripts/local_cluster.sh), each
    worker with its own work directory under ``cluster_dir``; yields the master URL and stops them."""
    port = free_port()
    env = {**os.environ, "SPARK_MASTER_PORT": str(port), "CLUSTER_DIR": str(cluster_dir)}
    script = os.path.join(ROOT, "scripts", "local_cluster.sh")
    args = [script, "start", "--workers", str(workers)] + (["--fake-gpus", str(fake_gpus)] if fake_gpus else [])
    subprocess.run(args, env=env, check=True, timeout=180)
    try:
        yield f"spark://127.0.0.1:{port}"
    finally:
        subprocess.run([script, "stop"], env=env, check=False, timeout=60)
