"""DAG ``wit_curation``: the WIT curation run on a schedule, with data-quality gates between stages.

    queries (Beam: build_queries.py) → select (Ray job: build_wit.py --until select) → gate_selection
    → download (Ray job: build_wit.py --until download) → gate_download
    → images (Ray job: build_wit.py: image check, image dedup, shards, report.html) → gate_shards
    → emits the Asset ``openwit_wit_shards`` (extra: the run dir), which schedules ``wit_pretrain``.

Every task runs an existing entry point; nothing here re-implements a stage. The stages resume
from their markers, so a rerun (or a retried task) continues where the last one stopped.
Schedule: ``$OPENWIT_CURATION_SCHEDULE`` (a cron string or preset; default ``@weekly``).
"""

from __future__ import annotations

import os
import sys
from datetime import datetime

from airflow.providers.apache.beam.operators.beam import BeamDataflowMixin, BeamRunPythonPipelineOperator
from airflow.sdk import DAG, Param

from curation.text.config import BALANCE_MODES, CurationConfig
from pipelines.cli import field_default, field_help
from pipelines.dags.openwit_common import (PROJECT_ROOT, SHARDS_ASSET, band_params, common_params, gate_task,
                                           python_command, run_dir_of)
from pipelines.dags.ray_operator import RayJobOperator
from pipelines.jobs import ENGINES, Engine, QueryEngine
from pipelines.runtime import DEFAULT_BEAM_RUNNER
from storage.layout import RunLayout

SCHEDULE = os.environ.get("OPENWIT_CURATION_SCHEDULE", "@weekly")


class _WithoutGoogleProvider(BeamDataflowMixin):
    """Skips the Dataflow mixin's constructor check: provider 6.3.1 refuses to build any Beam
    operator unless the Google provider is installed, even for the DirectRunner (which never
    touches it), and its ``execute`` builds a ``DataflowConfiguration`` (see
    ``QueryListOperator._cast_dataflow_config``). Placed before the mixin in the MRO; Dataflow
    itself still needs that provider."""

    def __init__(self):  # noqa: D107 - deliberately not calling the mixin's __init__
        pass


class QueryListOperator(BeamRunPythonPipelineOperator, _WithoutGoogleProvider):
    """``pipelines/build_queries_beam.py`` through the Beam provider, options from the run's params
    (``out`` + ``query_options``), runner = ``params.beam_runner``."""

    def _cast_dataflow_config(self):
        if self.runner.lower() == "dataflowrunner":  # needs the Google provider, as upstream
            super()._cast_dataflow_config()

    def execute(self, context):
        params = context["params"]
        self.pipeline_options = {**(self.pipeline_options or {}), **params["query_options"], "out": params["out"]}
        self.runner = params["beam_runner"]
        return super().execute(context)


def build_wit_command(context: dict, until: str) -> str:
    """``python pipelines/build_wit.py`` with this run's params, stopping after ``until``."""
    p = context["params"]
    out = run_dir_of(context)
    args = ["--out", out, "--queries", RunLayout(out).queries_parquet, "--seed", p["seed"], "--balance", p["balance"],
            "--runner", p["engine"], "--until", until]
    args += ["--t", p["t"]] if p["t"] is not None else []  # unset: t scaled to the pool (build_wit.py's default)
    args += ["--pool", *p["pool"]] if p["pool"] else ["--sample"]  # no pool: the data dir's sample pool
    return python_command("pipelines/build_wit.py", args + list(p["build_wit_options"]))


def curation_params() -> dict:
    """The DAG's params: defaults and descriptions are the config fields' (those of build_wit.py's
    and build_queries.py's flags)."""
    return {
        **common_params(),
        "t": Param(field_default(CurationConfig, "t"), type=["number", "null"], exclusiveMinimum=0,
                   description=field_help(CurationConfig, "t").replace("None (unset)", "null")),
        "seed": Param(field_default(CurationConfig, "seed"), type="integer", minimum=0,
                      description=field_help(CurationConfig, "seed")),
        "balance": Param(field_default(CurationConfig, "balance"), enum=list(BALANCE_MODES),
                         description=field_help(CurationConfig, "balance")),
        "pool": Param([], type="array", items={"type": "string"},
                      description=f"candidate {field_help(CurationConfig, 'pool')} (empty: the data dir's sample "
                                  "pool, --sample)"),
        "engine": Param(field_default(Engine, "runner"), enum=list(ENGINES),
                        description=f"selection {field_help(Engine, 'runner')}, inside the Ray job"),
        "beam_runner": Param(field_default(QueryEngine, "beam_runner") or DEFAULT_BEAM_RUNNER, type="string",
                             description=f"query-list task: {field_help(QueryEngine, 'beam_runner')}"),
        "query_options": Param({}, type="object",
                               description="build_queries.py options: at least one source (wiki_dump, text, "
                                           "unigram_counts, titles/pageviews, wordnet) or {\"sample\": true}; "
                                           "e.g. {\"wiki_dump\": [...], \"min_count\": 100}"),
        "build_wit_options": Param([], type="array", items={"type": "string"},
                                   description="extra build_wit.py flags, e.g. [\"--processes\", \"16\"]"),
        **band_params(),
    }


with DAG(
    dag_id="wit_curation",
    description="WIT curation: query list → selection → download → image dedup + shards, with data-quality gates",
    schedule=SCHEDULE,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    params=curation_params(),
    tags=["openwit"],
    doc_md=__doc__,
) as dag:
    queries = QueryListOperator(task_id="queries", py_file=str(PROJECT_ROOT / "pipelines" / "build_queries_beam.py"),
                                py_interpreter=sys.executable, pipeline_options={})
    select = RayJobOperator(task_id="select", entrypoint=lambda c: build_wit_command(c, "select"), run_dir=run_dir_of)
    download = RayJobOperator(task_id="download", entrypoint=lambda c: build_wit_command(c, "download"),
                              run_dir=run_dir_of)
    images = RayJobOperator(task_id="images", entrypoint=lambda c: build_wit_command(c, "all"), run_dir=run_dir_of)
    gate_selection = gate_task("selection")()
    gate_download = gate_task("download")()
    gate_shards = gate_task("shards", outlets=[SHARDS_ASSET])()

    queries >> select >> gate_selection >> download >> gate_download >> images >> gate_shards
