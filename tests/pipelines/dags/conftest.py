"""Fixtures of the scheduling tests: a throw-away Ray head on 127.0.0.1 (as `make demo` starts one)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

# Airflow reads (and writes) its home at import: keep it in a throw-away dir, never ~/airflow.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="openwit-airflow-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

import pytest

from pipelines.runtime import configure_environment, ensure_auth_token, ray_tmpdir
from pipelines.demo.submit_local import _ray_cli, _stop_head, _wait_for_dashboard, free_port


@pytest.fixture(scope="session")
def ray_head() -> str:
    """Start `ray start --head --block` on free loopback ports in its own process group; yield the
    dashboard address; stop exactly that head (its process group) afterwards."""
    configure_environment()
    ensure_auth_token()  # token authentication, as every head the project starts
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("RAY_ADDRESS", None)
    gcs_port, dash_port = free_port(), free_port()
    address = f"http://127.0.0.1:{dash_port}"
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
