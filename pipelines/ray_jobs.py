"""Ray job packaging and submission: the project's code as a runtime env, and a submit/follow helper.

No Airflow here: ``pipelines/demo/submit_local.py`` (the demo) and the Airflow operator in
``pipelines/dags/`` both use it.

- :func:`project_runtime_env` uploads the project's code only (its packages and
  ``pyproject.toml``), never whatever else sits in the repo root: ``working_dir`` is the repo root
  with an ``excludes`` list that drops every top-level entry but those, so a log file being
  appended to beside the code (``make demo | tee demo.log``) is neither hashed nor zipped (with a
  plain ``--working-dir .`` such a file fails the job with "Failed to download runtime_env file
  package").
- :func:`submit_and_follow` submits an entry point under a deterministic ``submission_id``
  (:func:`submission_id`), re-attaches to a job of that id (or of an earlier try) that is still
  running instead of starting a duplicate, streams the job's logs, polls to a terminal state,
  raises :class:`RayJobFailed` with the job's last log lines on failure, and stops the job when
  the follower is interrupted (an exception, KeyboardInterrupt, SystemExit from SIGTERM).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# What a job needs of the repo: the packages and the project file. Nothing else travels.
PROJECT_PACKAGES = ("storage", "queries", "curation", "pretrain", "contamination", "pipelines")
PROJECT_FILES = ("pyproject.toml",)
# Variables the job must see as the submitter does (the sample data dir, offline switches).
FORWARDED_ENV = (
    "OPENWIT_DATA",
    "RAY_USAGE_STATS_ENABLED",
    "NO_ALBUMENTATIONS_UPDATE",
    "TOKENIZERS_PARALLELISM",
    "HF_HUB_OFFLINE",
)
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class RayJobFailed(RuntimeError):
    """A Ray job ended FAILED or STOPPED; the message holds its id, status and last log lines."""


def project_excludes(keep: Iterable[str] = PROJECT_PACKAGES + PROJECT_FILES) -> list[str]:
    """gitignore-style ``excludes`` for a ``working_dir`` at the repo root: every top-level entry
    except ``keep`` (so files that appear later are excluded too), plus bytecode. (``!/.``: Ray
    also tests the root itself, as ``.``, which ``/*`` would match.)"""
    return ["/*", "!/.", *(f"!/{name}" for name in keep), "__pycache__/", "*.pyc"]


def project_runtime_env(env_vars: dict[str, str] | None = None, root: str | Path = PROJECT_ROOT) -> dict:
    """The runtime env of every openwit job: the project's code as ``working_dir`` (the job's
    cwd, so ``python pipelines/build_wit.py`` works) and ``env_vars`` (default: the forwarded
    variables set here)."""
    import os

    if env_vars is None:
        env_vars = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    return {"working_dir": str(root), "excludes": project_excludes(), "env_vars": dict(env_vars)}


def submission_id(run_dir: str, task: str, try_number: int) -> str:
    """A deterministic Ray submission id for one try of one task on one run dir."""
    digest = hashlib.sha256(f"{run_dir}\0{task}".encode()).hexdigest()[:16]
    safe_task = "".join(c if c.isalnum() or c in "-_" else "-" for c in task)[:48]
    return f"openwit-{safe_task}-{digest}-try{int(try_number)}"


@dataclass(frozen=True)
class FollowConfig:
    """How :func:`submit_and_follow` waits."""

    poll_s: float = 2.0  # seconds between status/log polls
    tail_lines: int = 40  # log lines quoted in the error of a failed job
    agent_timeout_s: float = 120.0  # retry "No available agent" this long (a head still starting)
    stop_timeout_s: float = 60.0  # wait this long for a stopped job to reach a terminal state


def submit_and_follow(address: str, entrypoint: str, *, job_id: str, runtime_env: dict | None = None,
                      previous_ids: Iterable[str] = (), log: Callable[[str], None] = print,
                      config: FollowConfig = FollowConfig(), on_job: Callable[[str], None] | None = None) -> str:
    """Run ``entrypoint`` as the Ray job ``job_id`` on the cluster at ``address`` and follow it.

    A job of ``previous_ids`` (earlier tries) or ``job_id`` itself that is still pending/running is
    re-attached to, not duplicated; a finished ``job_id`` is not resubmitted (SUCCEEDED returns,
    FAILED/STOPPED raise). Otherwise ``job_id`` is submitted (the stages resume from their
    markers). Logs go to ``log``; ``on_job`` gets the id being followed (so a killer can stop it).
    Returns the id on SUCCEEDED; raises :class:`RayJobFailed` otherwise. Any exception while
    following (KeyboardInterrupt, SystemExit on SIGTERM) stops the job before it propagates."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    followed = _attach_or_submit(client, entrypoint, job_id, runtime_env, previous_ids, log, config)
    if on_job:
        on_job(followed)
    try:
        status = _follow(client, followed, log, config)
    except BaseException:
        log(f"[ray_jobs] interrupted: stopping job {followed}")
        stop_job(address, followed, config.stop_timeout_s)
        raise
    if status != "SUCCEEDED":
        lines = client.get_job_logs(followed).splitlines()[-config.tail_lines:]
        raise RayJobFailed(f"Ray job {followed} ended {status}; last {len(lines)} log lines:\n" + "\n".join(lines))
    return followed


def _status(client, job_id: str) -> str | None:
    try:
        return str(client.get_job_status(job_id).value)
    except RuntimeError as exc:  # the SDK raises RuntimeError("... does not exist") for unknown ids
        if "does not exist" in str(exc) or "404" in str(exc):
            return None
        raise


def _attach_or_submit(client, entrypoint, job_id, runtime_env, previous_ids, log, config) -> str:
    for earlier in previous_ids:
        if _status(client, earlier) in ("PENDING", "RUNNING"):
            log(f"[ray_jobs] re-attaching to {earlier} (an earlier try still running)")
            return earlier
    existing = _status(client, job_id)
    if existing is not None:
        log(f"[ray_jobs] job {job_id} exists ({existing}): following it, not resubmitting")
        return job_id
    log(f"[ray_jobs] submitting {job_id}: {entrypoint}")
    deadline = time.monotonic() + config.agent_timeout_s
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, submission_id=job_id)
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(2)


def _follow(client, job_id: str, log: Callable[[str], None], config: FollowConfig) -> str:
    """Stream new log text each poll until the job is terminal; return its status."""
    seen = 0
    while True:
        status = _status(client, job_id)
        logs = client.get_job_logs(job_id)
        if len(logs) > seen:
            for line in logs[seen:].rstrip("\n").split("\n"):
                log(line)
            seen = len(logs)
        if status in TERMINAL:
            return status
        time.sleep(config.poll_s)


def stop_job(address: str, job_id: str, timeout_s: float = 60.0) -> str | None:
    """Stop ``job_id`` and wait until it is terminal; return its final status (None if unknown)."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    status = _status(client, job_id)
    if status is None or status in TERMINAL:
        return status
    client.stop_job(job_id)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = _status(client, job_id)
        if status in TERMINAL:
            return status
        time.sleep(0.5)
    return status
