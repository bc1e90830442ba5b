"""Run a command as a Ray job on a throw-away local head bound to 127.0.0.1.

This is exactly what a user does against a real cluster (`ray job submit --address ... --working-dir .
-- python pipelines/build_wit.py ...`), with the head started first and stopped afterwards:

    python -m pipelines.demo.submit_local -- python pipelines/build_wit.py --out $PWD/runs/demo

Paths passed to the job must be absolute: the job runs inside a copy of the working dir.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from pipelines.ray_jobs import FORWARDED_ENV, project_runtime_env
from pipelines.runtime import auth_headers, configure_environment, ensure_auth_token, ray_tmpdir

def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_cli() -> str:
    # The venv's `ray`, so the head's workers and the job's `python` are the venv's.
    candidate = Path(sys.executable).with_name("ray")
    return str(candidate) if candidate.exists() else (shutil.which("ray") or "ray")


def _wait_for_dashboard(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            request = urllib.request.Request(f"{url}/api/version", headers=auth_headers())
            with urllib.request.urlopen(request, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"Ray dashboard at {url} did not come up within {timeout_s:.0f}s")


def submit_and_follow(address: str, command: list[str], working_dir: str | None, env_vars: dict[str, str],
                      agent_timeout_s: float = 120.0) -> int:
    """`ray job submit --address ADDRESS --working-dir DIR -- COMMAND`, through the SDK so a head
    whose job agent is still starting ("No available agent") is retried; the job's logs are
    followed to stdout. Returns 0 when the job succeeded, 1 otherwise."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    # the project's code only (pipelines.ray_jobs), unless a --working-dir is given explicitly
    runtime_env = project_runtime_env(env_vars) if working_dir is None else {"working_dir": working_dir, "env_vars": env_vars}
    print(f"+ ray job submit --address {address} --working-dir {runtime_env['working_dir']} -- {shlex.join(command)}",
          flush=True)
    client = JobSubmissionClient(address)
    deadline = time.monotonic() + agent_timeout_s
    while True:
        try:
            job_id = client.submit_job(entrypoint=shlex.join(command), runtime_env=runtime_env)
            break
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(2)

    async def follow() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    asyncio.run(follow())
    status = client.get_job_status(job_id)
    print(f"job {job_id}: {status}", flush=True)
    return 0 if status == JobStatus.SUCCEEDED else 1


def run(argv: list[str] | None = None) -> int:
    """Start a local head, `ray job submit` the command after `--`, stop the head; return the
    job's exit status (0 when it succeeded)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        raise SystemExit("usage: python -m pipelines.demo.submit_local [--num-cpus N] -- COMMAND ...")
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="pipelines.demo.submit_local")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count())
    parser.add_argument("--working-dir", default=None, help="upload this dir (default: the project's code only)")
    args = parser.parse_args(argv[:split])
    command = argv[split + 1 :]

    configure_environment()
    ensure_auth_token()  # the head requires the token (RAY_AUTH_MODE=token); this client sends it
    ray = _ray_cli()
    # the venv first on PATH: the head's workers and the job's `python` are the venv's
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    gcs_port, dash_port = free_port(), free_port()
    # this head's own temp dir: `ray start` records "the current cluster" in its temp dir, and
    # a driver started with address="auto" would find (and hang on) another head sharing it
    os.makedirs(ray_tmpdir(), exist_ok=True)
    temp_dir = tempfile.mkdtemp(prefix="h", dir=ray_tmpdir())
    address = f"http://127.0.0.1:{dash_port}"
    start = [
        ray, "start", "--head", f"--num-cpus={args.num_cpus}", f"--port={gcs_port}",
        "--node-ip-address=127.0.0.1", "--include-dashboard=true",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}",
        f"--dashboard-agent-listen-port={free_port()}",  # the default 52365 may be another head's
        f"--temp-dir={temp_dir}", "--disable-usage-stats", "--block",
    ]  # fmt: skip
    print("+", " ".join(start), flush=True)
    # --block in its own session: stopping it stops exactly this head (`ray stop` would stop
    # every Ray of this user on the machine).
    head = subprocess.Popen(start, env=env, stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_dashboard(address)
        env_vars = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        return submit_and_follow(address, command, args.working_dir, env_vars)
    finally:
        _stop_head(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop_head(head: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """SIGTERM the head's process group (raylet, GCS, dashboard), SIGKILL what outlives it."""
    try:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    raise SystemExit(run())
