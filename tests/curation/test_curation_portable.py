"""The selection on Beam's PortableRunner — Python's local job service and an external worker
pool, both on 127.0.0.1 — writes the same bytes as on the DirectRunner. Unknown flags of
build_wit go to the Beam runner, as on a real Flink/Spark/Dataflow deployment."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines import build_wit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@pytest.fixture
def portable_services(tmp_path, monkeypatch):
    """A local Beam job service and an external Python worker pool (its workers are the venv's
    python: the venv's bin/ goes first on PATH)."""
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    job_port, pool_port = _free_port(), _free_port()
    procs = []
    for args, port in (([sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                         "--port", str(job_port)], job_port),
                       ([sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                         "--service_port", str(pool_port)], pool_port)):
        log = open(tmp_path / f"{port}.log", "wb")
        procs.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        _wait_port(port, procs[-1])
    yield [f"--job_endpoint=localhost:{job_port}", "--environment_type=EXTERNAL",
           f"--environment_config=localhost:{pool_port}"]
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=20)


def _selection(out: Path) -> dict[str, bytes]:
    cur = out / "curation"
    paths = sorted(cur.glob("selected/part-*.parquet")) + sorted(cur.glob("rejects/*/part-*.parquet"))
    return {str(p.relative_to(cur)): p.read_bytes() for p in paths + [cur / "entry_counts.parquet"]}


@pytest.mark.slow
def test_portable_runner_equals_direct_runner(pool_and_queries, portable_services, tmp_path):
    pool, queries, _ = pool_and_queries
    argv = ["--pool", pool, "--queries", queries, "--until", "select", "--t", "20", "--parts", "4",
            "--runner", "beam"]
    direct = build_wit.run([*argv, "--out", str(tmp_path / "direct")])
    portable = build_wit.run([*argv, "--out", str(tmp_path / "portable"), "--beam-runner", "PortableRunner",
                              *portable_services])
    assert portable["stages"] == direct["stages"] and portable["selected"] > 0
    assert _selection(tmp_path / "portable") == _selection(tmp_path / "direct")
