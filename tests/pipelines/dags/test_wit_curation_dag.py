"""`airflow dags test wit_curation` end to end on a slice of the sample data, against a throw-away
Ray head: a first run stops at the selection gate (a pool that is mostly not English), the message
names stage, figure, value and band; after the pool is fixed the rerun, on the same run dir, goes
through to the shards and emits the shards Asset with the run dir. Within a run each image task
resumes from the one before (`images` reuses `download`'s finished img2dataset shards)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

pytest.importorskip("airflow", reason="the `airflow` extra (make test installs it)")

from pipelines.ray_jobs import PROJECT_ROOT  # noqa: E402
from pipelines.demo.submit_local import free_port  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def pool_slices(sample: dict, port: int) -> tuple[pa.Table, pa.Table]:
    """(mostly non-English slice, mostly English slice) of the sample pool, URLs on ``port``."""
    from curation.text.textfilter import LanguageIdentifier

    pool = pq.read_table(sample["sample_pool"]).filter(pc.equal(pc.field("source"), "openclipart"))
    pool = pool.slice(0, 600)
    labels, probs = LanguageIdentifier().predict(pool.column("text").to_pylist())
    english = pa.array([lab == "en" and p >= 0.5 for lab, p in zip(labels, probs)])
    en, other = pool.filter(english), pool.filter(pc.invert(english))
    bad, good = pa.concat_tables([en.slice(0, 5), other.slice(0, 45)]), pa.concat_tables([en.slice(0, 60), other.slice(0, 4)])
    urls = lambda t: pc.replace_substring(t.column("url"), "127.0.0.1:18765", f"127.0.0.1:{port}")  # noqa: E731
    return tuple(t.set_column(t.schema.get_field_index("url"), "url", urls(t)) for t in (bad, good))


def airflow(args: list[str], env: dict, timeout: int) -> subprocess.CompletedProcess:
    cli = str(Path(sys.executable).with_name("airflow"))
    return subprocess.run([cli, *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_dags_test_gate_fails_then_rerun_completes(tmp_path, ray_head, sample):
    port = free_port()
    bad, good = pool_slices(sample, port)
    pool, out = tmp_path / "pool.parquet", tmp_path / "run"
    pq.write_table(bad, pool)
    env = dict(os.environ, AIRFLOW_HOME=str(tmp_path / "airflow"), AIRFLOW__CORE__LOAD_EXAMPLES="False",
               AIRFLOW__CORE__DAGS_FOLDER=str(PROJECT_ROOT / "pipelines" / "dags"), PYTHONPATH=str(PROJECT_ROOT),
               AIRFLOW__CORE__UNIT_TEST_MODE="False")
    env.pop("RAY_ADDRESS", None)
    migrate = airflow(["db", "migrate"], env, timeout=300)
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    # t pinned to MetaCLIP's 20k, so that the cap_share gate is judged (with the DAG's default, t
    # scaled to the pool, it is reported only: tests/pipelines/dags/test_gates.py)
    conf = {"out": str(out), "ray_address": ray_head, "pool": [str(pool)], "t": 20_000,
            "query_options": {"unigram_counts": sample["unigram_counts"], "min_count": 200000, "quiet": True},
            "build_wit_options": ["--serve-images", sample["sample_images_dir"], "--serve-port", str(port),
                                  "--allow-network", "127.0.0.1", "--unlimited-hosts", "127.0.0.1", "--processes", "1", "--threads", "8",
                                  "--parts", "2", "--shard-size", "40", "--parallelism", "2"]}

    first = airflow(["dags", "test", "wit_curation", "-c", json.dumps(conf)], env, timeout=900)
    log = first.stdout + first.stderr
    assert "gate selection failed on" in log, log[-5000:]
    assert "stage text: english_share = 0.1 (5 of 50 not rejected as not_english), band [0.3, 1]" in log, log[-5000:]
    assert not (out / "curation" / "stats" / "download.json").exists()  # stopped at the gate
    queries_mtime = (out / "queries" / "queries.parquet").stat().st_mtime_ns

    # fix the input: a new pool file (the selection's fingerprint names the pool's path, so an
    # in-place rewrite would be taken for the finished selection)
    fixed = tmp_path / "pool-fixed.parquet"
    pq.write_table(good, fixed)
    conf["pool"] = [str(fixed)]
    second = airflow(["dags", "test", "wit_curation", "-c", json.dumps(conf)], env, timeout=900)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-8000:]
    for gate in ("selection", "download", "shards"):
        assert f"gate {gate}: PASS" in log, log[-8000:]
    shards = json.loads((out / "curation" / "stats" / "shards.json").read_text())
    assert shards["out"] > 0 and sorted(p.name for p in (out / "curation" / "shards").glob("*.tar"))
    assert (out / "curation" / "report.html").exists()
    assert (out / "queries" / "queries.parquet").stat().st_mtime_ns >= queries_mtime
    selected = json.loads((out / "curation" / "stats" / "text.json").read_text())
    assert selected["in"] == len(good)  # the rerun selected from the fixed pool
    with sqlite3.connect(tmp_path / "airflow" / "airflow.db") as db:
        extras = [json.loads(e) for (e,) in db.execute(
            "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.name = 'openwit_wit_shards'")]
    assert extras == [{"run_dir": str(out), "shard_samples": float(shards["out"])}]
