"""RayJobOperator: a failed job fails the task with its last log lines; on_kill stops the job."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

pytest.importorskip("airflow", reason="the `airflow` extra (make test installs it)")

from pipelines.dags.ray_operator import RayJobOperator  # noqa: E402
from pipelines.ray_jobs import FollowConfig, RayJobFailed  # noqa: E402

pytestmark = pytest.mark.ray


def context(address: str, try_number: int = 1) -> dict:
    return {"params": {"ray_address": address, "out": "/tmp/op-test"}, "run_id": f"manual__{time.time_ns()}",
            "ti": SimpleNamespace(try_number=try_number)}


def operator(entrypoint: str) -> RayJobOperator:
    return RayJobOperator(task_id=f"t{time.time_ns()}", entrypoint=lambda c: entrypoint,
                          run_dir=lambda c: c["params"]["out"], follow=FollowConfig(poll_s=0.5, tail_lines=3))


def test_failing_job_fails_the_task_with_its_last_lines(ray_head):
    op = operator("python -c \"import sys; [print('row', i) for i in range(9)]; sys.exit('stage exploded')\"")
    with pytest.raises(RayJobFailed, match=r"(?s)ended FAILED; last 3 log lines:.*stage exploded"):
        op.execute(context(ray_head))


def test_on_kill_stops_the_job(ray_head):
    from ray.job_submission import JobSubmissionClient

    op = operator("python -c \"import time; time.sleep(600)\"")
    outcome = {}

    def run():
        try:
            op.execute(context(ray_head))
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    client = JobSubmissionClient(ray_head)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (op._job_id and client.get_job_status(op._job_id).value == "RUNNING"):
        time.sleep(0.5)
    assert op._job_id, "the job was never submitted"
    op.on_kill()  # what the task runner calls on SIGTERM
    thread.join(timeout=60)
    assert str(client.get_job_status(op._job_id).value) == "STOPPED"
    assert isinstance(outcome.get("error"), RayJobFailed) and "STOPPED" in str(outcome["error"])
