"""pipelines.ray_jobs: the job packaging (project code only) and submit/follow/stop, on a real local Ray head."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipelines.ray_jobs import (PROJECT_ROOT, FollowConfig, RayJobFailed, project_excludes, project_runtime_env,
                                stop_job, submission_id, submit_and_follow)

FAST = FollowConfig(poll_s=0.5, tail_lines=5)


def _job_status(address: str, job_id: str) -> str:
    from ray.job_submission import JobSubmissionClient

    return str(JobSubmissionClient(address).get_job_status(job_id).value)


def _unique(task: str) -> str:
    return submission_id(f"/tmp/test-{os.getpid()}-{time.time_ns()}", task, 1)


@pytest.fixture
def growing_root_file():
    """A file in the repo root that a thread keeps appending to (like `make demo | tee demo.log`)."""
    path = PROJECT_ROOT / f".ray-jobs-test-{os.getpid()}.log"
    stop = threading.Event()

    def append():
        with open(path, "a") as f:
            while not stop.is_set():
                f.write("x" * 4096 + "\n")
                f.flush()
                time.sleep(0.001)

    thread = threading.Thread(target=append, daemon=True)
    thread.start()
    time.sleep(0.2)
    yield path
    stop.set()
    thread.join()
    path.unlink()


def test_excludes_keep_only_project_code(growing_root_file):
    """The package URI (a content hash) ignores files outside the packages, even a growing one."""
    from ray._private.runtime_env.packaging import get_uri_for_directory

    excludes = project_excludes()
    first = get_uri_for_directory(PROJECT_ROOT, excludes=excludes, include_gitignore=True)
    time.sleep(0.3)  # the root file grew meanwhile
    assert get_uri_for_directory(PROJECT_ROOT, excludes=excludes, include_gitignore=True) == first
    from pathspec import PathSpec

    spec = PathSpec.from_lines("gitwildmatch", excludes)
    assert spec.match_file(growing_root_file.name) and spec.match_file("data") and spec.match_file("tests/x.py")
    assert not any(spec.match_file(p) for p in ("pipelines/build_wit.py", "curation/gates.py", "pyproject.toml",
                                                 "pretrain/model_configs/tiny.json"))
    assert spec.match_file("pipelines/__pycache__/x.cpython-311.pyc")
    assert not spec.match_file(".")  # Ray tests the root itself as "."
    assert first != "gcs://_ray_pkg_3030303030303030.zip"  # not the hash of an empty package


@pytest.mark.ray
def test_submit_while_root_file_grows(ray_head, growing_root_file):
    """A job submitted with the project packaging succeeds while a root file is being appended to,
    and it sees the project's code (its working dir holds the packages, not the growing file)."""
    lines = []
    check = ("import os, pipelines.ray_jobs; print('pkg-ok', sorted(os.listdir('.')))")
    job = submit_and_follow(ray_head, shlex.join(["python", "-c", check]), job_id=_unique("grow"),
                            runtime_env=project_runtime_env(), log=lines.append, config=FAST)
    assert _job_status(ray_head, job) == "SUCCEEDED"
    out = "\n".join(lines)
    assert "pkg-ok ['contamination', 'curation', 'pipelines', 'pretrain', 'pyproject.toml', 'queries', 'storage']" in out, out


@pytest.mark.ray
@pytest.mark.slow
def test_submit_local_while_root_file_grows(growing_root_file, capfd):
    """The demo's own path, `python -m pipelines.demo.submit_local -- COMMAND` (a throw-away head
    + `ray job submit`), succeeds while a file in the repo root is being appended to."""
    from pipelines.demo import submit_local

    check = "import os, curation.images.recipe; print('job-ok', sorted(os.listdir('.')))"
    assert submit_local.run(["--num-cpus", "1", "--", "python", "-c", check]) == 0
    out = capfd.readouterr().out
    assert "job-ok ['contamination', 'curation', 'pipelines', 'pretrain', 'pyproject.toml', 'queries', 'storage']" in out, out[-3000:]


@pytest.mark.ray
def test_failed_job_raises_with_last_log_lines(ray_head):
    script = "import sys\nfor i in range(30): print(f'line {i}')\nsys.exit('boom: the stage broke')"
    job_id = _unique("fail")
    with pytest.raises(RayJobFailed) as info:
        submit_and_follow(ray_head, shlex.join(["python", "-c", script]), job_id=job_id,
                          runtime_env=project_runtime_env(), log=lambda _: None, config=FAST)
    message = str(info.value)
    assert job_id in message and "FAILED" in message and "boom: the stage broke" in message
    assert "line 29" in message and "line 10" not in message  # only the last lines (tail_lines=5)


@pytest.mark.ray
def test_same_id_reattaches_and_earlier_running_try_is_followed(ray_head):
    """Resubmitting a finished id does not run it again; a running earlier try is re-attached to."""
    marker = Path(f"/tmp/openwit-reattach-{os.getpid()}-{time.time_ns()}")
    job_id = _unique("attach")
    cmd = shlex.join(["python", "-c", f"open({str(marker)!r}, 'a').write('ran\\n')"])
    submit_and_follow(ray_head, cmd, job_id=job_id, runtime_env=project_runtime_env(), log=lambda _: None, config=FAST)
    submit_and_follow(ray_head, cmd, job_id=job_id, runtime_env=project_runtime_env(), log=lambda _: None, config=FAST)
    assert marker.read_text() == "ran\n"  # ran once
    marker.unlink()

    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(ray_head)
    earlier = _unique("attach-earlier")
    client.submit_job(entrypoint="python -c \"import time; time.sleep(3); print('earlier-done')\"",
                      runtime_env=project_runtime_env(), submission_id=earlier)
    lines = []
    followed = submit_and_follow(ray_head, "python -c \"print('new-try')\"", job_id=_unique("attach-new"),
                                 previous_ids=[earlier], runtime_env=project_runtime_env(), log=lines.append,
                                 config=FAST)
    assert followed == earlier and "earlier-done" in "\n".join(lines) and "new-try" not in "\n".join(lines)


@pytest.mark.ray
def test_sigterm_of_the_follower_stops_the_job(ray_head, tmp_path):
    """A follower process killed with SIGTERM (what a scheduler does) stops its Ray job."""
    job_id = _unique("kill")
    driver = tmp_path / "follow.py"
    driver.write_text(
        "import shlex, signal, sys\n"
        "from pipelines.ray_jobs import FollowConfig, project_runtime_env, submit_and_follow\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))\n"
        f"submit_and_follow({ray_head!r}, \"python -c 'import time; print(\\\"job\\\" + \\\"-running\\\", flush=True); time.sleep(600)'\",\n"
        f"                  job_id={job_id!r}, runtime_env=project_runtime_env(), config=FollowConfig(poll_s=0.5))\n")
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    proc = subprocess.Popen([sys.executable, str(driver)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "job-running" in line:  # printed by the job (the entry point itself spells it apart)
            break
    else:
        proc.kill()
        pytest.fail("job did not start")
    assert _job_status(ray_head, job_id) == "RUNNING"
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=90)[0]
    assert proc.returncode == 143, rest
    assert f"stopping job {job_id}" in rest
    assert _job_status(ray_head, job_id) == "STOPPED"


@pytest.mark.ray
def test_stop_job_of_unknown_id_is_none(ray_head):
    assert stop_job(ray_head, _unique("never-submitted")) is None
