"""Token authentication on every Ray head the project starts: the job API refuses a submission
without the token (or with a wrong one) and runs one that carries it."""

from __future__ import annotations

import json
import os
import stat
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pipelines.ray_jobs import FollowConfig, submission_id, submit_and_follow
from pipelines.runtime import ensure_auth_token


def _submit_raw(address: str, token: str | None) -> int:
    """POST a job to the head's job API with urllib (no Ray client logic): the HTTP status."""
    body = json.dumps({"entrypoint": "python -c 'print(1)'"}).encode()
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"{address}/api/jobs/", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.mark.ray
def test_head_refuses_jobs_without_the_token_and_runs_them_with_it(ray_head):
    assert os.environ["RAY_AUTH_MODE"] == "token"  # the project's default, not "disabled"
    token_file = Path.home() / ".ray" / "auth_token"
    assert token_file.exists() and stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert _submit_raw(ray_head, None) == 401  # no token: refused before anything runs
    assert _submit_raw(ray_head, "0" * 64) == 403  # a wrong token: refused
    logs: list[str] = []
    job_id = submit_and_follow(ray_head, "python -c 'print(\"authenticated job ran\")'",
                               job_id=submission_id(f"/tmp/auth-test-{os.getpid()}", "auth", 1), log=logs.append,
                               config=FollowConfig(poll_s=0.5, tail_lines=5))
    assert job_id and any("authenticated job ran" in line for line in logs)
    token = token_file.read_text().strip()
    assert all(token not in line for line in logs)  # the token is never logged


def test_a_token_is_made_once_and_an_explicit_one_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    ensure_auth_token()
    made = tmp_path / ".ray" / "auth_token"
    first = made.read_text()
    assert len(first) == 64 and stat.S_IMODE(made.stat().st_mode) == 0o600
    ensure_auth_token()
    assert made.read_text() == first  # never replaced
    made.unlink()
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "mine"))
    ensure_auth_token()
    assert not made.exists()  # the user's own token is used, none is made
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # an explicit opt-out
    ensure_auth_token()
    assert not made.exists()


@pytest.mark.ray
def test_an_entry_point_starts_a_local_ray_it_can_authenticate_to():
    """An entry point as a user runs it (no RAY_* set): the script's imports pull Ray in before
    its main() runs, so the token default must be set by importing the package, not later (a
    later default started a token-guarded GCS that its own client, reading RAY_AUTH_MODE at
    import, could not talk to)."""
    import shutil
    import subprocess
    import sys
    import tempfile

    root = Path(__file__).resolve().parents[3]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    ray_tmp = tempfile.mkdtemp(prefix="ow-auth-")  # short: Ray's socket paths must fit 107 bytes
    env.update(RAY_TMPDIR=ray_tmp, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    code = ("from pipelines import wit_images\n"
            "import ray  # as the flag parser's imports do (pipelines.decontaminate → … → ray)\n"
            "from pipelines.runtime import init_ray\n"
            "ray = init_ray(num_cpus=1)\n"
            "print('sum', ray.get(ray.remote(lambda: 41 + 1).remote()))\n")
    try:
        done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                              timeout=180)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0 and "sum 42" in done.stdout, done.stderr[-2000:]
