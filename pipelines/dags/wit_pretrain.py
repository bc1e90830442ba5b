"""DAG ``wit_pretrain``: CLIP pretraining on new WIT shards, then zero-shot evaluation.

Scheduled on the Asset ``openwit_wit_shards`` (emitted by ``wit_curation``'s shards gate; the
event names the run dir) and runnable by hand (then ``params.out`` names the run dir):

    pretrain (Ray job: pipelines/pretrain.py on <out>/curation/shards/*.tar → <out>/pretrain/<run_name>)
    → evaluate (Ray job: pipelines/evaluate.py per eval set → <run>/eval/<set>.json)
    [→ contamination (Ray job: pipelines/contamination_report.py), only when that file exists]
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param

from pipelines.cli import field_default, field_help
from pipelines.dags.openwit_common import PROJECT_ROOT, SHARDS_ASSET, common_params, python_command, run_dir_of
from pipelines.dags.ray_operator import RayJobOperator
from pretrain.evaluate import TRANSFER, EvalConfig
from pretrain.train import PretrainJob, TrainConfig
from storage.layout import PretrainLayout, RunLayout

EVAL_SETS = TRANSFER  # the eval sets that need no held-out shards
CONTAMINATION_SCRIPT = PROJECT_ROOT / "pipelines" / "contamination_report.py"


def shard_pattern(run_dir: str) -> str:
    """The brace pattern of the run's training shards present (:meth:`RunLayout.shard_pattern`);
    none is an error saying to run wit_curation first."""
    layout = RunLayout(run_dir)
    try:
        return layout.shard_pattern()
    except FileNotFoundError as err:
        raise FileNotFoundError(f"no shards in {layout.shards_dir}: run wit_curation first") from err


def pretrain_layout(context: dict) -> PretrainLayout:
    """``<out>/pretrain/<run_name>``: the pretrain run of this DAG run."""
    return RunLayout(run_dir_of(context)).pretrain(context["params"]["run_name"])


def pretrain_dir(context: dict) -> str:
    return pretrain_layout(context).root


def pretrain_command(context: dict) -> str:
    """``python pipelines/pretrain.py`` on this run's shards with the run's params."""
    p = context["params"]
    args = ["--train-data", shard_pattern(run_dir_of(context)), "--out", pretrain_dir(context),
            "--model", p["model"], "--steps", p["steps"], "--batch-size", p["batch_size"],
            "--workers", p["workers"], "--seed", p["seed"], *p["pretrain_options"]]
    return python_command("pipelines/pretrain.py", args)


def evaluate_command(context: dict) -> str:
    """One ``python pipelines/evaluate.py`` per eval set, joined with ``&&`` (one Ray job)."""
    p, run = context["params"], pretrain_layout(context)
    return " && ".join(
        python_command("pipelines/evaluate.py", ["--checkpoint", run.root, "--dataset", name,
                                                 "--limit", p["eval_limit"], "--out", run.eval_result(name)])
        for name in p["eval_sets"])


def contamination_command(context: dict) -> str:
    """The contamination report (CLIP §5) of the run's eval sets against its training shards,
    written to ``<out>/reports/contamination/`` (the run layout's ``contamination_report``)."""
    p = context["params"]
    run_dir = run_dir_of(context)
    args = ["--train-data", shard_pattern(run_dir), "--checkpoint", pretrain_dir(context),
            "--dataset", *p["eval_sets"], "--out", RunLayout(run_dir).contamination_report.root,
            *(["--eval-limit", p["eval_limit"]] if p["eval_limit"] else []),
            *(["--detector-weights", p["detector_weights"]] if p["detector_weights"] else [])]
    return python_command("pipelines/contamination_report.py", args)


def _param(cls: type, name: str, **schema) -> Param:
    """A param mirroring config field ``name`` of ``cls``: its default and its comment."""
    return Param(field_default(cls, name), description=field_help(cls, name), **schema)


def pretrain_params() -> dict:
    """The DAG's params: defaults and descriptions are those of the config fields that
    pretrain.py's and evaluate.py's flags set (TrainConfig, PretrainJob, EvalConfig)."""
    return {
        **common_params(),
        "run_name": Param("wit", type="string", pattern="^[A-Za-z0-9._-]+$", description="<out>/pretrain/<run_name>"),
        "model": _param(TrainConfig, "model", type="string"),
        "steps": _param(TrainConfig, "steps", type="integer", minimum=1),
        "batch_size": _param(TrainConfig, "batch_size", type="integer", minimum=1),
        "workers": _param(PretrainJob, "workers", type="integer", minimum=0),
        "seed": _param(TrainConfig, "seed", type="integer", minimum=0),
        "pretrain_options": Param([], type="array", items={"type": "string"},
                                  description="extra pretrain.py flags, e.g. [\"--use-gpu\"]"),
        "eval_sets": Param(["fashion-mnist"], type="array", items={"enum": list(EVAL_SETS)}, minItems=1,
                           description="zero-shot eval sets"),
        "eval_limit": _param(EvalConfig, "limit", type="integer", minimum=0),
        "detector_weights": Param("contamination/assets/copy_detector.pt", type="string",
                                  description="copy-detector weights for the contamination report (a path in the "
                                              "job's working dir or a URI; empty: train one on the shards)"),
    }


with DAG(
    dag_id="wit_pretrain",
    description="CLIP pretraining on new WIT shards (Ray Train job), then zero-shot evaluation",
    schedule=[SHARDS_ASSET],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    params=pretrain_params(),
    tags=["openwit"],
    doc_md=__doc__,
) as dag:
    pretrain = RayJobOperator(task_id="pretrain", entrypoint=pretrain_command, run_dir=run_dir_of)
    evaluate = RayJobOperator(task_id="evaluate", entrypoint=evaluate_command, run_dir=run_dir_of)
    pretrain >> evaluate
    if CONTAMINATION_SCRIPT.exists():
        evaluate >> RayJobOperator(task_id="contamination", entrypoint=contamination_command, run_dir=run_dir_of)
