"""The DAGs in pipelines/dags/: import cleanly, no cycles, the expected graph, params validated, Asset wiring."""

from __future__ import annotations

import pytest

pytest.importorskip("airflow", reason="the `airflow` extra (make test installs it)")

from pipelines.ray_jobs import PROJECT_ROOT  # noqa: E402

DAGS_DIR = PROJECT_ROOT / "pipelines" / "dags"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_DIR))


def test_import_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == {"wit_curation", "wit_pretrain"}


def test_no_cycles_and_expected_graph(dagbag):
    curation, pretrain = dagbag.dags["wit_curation"], dagbag.dags["wit_pretrain"]
    for dag in (curation, pretrain):
        dag.check_cycle()
    edges = {(t, d) for t in curation.task_ids for d in curation.get_task(t).downstream_task_ids}
    chain = ["queries", "select", "gate_selection", "download", "gate_download", "images", "gate_shards"]
    assert edges == set(zip(chain, chain[1:]))
    assert type(curation.get_task("queries")).__mro__[1].__name__ == "BeamRunPythonPipelineOperator"
    assert {type(curation.get_task(t)).__name__ for t in ("select", "download", "images")} == {"RayJobOperator"}
    assert curation.get_task("queries").py_interpreter.endswith("python") and not curation.get_task("queries").py_requirements
    expected = [("pretrain", "evaluate")] + ([("evaluate", "contamination")]
                                             if (PROJECT_ROOT / "pipelines" / "contamination_report.py").exists() else [])
    assert {(t, d) for t in pretrain.task_ids for d in pretrain.get_task(t).downstream_task_ids} == set(expected)


def test_params_defaults_valid_and_bad_values_refused(dagbag):
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    curation = dagbag.dags["wit_curation"]
    params = curation.params
    params.validate()  # defaults are valid
    assert params["t"] is None and params["seed"] == 0 and params["band_download_success"] == [0.5, 1.0]  # t: scaled
    assert params["band_shard_samples"] == [1, None]
    for key, bad in (("band_download_success", [0.5]), ("t", -1), ("engine", "spark"), ("out", "")):
        copy = ParamsDict({k: params.get_param(k) for k in params})
        with pytest.raises(ParamValidationError):
            copy[key] = bad  # a Param validates on assignment
            copy.validate()
    pretrain = dagbag.dags["wit_pretrain"]
    pretrain.params.validate()
    assert pretrain.params["eval_sets"] == ["fashion-mnist"] and pretrain.params["model"] == "tiny"
    copy = ParamsDict({k: pretrain.params.get_param(k) for k in pretrain.params})
    with pytest.raises(ParamValidationError, match="eval_sets"):
        copy["eval_sets"] = ["imagenet"]


def test_bands_params_cover_every_gate_figure(dagbag):
    from curation.gates import GateBands

    from pipelines.dags.openwit_common import bands_from_params

    params = dagbag.dags["wit_curation"].params
    assert {k[len("band_"):] for k in params if k.startswith("band_")} == set(GateBands.__dataclass_fields__)
    assert bands_from_params(params) == GateBands()


def test_asset_wiring(dagbag):
    from pipelines.dags.openwit_common import SHARDS_ASSET

    curation, pretrain = dagbag.dags["wit_curation"], dagbag.dags["wit_pretrain"]
    producers = [t.task_id for t in curation.tasks if SHARDS_ASSET in (t.outlets or [])]
    assert producers == ["gate_shards"]
    assert list(pretrain.timetable.asset_condition.objects) == [SHARDS_ASSET]
    assert curation.timetable.expression == "0 0 * * 0"  # @weekly, the default schedule


def test_pretrain_commands_follow_the_triggering_asset_event(dagbag, tmp_path):
    """wit_pretrain trains on the run dir named by the shards event (else params.out), on every shard."""
    from types import SimpleNamespace

    from pipelines.dags.wit_pretrain import evaluate_command, pretrain_command

    shards = tmp_path / "run" / "curation" / "shards"
    shards.mkdir(parents=True)
    for name in ("00000.tar", "00001.tar", "00002.tar", "00000.parquet"):
        (shards / name).write_bytes(b"")
    params = {k: dagbag.dags["wit_pretrain"].params[k] for k in dagbag.dags["wit_pretrain"].params}
    params["eval_sets"] = ["fashion-mnist", "digits"]
    event = SimpleNamespace(extra={"run_dir": str(tmp_path / "run"), "shard_samples": 3.0})
    context = {"params": params, "triggering_asset_events": {"openwit_wit_shards": [event]}}
    cmd = pretrain_command(context)
    assert f"--train-data '{shards}/{{00000..00002}}.tar'" in cmd
    assert f"--out {tmp_path}/run/pretrain/wit" in cmd and "--model tiny --steps 100 --batch-size 32" in cmd
    evals = evaluate_command(context).split(" && ")
    assert [e.split("--dataset ")[1].split()[0] for e in evals] == ["fashion-mnist", "digits"]
    by_hand = {"params": {**params, "out": str(tmp_path / "empty")}}
    with pytest.raises(FileNotFoundError, match="no shards in .*empty/curation/shards"):
        pretrain_command(by_hand)
