"""`RayJobOperator`: one Airflow task = one Ray job of an openwit entry point.

There is no maintained Ray provider for Airflow 3, so this is ours, a thin shell around
:func:`pipelines.ray_jobs.submit_and_follow`: the entry point is submitted with the project's
runtime env (its code only) under a submission id derived from the run dir, the DAG run, the task
and the try (a retry resumes the stages' work from their markers; an earlier try's job that is
still running is re-attached to, never duplicated); the job's log streams into the task log; a
failed job fails the task with the job's last log lines; killing the task stops the job.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from airflow.sdk import BaseOperator

from pipelines.ray_jobs import FollowConfig, project_runtime_env, stop_job, submission_id, submit_and_follow

DEFAULT_RAY_ADDRESS = "http://127.0.0.1:8265"


class RayJobOperator(BaseOperator):
    """Run ``entrypoint(context)`` (a shell command line, e.g. ``python pipelines/build_wit.py
    ...``) as a Ray job on ``params.ray_address`` (else ``$RAY_ADDRESS``, else the local
    default) and wait for it. ``entrypoint`` is a callable of the task context so the command can
    be built from params and upstream results; ``run_dir(context)`` names the run dir the
    submission id is derived from. Returns the Ray submission id (an XCom)."""

    ui_color = "#e8f0fe"

    def __init__(self, *, entrypoint: Callable[[dict], str], run_dir: Callable[[dict], str],
                 follow: FollowConfig = FollowConfig(), **kwargs: Any):
        super().__init__(**kwargs)
        self.entrypoint = entrypoint
        self.run_dir = run_dir
        self.follow = follow
        self._address: str | None = None
        self._job_id: str | None = None

    def _ids(self, context: dict) -> tuple[str, list[str]]:
        """This try's submission id and those of the earlier tries of this task in this DAG run."""
        key = f"{self.run_dir(context)}|{self.dag_id}|{context['run_id']}|{self.task_id}"
        try_number = int(context["ti"].try_number)
        return submission_id(key, self.task_id, try_number), [submission_id(key, self.task_id, n)
                                                               for n in range(1, try_number)]

    def execute(self, context: dict) -> str:
        self._address = context["params"].get("ray_address") or os.environ.get("RAY_ADDRESS") or DEFAULT_RAY_ADDRESS
        job_id, earlier = self._ids(context)
        entrypoint = self.entrypoint(context)
        self.log.info("Ray job %s on %s: %s", job_id, self._address, entrypoint)
        return submit_and_follow(self._address, entrypoint, job_id=job_id, runtime_env=project_runtime_env(),
                                 previous_ids=earlier, log=self.log.info, config=self.follow,
                                 on_job=self._remember)

    def _remember(self, job_id: str) -> None:
        self._job_id = job_id

    def on_kill(self) -> None:
        """Stop the job this task follows (SIGTERM from the scheduler, a timeout, a mark-failed)."""
        if self._address and self._job_id:
            status = stop_job(self._address, self._job_id, timeout_s=self.follow.stop_timeout_s)
            self.log.info("task killed: Ray job %s stopped (%s)", self._job_id, status)
