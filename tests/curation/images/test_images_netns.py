"""Refused addresses through img2dataset's own (spawned) workers, inside a network namespace
with only loopback up: a packet to 169.254.169.254 cannot leave the machine even if the guard
were broken. Needs root and `unshare` (skipped otherwise, with the reason)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("netns_refusals.py")


def _netns_available() -> str | None:
    if os.geteuid() != 0:
        return "needs root for `unshare -n`"
    if not (shutil.which("unshare") and shutil.which("ip")):
        return "needs `unshare` and `ip`"
    probe = subprocess.run(["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True)
    return None if probe.returncode == 0 else f"unshare -n failed: {probe.stderr.decode().strip()}"


@pytest.mark.slow
def test_redirect_and_metadata_refused_in_download_workers(tmp_path):
    reason = _netns_available()
    if reason:
        pytest.skip(reason)
    env = dict(os.environ, RAY_TMPDIR=str(tmp_path / "ray"), TMPDIR=str(tmp_path))
    proc = subprocess.run(
        ["unshare", "-n", "sh", "-c", f'ip link set lo up && exec "{sys.executable}" "{SCRIPT}"'],
        capture_output=True, text=True, timeout=240, env=env,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    uids = result["uids"]
    redirect = next(u for url, u in uids.items() if url.endswith("/redirect/metadata"))
    good = next(u for url, u in uids.items() if url.endswith("/img/00.png"))
    assert result["downloaded"] == [good]
    assert result["download"] == {redirect: "urlguard_redirect_metadata_address"}
    assert result["urlguard"] == {uids["http://169.254.169.254/latest/meta-data/"]: "metadata_address",
                                  uids["http://10.11.12.13/a.png"]: "private_address"}
