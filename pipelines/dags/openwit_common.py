"""What the openwit DAGs share: the shards Asset, the common params, the gate task, run-dir helpers."""

from __future__ import annotations

import math
import os
import shlex
from pathlib import Path

from airflow.sdk import Asset, Param, get_current_context, task

from curation.gates import GateBands, evaluate_gate, failure_message
from pipelines.dags.ray_operator import DEFAULT_RAY_ADDRESS
from storage.layout import RunLayout

# The curation DAG's shards gate emits this Asset when a run's shards pass it; the event's extra
# names the run dir (``run_dir``), so wit_pretrain trains on the shards that triggered it.
SHARDS_ASSET = Asset(name="openwit_wit_shards", uri="openwit://wit_curation/shards", group="openwit")
# Defaults a deployment sets once in the scheduler's environment (a param overrides per run).
DEFAULT_RUN_DIR = os.environ.get("OPENWIT_RUN_DIR", "/tmp/openwit/wit")


def common_params() -> dict:
    """Run dir URI and Ray address (both DAGs)."""
    return {
        "out": Param(DEFAULT_RUN_DIR, type="string", minLength=1,
                     description="run directory URI (absolute path, s3://, gs://): <out>/curation/, <out>/pretrain/"),
        "ray_address": Param(os.environ.get("RAY_ADDRESS") or DEFAULT_RAY_ADDRESS, type="string",
                             description="Ray dashboard address jobs are submitted to"),
    }


def band_params() -> dict:
    """One ``band_<figure>`` param per gate figure, default = :class:`GateBands`' defaults."""
    params = {}
    for name, band in vars(GateBands()).items():
        default = [band.lo, None if math.isinf(band.hi) else band.hi]
        params[f"band_{name}"] = Param(default, type="array", items={"type": ["number", "null"]},
                                       minItems=2, maxItems=2,
                                       description=f"gate band [lo, hi] of {name} (hi null = unbounded)")
    return params


def bands_from_params(params: dict) -> GateBands:
    """The :class:`GateBands` of a run's ``band_*`` params."""
    # params[k], not .items(): a ParamsDict's items() yields Param objects, indexing yields values
    return GateBands.from_mapping({k[len("band_"):]: params[k] for k in params if k.startswith("band_")})


def python_command(script: str, args: list[str]) -> str:
    """``python <script> <args>`` as one shell-quoted entry point (run in the job's working dir)."""
    return shlex.join(["python", script, *[str(a) for a in args]])


def run_dir_of(context: dict) -> str:
    """The run dir of this DAG run: the triggering shards event's ``run_dir``, else ``params.out``."""
    for events in (context.get("triggering_asset_events") or {}).values():
        for event in events:
            if (event.extra or {}).get("run_dir"):
                return event.extra["run_dir"]
    return context["params"]["out"]


def balancing_threshold(params, run_dir: str) -> float:
    """The t the run balanced with: ``params.t`` when set, else the t ``build_wit.py`` scaled to
    the pool (its ``stats/summary.json``; MetaCLIP's t before any selection)."""
    from curation.text.threshold import METACLIP_T

    t = params.get("t")
    if t is not None:
        return float(t)
    layout = RunLayout(run_dir)
    return float(layout.read_json(layout.summary)["t"]) if layout.exists(layout.summary) else float(METACLIP_T)


def check_gate(gate: str, context: dict) -> dict:
    """Evaluate ``gate`` on this run, log the decision and figures, push them as the XCom
    ``gate``; fail the task (no retry: the data will not change) when a figure leaves its band."""
    from airflow.exceptions import AirflowFailException

    params = context["params"]
    run_dir = run_dir_of(context)
    result = evaluate_gate(gate, run_dir, bands_from_params(params), t=balancing_threshold(params, run_dir),
                           t_scaled=params.get("t") is None)
    for figure in result.figures:
        task_log(figure.describe())
    decision = result.to_dict()
    context["ti"].xcom_push(key="gate", value=decision)
    task_log(f"gate {gate}: {'PASS' if result.passed else 'FAIL'}")
    if not result.passed:
        raise AirflowFailException(failure_message(result, run_dir))
    return decision


def task_log(message: str) -> None:
    """A line in the task log."""
    import logging

    logging.getLogger("airflow.task").info(message)


def gate_task(gate: str, **task_kwargs):
    """A ``@task`` running :func:`check_gate` for ``gate`` (``task_id=gate_<gate>``)."""

    @task(task_id=f"gate_{gate}", **task_kwargs)
    def _gate() -> dict:
        context = get_current_context()
        decision = check_gate(gate, context)
        if SHARDS_ASSET in task_kwargs.get("outlets", ()):
            context["outlet_events"][SHARDS_ASSET].extra = {"run_dir": run_dir_of(context),
                                                            "shard_samples": decision["figures"][0]["value"]}
        return decision

    return _gate


PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
