"""Shared fixtures: the real sample data, one local Ray runtime for the whole session, and an S3
API server (moto's standalone server) on 127.0.0.1 for object-store runs.

Markers (a fast loop: ``pytest -m "not slow and not ray"``; without the sample data:
``-m "not sample_data"``): ``sample_data`` is put on every test that uses the ``sample`` fixture
(directly or through another fixture); ``ray`` must be written on every test that starts Ray or
uses a Ray fixture: such a test without it fails at collection, and an unmarked test that starts
Ray anyway fails when it does (so ``-m "not ray"`` really runs without Ray)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from pipelines.runtime import configure_environment

configure_environment()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The S3 endpoint is fixed before anything starts (Ray workers and img2dataset's processes
# inherit the environment): boto3, s3fs and pyarrow all find it through these standard variables,
# exactly as they would find a real object store. The server itself starts on first use.
S3_PORT = _free_port()
S3_ENV = {
    "AWS_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}",
    "AWS_ACCESS_KEY_ID": "openwit-test",
    "AWS_SECRET_ACCESS_KEY": "openwit-test",
    "AWS_DEFAULT_REGION": "us-east-1",
}
os.environ.update(S3_ENV)


RAY_FIXTURES = {"ray_session", "ray_head"}  # fixtures that start (or share) a Ray runtime


def pytest_collection_modifyitems(config, items):
    unmarked = []
    for item in items:
        if "sample" in item.fixturenames:
            item.add_marker(pytest.mark.sample_data)
        if RAY_FIXTURES & set(item.fixturenames) and item.get_closest_marker("ray") is None:
            unmarked.append(item.nodeid)
    if unmarked:
        raise pytest.UsageError("tests using a Ray fixture without @pytest.mark.ray: " + ", ".join(unmarked))


@pytest.fixture(autouse=True)
def _ray_only_when_marked(request, monkeypatch):
    """An unmarked test that starts or joins Ray in this process fails, naming itself."""
    if request.node.get_closest_marker("ray") is not None:
        yield
        return
    import ray

    def refuse(*args, **kwargs):
        raise RuntimeError(f"{request.node.nodeid} starts Ray: mark it @pytest.mark.ray")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    yield


@pytest.fixture(scope="session")
def sample() -> dict[str, str]:
    """Paths of the real sample files (`make sample-data` fetches them; `make test` runs it)."""
    from pipelines.demo.sample_data import load_manifest

    return load_manifest()


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray (2 CPUs, loopback) shared by every test that needs it: starting Ray costs
    seconds, so tests never start their own."""
    from pipelines.runtime import init_ray

    ray = init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


class RayHead(str):
    """A throw-away head's dashboard address (what ``ray job submit --address`` takes), with its
    GCS address (``.gcs``: what a driver's ``RAY_ADDRESS`` takes)."""

    gcs: str


@pytest.fixture(scope="session")
def ray_head() -> RayHead:
    """Start `ray start --head --block` on free loopback ports in its own process group (as
    `make demo` starts one); yield its addresses; stop exactly that head (its process group)
    afterwards."""
    from pipelines.demo.submit_local import _ray_cli, _stop_head, _wait_for_dashboard, free_port
    from pipelines.runtime import ensure_auth_token, ray_tmpdir

    configure_environment()
    ensure_auth_token()  # token authentication, as every head the project starts
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("RAY_ADDRESS", None)
    gcs_port, dash_port = free_port(), free_port()
    address = RayHead(f"http://127.0.0.1:{dash_port}")
    address.gcs = f"127.0.0.1:{gcs_port}"
    start = [_ray_cli(), "start", "--head", "--num-cpus=2", f"--port={gcs_port}", "--node-ip-address=127.0.0.1",
             "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}",
             f"--dashboard-agent-listen-port={free_port()}",  # 52365 may be taken by another head
             f"--temp-dir={ray_tmpdir()}", "--disable-usage-stats", "--block"]
    head = subprocess.Popen(start, env=env, stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_dashboard(address, timeout_s=120)
        yield address
    finally:
        _stop_head(head)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> str:
    """moto's standalone S3 server on 127.0.0.1 (the endpoint of ``S3_ENV``); stopped at the end."""
    server = Path(sys.executable).with_name("moto_server")
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(S3_PORT)], stdout=out,
                                stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(S3_ENV["AWS_ENDPOINT_URL"], timeout=1).read()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError(f"moto_server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
    yield S3_ENV["AWS_ENDPOINT_URL"]
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A new, empty bucket on the test S3 server: ``s3://<name>``."""
    import boto3

    name = f"openwit-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return f"s3://{name}"
